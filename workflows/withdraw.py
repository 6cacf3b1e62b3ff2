"""A candidate archived or deleted in Lever: stop their running assessments.

Each running assessment is told why (``withdraw`` signal): it cancels its Py
invitations and, for an archived candidate, clears the in-progress tags; a
deleted candidate gets no tag writes. For a deleted candidate, every execution
that holds its data is then deleted from Temporal.

This workflow's own execution is kept (until the namespace's retention removes
it): it is the record that the deletion was carried out (its result is the
number of executions deleted). It holds no candidate data: its input, activity
arguments and results, and the ids it signals are Lever and Temporal ids only
(account, opportunity, workflow ids), never a name, email, tag or score. It
carries no ``LeverOpportunityId`` search attribute (``Gateway.withdraw_candidate``
sets none), so a candidate query (``LeverOpportunityId = "..."``, the status
endpoint) finds nothing once the candidate's executions are deleted.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.temporal_ops import CandidateRef, TemporalActivities
    from pylever.models import Withdrawal, WithdrawInput
    from workflows.assessment import AssessmentWorkflow

_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


@workflow.defn
class WithdrawCandidateWorkflow:
    @workflow.run
    async def run(self, input: WithdrawInput) -> int:
        ref = CandidateRef(account_id=input.account_id, opportunity_id=input.opportunity_id)
        running: list[str] = await workflow.execute_activity_method(
            TemporalActivities.running_assessments,
            ref,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        for workflow_id in running:
            handle = workflow.get_external_workflow_handle_for(AssessmentWorkflow.run, workflow_id)
            try:
                await handle.signal(AssessmentWorkflow.withdraw, Withdrawal(reason=input.reason))
            except Exception:  # finished between the listing and the signal
                workflow.logger.info("assessment %s had already finished", workflow_id)
        if input.reason != "deleted":
            return len(running)
        await workflow.execute_activity_method(
            TemporalActivities.wait_closed,
            running,
            start_to_close_timeout=timedelta(hours=1),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        return await workflow.execute_activity_method(
            TemporalActivities.delete_candidate_executions,
            ref,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )

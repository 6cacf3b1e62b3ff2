"""A candidate archived or deleted in Lever: stop their running assessments.

Each running assessment is told why (``withdraw`` signal): it cancels its Py
invitations and, for an archived candidate, clears the in-progress tags; a
deleted candidate gets no tag writes. For a deleted candidate, every execution
that holds its data is then deleted from Temporal.

Nothing is withdrawn until Lever confirms it: Lever's signature does not cover
a webhook's ``data``, so a captured delivery re-sent as ``candidateDeleted`` with
another candidate's id would otherwise cancel that candidate's invitation. An
archive needs the opportunity archived (or gone), a delete needs Lever's 404
(``lever.opportunity_state``), read again after 10 s, 1 min and 5 min when the
first answer does not confirm it (Lever's reads may lag its webhooks).
Unconfirmed: the result is 0, the memo says ``{"withdrawal": {"confirmed":
false, "lever_says": ...}}``, the worker logs a warning and counts
``pylever_withdrawals_unconfirmed``. Lever failing for a day: the workflow fails
(visible as Failed), nothing withdrawn.

The assessments are reached by their deterministic ids, one per trigger stage
of the account (``WithdrawInput.stage_ids``): an archive that arrives 100 ms
after the stage change reaches the assessment that change started, which a
visibility query would not list yet. Visibility is asked afterwards too, for an
assessment of a stage that is no longer a trigger; it is not on the hot path.

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

import asyncio
from datetime import timedelta
from typing import Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import workflows.decisions as decisions
    from pylever.contracts.activities import TemporalActivity
    from pylever.contracts.records import CandidateRef, Withdrawal, WithdrawInput
    from workflows.assessment import AssessmentWorkflow
    from workflows.calls import LeverOps, call
    from workflows.versions import DURABLE

# When Lever is asked again if its first answer does not confirm the webhook.
RECHECKS = (timedelta(seconds=10), timedelta(minutes=1), timedelta(minutes=5))
# What Lever must say of the opportunity for each reason: a forged webhook (Lever's
# signature does not cover ``data``) names a candidate Lever still shows active.
CONFIRMING_STATES = {"archived": ("archived", "gone"), "deleted": ("gone",)}

_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


async def _lever_state(lever: LeverOps, input: WithdrawInput) -> str:
    try:
        return await lever.opportunity_state()
    except ActivityError as exc:
        raise ApplicationError(
            f"cannot confirm the {input.reason} webhook with Lever: {exc.cause or exc}",
            type="WithdrawalUnconfirmable",
            non_retryable=True,
        ) from None


@workflow.defn
class WithdrawCandidateWorkflow:
    @workflow.run
    async def run(self, input: WithdrawInput) -> int:
        ref = CandidateRef(account_id=input.account_id, opportunity_id=input.opportunity_id)
        if not workflow.patched(DURABLE):
            return await self._run_v1(input, ref)
        if not await self._confirmed(input):
            return 0
        known = [
            decisions.assessment_workflow_id(input.account_id, input.opportunity_id, stage_id)
            for stage_id in dict.fromkeys(input.stage_ids)
        ]
        reached = [w for w in known if await self._signal(w, input.reason)]
        listed: list[str] = await call(
            TemporalActivity.running_assessments,
            ref,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        others = [w for w in listed if w not in known]
        reached += [w for w in others if await self._signal(w, input.reason)]
        if input.reason != "deleted":
            return len(reached)  # the assessments told to withdraw
        await call(
            TemporalActivity.wait_closed,
            [*known, *others],
            start_to_close_timeout=timedelta(hours=1),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        by_id: list[str] = await call(
            TemporalActivity.delete_executions,
            [*known, *others],
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        # Earlier runs, and anything visibility still lists: the catch-all after the known ids.
        swept: int = await call(
            TemporalActivity.delete_candidate_executions,
            ref.model_copy(update={"already_deleted": tuple(by_id)}),
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        return len(by_id) + swept  # executions deleted

    @staticmethod
    async def _confirmed(input: WithdrawInput) -> bool:
        """Lever shows the opportunity archived (or gone) / gone (404): the webhook is true.

        Lever's reads may lag its own webhook: a state that does not confirm it is read
        again after 10 s, 1 min and 5 min. A read that fails for good (Lever failing for a
        day) fails this workflow: it shows as Failed in the Web UI, nothing withdrawn.
        """
        lever = LeverOps(input.account_id, input.opportunity_id)
        expected = CONFIRMING_STATES[input.reason]
        state = await _lever_state(lever, input)
        for delay in RECHECKS:
            if state in expected:
                return True
            await asyncio.sleep(delay.total_seconds())
            state = await _lever_state(lever, input)
        if state in expected:
            return True
        workflow.logger.warning(
            "withdrawal not confirmed by Lever: a %s webhook for opportunity %s, which Lever "
            "shows %s; nothing withdrawn",
            input.reason,
            input.opportunity_id,
            state,
        )
        workflow.metric_meter().create_counter(
            "pylever_withdrawals_unconfirmed",
            "Archive/delete webhooks that Lever did not confirm (forged, or reversed since).",
        ).with_additional_attributes({"account": input.account_id, "reason": input.reason}).add(1)
        workflow.upsert_memo({"withdrawal": {"confirmed": False, "lever_says": state}})
        workflow.set_current_details(
            f"**not confirmed by Lever**: a {input.reason} webhook, but Lever says the "
            f"opportunity is {state}; nothing was withdrawn"
        )
        return False

    @staticmethod
    async def _signal(workflow_id: str, reason: Literal["archived", "deleted"]) -> bool:
        handle: workflow.ExternalWorkflowHandle[AssessmentWorkflow] = (
            workflow.get_external_workflow_handle_for(AssessmentWorkflow.run, workflow_id)
        )
        try:
            await handle.signal(AssessmentWorkflow.withdraw, Withdrawal(reason=reason))
        except Exception:  # no such assessment, or it has finished
            return False
        return True

    async def _run_v1(self, input: WithdrawInput, ref: CandidateRef) -> int:
        """The shape shipped before the known-id signals (frozen; replays running executions)."""
        running: list[str] = await call(
            TemporalActivity.running_assessments,
            ref,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        for workflow_id in running:
            handle: workflow.ExternalWorkflowHandle[AssessmentWorkflow] = (
                workflow.get_external_workflow_handle_for(AssessmentWorkflow.run, workflow_id)
            )
            try:
                await handle.signal(AssessmentWorkflow.withdraw, Withdrawal(reason=input.reason))
            except Exception:  # finished between the listing and the signal
                workflow.logger.info("assessment %s had already finished", workflow_id)
        if input.reason != "deleted":
            return len(running)
        await call(
            TemporalActivity.wait_closed,
            running,
            start_to_close_timeout=timedelta(hours=1),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        deleted: int = await call(
            TemporalActivity.delete_candidate_executions,
            ref,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
        )
        return deleted

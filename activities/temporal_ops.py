"""Activities that act on Temporal itself: find, wait for and delete a candidate's executions."""

from __future__ import annotations

import asyncio
import base64

from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.service import RPCError, RPCStatusCode

from pylever.contracts import search_attributes as sa
from pylever.contracts.activities import TemporalActivity
from pylever.contracts.records import (
    AccountPage,
    AssessmentPage,
    AssessmentResult,
    CandidateRef,
)
from workflows import decisions


class TemporalActivities:
    def __init__(self, client: Client, poll_interval: float = 1.0) -> None:
        self._client = client
        self._poll = poll_interval

    @TemporalActivity.running_assessments.implementation
    async def running_assessments(self, ref: CandidateRef) -> list[str]:
        """Ids of the candidate's running parent assessments."""
        query = (
            f"{sa.candidate_query(ref.account_id, ref.opportunity_id)} "
            "AND WorkflowType = 'AssessmentWorkflow' AND ExecutionStatus = 'Running'"
        )
        return sorted({wf.id async for wf in self._client.list_workflows(query)})

    @TemporalActivity.account_assessments.implementation
    async def account_assessments(self, page: AccountPage) -> AssessmentPage:
        """One page of the ids of the account's running parent assessments (visibility)."""
        query = (
            f"{sa.account_query(page.account_id)} "
            "AND WorkflowType = 'AssessmentWorkflow' AND ExecutionStatus = 'Running'"
        )
        token = base64.b64decode(page.page_token) if page.page_token else None
        listing = self._client.list_workflows(
            query, page_size=page.page_size, next_page_token=token
        )
        await listing.fetch_next_page()
        following = listing.next_page_token
        return AssessmentPage(
            workflow_ids=tuple(wf.id for wf in listing.current_page or ()),
            next_page_token=base64.b64encode(following).decode() if following else None,
        )

    @TemporalActivity.previous_invitations.implementation
    async def previous_invitations(self, workflow_ids: list[str]) -> dict[str, str]:
        """The invitation id each closed invitation workflow's latest run recorded (its memo).

        A re-run of an assessment asks this before starting its children: an earlier
        run that ended without a result may have left its invitation open at Py.
        """
        found: dict[str, str] = {}
        for workflow_id in workflow_ids:
            desc = await self._describe(workflow_id)
            if desc is None or desc.status == WorkflowExecutionStatus.RUNNING:
                continue
            details = (await desc.memo()).get("assessment") or {}
            invitation_id = details.get("invitation_id") if isinstance(details, dict) else None
            if isinstance(invitation_id, str) and invitation_id:
                found[workflow_id] = invitation_id
        return found

    @TemporalActivity.delete_executions.implementation
    async def delete_executions(self, workflow_ids: list[str]) -> list[str]:
        """Delete the latest run of each closed assessment and of the invitations it started
        (read from its result): the candidate's data, by known ids, without visibility.

        Returns the ``workflow_id/run_id`` of each execution deleted (a deletion is carried
        out later by the server: the sweep after this one must not count them again).
        """
        deleted: list[str] = []
        for workflow_id in workflow_ids:
            handle = self._client.get_workflow_handle(workflow_id, result_type=AssessmentResult)
            children: list[str] = []
            try:
                desc = await handle.describe()
                if desc.status == WorkflowExecutionStatus.COMPLETED:
                    result = await handle.result()
                    children = [
                        decisions.invitation_workflow_id(workflow_id, i.test.id)
                        for i in result.invitations
                    ]
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                continue
            except WorkflowFailureError:
                pass  # failed or cancelled: its children are found by the sweep after this
            for target in children:
                child = await self._describe(target)
                if child is not None and await self._delete(target, child.run_id):
                    deleted.append(f"{target}/{child.run_id}")
            if await self._delete(workflow_id, desc.run_id):
                deleted.append(f"{workflow_id}/{desc.run_id}")
            activity.heartbeat(len(deleted))
        return deleted

    async def _describe(self, workflow_id: str) -> WorkflowExecutionDescription | None:
        """The latest run of ``workflow_id``; None when Temporal holds none."""
        try:
            return await self._client.get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None
            raise

    async def _delete(self, workflow_id: str, run_id: str = "") -> int:
        try:
            await self._client.workflow_service.delete_workflow_execution(
                DeleteWorkflowExecutionRequest(
                    namespace=self._client.namespace,
                    workflow_execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                )
            )
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            return 0
        return 1

    @TemporalActivity.wait_closed.implementation
    async def wait_closed(self, workflow_ids: list[str]) -> None:
        """Wait until each execution has closed (heartbeating, so a lost worker is noticed)."""
        pending = list(workflow_ids)
        while pending:
            still = []
            for workflow_id in pending:
                desc = await self._describe(workflow_id)
                if desc is not None and desc.status == WorkflowExecutionStatus.RUNNING:
                    still.append(workflow_id)
            pending = still
            activity.heartbeat(len(pending))
            if pending:
                await asyncio.sleep(self._poll)

    @TemporalActivity.delete_candidate_executions.implementation
    async def delete_candidate_executions(self, ref: CandidateRef) -> int:
        """Delete every closed execution of the candidate (their histories hold candidate data)."""
        query = sa.candidate_query(ref.account_id, ref.opportunity_id)
        deleted = 0
        skip = set(ref.already_deleted)
        async for wf in self._client.list_workflows(query):
            if f"{wf.id}/{wf.run_id}" in skip:
                continue
            deleted += await self._delete(wf.id, wf.run_id)
            activity.heartbeat(deleted)
        return deleted

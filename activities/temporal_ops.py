"""Activities that act on Temporal itself: find, wait for and delete a candidate's executions."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from pylever import search_attributes as sa


class CandidateRef(BaseModel):
    model_config = ConfigDict(frozen=True)
    account_id: str
    opportunity_id: str


class TemporalActivities:
    def __init__(self, client: Client, poll_interval: float = 1.0) -> None:
        self._client = client
        self._poll = poll_interval

    @activity.defn(name="temporal.running_assessments")
    async def running_assessments(self, ref: CandidateRef) -> list[str]:
        """Ids of the candidate's running parent assessments."""
        query = (
            f"{sa.candidate_query(ref.account_id, ref.opportunity_id)} "
            "AND WorkflowType = 'AssessmentWorkflow' AND ExecutionStatus = 'Running'"
        )
        return sorted({wf.id async for wf in self._client.list_workflows(query)})

    @activity.defn(name="temporal.wait_closed")
    async def wait_closed(self, workflow_ids: list[str]) -> None:
        """Wait until each execution has closed (heartbeating, so a lost worker is noticed)."""
        pending = list(workflow_ids)
        while pending:
            still = []
            for workflow_id in pending:
                try:
                    desc = await self._client.get_workflow_handle(workflow_id).describe()
                except RPCError as exc:
                    if exc.status == RPCStatusCode.NOT_FOUND:
                        continue
                    raise
                if desc.status == WorkflowExecutionStatus.RUNNING:
                    still.append(workflow_id)
            pending = still
            activity.heartbeat(len(pending))
            if pending:
                await asyncio.sleep(self._poll)

    @activity.defn(name="temporal.delete_candidate_executions")
    async def delete_candidate_executions(self, ref: CandidateRef) -> int:
        """Delete every closed execution of the candidate (their histories hold candidate data)."""
        query = sa.candidate_query(ref.account_id, ref.opportunity_id)
        deleted = 0
        async for wf in self._client.list_workflows(query):
            try:
                await self._client.workflow_service.delete_workflow_execution(
                    DeleteWorkflowExecutionRequest(
                        namespace=self._client.namespace,
                        workflow_execution=WorkflowExecution(workflow_id=wf.id, run_id=wf.run_id),
                    )
                )
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
            deleted += 1
            activity.heartbeat(deleted)
        return deleted

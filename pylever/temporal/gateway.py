"""What the API asks of Temporal: start assessments idempotently, signal results,
withdraw candidates, list a candidate's assessments.

Temporal being unreachable surfaces as ``TemporalUnavailable`` so the API can
answer 503 and let Lever (or Py) retry: nothing accepted is ever dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.failure.v1 import Failure
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.common import (
    Priority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, FailureError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from pylever.contracts import search_attributes as sa
from pylever.contracts.commands import RETAKE_ID_MEMO, RETAKE_MEMO
from pylever.contracts.records import (
    RERUNNABLE,
    AssessmentInput,
    PyEvent,
    RemoveAccountInput,
    Status,
    Withdrawal,
    WithdrawInput,
)
from workflows import decisions
from workflows.assessment import AssessmentWorkflow
from workflows.invitation import InvitationWorkflow
from workflows.remove_account import RemoveAccountWorkflow, remove_account_workflow_id
from workflows.withdraw import WithdrawCandidateWorkflow

RPC_TIMEOUT = timedelta(seconds=5)
# Status describes each running execution to show what it waits for: a few at a time,
# each given up (``waiting`` None) rather than holding the answer back.
DESCRIBE_CONCURRENCY = 8
WAITING_TIMEOUT = 3.0  # seconds per execution
HISTORY_PAGE = 50  # newest events read to find when a retried activity was first scheduled
LAST_ERROR_MAX = 500
# Answers that mean "not now": the caller answers 503 and Lever or Py retry. This
# includes a namespace whose search attributes no worker has registered yet.
_NOT_NOW = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.UNKNOWN,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.INVALID_ARGUMENT,
    RPCStatusCode.FAILED_PRECONDITION,
    RPCStatusCode.INTERNAL,
}


# How far Lever's clock may be ahead of ours when a sweep compares a candidate's entry into
# a stage (Lever's lastAdvancedAt) with when an assessment started (Temporal's clock).
ENTRY_CLOCK_MARGIN = timedelta(seconds=60)


class TemporalUnavailable(Exception):
    """Temporal did not answer; the caller should be told to retry later."""


StartOutcome = Literal["started", "already_running", "already_done"]
SignalOutcome = Literal["signalled", "not_found", "finished"]


@dataclass(frozen=True)
class Started:
    status: StartOutcome
    workflow_id: str


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, RPCError):
        return exc.status in _NOT_NOW
    # A lazy client that cannot connect raises RuntimeError from the core bridge.
    return isinstance(exc, RuntimeError | ConnectionError | TimeoutError)


def _covers(previous: WorkflowExecutionDescription, entered_at: datetime | None) -> bool:
    """Whether a closed assessment run stands for the candidate's current stay in the stage:
    it ended with a result (not re-run, as for a webhook), or (sweep, backfill: the entry
    time is known) it started after the candidate entered the stage."""
    status = previous.typed_search_attributes.get(sa.PY_STATUS)
    if previous.status == WorkflowExecutionStatus.COMPLETED and status not in RERUNNABLE:
        return True
    return entered_at is not None and previous.start_time >= entered_at - ENTRY_CLOCK_MARGIN


def account_priority(account_id: str) -> Priority:
    """Every execution of an account shares its fairness key: the server serves the
    accounts' workflow tasks (and the activities, which inherit it) in turn, so one
    account's bulk move does not queue another account's candidates behind it."""
    return Priority(fairness_key=account_id)


class Gateway:
    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue

    async def ready(self) -> bool:
        try:
            await self.client.workflow_service.get_system_info(
                _system_info_request(), timeout=timedelta(seconds=2), retry=False
            )
        except Exception:
            return False
        return True

    # --- assessments ----------------------------------------------------------

    async def start_assessment(
        self,
        input: AssessmentInput,
        *,
        entered_at: datetime | None = None,
        priority: Priority | None = None,
    ) -> Started:
        """Start once per (account, opportunity, stage).

        Running: reused. Closed with a result (``completed``, ``expired``): not
        redone. Closed without one (``not_sent``, ``error``): run again, so a
        recruiter can fix the tag or email and move the candidate back into the
        stage. Closed ``cancelled`` (archived or deleted in Lever, or cancelled at
        Py): run again too (``models.RERUNNABLE``), so a candidate who is
        un-archived and moved back into the stage gets a new invitation. The new
        run's Py idempotency key counts the entries into the stage
        (``decisions.idempotency_key``): a real re-entry gets a new invitation,
        while a re-delivered old webhook gets the cancelled invitation back from
        Py and ends ``cancelled`` again, sending nothing.

        ``entered_at`` (the sweep and the backfill: Lever's ``lastAdvancedAt``): no webhook
        tells of an entry, so a closed run that started after the candidate entered the
        stage (less ``ENTRY_CLOCK_MARGIN``, for Lever's clock against ours) has seen this
        entry and is left alone whatever it ended with (``not_sent`` included): a sweep
        never reruns what a run already decided. A closed run from before the entry is
        treated as a webhook would treat it.

        ``priority``: the run's (its children and activities inherit it); default the
        account's fairness key at the default priority. The sweep starts at a lower one.
        """
        workflow_id = decisions.assessment_workflow_id(
            input.account_id, input.opportunity_id, input.stage_id
        )
        priority = priority or account_priority(input.account_id)
        try:
            return await self._start(
                input, workflow_id, WorkflowIDReusePolicy.REJECT_DUPLICATE, priority
            )
        except WorkflowAlreadyStartedError:
            pass  # a closed run exists: look at how it ended
        except Exception as exc:
            raise self._translate(exc) from None
        try:
            previous = await self.client.get_workflow_handle(workflow_id).describe(
                rpc_timeout=RPC_TIMEOUT
            )
            if previous.status == WorkflowExecutionStatus.RUNNING:  # a racing start won
                return Started("already_running", workflow_id)
            if _covers(previous, entered_at):
                return Started("already_done", workflow_id)
            # A re-run adopts what the earlier run left open at Py (models.AssessmentInput).
            rerun = input.model_copy(update={"rerun": True})
            return await self._start(
                rerun, workflow_id, WorkflowIDReusePolicy.ALLOW_DUPLICATE, priority
            )
        except WorkflowAlreadyStartedError:
            return Started("already_running", workflow_id)
        except Exception as exc:
            raise self._translate(exc) from None

    async def would_start(self, input: AssessmentInput, *, entered_at: datetime) -> bool:
        """Whether ``start_assessment(input, entered_at=...)`` would start a run now (the
        backfill's dry run asks; nothing is started)."""
        workflow_id = decisions.assessment_workflow_id(
            input.account_id, input.opportunity_id, input.stage_id
        )
        try:
            previous = await self.client.get_workflow_handle(workflow_id).describe(
                rpc_timeout=RPC_TIMEOUT
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return True
            raise self._translate(exc) from None
        except Exception as exc:
            raise self._translate(exc) from None
        if previous.status == WorkflowExecutionStatus.RUNNING:
            return False
        return not _covers(previous, entered_at)

    async def start_retake(self, input: AssessmentInput) -> Started:
        """A recruiter's ``Py - Retake`` of a finished assessment: a new run with
        ``input.retake`` (the n-th retake, also in the run's memo) and its tests.
        ``started``: this retake began now, or (a retried start) earlier; ``already_running``:
        another run is going."""
        workflow_id = decisions.assessment_workflow_id(
            input.account_id, input.opportunity_id, input.stage_id
        )
        try:
            started = await self._start(
                input,
                workflow_id,
                WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                account_priority(input.account_id),
                memo={RETAKE_MEMO: input.retake, RETAKE_ID_MEMO: input.retake_id},
            )
            if started.status == "started":
                return started
            running = await self.client.get_workflow_handle(workflow_id).describe(
                rpc_timeout=RPC_TIMEOUT
            )
            if (await running.memo()).get(RETAKE_ID_MEMO) == input.retake_id:
                return Started("started", workflow_id)  # this very retake, started before
            return started
        except Exception as exc:
            raise self._translate(exc) from None

    async def _start(
        self,
        input: AssessmentInput,
        workflow_id: str,
        reuse: WorkflowIDReusePolicy,
        priority: Priority,
        memo: dict[str, Any] | None = None,
    ) -> Started:
        handle: WorkflowHandle[Any, Any] = await self.client.start_workflow(
            AssessmentWorkflow.run,
            input,
            id=workflow_id,
            task_queue=self.task_queue,
            id_reuse_policy=reuse,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.LEVER_ACCOUNT, input.account_id),
                    SearchAttributePair(sa.LEVER_OPPORTUNITY_ID, input.opportunity_id),
                    SearchAttributePair(sa.LEVER_STAGE_ID, input.stage_id),
                    SearchAttributePair(sa.PY_STATUS, Status.RESOLVING.value),
                ]
            ),
            static_summary=f"opportunity {input.opportunity_id} · stage {input.settings.stage}"
            + (f" · retake {input.retake}" if input.retake else ""),
            memo=memo,
            priority=priority,
            rpc_timeout=RPC_TIMEOUT,
        )
        response = getattr(handle, "_start_workflow_response", None)
        started = bool(getattr(response, "started", True))
        return Started("started" if started else "already_running", workflow_id)

    # --- results ---------------------------------------------------------------

    async def signal_py_event(self, reference: str, event: PyEvent) -> SignalOutcome:
        handle = self.client.get_workflow_handle(reference)
        try:
            await handle.signal(InvitationWorkflow.py_event, event, rpc_timeout=RPC_TIMEOUT)
            return "signalled"
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise self._translate(exc) from None
        except Exception as exc:
            raise self._translate(exc) from None
        # Not running: never existed, or finished (then a duplicate changes nothing).
        try:
            await handle.describe(rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return "not_found"
            raise self._translate(exc) from None
        except Exception as exc:
            raise self._translate(exc) from None
        return "finished"

    # --- candidates leaving -------------------------------------------------------

    async def withdraw_candidate(
        self,
        account_id: str,
        opportunity_id: str,
        reason: Literal["archived", "deleted"],
        stage_ids: Sequence[str] = (),
    ) -> str:
        """Start the withdrawal; ``stage_ids`` (the account's trigger stages) name the
        candidate's assessments by their deterministic ids."""
        workflow_id = f"withdraw:{account_id}:{opportunity_id}:{reason}"
        try:
            await self.client.start_workflow(
                WithdrawCandidateWorkflow.run,
                WithdrawInput(
                    account_id=account_id,
                    opportunity_id=opportunity_id,
                    reason=reason,
                    stage_ids=tuple(stage_ids),
                ),
                id=workflow_id,
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary=f"opportunity {opportunity_id} · {reason} in Lever",
                priority=account_priority(account_id),
                rpc_timeout=RPC_TIMEOUT,
            )
        except Exception as exc:
            raise self._translate(exc) from None
        return workflow_id

    # --- accounts leaving -------------------------------------------------------------

    async def remove_account(self, account_id: str) -> str:
        """Start withdrawing the running assessments of an account removed from the
        configuration (``RemoveAccountWorkflow``); once however many workers ask at once."""
        workflow_id = remove_account_workflow_id(account_id)
        try:
            await self.client.start_workflow(
                RemoveAccountWorkflow.run,
                RemoveAccountInput(account_id=account_id),
                id=workflow_id,
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary=f"account {account_id} removed from the configuration",
                rpc_timeout=RPC_TIMEOUT,
            )
        except Exception as exc:
            raise self._translate(exc) from None
        return workflow_id

    async def stop_account_removal(self, account_id: str) -> bool:
        """An account added back: its withdrawal, if still listing, stops taking its new
        assessments. True when a running one was told."""
        handle = self.client.get_workflow_handle(remove_account_workflow_id(account_id))
        try:
            await handle.signal(RemoveAccountWorkflow.stop, rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:  # none, or finished
                return False
            raise self._translate(exc) from None
        except Exception as exc:
            raise self._translate(exc) from None
        return True

    # --- status --------------------------------------------------------------------

    async def candidate_assessments(self, account_id: str, opportunity_id: str) -> list[dict]:
        """Every invitation and assessment of the candidate that Temporal still holds."""
        query = sa.candidate_query(account_id, opportunity_id)
        rows: list[dict] = []
        try:
            async for wf in self.client.list_workflows(query, rpc_timeout=RPC_TIMEOUT):
                memo = await wf.memo()
                details = memo.get("assessment") or {}
                attrs = wf.typed_search_attributes
                if wf.workflow_type == "CandidateCommandsWorkflow":
                    rows.append(_commands_row(wf, memo.get("commands") or {}))
                    continue
                rows.append(
                    {
                        "workflow_id": wf.id,
                        "run_id": wf.run_id,
                        "kind": "invitation"
                        if wf.workflow_type == "InvitationWorkflow"
                        else "assessment",
                        "stage_id": attrs.get(sa.LEVER_STAGE_ID),
                        "test": attrs.get(sa.PY_TEST),
                        "status": attrs.get(sa.PY_STATUS),
                        "verdict": attrs.get(sa.PY_VERDICT),
                        "score": attrs.get(sa.PY_SCORE),
                        "invitation_id": details.get("invitation_id"),
                        "reason": details.get("reason"),
                        "last_error": details.get("last_error"),
                        "sent_at": details.get("sent_at"),
                        "next_check_at": details.get("next_check_at"),
                        "expires_at": details.get("expires_at"),  # moved by Py - Extend
                        "started_at": wf.start_time.isoformat() if wf.start_time else None,
                        "closed_at": wf.close_time.isoformat() if wf.close_time else None,
                        "execution_status": wf.status.name.lower() if wf.status else None,
                        "retake": memo.get(RETAKE_MEMO),
                        "commands": details.get("commands") or [],
                    }
                )
        except Exception as exc:
            raise self._translate(exc) from None
        await self._add_waiting(rows)
        rows.sort(key=lambda r: (r["started_at"] or "", r["workflow_id"]))
        return rows

    async def _add_waiting(self, rows: list[dict]) -> None:
        """Set each row's ``waiting``: what a running execution keeps retrying, else None."""
        limit = asyncio.Semaphore(DESCRIBE_CONCURRENCY)

        async def one(row: dict) -> None:
            async with limit:
                row["waiting"] = await self._waiting(row["workflow_id"], row["run_id"])

        for row in rows:
            row["waiting"] = None
        await asyncio.gather(*(one(r) for r in rows if r["execution_status"] == "running"))

    async def _waiting(self, workflow_id: str, run_id: str | None) -> dict | None:
        """The pending activity that has failed at least once, as
        ``{"activity", "since", "attempts", "last_error"}``; None when there is none,
        or when Temporal does not say in time (status answers without it).

        ``since`` is when the activity was first scheduled (its ``ActivityTaskScheduled``
        event: a pending activity's ``scheduled_time`` moves with every retry);
        ``attempts`` counts the attempts that failed; ``last_error`` is the last
        failure's type and message, decrypted by the client's data converter.
        """
        try:
            async with asyncio.timeout(WAITING_TIMEOUT):
                handle = self.client.get_workflow_handle(workflow_id, run_id=run_id)
                description = await handle.describe(rpc_timeout=RPC_TIMEOUT)
                failing = [
                    p
                    for p in description.raw_description.pending_activities
                    if p.HasField("last_failure") or p.attempt > 1
                ]
                if not failing:
                    return None
                pending = max(failing, key=lambda p: p.attempt)
                since = await self._first_scheduled(
                    workflow_id, description.run_id, pending.activity_id
                )
                return {
                    "activity": pending.activity_type.name,
                    "since": since,
                    "attempts": _failed_attempts(pending),
                    "last_error": await self._failure_text(pending),
                }
        except Exception:
            return None

    async def _first_scheduled(self, workflow_id: str, run_id: str, activity_id: str) -> str | None:
        response = await self.client.workflow_service.get_workflow_execution_history_reverse(
            GetWorkflowExecutionHistoryReverseRequest(
                namespace=self.client.namespace,
                execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                maximum_page_size=HISTORY_PAGE,
            ),
            retry=False,
            timeout=RPC_TIMEOUT,
        )
        for event in response.history.events:
            if (
                event.HasField("activity_task_scheduled_event_attributes")
                and event.activity_task_scheduled_event_attributes.activity_id == activity_id
            ):
                return event.event_time.ToDatetime(tzinfo=UTC).isoformat()
        return None

    async def _failure_text(self, pending: PendingActivityInfo) -> str | None:
        if not pending.HasField("last_failure"):
            return None
        failure = Failure()
        failure.CopyFrom(pending.last_failure)  # decode_failure decodes in place
        try:
            exc = await self.client.data_converter.decode_failure(failure)
        except Exception:
            return pending.last_failure.message[:LAST_ERROR_MAX] or None
        kind = exc.type if isinstance(exc, ApplicationError) and exc.type else type(exc).__name__
        message = exc.message if isinstance(exc, FailureError) else str(exc)
        return f"{kind}: {message}"[:LAST_ERROR_MAX]

    @staticmethod
    def _translate(exc: BaseException) -> BaseException:
        if _unavailable(exc):
            return TemporalUnavailable("Temporal is not reachable")
        return exc


def _commands_row(wf: Any, details: dict) -> dict:
    """A recruiter's command tags found on the candidate, and what each did."""
    return {
        "workflow_id": wf.id,
        "run_id": wf.run_id,
        "kind": "commands",
        "commands": details.get("commands") or [],
        "outcomes": details.get("outcomes") or [],
        "tags_removed": bool(details.get("tags_removed")),
        "started_at": wf.start_time.isoformat() if wf.start_time else None,
        "closed_at": wf.close_time.isoformat() if wf.close_time else None,
        "execution_status": wf.status.name.lower() if wf.status else None,
    }


def _failed_attempts(pending: PendingActivityInfo) -> int:
    """Attempts that failed so far: ``attempt`` is the one now scheduled or running."""
    return max(pending.attempt - 1, 1 if pending.HasField("last_failure") else 0)


def _system_info_request() -> Any:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    return GetSystemInfoRequest()


__all__ = ["Gateway", "Started", "TemporalUnavailable", "Withdrawal"]

"""The durable assessment of one candidate in one trigger stage.

``AssessmentWorkflow`` (one per account, opportunity and trigger stage) re-reads
the opportunity, chooses the tests and starts one ``InvitationWorkflow`` child
per test. Each child sends its Py invitation, waits for the result (signal) with
reminders and an expiry, and writes the outcome to Lever. Decisions come from
``workflows.decisions``; every outside call is an activity (``workflows.calls``).

Promises kept here (docs/architecture.md, "Durability"):

- Once an invitation is live at Py, the outcome is written to Lever whatever
  Lever answers meanwhile (401 while a key is rotated, 429, 5xx, timeouts):
  each write is retried for ``expire_after`` + 7 days. Only a candidate gone
  from Lever (404) ends it without them. The cosmetic tags (``Py - Invited``,
  ``Py - Started``) are written in the background and never end an invitation.
- No path ends an invitation workflow without a result and leaves its
  invitation live at Py: withdrawal, expiry, operator cancel and a vanished
  candidate all cancel it at Py first.
- Cancel (Web UI, ``temporal workflow cancel``, ``cli.py cancel``) cancels at
  Py, clears the in-progress tags, adds no verdict and ends the execution
  cancelled; a result that Py already holds is applied instead. Children are
  cancelled with their parent.

Executions started before these promises run the shipped shape
(``workflows.shipped_v1``), chosen by ``workflow.patched(DURABLE)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)
from temporalio.exceptions import TimeoutError as TemporalTimeout

with workflow.unsafe.imports_passed_through():
    # Not "from workflows import decisions": a submodule named in a fromlist bypasses
    # the sandbox's import hook, so decisions.py was executed again for every workflow
    # instance (twice the CPU and memory of creating one; see docs/benchmarks.md).
    import workflows.decisions as decisions
    from activities.py import PY_CONTRACT_ERROR, CreateInvitation, FindTests, PyActivities
    from activities.temporal_ops import TemporalActivities
    from pylever import search_attributes as sa
    from pylever.models import (
        AssessmentInput,
        AssessmentResult,
        Candidate,
        ChosenTest,
        InvitationInput,
        InvitationRecord,
        InvitationResult,
        PyEvent,
        Status,
        Verdict,
        Withdrawal,
    )
    from workflows.calls import LeverOps, durable_horizon, py_call
    from workflows.shipped_v1 import AssessmentV1, InvitationV1

# The patch that introduced the durable shape (issue 10). Executions without its
# marker continue in workflows.shipped_v1.
DURABLE = "durable-invitation"
_FINISHED_AT_PY = ("completed", "expired", "cancelled")  # nothing more will happen at Py
_LeverOps = LeverOps  # the name the replay tests' variants use

# Why an invitation stops waiting without a result from Py.
LEVER_GONE = "lever_gone"  # Lever answers 404 for the opportunity: the candidate is gone
PY_CONTRACT = "py_contract"  # Py sent a record that breaks its contract
LEVER_UNREACHABLE = "lever_unreachable"  # a write still failed after the durable horizon


def _error_message(exc: BaseException) -> str:
    cause = exc.cause if isinstance(exc, ActivityError | ChildWorkflowError) and exc.cause else exc
    return str(cause) or type(cause).__name__


def _failure_type(exc: BaseException) -> str | None:
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    return cause.type if isinstance(cause, ApplicationError) else None


def _halt_reason(exc: ActivityError) -> str | None:
    """What a final failure of a durable Lever write means for the invitation."""
    if _failure_type(exc) == "NotFoundError":
        return LEVER_GONE
    if isinstance(exc.cause, TemporalTimeout):
        return LEVER_UNREACHABLE
    return None  # Lever refused this one request for good (400): the others still go


@workflow.defn
class InvitationWorkflow(InvitationV1):
    """One Py invitation: send (or adopt), tag, wait (reminders, expiry), write the outcome."""

    @workflow.init
    def __init__(self, input: InvitationInput) -> None:
        self._input = input
        self._final: InvitationRecord | None = None  # completed / expired / cancelled
        self._started_seen = False
        self._started_tagged = False
        self._withdrawal: Withdrawal | None = None
        self._status = Status.RESOLVING
        self._invitation_id: str | None = None
        self._verdict: Verdict | None = None
        self._score: float | None = None
        self._error: str | None = None
        self._sent_at: datetime | None = None
        self._next_check: datetime | None = None
        self._early_events: list[PyEvent] = []  # callbacks before the invitation id was known
        self._halt: str | None = None  # LEVER_GONE / PY_CONTRACT / LEVER_UNREACHABLE
        self._cosmetic: asyncio.Task[None] | None = None  # the last queued cosmetic tag write
        self._creating: asyncio.Task[InvitationRecord] | None = None
        self._adopting: str | None = None  # an earlier run's invitation, while Py is asked
        self._outcome: asyncio.Task[None] | None = None  # writing the outcome

    # --- signals and queries -------------------------------------------------

    @workflow.signal(name="py_event")
    def py_event(self, event: PyEvent) -> None:
        # The reference (this workflow's id) outlives a run: after a re-entry a late
        # callback about the previous run's invitation reaches this run. Until the
        # invitation's id is known, keep events; then ignore those about another one.
        if self._invitation_id is None:
            self._early_events.append(event)
            return
        if event.invitation.id != self._invitation_id:
            workflow.logger.info("ignored a callback about another invitation")
            return
        if event.event == "invitation.started":
            self._started_seen = True
        elif self._final is None:
            self._final = event.invitation

    @workflow.signal(name="withdraw")
    def withdraw(self, withdrawal: Withdrawal) -> None:
        if self._withdrawal is None:
            self._withdrawal = withdrawal

    @workflow.query(name="status")
    def status(self) -> dict[str, object]:
        return self._details()

    # --- run -------------------------------------------------------------------

    @workflow.run
    async def run(self, input: InvitationInput) -> InvitationResult:
        if not workflow.patched(DURABLE):
            return await self._run_v1(input)
        self._horizon = durable_horizon(input.settings)
        self._lever = LeverOps(input.account_id, input.opportunity_id).durable(self._horizon)
        workflow.upsert_search_attributes(
            [
                sa.LEVER_ACCOUNT.value_set(input.account_id),
                sa.LEVER_OPPORTUNITY_ID.value_set(input.opportunity_id),
                sa.LEVER_STAGE_ID.value_set(input.stage_id),
                sa.PY_TEST.value_set(input.test.name),
            ]
        )
        self._set_status(Status.RESOLVING)
        try:
            await self._follow(input)
        except BaseException as exc:
            if not is_cancelled_exception(exc):
                raise
            if await self._cancelled():
                raise CancelledError("cancelled by an operator") from None
        return self._result()

    async def _follow(self, input: InvitationInput) -> None:
        """Send (or adopt) the invitation, wait for its outcome, write it to Lever."""
        if self._withdrawal is not None:
            self._set_status(Status.CANCELLED)
            return
        invitation = await self._open_invitation(input)
        if invitation is None:
            return  # Py refused it: ended ``error``, tagged
        self._invitation_id = invitation.id
        for event in self._early_events:
            self.py_event(event)
        self._early_events.clear()
        if invitation.status in _FINISHED_AT_PY:
            # The same idempotency key again (a re-run), or an adopted one: Py holds the outcome.
            self._take(invitation)
        elif self._withdrawal is None:
            self._tag_in_background(decisions.TagChange(add=(decisions.TAG_INVITED,)))
            self._set_status(Status.INVITED)
            if invitation.status == "started":
                self._started_seen = True
            await self._wait_for_outcome(invitation.id)
        # Shielded: a cancel that arrives while the outcome is written waits for it.
        self._outcome = asyncio.create_task(self._apply_outcome())
        await asyncio.shield(self._outcome)

    async def _open_invitation(self, input: InvitationInput) -> InvitationRecord | None:
        """The invitation this workflow follows: an earlier run's still open one, or a new one."""
        if input.adopt_invitation_id is not None:
            self._adopting = input.adopt_invitation_id  # a cancel meanwhile cancels it at Py
            adopted = await self._adopt(input.adopt_invitation_id)
            self._adopting = None
            if adopted is not None:
                return adopted
        request = CreateInvitation(
            reference=workflow.info().workflow_id,
            test_id=input.test.id,
            candidate_name=input.candidate_name,
            candidate_email=input.candidate_email,
            idempotency_key=decisions.idempotency_key(
                workflow.info().workflow_id, input.stage_entry
            ),
        )
        # Shielded: an operator cancel while Py creates it must still learn its id to cancel it.
        self._creating = asyncio.create_task(py_call(PyActivities.create_invitation, request))
        try:
            invitation: InvitationRecord = await asyncio.shield(self._creating)
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            await self._refused(exc)
            return None
        # Py's idempotency key may have returned an invitation it created earlier: keep its clock.
        now = workflow.now()
        created = invitation.created_at
        self._sent_at = created if created is not None and created <= now else now
        return invitation

    async def _adopt(self, invitation_id: str) -> InvitationRecord | None:
        """An earlier run's invitation, if Py still has it open or completed (else None)."""
        try:
            previous: InvitationRecord = await py_call(
                PyActivities.get_invitation, invitation_id, self._horizon
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.info("earlier invitation not adoptable: %s", _error_message(exc))
            return None
        if previous.status not in ("invited", "started", "completed"):
            return None  # expired or cancelled at Py: a new one is due
        now = workflow.now()
        created = previous.created_at
        self._sent_at = created if created is not None and created <= now else now
        workflow.logger.info("adopted the earlier run's invitation (%s)", previous.status)
        return previous

    async def _refused(self, exc: ActivityError) -> None:
        """Py refused the invitation for good: tag it and end ``error`` (nothing is live)."""
        self._error = _error_message(exc)
        workflow.logger.warning("Py refused the invitation: %s", self._error)
        try:
            await LeverOps(self._input.account_id, self._input.opportunity_id).change_tags(
                decisions.TagChange(add=(decisions.TAG_INVITE_FAILED,))
            )
        except ActivityError as tag_exc:
            if is_cancelled_exception(tag_exc):
                raise
            self._error += f"; cannot tag it in Lever: {_error_message(tag_exc)}"
        self._set_status(Status.ERROR)

    # --- waiting ---------------------------------------------------------------

    async def _wait_for_outcome(self, invitation_id: str) -> None:
        """Until a result, a withdrawal, a halt or the expiry; Py is asked at each checkpoint."""
        assert self._sent_at is not None
        settings = self._input.settings
        for checkpoint in decisions.checkpoints(
            settings.reminders_seconds, settings.expire_after_seconds
        ):
            due = self._sent_at + timedelta(seconds=checkpoint.at_seconds)
            self._next_check = due
            self._set_status(self._status)  # refresh the details with the next check
            if await self._wait_until(due):
                return
            if await self._check_at_py(invitation_id, checkpoint.kind):
                return

    async def _wait_until(self, due: datetime) -> bool:
        """Wait for the due time, tagging ``Py - Started`` on the way. True: settled first."""
        while not self._settled():
            remaining = due - workflow.now()
            if remaining <= timedelta(0):
                return False
            try:
                await workflow.wait_condition(
                    lambda: self._settled() or self._started_pending(), timeout=remaining
                )
            except TimeoutError:
                return self._settled()
            if self._started_pending():
                self._tag_started()
        return True

    async def _check_at_py(self, invitation_id: str, kind: str) -> bool:
        """A checkpoint: a lost result is taken from Py; else remind, or expire. True: settled."""
        current = await self._py(PyActivities.get_invitation, invitation_id)
        if current is not None and current.status in _FINISHED_AT_PY:
            self._take(current)
            return True
        if self._settled():  # a callback, withdrawal or halt arrived while we asked
            return True
        if kind == "reminder":
            if (current is not None and current.status == "started") or self._started_seen:
                self._started_seen = True  # its callback may have been lost: tag it, no reminder
                if self._started_pending():
                    self._tag_started()
            elif await self._py(PyActivities.remind, invitation_id) is False:
                # Py refused (409): the invitation finished between the two calls.
                current = await self._py(PyActivities.get_invitation, invitation_id)
                if current is not None and current.status in _FINISHED_AT_PY:
                    self._take(current)
                    return True
            return self._settled()
        # Expiry: cancel at Py (a result that arrived meanwhile wins, see _take).
        self._take(await self._cancel_at_py(invitation_id, expiring=True))
        return True

    async def _py(self, method: Callable[..., Any], arg: Any) -> Any:
        """A Py call of a live invitation (durable). None when Py refuses it for good; a record
        that breaks Py's contract halts the invitation."""
        try:
            return await py_call(method, arg, self._horizon)
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            self._error = _error_message(exc)
            workflow.logger.warning("Py call failed for good: %s", self._error)
            if _failure_type(exc) == PY_CONTRACT_ERROR:
                self._halt = PY_CONTRACT
            return None

    async def _cancel_at_py(
        self, invitation_id: str, *, expiring: bool = False
    ) -> InvitationRecord:
        """Cancel at Py. Completed meanwhile (409): the result comes back and wins."""
        at_py: InvitationRecord | None = await self._py(PyActivities.cancel, invitation_id)
        if at_py is not None and at_py.status == "completed":
            return at_py
        if expiring:
            return (
                InvitationRecord(id=invitation_id, status="expired")
                if at_py is None
                else at_py.model_copy(update={"status": "expired"})
            )
        return at_py or InvitationRecord(id=invitation_id, status="cancelled")

    def _settled(self) -> bool:
        return self._final is not None or self._withdrawal is not None or self._halt is not None

    def _started_pending(self) -> bool:
        return self._started_seen and not self._started_tagged and self._final is None

    def _tag_started(self) -> None:
        self._started_tagged = True
        self._tag_in_background(decisions.TagChange(add=(decisions.TAG_STARTED,)))
        if self._final is None:
            self._set_status(Status.STARTED)

    def _take(self, record: InvitationRecord) -> None:
        if self._final is None:
            self._final = record

    # --- Lever writes ------------------------------------------------------------

    def _tag_in_background(self, change: decisions.TagChange) -> None:
        """A cosmetic tag: written in order after the previous one, never ending the invitation
        (a 404 halts it: the candidate is gone)."""
        previous = self._cosmetic

        async def write() -> None:
            if previous is not None:
                await previous
            if self._halt is not None:
                return
            try:
                await self._lever.change_tags(change)
            except ActivityError as exc:
                if is_cancelled_exception(exc):
                    return
                self._error = f"cannot tag {', '.join(change.add)}: {_error_message(exc)}"
                workflow.logger.warning("%s", self._error)
                if _failure_type(exc) == "NotFoundError":
                    self._halt = LEVER_GONE

        self._cosmetic = asyncio.create_task(write())

    async def _write(self, what: str, write: Callable[[], Awaitable[None]]) -> bool:
        """One durable write of the outcome. False: stop writing (candidate gone, or Lever
        still failing after the horizon); a request Lever refuses for good is recorded and
        the rest of the outcome still goes."""
        if self._halt in (LEVER_GONE, LEVER_UNREACHABLE):
            return False
        try:
            await write()
            return True
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            self._error = f"cannot {what}: {_error_message(exc)}"
            workflow.logger.warning("%s", self._error)
            halt = _halt_reason(exc)
            if halt is not None:
                self._halt = halt
                return False
            return True

    async def _apply_outcome(self) -> None:
        """Write the outcome exactly once, after the cosmetic tags queued before it."""
        if self._cosmetic is not None:
            await self._after_cosmetic(self._cosmetic)
        final = self._final
        if self._halt == PY_CONTRACT and (final is None or final.status != "completed"):
            await self._clear_in_progress()
            self._set_status(Status.ERROR)
        elif final is not None and final.status == "completed":
            await self._apply_result(final)
        elif self._withdrawal is not None or self._halt is not None or final is None:
            await self._stop_without_result()
        elif final.status == "expired":
            alone = self._input.tests_in_assessment <= 1
            await self._write(
                "tag the expiry",
                lambda: self._lever.change_tags(decisions.tags_on_expiry(last=alone)),
            )
            self._set_status(Status.EXPIRED)
        else:  # cancelled at Py by someone else
            await self._clear_in_progress()
            self._set_status(Status.CANCELLED)

    async def _after_cosmetic(self, cosmetic: asyncio.Task[None]) -> None:
        """Wait for the queued cosmetic tags; an account removal gives them up instead
        (its Lever key may be revoked, its Lever queue unserved)."""
        withdrawal = self._withdrawal
        if withdrawal is None or not decisions.withdrawal_stops_lever_calls(withdrawal.reason):
            await cosmetic
            return
        cosmetic.cancel()
        await workflow.wait([cosmetic])

    async def _apply_result(self, final: InvitationRecord) -> None:
        """The verdict tag, the report link and the stage move (records from Py are validated
        where they enter, ``activities.py``; a bad one never gets here)."""
        settings = self._input.settings
        score = final.score if final.score is not None else 0.0
        verdict = decisions.verdict_for(score, settings.pass_threshold, settings.fail_threshold)
        self._verdict, self._score = verdict, final.score
        if self._halt == LEVER_GONE or (
            self._withdrawal is not None
            and not decisions.withdrawal_writes_lever(self._withdrawal.reason)
        ):
            self._set_status(Status.COMPLETED)  # nothing to write to a candidate who is gone
            return
        alone = self._input.tests_in_assessment <= 1
        await self._write(
            "tag the verdict",
            lambda: self._lever.change_tags(decisions.tags_on_result(verdict, last=alone)),
        )
        if final.report_url:
            await self._write(
                "add the report link", lambda: self._lever.add_link(final.report_url or "")
            )
        self._set_status(Status.COMPLETED)
        target = decisions.move_target(verdict, settings) if alone else None
        if target and self._withdrawal is None:
            await self._write(
                f"move the candidate to {target!r}", lambda: self._lever.move_to_stage(target)
            )
            self._set_status(Status.COMPLETED)  # the last error (if any) into the details

    async def _stop_without_result(self) -> None:
        """Withdrawn (archived, deleted), or the candidate is gone: cancel at Py first; a result
        Py already holds is applied (no stage move); archived: clear the in-progress tags."""
        if self._invitation_id is not None:
            at_py = await self._cancel_at_py(self._invitation_id)
            if at_py.status == "completed":
                self._final = at_py
                await self._apply_result(at_py)
                return
        if self._withdrawal is not None:
            change = decisions.tags_on_withdrawal(self._withdrawal.reason)
            if change.remove:
                await self._write(
                    "clear the in-progress tags", lambda: self._lever.change_tags(change)
                )
        self._set_status(Status.CANCELLED)

    async def _clear_in_progress(self) -> None:
        if self._input.tests_in_assessment <= 1:
            await self._write(
                "clear the in-progress tags",
                lambda: self._lever.change_tags(
                    decisions.TagChange(remove=decisions.IN_PROGRESS_TAGS)
                ),
            )

    async def _cancelled(self) -> bool:
        """An operator cancelled this workflow (or its parent). Cancel at Py, clear the
        in-progress tags, no verdict. True: end cancelled; False: Py already held the result,
        which has been applied."""
        workflow.logger.info("cancel requested: cancelling the invitation at Py")
        if self._outcome is not None:
            await self._outcome  # the outcome was being written: it stands
            return False
        if self._invitation_id is None and self._adopting is not None:
            self._invitation_id = self._adopting  # Py was being asked about it: cancel it
        if self._invitation_id is None and self._creating is not None:
            try:
                self._invitation_id = (await self._creating).id  # it may be live: learn its id
            except ActivityError:
                pass  # Py refused it: nothing is live
        if self._invitation_id is not None and self._final is None:
            self._take(await self._cancel_at_py(self._invitation_id))
        if self._cosmetic is not None:
            await self._cosmetic
        if self._final is not None and self._final.status == "completed":
            await self._apply_result(self._final)
            return False
        if self._invitation_id is not None:
            await self._clear_in_progress()
        self._error = self._error or "cancelled by an operator"
        self._set_status(Status.CANCELLED)
        return True

    # --- visibility --------------------------------------------------------------

    def _set_status(self, status: Status) -> None:
        self._status = status
        updates: list[SearchAttributeUpdate[Any]] = [sa.PY_STATUS.value_set(status.value)]
        if self._verdict is not None:
            updates.append(sa.PY_VERDICT.value_set(self._verdict.value))
        if self._score is not None:
            updates.append(sa.PY_SCORE.value_set(self._score))
        workflow.upsert_search_attributes(updates)
        workflow.upsert_memo({"assessment": self._details()})
        workflow.set_current_details(self._details_text())

    def _details(self) -> dict[str, object]:
        return {
            "test": self._input.test.name,
            "test_id": self._input.test.id,
            "status": self._status.value,
            "invitation_id": self._invitation_id,
            "verdict": self._verdict.value if self._verdict else None,
            "score": self._score,
            "sent_at": self._sent_at.isoformat() if self._sent_at else None,
            "next_check_at": self._next_check.isoformat()
            if self._next_check and self._status in (Status.INVITED, Status.STARTED)
            else None,
            "updated_at": workflow.now().isoformat(),
            "last_error": self._error,
        }

    def _details_text(self) -> str:
        lines = [
            f"**{decisions.summary(self._input.candidate_name, self._input.test.name, self._status, self._verdict)}**",
            f"- invitation: {self._invitation_id or '-'}",
        ]
        if self._score is not None:
            lines.append(f"- score: {self._score:g}")
        if self._next_check and self._status in (Status.INVITED, Status.STARTED):
            lines.append(f"- next check: {self._next_check.isoformat()}")
        if self._error:
            lines.append(f"- last error: {self._error}")
        return "\n".join(lines)

    def _result(self) -> InvitationResult:
        return InvitationResult(
            test=self._input.test,
            status=self._status,
            invitation_id=self._invitation_id,
            verdict=self._verdict,
            score=self._score,
            report_url=self._final.report_url if self._final else None,
            error=self._error,
        )


@workflow.defn
class AssessmentWorkflow(AssessmentV1):
    """One candidate in one trigger stage: check, choose tests, one child per test."""

    @workflow.init
    def __init__(self, input: AssessmentInput) -> None:
        self._input = input
        self._withdrawal: Withdrawal | None = None
        self._children: list[workflow.ChildWorkflowHandle[Any, InvitationResult]] = []
        self._started: list[ChosenTest] = []
        self._told: set[str] = set()  # children already sent the withdrawal
        self._status = Status.RESOLVING
        self._reason: str | None = None

    @workflow.signal(name="withdraw")
    async def withdraw(self, withdrawal: Withdrawal) -> None:
        if self._withdrawal is not None:
            return
        self._withdrawal = withdrawal
        await self._forward_withdrawal()

    async def _forward_withdrawal(self) -> None:
        """Tell every started child, once. ``run`` calls it too after each child starts:
        a withdrawal that arrives while a child's start is pending is not lost."""
        if self._withdrawal is None:
            return
        for child in list(self._children):
            if child.id in self._told:
                continue
            self._told.add(child.id)
            try:
                await child.signal(InvitationWorkflow.withdraw, self._withdrawal)
            except Exception as exc:  # the child has finished already
                if is_cancelled_exception(exc):
                    raise

    @workflow.query(name="status")
    def status(self) -> dict[str, object]:
        return {"status": self._status.value, "reason": self._reason}

    @workflow.run
    async def run(self, input: AssessmentInput) -> AssessmentResult:
        if not workflow.patched(DURABLE):
            return await self._run_v1(input)
        workflow.upsert_search_attributes(
            [
                sa.LEVER_ACCOUNT.value_set(input.account_id),
                sa.LEVER_OPPORTUNITY_ID.value_set(input.opportunity_id),
                sa.LEVER_STAGE_ID.value_set(input.stage_id),
            ]
        )
        self._set_status(Status.RESOLVING)
        try:
            result = await self._assess(input)
        except BaseException as exc:
            if not is_cancelled_exception(exc):
                raise
            result = await self._cancelled()
            await workflow.wait_condition(workflow.all_handlers_finished)
            if result.status != Status.COMPLETED:
                raise CancelledError("cancelled by an operator") from None
            # A result Py already held was applied: the assessment ends with it.
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    async def _assess(self, input: AssessmentInput) -> AssessmentResult:
        lever = LeverOps(input.account_id, input.opportunity_id)
        try:
            candidate = await lever.read_candidate(input.stage_id)
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            if (removed := self._account_removed()) is not None:
                return removed
            # Gone from Lever (404), or Lever still failing after a day: nothing is sent.
            return self._end(Status.ERROR, f"cannot read the opportunity: {_error_message(exc)}")
        if not candidate.entered_stage:
            return self._end(Status.NOT_SENT, "the opportunity never entered this stage")
        if candidate.archived:
            return self._end(Status.NOT_SENT, "the opportunity is archived")
        if self._withdrawal is not None:
            return self._end(
                Status.CANCELLED, decisions.withdrawal_reason_text(self._withdrawal.reason)
            )

        settings = input.settings
        names = decisions.names_to_look_up(candidate.tags, settings.default_test)
        try:
            py_tests: dict[str, str] = (
                await py_call(PyActivities.find_tests, FindTests(names=tuple(names)))
                if names
                else {}
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            if (removed := self._account_removed()) is not None:
                return removed
            return self._end(Status.ERROR, f"cannot list Py's tests: {_error_message(exc)}")
        if (removed := self._account_removed()) is not None:
            return removed  # nothing more goes to Lever (no "No Test" / "No Email" tag)
        choice = decisions.choose_tests(candidate.tags, py_tests, settings.default_test)
        if not choice.tests:
            return await self._end_tagged(
                lever, decisions.TAG_NO_TEST, Status.NOT_SENT, choice.reason
            )
        if not candidate.email:
            return await self._end_tagged(
                lever, decisions.TAG_NO_EMAIL, Status.ERROR, "the candidate has no email address"
            )
        if self._withdrawal is not None:
            return self._end(
                Status.CANCELLED, decisions.withdrawal_reason_text(self._withdrawal.reason)
            )

        stale = decisions.stale_tags(candidate.tags)
        if stale:
            # A re-run after "No Test Configured", "No Email", ...: that tag is no longer true.
            try:
                await lever.change_tags(decisions.TagChange(remove=stale))
            except ActivityError as exc:
                if is_cancelled_exception(exc):
                    raise
                return self._end(Status.ERROR, f"cannot update Lever: {_error_message(exc)}")

        parent_id = workflow.info().workflow_id
        child_ids = {t.id: decisions.invitation_workflow_id(parent_id, t.id) for t in choice.tests}
        earlier = await self._earlier_invitations(list(child_ids.values())) if input.rerun else {}
        busy: list[InvitationResult] = []  # tests whose earlier invitation workflow still runs
        for test in choice.tests:
            if self._withdrawal is not None:
                break  # withdrawn while starting: start no more children
            try:
                handle = await self._start_child(input, candidate, test, choice, child_ids, earlier)
            except WorkflowAlreadyStartedError:
                busy.append(
                    InvitationResult(
                        test=test,
                        status=Status.ERROR,
                        error="the earlier run's invitation workflow is still finishing "
                        "(cancelling at Py); move the candidate out and back in later",
                    )
                )
                continue
            self._children.append(handle)
            self._started.append(test)
            await self._forward_withdrawal()
        if not self._started:
            if busy:
                return self._end(Status.ERROR, busy[0].error, tuple(busy))
            assert self._withdrawal is not None
            return self._end(
                Status.CANCELLED, decisions.withdrawal_reason_text(self._withdrawal.reason)
            )
        self._set_status(Status.INVITED)
        results = [*await self._child_results(), *busy]
        reason = decisions.reason_after_withdrawn_children(
            self._withdrawal.reason if self._withdrawal is not None else None
        )
        if len(choice.tests) > 1 and self._withdrawal is None:
            reason = await self._conclude_several(lever, results)
        return self._end(decisions.overall_status(results), reason, tuple(results))

    def _account_removed(self) -> AssessmentResult | None:
        """Ended ``cancelled`` when the account was removed from the configuration (a
        withdrawal that writes nothing more to Lever); None otherwise."""
        withdrawal = self._withdrawal
        if withdrawal is None or not decisions.withdrawal_stops_lever_calls(withdrawal.reason):
            return None
        return self._end(Status.CANCELLED, decisions.withdrawal_reason_text(withdrawal.reason))

    async def _start_child(
        self,
        input: AssessmentInput,
        candidate: Candidate,
        test: ChosenTest,
        choice: decisions.Choice,
        child_ids: dict[str, str],
        earlier: dict[str, str],
    ) -> workflow.ChildWorkflowHandle[Any, InvitationResult]:
        return await workflow.start_child_workflow(
            InvitationWorkflow.run,
            InvitationInput(
                account_id=input.account_id,
                opportunity_id=input.opportunity_id,
                stage_id=input.stage_id,
                settings=input.settings,
                test=test,
                candidate_name=candidate.name,
                candidate_email=candidate.email or "",  # never empty here: checked in run
                stage_entry=candidate.stage_entries,
                tests_in_assessment=len(choice.tests),
                adopt_invitation_id=earlier.get(child_ids[test.id]),
            ),
            id=child_ids[test.id],
            parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
            static_summary=decisions.summary(candidate.name, test.name, Status.RESOLVING),
        )

    async def _earlier_invitations(self, child_ids: list[str]) -> dict[str, str]:
        """Invitation ids of the earlier run's children (a re-run adopts those still open).

        If Temporal cannot tell within an hour, the children start without: Py's
        idempotency key still returns the invitation of the same entry into the stage.
        """
        try:
            found: dict[str, str] = await workflow.execute_activity_method(
                TemporalActivities.previous_invitations,
                child_ids,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=timedelta(hours=1),
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.warning("earlier invitations unknown: %s", _error_message(exc))
            return {}
        return found

    async def _child_results(self) -> list[InvitationResult]:
        outcomes = await asyncio.gather(*self._children, return_exceptions=True)
        results = []
        for test, outcome in zip(self._started, outcomes, strict=True):
            if isinstance(outcome, InvitationResult):
                results.append(outcome)
            elif isinstance(outcome, BaseException) and is_cancelled_exception(outcome):
                results.append(InvitationResult(test=test, status=Status.CANCELLED))
            else:
                results.append(
                    InvitationResult(test=test, status=Status.ERROR, error=_error_message(outcome))
                )
        return results

    async def _cancelled(self) -> AssessmentResult:
        """An operator cancelled the assessment. Its children were asked to cancel (each
        cancels its invitation at Py and clears its tags); wait for them, then clear the
        tags that several tests share. ``completed`` when a child applied a result Py
        already held (the invitation had been completed): results are never dropped."""
        for child in self._children:
            if not child.done():
                child.cancel()  # not awaited when the cancel came (a gather forwards it itself)
        results = await self._child_results() if self._children else []
        reason = "cancelled by an operator"
        if len(results) > 1:
            lever = LeverOps(self._input.account_id, self._input.opportunity_id).durable(
                durable_horizon(self._input.settings)
            )
            try:
                await lever.change_tags(decisions.TagChange(remove=decisions.IN_PROGRESS_TAGS))
            except ActivityError as exc:
                reason += f"; cannot update Lever: {_error_message(exc)}"
        status = Status.CANCELLED
        if any(r.status == Status.COMPLETED for r in results):
            status = decisions.overall_status(results)
            reason += "; the results Py already held were applied"
        return self._end(status, reason, tuple(results))

    async def _conclude_several(
        self, lever: LeverOps, results: list[InvitationResult]
    ) -> str | None:
        """Several tests: once all are done, clear the in-progress tags and move the candidate
        (durable writes: the results are in)."""
        durable = lever.durable(durable_horizon(self._input.settings))
        problems = []
        try:
            await durable.change_tags(decisions.TagChange(remove=decisions.IN_PROGRESS_TAGS))
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            problems.append(f"cannot update Lever: {_error_message(exc)}")
        target = decisions.combined_move_target([r.verdict for r in results], self._input.settings)
        if target and not problems:
            try:
                await durable.move_to_stage(target)
            except ActivityError as exc:
                if is_cancelled_exception(exc):
                    raise
                problems.append(f"cannot move the candidate: {_error_message(exc)}")
        return "; ".join(problems) or None

    async def _end_tagged(
        self, lever: LeverOps, tag: str, status: Status, reason: str | None
    ) -> AssessmentResult:
        """End without an invitation, telling the recruiter why with a tag."""
        try:
            await lever.change_tags(decisions.TagChange(add=(tag,)))
        except ActivityError as exc:  # the candidate is gone, or Lever failed for a day
            if is_cancelled_exception(exc):
                raise
            reason = f"{reason}; cannot tag {tag!r} in Lever: {_error_message(exc)}"
        return self._end(status, reason)

    def _set_status(self, status: Status) -> None:
        self._status = status
        workflow.upsert_search_attributes([sa.PY_STATUS.value_set(status.value)])
        workflow.upsert_memo({"assessment": {"status": status.value, "reason": self._reason}})

    def _end(
        self,
        status: Status,
        reason: str | None,
        invitations: tuple[InvitationResult, ...] = (),
    ) -> AssessmentResult:
        self._reason = reason
        self._set_status(status)
        if reason:
            workflow.logger.info("assessment ended %s: %s", status.value, reason)
        return AssessmentResult(status=status, reason=reason, invitations=invitations)

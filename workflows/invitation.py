"""One Py invitation of one candidate: send (or adopt), tag, wait, write the outcome.

``InvitationWorkflow`` is a child of ``AssessmentWorkflow`` (``workflows.assessment``),
one per chosen test. It sends the Py invitation (idempotency key = its id), writes
the in-progress tags, waits for the result (a signal) with reminders and an expiry,
and writes the outcome to Lever. Decisions come from ``workflows.decisions``; every
outside call is an activity (``workflows.calls``).

Promises kept here (docs/architecture.md, "Durability"):

- Once an invitation is live at Py, the outcome is written to Lever whatever
  Lever answers meanwhile (401 while a key is rotated, 429, 5xx, timeouts):
  each write is retried for ``expire_after`` + 7 days. Only a candidate gone
  from Lever (404) ends it without them. The cosmetic tags (``Py - Invited``,
  ``Py - Started``) are written in the background and never end an invitation.
- No path ends an invitation workflow without a result and leaves its
  invitation live at Py: withdrawal, expiry, operator cancel and a vanished
  candidate all cancel it at Py first.
- Cancel cancels at Py, clears the in-progress tags, adds no verdict and ends
  the execution cancelled; a result that Py already holds is applied instead.

Executions started before these promises run the shipped shape
(``workflows.shipped_v1``), chosen by ``workflow.patched(DURABLE)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import (
    ActivityError,
    CancelledError,
    is_cancelled_exception,
)
from temporalio.exceptions import TimeoutError as TemporalTimeout

with workflow.unsafe.imports_passed_through():
    # Not "from workflows import decisions": a submodule named in a fromlist bypasses
    # the sandbox's import hook, so decisions.py was executed again for every workflow
    # instance (twice the CPU and memory of creating one; see docs/benchmarks.md).
    import workflows.decisions as decisions
    from pylever.contracts import search_attributes as sa
    from pylever.contracts.activities import Activity, PyActivity
    from pylever.contracts.errors import PY_CONTRACT_ERROR, NotFoundError
    from pylever.contracts.records import (
        CreateInvitation,
        InvitationInput,
        InvitationRecord,
        InvitationResult,
        PyEvent,
        Status,
        Verdict,
        Withdrawal,
    )
    from workflows.calls import LeverOps, durable_horizon, error_message, failure_type, py_call
    from workflows.shipped_v1 import InvitationV1
    from workflows.versions import DURABLE
_FINISHED_AT_PY = ("completed", "expired", "cancelled")  # nothing more will happen at Py

# Why an invitation stops waiting without a result from Py.
LEVER_GONE = "lever_gone"  # Lever answers 404 for the opportunity: the candidate is gone
PY_CONTRACT = "py_contract"  # Py sent a record that breaks its contract
LEVER_UNREACHABLE = "lever_unreachable"  # a write still failed after the durable horizon

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")


def _halt_reason(exc: ActivityError) -> str | None:
    """What a final failure of a durable Lever write means for the invitation."""
    if failure_type(exc) == NotFoundError.__name__:
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
        self._creating = asyncio.create_task(py_call(PyActivity.create_invitation, request))
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
                PyActivity.get_invitation, invitation_id, self._horizon
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.info("earlier invitation not adoptable: %s", error_message(exc))
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
        self._error = error_message(exc)
        workflow.logger.warning("Py refused the invitation: %s", self._error)
        try:
            await LeverOps(self._input.account_id, self._input.opportunity_id).change_tags(
                decisions.TagChange(add=(decisions.TAG_INVITE_FAILED,))
            )
        except ActivityError as tag_exc:
            if is_cancelled_exception(tag_exc):
                raise
            self._error += f"; cannot tag it in Lever: {error_message(tag_exc)}"
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
        current = await self._py(PyActivity.get_invitation, invitation_id)
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
            elif await self._py(PyActivity.remind, invitation_id) is False:
                # Py refused (409): the invitation finished between the two calls.
                current = await self._py(PyActivity.get_invitation, invitation_id)
                if current is not None and current.status in _FINISHED_AT_PY:
                    self._take(current)
                    return True
            return self._settled()
        # Expiry: cancel at Py (a result that arrived meanwhile wins, see _take).
        self._take(await self._cancel_at_py(invitation_id, expiring=True))
        return True

    async def _py(self, stub: Activity[ArgT, ResultT], arg: ArgT) -> ResultT | None:
        """A Py call of a live invitation (durable). None when Py refuses it for good; a record
        that breaks Py's contract halts the invitation."""
        try:
            return await py_call(stub, arg, self._horizon)
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            self._error = error_message(exc)
            workflow.logger.warning("Py call failed for good: %s", self._error)
            if failure_type(exc) == PY_CONTRACT_ERROR:
                self._halt = PY_CONTRACT
            return None

    async def _cancel_at_py(
        self, invitation_id: str, *, expiring: bool = False
    ) -> InvitationRecord:
        """Cancel at Py. Completed meanwhile (409): the result comes back and wins."""
        at_py: InvitationRecord | None = await self._py(PyActivity.cancel, invitation_id)
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
                self._error = f"cannot tag {', '.join(change.add)}: {error_message(exc)}"
                workflow.logger.warning("%s", self._error)
                if failure_type(exc) == "NotFoundError":
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
            self._error = f"cannot {what}: {error_message(exc)}"
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

"""One Py invitation of one candidate: send (or adopt), tag, wait, write the outcome.

``InvitationWorkflow`` is a child of ``AssessmentWorkflow`` (``workflows.assessment``),
one per chosen test. It sends the Py invitation (idempotency key = its id), writes
the in-progress tags, waits for the result (a signal) with reminders and an expiry,
and writes the outcome to Lever. Decisions come from ``workflows.decisions``; every
outside call is an activity (``workflows.calls``).

What it knows is one ``InvitationState``. The wait ends with an ``Outcome``, chosen
once by ``decisions.invitation_outcome`` from that state, which ``_apply`` writes.

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
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, assert_never

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
    from pylever.contracts.commands import Command, CommandKind, CommandOutcome
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
    from workflows.calls import (
        COMMAND_HORIZON,
        SETUP_RETRY,
        START_TO_CLOSE,
        LeverOps,
        call,
        durable_horizon,
        error_message,
        failure_type,
        py_call,
    )
    from workflows.decisions import Halt, Outcome
    from workflows.shipped_v1 import InvitationV1
    from workflows.versions import DURABLE
_FINISHED_AT_PY = ("completed", "expired", "cancelled")  # nothing more will happen at Py
_ENDED = (Status.COMPLETED, Status.EXPIRED, Status.CANCELLED, Status.ERROR)
CANCEL_ANSWER = timedelta(minutes=10)  # a recruiter's Cancel is answered by then at the latest


def _stops_moves(withdrawal: Withdrawal) -> bool:
    return withdrawal.reason != decisions.RECRUITER_CANCELLED


ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")


def _fixed(at: datetime) -> Callable[[], datetime]:
    """A due time no command moves (a reminder's)."""
    return lambda: at


def _halt_reason(exc: ActivityError) -> Halt | None:
    """What a final failure of a durable Lever write means for the invitation."""
    if failure_type(exc) == NotFoundError.__name__:
        return Halt.LEVER_GONE
    if isinstance(exc.cause, TemporalTimeout):
        return Halt.LEVER_UNREACHABLE
    return None  # Lever refused this one request for good (400): the others still go


@dataclass
class InvitationState:
    """What an invitation knows: the signals write it, ``run`` reads it, the query, the
    memo and the result show it, and ``decisions.invitation_outcome`` decides from it."""

    status: Status = Status.RESOLVING
    invitation_id: str | None = None
    adopting: str | None = None  # an earlier run's invitation, while Py is asked about it
    sent_at: datetime | None = None  # reminders and the expiry count from here
    next_check: datetime | None = None
    early_events: list[PyEvent] = field(default_factory=list)  # before the id was known
    started_seen: bool = False  # Py says the candidate started
    started_tagged: bool = False  # "Py - Started" is queued
    final: InvitationRecord | None = None  # completed / expired / cancelled
    withdrawal: Withdrawal | None = None
    halt: Halt | None = None
    verdict: Verdict | None = None
    score: float | None = None
    error: str | None = None  # the last one
    extended_seconds: int = 0  # recruiters' ``Py - Extend``: added to the expiry
    expiring: bool = False  # the expiry checkpoint has begun
    commands: list[CommandOutcome] = field(default_factory=list)  # recruiters' commands


@workflow.defn
class InvitationWorkflow(InvitationV1):
    """One Py invitation: send (or adopt), tag, wait (reminders, expiry), write the outcome."""

    @workflow.init
    def __init__(self, input: InvitationInput) -> None:
        self._input = input
        self.state = InvitationState()
        self._horizon = durable_horizon(input.settings)
        self._lever = LeverOps(input.account_id, input.opportunity_id).durable(self._horizon)
        # Work in flight, not state: what an operator's cancel waits for or learns from.
        self._cosmetic: asyncio.Task[None] | None = None  # the last queued cosmetic tag write
        self._creating: asyncio.Task[InvitationRecord] | None = None  # Py creating it
        self._writing: asyncio.Task[None] | None = None  # deciding and writing the outcome
        self._v1 = False  # running the shipped shape (no recruiter commands)

    # --- signals and queries -------------------------------------------------

    @workflow.signal(name="py_event")
    def py_event(self, event: PyEvent) -> None:
        # The reference (this workflow's id) outlives a run: after a re-entry a late
        # callback about the previous run's invitation reaches this run. Until the
        # invitation's id is known, keep events; then ignore those about another one.
        state = self.state
        if state.invitation_id is None:
            state.early_events.append(event)
            return
        if event.invitation.id != state.invitation_id:
            workflow.logger.info("ignored a callback about another invitation")
            return
        if event.event == "invitation.started":
            state.started_seen = True
        elif state.final is None:
            state.final = event.invitation

    @workflow.signal(name="withdraw")
    def withdraw(self, withdrawal: Withdrawal) -> None:
        if self.state.withdrawal is None:
            self.state.withdrawal = withdrawal

    @workflow.update(name="command")
    async def command(self, command: Command) -> CommandOutcome:
        """A recruiter's command tag (``workflows/commands.py``): applied now, or refused
        with the reason. Either way it is recorded here (history, memo, details)."""
        state = self.state
        refusal = (
            "this invitation started before recruiter commands existed"
            if self._v1
            else decisions.invitation_command_refusal(
                command.kind,
                state.status,
                invitation_id=state.invitation_id,
                settled=self._settled() or self._writing is not None,
                expiring=state.expiring,
            )
        )
        if refusal is not None:
            return self._record(command, False, refusal)
        assert state.invitation_id is not None
        match command.kind:
            case CommandKind.RESEND:
                return await self._resend(command, state.invitation_id)
            case CommandKind.EXTEND:
                state.extended_seconds += command.extend_by_seconds
                expiry = self._expiry()
                return self._record(command, True, f"expiry moved to {expiry.isoformat()}")
            case CommandKind.CANCEL:
                return await self._recruiter_cancel(command)
            case _:  # a retake goes to a finished assessment, never here (refused above)
                raise AssertionError(command.kind)

    @workflow.query(name="status")
    def status(self) -> dict[str, object]:
        return self._details()

    # --- run -------------------------------------------------------------------

    @workflow.run
    async def run(self, input: InvitationInput) -> InvitationResult:
        if not workflow.patched(DURABLE):
            self._v1 = True
            return await self._run_v1(input)
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
        await workflow.wait_condition(workflow.all_handlers_finished)  # a command answering
        return self._result()

    async def _follow(self, input: InvitationInput) -> None:
        """Send (or adopt) the invitation, wait for its outcome, write it to Lever."""
        state = self.state
        if state.withdrawal is not None:
            self._set_status(Status.CANCELLED)
            return
        invitation = await self._open_invitation(input)
        if invitation is None:
            return  # Py refused it: ended ``error``, tagged
        state.invitation_id = invitation.id
        for event in state.early_events:
            self.py_event(event)
        state.early_events.clear()
        if invitation.status in _FINISHED_AT_PY:
            # The same idempotency key again (a re-run), or an adopted one: Py holds the outcome.
            self._take(invitation)
        elif state.withdrawal is None:
            self._tag_in_background(decisions.TagChange(add=(decisions.TAG_INVITED,)))
            self._set_status(Status.INVITED)
            if invitation.status == "started":
                state.started_seen = True
            await self._wait(invitation.id)
        # Shielded: a cancel that arrives while the outcome is decided or written waits for it.
        self._writing = asyncio.create_task(self._conclude())
        await asyncio.shield(self._writing)

    async def _conclude(self) -> None:
        """Decide the outcome, once, and write it."""
        await self._apply(await self._outcome())

    async def _open_invitation(self, input: InvitationInput) -> InvitationRecord | None:
        """The invitation this workflow follows: an earlier run's still open one, or a new one."""
        state = self.state
        if input.adopt_invitation_id is not None:
            state.adopting = input.adopt_invitation_id  # a cancel meanwhile cancels it at Py
            adopted = await self._adopt(input.adopt_invitation_id)
            state.adopting = None
            if adopted is not None:
                return adopted
        request = CreateInvitation(
            reference=workflow.info().workflow_id,
            test_id=input.test.id,
            candidate_name=input.candidate_name,
            candidate_email=input.candidate_email,
            idempotency_key=decisions.idempotency_key(
                workflow.info().workflow_id, input.stage_entry, input.retake_id
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
        state.sent_at = created if created is not None and created <= now else now
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
        self.state.sent_at = created if created is not None and created <= now else now
        workflow.logger.info("adopted the earlier run's invitation (%s)", previous.status)
        return previous

    async def _refused(self, exc: ActivityError) -> None:
        """Py refused the invitation for good: tag it and end ``error`` (nothing is live)."""
        state = self.state
        state.error = error_message(exc)
        workflow.logger.warning("Py refused the invitation: %s", state.error)
        try:
            await LeverOps(self._input.account_id, self._input.opportunity_id).change_tags(
                decisions.TagChange(add=(decisions.TAG_INVITE_FAILED,))
            )
        except ActivityError as tag_exc:
            if is_cancelled_exception(tag_exc):
                raise
            state.error += f"; cannot tag it in Lever: {error_message(tag_exc)}"
        self._set_status(Status.ERROR)

    # --- waiting ---------------------------------------------------------------

    async def _wait(self, invitation_id: str) -> None:
        """Until a result, a withdrawal, a halt or the expiry; Py is asked at each checkpoint."""
        state = self.state
        assert state.sent_at is not None
        settings = self._input.settings
        for checkpoint in decisions.checkpoints(
            settings.reminders_seconds, settings.expire_after_seconds
        ):
            due: Callable[[], datetime] = (
                self._expiry  # a recruiter's Extend moves it while we wait
                if checkpoint.kind == "expiry"
                else _fixed(state.sent_at + timedelta(seconds=checkpoint.at_seconds))
            )
            state.next_check = due()
            self._set_status(state.status)  # refresh the details with the next check
            if await self._wait_until(due):
                return
            if await self._check_at_py(invitation_id, checkpoint.kind):
                return

    def _wake(self, extended: int) -> bool:
        """What ends a wait early: settled, a start to tag, an Extend since ``extended``."""
        return self._settled() or self._started_pending() or self.state.extended_seconds != extended

    def _expiry(self) -> datetime:
        """When the invitation expires: ``expire_after`` after it was sent, plus extensions."""
        state = self.state
        assert state.sent_at is not None
        seconds = self._input.settings.expire_after_seconds + state.extended_seconds
        return state.sent_at + timedelta(seconds=seconds)

    async def _wait_until(self, due: Callable[[], datetime]) -> bool:
        """Wait for the due time, tagging ``Py - Started`` on the way. True: settled first."""
        state = self.state
        while not self._settled():
            extended = state.extended_seconds
            remaining = due() - workflow.now()
            if remaining <= timedelta(0):
                return False
            try:
                await workflow.wait_condition(
                    functools.partial(self._wake, extended), timeout=remaining
                )
            except TimeoutError:
                if state.extended_seconds != extended:
                    continue  # an Extend in the same task as the timer: the new due time
                return self._settled()
            if self._started_pending():
                self._tag_started()
            if state.extended_seconds != extended and state.next_check != due():
                state.next_check = due()  # an Extend moved the expiry we wait for
                self._set_status(state.status)
        return True

    async def _check_at_py(self, invitation_id: str, kind: str) -> bool:
        """A checkpoint: a lost result is taken from Py; else remind, or expire. True: settled."""
        if kind == "expiry":
            self.state.expiring = True  # an Extend from now on comes too late
        current = await self._py(PyActivity.get_invitation, invitation_id)
        if current is not None and current.status in _FINISHED_AT_PY:
            self._take(current)
            return True
        if self._settled():  # a callback, withdrawal or halt arrived while we asked
            return True
        if kind == "reminder":
            if (current is not None and current.status == "started") or self.state.started_seen:
                self.state.started_seen = True  # its callback may be lost: tag it, no reminder
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
            self.state.error = error_message(exc)
            workflow.logger.warning("Py call failed for good: %s", self.state.error)
            if failure_type(exc) == PY_CONTRACT_ERROR:
                self.state.halt = Halt.PY_CONTRACT
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
        state = self.state
        return state.final is not None or state.withdrawal is not None or state.halt is not None

    def _started_pending(self) -> bool:
        state = self.state
        return state.started_seen and not state.started_tagged and state.final is None

    def _tag_started(self) -> None:
        self.state.started_tagged = True
        self._tag_in_background(decisions.TagChange(add=(decisions.TAG_STARTED,)))
        if self.state.final is None:
            self._set_status(Status.STARTED)

    def _take(self, record: InvitationRecord) -> None:
        if self.state.final is None:
            self.state.final = record

    async def _outcome(self) -> Outcome:
        """The end of the wait: the outcome, once the cosmetic tags queued before it are
        written (until then a 404 on one of them, or a callback, may still change it)."""
        if self._cosmetic is not None:
            await self._after_cosmetic(self._cosmetic)
        state = self.state
        return decisions.invitation_outcome(state.final, state.withdrawal, state.halt)

    async def _after_cosmetic(self, cosmetic: asyncio.Task[None]) -> None:
        """Wait for the queued cosmetic tags; an account removal gives them up instead
        (its Lever key may be revoked, its Lever queue unserved)."""
        withdrawal = self.state.withdrawal
        if withdrawal is None or not decisions.withdrawal_stops_lever_calls(withdrawal.reason):
            await cosmetic
            return
        cosmetic.cancel()
        await workflow.wait([cosmetic])

    # --- Lever writes ------------------------------------------------------------

    def _tag_in_background(self, change: decisions.TagChange) -> None:
        """A cosmetic tag: written in order after the previous one, never ending the invitation
        (a 404 halts it: the candidate is gone)."""
        previous = self._cosmetic
        state = self.state

        async def write() -> None:
            if previous is not None:
                await previous
            if state.halt is not None:
                return
            try:
                await self._lever.change_tags(change)
            except ActivityError as exc:
                if is_cancelled_exception(exc):
                    return
                state.error = f"cannot tag {', '.join(change.add)}: {error_message(exc)}"
                workflow.logger.warning("%s", state.error)
                if failure_type(exc) == NotFoundError.__name__:
                    state.halt = Halt.LEVER_GONE

        self._cosmetic = asyncio.create_task(write())

    async def _write(self, what: str, write: Callable[[], Awaitable[None]]) -> bool:
        """One durable write of the outcome. False: stop writing (candidate gone, or Lever
        still failing after the horizon); a request Lever refuses for good is recorded and
        the rest of the outcome still goes."""
        state = self.state
        if state.halt in (Halt.LEVER_GONE, Halt.LEVER_UNREACHABLE):
            return False
        try:
            await write()
            return True
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            state.error = f"cannot {what}: {error_message(exc)}"
            workflow.logger.warning("%s", state.error)
            halt = _halt_reason(exc)
            if halt is not None:
                state.halt = halt
                return False
            return True

    async def _apply(self, outcome: Outcome) -> None:
        """Write the outcome (exactly once): to Lever, and for a stop to Py first."""
        match outcome:
            case Outcome.RESULT:
                assert self.state.final is not None
                await self._apply_result(self.state.final)
            case Outcome.STOPPED:
                await self._stop_without_result()
            case Outcome.EXPIRED:
                alone = self._input.tests_in_assessment <= 1
                await self._write(
                    "tag the expiry",
                    lambda: self._lever.change_tags(decisions.tags_on_expiry(last=alone)),
                )
                self._set_status(Status.EXPIRED)
            case Outcome.CANCELLED_AT_PY:  # by someone else
                await self._clear_in_progress()
                self._set_status(Status.CANCELLED)
            case Outcome.BROKEN_CONTRACT:
                await self._clear_in_progress()
                self._set_status(Status.ERROR)
            case _:
                assert_never(outcome)

    async def _apply_result(self, final: InvitationRecord) -> None:
        """The verdict tag, the report link and the stage move (records from Py are validated
        where they enter, ``activities.py``; a bad one never gets here)."""
        state = self.state
        settings = self._input.settings
        score = final.score if final.score is not None else 0.0
        verdict = decisions.verdict_for(score, settings.pass_threshold, settings.fail_threshold)
        state.verdict, state.score = verdict, final.score
        if state.halt is Halt.LEVER_GONE or (
            state.withdrawal is not None
            and not decisions.withdrawal_writes_lever(state.withdrawal.reason)
        ):
            self._set_status(Status.COMPLETED)  # nothing to write to a candidate who is gone
            return
        alone = self._input.tests_in_assessment <= 1
        await self._write(
            "tag the verdict",
            lambda: self._lever.change_tags(
                # A retake's verdict replaces the earlier one (several tests: the parent
                # cleared the earlier verdicts when the retake began).
                decisions.tags_on_result(
                    verdict, last=alone, retake=alone and self._input.retake > 0
                )
            ),
        )
        if final.report_url:
            await self._write(
                "add the report link", lambda: self._lever.add_link(final.report_url or "")
            )
        self._set_status(Status.COMPLETED)
        target = decisions.move_target(verdict, settings) if alone else None
        # A recruiter's Cancel that lost the race to the result moves the candidate like the
        # result would have; an archive, a delete or an account removal does not.
        if target and (state.withdrawal is None or not _stops_moves(state.withdrawal)):
            await self._write(
                f"move the candidate to {target!r}", lambda: self._lever.move_to_stage(target)
            )
            self._set_status(Status.COMPLETED)  # the last error (if any) into the details

    async def _stop_without_result(self) -> None:
        """Withdrawn (archived, deleted), or the candidate is gone: cancel at Py first; a result
        Py already holds is applied (no stage move); archived: clear the in-progress tags."""
        state = self.state
        if state.invitation_id is not None:
            at_py = await self._cancel_at_py(state.invitation_id)
            if at_py.status == "completed":
                state.final = at_py
                await self._apply_result(at_py)
                return
        if state.withdrawal is not None:
            change = decisions.tags_on_withdrawal(state.withdrawal.reason)
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
        if self._writing is not None:
            await self._writing  # the outcome was being decided or written: it stands
            return False
        state = self.state
        if state.invitation_id is None and state.adopting is not None:
            state.invitation_id = state.adopting  # Py was being asked about it: cancel it
        if state.invitation_id is None and self._creating is not None:
            try:
                state.invitation_id = (await self._creating).id  # it may be live: learn its id
            except ActivityError:
                pass  # Py refused it: nothing is live
        if state.invitation_id is not None and state.final is None:
            self._take(await self._cancel_at_py(state.invitation_id))
        if self._cosmetic is not None:
            await self._cosmetic
        if state.final is not None and state.final.status == "completed":
            await self._apply_result(state.final)
            return False
        if state.invitation_id is not None:
            await self._clear_in_progress()
        state.error = state.error or "cancelled by an operator"
        self._set_status(Status.CANCELLED)
        return True

    # --- recruiter commands ------------------------------------------------------

    async def _resend(self, command: Command, invitation_id: str) -> CommandOutcome:
        """Py sends the invitation email again. Py down: retried for an hour, then refused."""
        try:
            reminded: bool = await call(
                PyActivity.remind,
                invitation_id,
                start_to_close_timeout=START_TO_CLOSE,
                schedule_to_close_timeout=COMMAND_HORIZON,
                retry_policy=SETUP_RETRY,
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            return self._record(command, False, f"Py did not remind: {error_message(exc)}")
        if not reminded:  # 409: finished at Py meanwhile (its callback is on the way)
            return self._record(command, False, "Py says the invitation is finished")
        return self._record(command, True, "Py sent the invitation email again")

    async def _recruiter_cancel(self, command: Command) -> CommandOutcome:
        """Stop as a withdrawal does (cancel at Py, clear the in-progress tags, no verdict),
        and answer once the outcome is written: a result Py already held wins."""
        state = self.state
        if state.withdrawal is None:
            state.withdrawal = Withdrawal(reason="recruiter_cancelled")
        try:  # written (or cancelled by an operator meanwhile)
            await workflow.wait_condition(lambda: state.status in _ENDED, timeout=CANCEL_ANSWER)
        except TimeoutError:  # Py (or Lever) slow: the cancel goes on; say so now
            return self._record(
                command, True, "cancelling at Py (slow to answer); the status follows"
            )
        if state.status is Status.COMPLETED:
            return self._record(command, False, "the result arrived first and was applied")
        if state.status is Status.CANCELLED:
            state.error = decisions.RECRUITER_CANCELLED_TEXT
            return self._record(command, True, "cancelled at Py; in-progress tags removed")
        return self._record(command, False, f"the test ended {state.status.value}")

    def _record(self, command: Command, applied: bool, detail: str) -> CommandOutcome:
        outcome = CommandOutcome(
            command=command.kind,
            applied=applied,
            detail=detail,
            target=workflow.info().workflow_id,
            at=workflow.now(),
        )
        self.state.commands.append(outcome)
        workflow.logger.info(
            "%s %s: %s", command.kind.value, "applied" if applied else "not applicable", detail
        )
        if not self._v1:
            self._set_status(self.state.status)  # the command into the memo and the details
        return outcome

    # --- visibility --------------------------------------------------------------

    def _set_status(self, status: Status) -> None:
        state = self.state
        state.status = status
        updates: list[SearchAttributeUpdate[Any]] = [sa.PY_STATUS.value_set(status.value)]
        if state.verdict is not None:
            updates.append(sa.PY_VERDICT.value_set(state.verdict.value))
        if state.score is not None:
            updates.append(sa.PY_SCORE.value_set(state.score))
        workflow.upsert_search_attributes(updates)
        workflow.upsert_memo({"assessment": self._details()})
        workflow.set_current_details(self._details_text())

    def _details(self) -> dict[str, object]:
        state = self.state
        details: dict[str, object] = {
            "test": self._input.test.name,
            "test_id": self._input.test.id,
            "status": state.status.value,
            "invitation_id": state.invitation_id,
            "verdict": state.verdict.value if state.verdict else None,
            "score": state.score,
            "sent_at": state.sent_at.isoformat() if state.sent_at else None,
            "next_check_at": state.next_check.isoformat()
            if state.next_check and state.status in (Status.INVITED, Status.STARTED)
            else None,
            "updated_at": workflow.now().isoformat(),
            "last_error": state.error,
        }
        if state.extended_seconds:
            details["expires_at"] = self._expiry().isoformat()
        if state.commands:
            details["commands"] = [c.model_dump(mode="json") for c in state.commands]
        return details

    def _details_text(self) -> str:
        state = self.state
        lines = [
            f"**{decisions.summary(self._input.candidate_name, self._input.test.name, state.status, state.verdict)}**",
            f"- invitation: {state.invitation_id or '-'}",
        ]
        if state.score is not None:
            lines.append(f"- score: {state.score:g}")
        if state.next_check and state.status in (Status.INVITED, Status.STARTED):
            lines.append(f"- next check: {state.next_check.isoformat()}")
        if state.error:
            lines.append(f"- last error: {state.error}")
        for c in state.commands:
            what = "applied" if c.applied else "not applicable"
            lines.append(
                f"- {c.command.value} at {c.at.isoformat() if c.at else '-'}: {what} ({c.detail})"
            )
        return "\n".join(lines)

    def _result(self) -> InvitationResult:
        state = self.state
        return InvitationResult(
            test=self._input.test,
            status=state.status,
            invitation_id=state.invitation_id,
            verdict=state.verdict,
            score=state.score,
            report_url=state.final.report_url if state.final else None,
            error=state.error,
        )

"""The durable assessment of one candidate in one trigger stage.

``AssessmentWorkflow`` (one per account, opportunity and trigger stage) re-reads
the opportunity, chooses the tests and starts one ``InvitationWorkflow`` child
per test. Each child sends its Py invitation, waits for the result (signal) with
reminders and an expiry, and writes the verdict to Lever. Decisions come from
``workflows.decisions``; every outside call is an activity.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    # Not "from workflows import decisions": a submodule named in a fromlist bypasses
    # the sandbox's import hook, so decisions.py was executed again for every workflow
    # instance (twice the CPU and memory of creating one; see docs/benchmarks.md).
    import workflows.decisions as decisions
    from activities.lever import LeverActivities, LinkWrite, ReadCandidate, StageMove, TagWrite
    from activities.py import CreateInvitation, FindTests, PyActivities
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

# Transient failures retry with backoff for a day; permanent answers (4xx) fail at once.
PERMANENT_ERRORS = ["BadRequestError", "AuthError", "NotFoundError", "ConflictError",
                    "PermanentApiError", "UnknownStageError", "UnknownAccount"]
EXTERNAL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=PERMANENT_ERRORS,
)
START_TO_CLOSE = timedelta(seconds=15)  # the clients time out after 10 s
SCHEDULE_TO_CLOSE = timedelta(days=1)
_FINISHED_AT_PY = ("completed", "expired", "cancelled")  # nothing more will happen at Py


def _error_message(exc: BaseException) -> str:
    cause = exc.cause if isinstance(exc, ActivityError) and exc.cause else exc
    return str(cause) or type(cause).__name__


class _LeverOps:
    """Lever activities of one candidate, on the account's rate-limited task queue."""

    def __init__(self, account_id: str, opportunity_id: str) -> None:
        self.account_id = account_id
        self.opportunity_id = opportunity_id
        self.task_queue = decisions.lever_task_queue(workflow.info().task_queue, account_id)

    async def _run(self, method, arg):  # type: ignore[no-untyped-def]
        return await workflow.execute_activity_method(
            method,
            arg,
            task_queue=self.task_queue,
            start_to_close_timeout=START_TO_CLOSE,
            schedule_to_close_timeout=SCHEDULE_TO_CLOSE,
            retry_policy=EXTERNAL_RETRY,
        )

    async def read_candidate(self, stage_id: str) -> Candidate:
        return await self._run(
            LeverActivities.read_candidate,
            ReadCandidate(
                account_id=self.account_id, opportunity_id=self.opportunity_id, stage_id=stage_id
            ),
        )

    async def change_tags(self, change: decisions.TagChange) -> None:
        if change.remove:
            await self._run(LeverActivities.remove_tags, self._tags(change.remove))
        if change.add:
            await self._run(LeverActivities.add_tags, self._tags(change.add))

    async def add_link(self, link: str) -> None:
        await self._run(
            LeverActivities.add_links,
            LinkWrite(account_id=self.account_id, opportunity_id=self.opportunity_id, links=(link,)),
        )

    async def move_to_stage(self, stage: str) -> None:
        await self._run(
            LeverActivities.move_to_stage,
            StageMove(account_id=self.account_id, opportunity_id=self.opportunity_id, stage=stage),
        )

    def _tags(self, tags: tuple[str, ...]) -> TagWrite:
        return TagWrite(account_id=self.account_id, opportunity_id=self.opportunity_id, tags=tags)


async def _py(method, arg):  # type: ignore[no-untyped-def]
    return await workflow.execute_activity_method(
        method,
        arg,
        start_to_close_timeout=START_TO_CLOSE,
        schedule_to_close_timeout=SCHEDULE_TO_CLOSE,
        retry_policy=EXTERNAL_RETRY,
    )


@workflow.defn
class InvitationWorkflow:
    """One Py invitation: send, tag, wait (reminders, expiry), verdict."""

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
        lever = _LeverOps(input.account_id, input.opportunity_id)
        workflow.upsert_search_attributes(
            [
                sa.LEVER_ACCOUNT.value_set(input.account_id),
                sa.LEVER_OPPORTUNITY_ID.value_set(input.opportunity_id),
                sa.LEVER_STAGE_ID.value_set(input.stage_id),
                sa.PY_TEST.value_set(input.test.name),
            ]
        )
        self._set_status(Status.RESOLVING)
        if self._withdrawal is not None:
            self._set_status(Status.CANCELLED)
            return self._result()

        try:
            invitation = await _py(
                PyActivities.create_invitation,
                CreateInvitation(
                    reference=workflow.info().workflow_id,
                    test_id=input.test.id,
                    candidate_name=input.candidate_name,
                    candidate_email=input.candidate_email,
                    idempotency_key=decisions.idempotency_key(
                        workflow.info().workflow_id, input.stage_entry
                    ),
                ),
            )
        except ActivityError as exc:
            self._error = _error_message(exc)
            workflow.logger.warning("Py refused the invitation: %s", self._error)
            try:
                await lever.change_tags(decisions.TagChange(add=(decisions.TAG_INVITE_FAILED,)))
            except ActivityError as tag_exc:
                self._error += f"; cannot tag it in Lever: {_error_message(tag_exc)}"
            self._set_status(Status.ERROR)
            return self._result()

        self._invitation_id = invitation.id
        self._sent_at = workflow.now()
        for event in self._early_events:
            self.py_event(event)
        self._early_events.clear()
        try:
            if invitation.status in ("completed", "expired", "cancelled"):
                # The same idempotency key again (a re-run): Py already holds the outcome.
                self._take(invitation)
            elif self._withdrawal is None:
                await lever.change_tags(decisions.TagChange(add=(decisions.TAG_INVITED,)))
                self._set_status(Status.INVITED)
                if invitation.status == "started":
                    self._started_seen = True
                await self._wait_for_outcome(lever, invitation.id)
            await self._finish(lever)
        except ActivityError as exc:
            # Lever refused for good (candidate deleted, key revoked): end visibly, do not fail.
            self._error = _error_message(exc)
            workflow.logger.warning("assessment step failed: %s", self._error)
            if self._status not in (Status.COMPLETED, Status.EXPIRED, Status.CANCELLED):
                self._set_status(Status.ERROR)
            else:
                self._set_status(self._status)
        return self._result()

    async def _wait_for_outcome(self, lever: _LeverOps, invitation_id: str) -> None:
        assert self._sent_at is not None
        settings = self._input.settings
        for checkpoint in decisions.checkpoints(
            settings.reminders_seconds, settings.expire_after_seconds
        ):
            deadline = self._sent_at + timedelta(seconds=checkpoint.at_seconds)
            self._next_check = deadline
            self._set_status(self._status)  # refresh the details with the next check
            while not self._settled():
                remaining = deadline - workflow.now()
                if remaining <= timedelta(0):
                    break
                try:
                    await workflow.wait_condition(
                        lambda: self._settled() or self._started_pending(), timeout=remaining
                    )
                except TimeoutError:
                    break
                if self._started_pending():
                    await self._tag_started(lever)
            if self._settled():
                return

            # The checkpoint is due: ask Py first (a lost callback is recovered here).
            current = await _py(PyActivities.get_invitation, invitation_id)
            if current.status in _FINISHED_AT_PY:
                self._take(current)
                return
            if self._settled():  # a callback or a withdrawal arrived while we asked
                return
            if checkpoint.kind == "reminder":
                if current.status == "started" or self._started_seen:
                    # Started: tag it (its callback may have been lost); no reminder.
                    self._started_seen = True
                    if self._started_pending():
                        await self._tag_started(lever)
                elif not await _py(PyActivities.remind, invitation_id):
                    # Py refused (409): the invitation finished between the two calls.
                    current = await _py(PyActivities.get_invitation, invitation_id)
                    if current.status in _FINISHED_AT_PY:
                        self._take(current)
                        return
                continue
            # Expiry: cancel at Py (a result that arrived meanwhile wins, see _take).
            cancelled = await _py(PyActivities.cancel, invitation_id)
            if cancelled is not None and cancelled.status == "completed":
                self._take(cancelled)
            else:
                self._take(
                    InvitationRecord(id=invitation_id, status="expired")
                    if cancelled is None
                    else cancelled.model_copy(update={"status": "expired"})
                )
            return

    def _settled(self) -> bool:
        return self._final is not None or self._withdrawal is not None

    def _started_pending(self) -> bool:
        return self._started_seen and not self._started_tagged and self._final is None

    async def _tag_started(self, lever: _LeverOps) -> None:
        self._started_tagged = True
        await lever.change_tags(decisions.TagChange(add=(decisions.TAG_STARTED,)))
        if self._final is None:
            self._set_status(Status.STARTED)

    def _take(self, record: InvitationRecord) -> None:
        if self._final is None:
            self._final = record

    async def _finish(self, lever: _LeverOps) -> None:
        """Apply the outcome exactly once."""
        final = self._final
        if final is None or (self._withdrawal is not None and final.status != "completed"):
            await self._withdraw(lever)
            return
        if final.status == "completed":
            assert final.score is not None and final.report_url is not None
            settings = self._input.settings
            verdict = decisions.verdict_for(
                final.score, settings.pass_threshold, settings.fail_threshold
            )
            self._verdict, self._score = verdict, final.score
            if self._withdrawal is not None and self._withdrawal.reason == "deleted":
                self._set_status(Status.COMPLETED)
                return
            alone = self._input.tests_in_assessment <= 1
            await lever.change_tags(decisions.tags_on_result(verdict, last=alone))
            await lever.add_link(final.report_url)
            self._set_status(Status.COMPLETED)
            target = decisions.move_target(verdict, settings) if alone else None
            if target and self._withdrawal is None:
                await lever.move_to_stage(target)
        elif final.status == "expired":
            alone = self._input.tests_in_assessment <= 1
            await lever.change_tags(decisions.tags_on_expiry(last=alone))
            self._set_status(Status.EXPIRED)
        else:  # cancelled at Py by someone else
            if self._input.tests_in_assessment <= 1:
                await lever.change_tags(decisions.TagChange(remove=decisions.IN_PROGRESS_TAGS))
            self._set_status(Status.CANCELLED)

    async def _withdraw(self, lever: _LeverOps) -> None:
        """Cancel at Py; archived: clear the in-progress tags; deleted: write nothing.

        A candidate who completed just before (Py answers the cancel with 409, the
        callback not yet in) keeps the result: it is applied as in ``_finish``
        (verdict and report for an archived candidate, no stage move; nothing
        written for a deleted one).
        """
        assert self._withdrawal is not None
        if self._invitation_id is not None:
            at_py = await _py(PyActivities.cancel, self._invitation_id)
            if at_py is not None and at_py.status == "completed":
                self._take(at_py)
            if self._final is not None and self._final.status == "completed":
                await self._finish(lever)
                return
        await lever.change_tags(decisions.tags_on_withdrawal(self._withdrawal.reason))
        self._set_status(Status.CANCELLED)

    # --- visibility --------------------------------------------------------------

    def _set_status(self, status: Status) -> None:
        self._status = status
        updates = [sa.PY_STATUS.value_set(status.value)]
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
class AssessmentWorkflow:
    """One candidate in one trigger stage: check, choose tests, one child per test."""

    @workflow.init
    def __init__(self, input: AssessmentInput) -> None:
        self._input = input
        self._withdrawal: Withdrawal | None = None
        self._children: list[workflow.ChildWorkflowHandle] = []
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
            except Exception:  # the child has finished already
                pass

    @workflow.query(name="status")
    def status(self) -> dict[str, object]:
        return {"status": self._status.value, "reason": self._reason}

    @workflow.run
    async def run(self, input: AssessmentInput) -> AssessmentResult:
        workflow.upsert_search_attributes(
            [
                sa.LEVER_ACCOUNT.value_set(input.account_id),
                sa.LEVER_OPPORTUNITY_ID.value_set(input.opportunity_id),
                sa.LEVER_STAGE_ID.value_set(input.stage_id),
            ]
        )
        self._set_status(Status.RESOLVING)
        lever = _LeverOps(input.account_id, input.opportunity_id)

        try:
            candidate = await lever.read_candidate(input.stage_id)
        except ActivityError as exc:
            # Deleted in Lever (404) or the key no longer works: nothing to send.
            return self._end(Status.ERROR, f"cannot read the opportunity: {_error_message(exc)}")
        if not candidate.entered_stage:
            return self._end(Status.NOT_SENT, "the opportunity never entered this stage")
        if candidate.archived:
            return self._end(Status.NOT_SENT, "the opportunity is archived")
        if self._withdrawal is not None:
            return self._end(Status.CANCELLED, f"candidate {self._withdrawal.reason}")

        settings = input.settings
        names = decisions.names_to_look_up(candidate.tags, settings.default_test)
        py_tests: dict[str, str] = (
            await _py(PyActivities.find_tests, FindTests(names=tuple(names))) if names else {}
        )
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
            return self._end(Status.CANCELLED, f"candidate {self._withdrawal.reason}")

        stale = decisions.stale_tags(candidate.tags)
        if stale:
            # A re-run after "No Test Configured", "No Email", ...: that tag is no longer true.
            # (No Lever call when there is nothing to clear, which is the usual case.)
            try:
                await lever.change_tags(decisions.TagChange(remove=stale))
            except ActivityError as exc:
                return self._end(Status.ERROR, f"cannot update Lever: {_error_message(exc)}")

        parent_id = workflow.info().workflow_id
        started: list[ChosenTest] = []
        for test in choice.tests:
            if self._withdrawal is not None:
                break  # withdrawn while starting: start no more children
            child_id = decisions.invitation_workflow_id(parent_id, test.id)
            handle = await workflow.start_child_workflow(
                InvitationWorkflow.run,
                InvitationInput(
                    account_id=input.account_id,
                    opportunity_id=input.opportunity_id,
                    stage_id=input.stage_id,
                    settings=settings,
                    test=test,
                    candidate_name=candidate.name,
                    candidate_email=candidate.email,
                    stage_entry=candidate.stage_entries,
                    tests_in_assessment=len(choice.tests),
                ),
                id=child_id,
                static_summary=decisions.summary(candidate.name, test.name, Status.RESOLVING),
            )
            self._children.append(handle)
            started.append(test)
            await self._forward_withdrawal()
        if not started:
            assert self._withdrawal is not None
            return self._end(Status.CANCELLED, f"candidate {self._withdrawal.reason}")
        self._set_status(Status.INVITED)
        outcomes = await asyncio.gather(*self._children, return_exceptions=True)
        results = [
            outcome
            if isinstance(outcome, InvitationResult)
            else InvitationResult(test=test, status=Status.ERROR, error=_error_message(outcome))
            for test, outcome in zip(started, outcomes, strict=True)
        ]
        reason = None
        if len(choice.tests) > 1 and self._withdrawal is None:
            reason = await self._conclude_several(lever, results)
        return self._end(decisions.overall_status(results), reason, tuple(results))

    async def _conclude_several(
        self, lever: _LeverOps, results: list[InvitationResult]
    ) -> str | None:
        """Several tests: once all are done, clear the in-progress tags and move the candidate."""
        try:
            await lever.change_tags(decisions.TagChange(remove=decisions.IN_PROGRESS_TAGS))
            target = decisions.combined_move_target(
                [r.verdict for r in results], self._input.settings
            )
            if target:
                await lever.move_to_stage(target)
        except ActivityError as exc:
            return f"cannot update Lever: {_error_message(exc)}"
        return None

    async def _end_tagged(
        self, lever: _LeverOps, tag: str, status: Status, reason: str | None
    ) -> AssessmentResult:
        """End without an invitation, telling the recruiter why with a tag."""
        try:
            await lever.change_tags(decisions.TagChange(add=(tag,)))
        except ActivityError as exc:  # the candidate is gone, or the key no longer works
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

"""The workflow shape shipped before the durable invitation (frozen; do not edit).

``InvitationWorkflow`` and ``AssessmentWorkflow`` call ``workflow.patched(DURABLE)``
first thing in ``run``. Executions started before that patch shipped have no
marker in their history, so they continue here, command for command as they
were recorded (``tests/histories/`` replays them in ``make test``). The retry
policies are today's (a policy is not part of a workflow's commands): a 401
while a Lever key is rotated is retried here too.
Changed since only to know the withdrawal reason ``account_removed``, and to read the
workflows' state from one dataclass (``self.state``); no command, no recorded path changed.

Delete this module, and the ``patched`` branch, once no execution started
before the patch can still run: ``expire_after`` + 7 days after the deploy,
plus the namespace's retention for replays of closed ones.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    import workflows.decisions as decisions
    from pylever.contracts import search_attributes as sa
    from pylever.contracts.activities import PyActivity
    from pylever.contracts.records import (
        AssessmentInput,
        AssessmentResult,
        ChosenTest,
        CreateInvitation,
        FindTests,
        InvitationInput,
        InvitationRecord,
        InvitationResult,
        Status,
    )
    from workflows.calls import LeverOps, py_call

if TYPE_CHECKING:
    from workflows.assessment import AssessmentState
    from workflows.invitation import InvitationState

_FINISHED_AT_PY = ("completed", "expired", "cancelled")


def _error_message(exc: BaseException) -> str:
    cause = exc.cause if isinstance(exc, ActivityError) and exc.cause else exc
    return str(cause) or type(cause).__name__


class InvitationV1:
    """``InvitationWorkflow.run`` as shipped: state and helpers live on the workflow class."""

    if TYPE_CHECKING:
        _input: InvitationInput
        state: InvitationState

        def _set_status(self, status: Status) -> None: ...
        def _result(self) -> InvitationResult: ...
        def py_event(self, event: Any) -> None: ...
        def _settled(self) -> bool: ...
        def _started_pending(self) -> bool: ...
        def _take(self, record: InvitationRecord) -> None: ...

    async def _run_v1(self, input: InvitationInput) -> InvitationResult:
        lever = LeverOps(input.account_id, input.opportunity_id)
        workflow.upsert_search_attributes(
            [
                sa.LEVER_ACCOUNT.value_set(input.account_id),
                sa.LEVER_OPPORTUNITY_ID.value_set(input.opportunity_id),
                sa.LEVER_STAGE_ID.value_set(input.stage_id),
                sa.PY_TEST.value_set(input.test.name),
            ]
        )
        self._set_status(Status.RESOLVING)
        if self.state.withdrawal is not None:
            self._set_status(Status.CANCELLED)
            return self._result()

        try:
            invitation = await py_call(
                PyActivity.create_invitation,
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
            self.state.error = _error_message(exc)
            workflow.logger.warning("Py refused the invitation: %s", self.state.error)
            try:
                await lever.change_tags(decisions.TagChange(add=(decisions.TAG_INVITE_FAILED,)))
            except ActivityError as tag_exc:
                self.state.error += f"; cannot tag it in Lever: {_error_message(tag_exc)}"
            self._set_status(Status.ERROR)
            return self._result()

        self.state.invitation_id = invitation.id
        self.state.sent_at = workflow.now()
        for event in self.state.early_events:
            self.py_event(event)
        self.state.early_events.clear()
        try:
            if invitation.status in ("completed", "expired", "cancelled"):
                # The same idempotency key again (a re-run): Py already holds the outcome.
                self._take(invitation)
            elif self.state.withdrawal is None:
                await lever.change_tags(decisions.TagChange(add=(decisions.TAG_INVITED,)))
                self._set_status(Status.INVITED)
                if invitation.status == "started":
                    self.state.started_seen = True
                await self._wait_for_outcome_v1(lever, invitation.id)
            await self._finish_v1(lever)
        except ActivityError as exc:
            # Lever refused for good (candidate deleted, key revoked): end visibly, do not fail.
            self.state.error = _error_message(exc)
            workflow.logger.warning("assessment step failed: %s", self.state.error)
            if self.state.status not in (Status.COMPLETED, Status.EXPIRED, Status.CANCELLED):
                self._set_status(Status.ERROR)
            else:
                self._set_status(self.state.status)
        return self._result()

    async def _wait_for_outcome_v1(self, lever: LeverOps, invitation_id: str) -> None:
        assert self.state.sent_at is not None
        settings = self._input.settings
        for checkpoint in decisions.checkpoints(
            settings.reminders_seconds, settings.expire_after_seconds
        ):
            deadline = self.state.sent_at + timedelta(seconds=checkpoint.at_seconds)
            self.state.next_check = deadline
            self._set_status(self.state.status)  # refresh the details with the next check
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
                    await self._tag_started_v1(lever)
            if self._settled():
                return

            # The checkpoint is due: ask Py first (a lost callback is recovered here).
            current = await py_call(PyActivity.get_invitation, invitation_id)
            if current.status in _FINISHED_AT_PY:
                self._take(current)
                return
            if self._settled():  # a callback or a withdrawal arrived while we asked
                return
            if checkpoint.kind == "reminder":
                if current.status == "started" or self.state.started_seen:
                    # Started: tag it (its callback may have been lost); no reminder.
                    self.state.started_seen = True
                    if self._started_pending():
                        await self._tag_started_v1(lever)
                elif not await py_call(PyActivity.remind, invitation_id):
                    # Py refused (409): the invitation finished between the two calls.
                    current = await py_call(PyActivity.get_invitation, invitation_id)
                    if current.status in _FINISHED_AT_PY:
                        self._take(current)
                        return
                continue
            # Expiry: cancel at Py (a result that arrived meanwhile wins, see _take).
            cancelled = await py_call(PyActivity.cancel, invitation_id)
            if cancelled is not None and cancelled.status == "completed":
                self._take(cancelled)
            else:
                self._take(
                    InvitationRecord(id=invitation_id, status="expired")
                    if cancelled is None
                    else cancelled.model_copy(update={"status": "expired"})
                )
            return

    async def _tag_started_v1(self, lever: LeverOps) -> None:
        self.state.started_tagged = True
        await lever.change_tags(decisions.TagChange(add=(decisions.TAG_STARTED,)))
        if self.state.final is None:
            self._set_status(Status.STARTED)

    async def _finish_v1(self, lever: LeverOps) -> None:
        """Apply the outcome exactly once."""
        final = self.state.final
        if final is None or (self.state.withdrawal is not None and final.status != "completed"):
            await self._withdraw_v1(lever)
            return
        if final.status == "completed":
            assert final.score is not None and final.report_url is not None
            settings = self._input.settings
            verdict = decisions.verdict_for(
                final.score, settings.pass_threshold, settings.fail_threshold
            )
            self.state.verdict, self.state.score = verdict, final.score
            if self.state.withdrawal is not None and not decisions.withdrawal_writes_lever(
                self.state.withdrawal.reason
            ):
                self._set_status(Status.COMPLETED)
                return
            alone = self._input.tests_in_assessment <= 1
            await lever.change_tags(decisions.tags_on_result(verdict, last=alone))
            await lever.add_link(final.report_url)
            self._set_status(Status.COMPLETED)
            target = decisions.move_target(verdict, settings) if alone else None
            if target and self.state.withdrawal is None:
                await lever.move_to_stage(target)
        elif final.status == "expired":
            alone = self._input.tests_in_assessment <= 1
            await lever.change_tags(decisions.tags_on_expiry(last=alone))
            self._set_status(Status.EXPIRED)
        else:  # cancelled at Py by someone else
            if self._input.tests_in_assessment <= 1:
                await lever.change_tags(decisions.TagChange(remove=decisions.IN_PROGRESS_TAGS))
            self._set_status(Status.CANCELLED)

    async def _withdraw_v1(self, lever: LeverOps) -> None:
        """Cancel at Py; archived: clear the in-progress tags; deleted: write nothing.

        A candidate who completed just before (Py answers the cancel with 409, the
        callback not yet in) keeps the result: it is applied as in ``_finish``
        (verdict and report for an archived candidate, no stage move; nothing
        written for a deleted one).
        """
        assert self.state.withdrawal is not None
        if self.state.invitation_id is not None:
            at_py = await py_call(PyActivity.cancel, self.state.invitation_id)
            if at_py is not None and at_py.status == "completed":
                self._take(at_py)
            if self.state.final is not None and self.state.final.status == "completed":
                await self._finish_v1(lever)
                return
        await lever.change_tags(decisions.tags_on_withdrawal(self.state.withdrawal.reason))
        self._set_status(Status.CANCELLED)


class AssessmentV1:
    """``AssessmentWorkflow.run`` as shipped."""

    if TYPE_CHECKING:
        _input: AssessmentInput
        state: AssessmentState
        _children: list[Any]

        def _set_status(self, status: Status) -> None: ...
        def _end(
            self, status: Status, reason: str | None, invitations: tuple[InvitationResult, ...] = ()
        ) -> AssessmentResult: ...
        async def _forward_withdrawal(self) -> None: ...

    async def _run_v1(self, input: AssessmentInput) -> AssessmentResult:
        workflow.upsert_search_attributes(
            [
                sa.LEVER_ACCOUNT.value_set(input.account_id),
                sa.LEVER_OPPORTUNITY_ID.value_set(input.opportunity_id),
                sa.LEVER_STAGE_ID.value_set(input.stage_id),
            ]
        )
        self._set_status(Status.RESOLVING)
        lever = LeverOps(input.account_id, input.opportunity_id)

        try:
            candidate = await lever.read_candidate(input.stage_id)
        except ActivityError as exc:
            # Deleted in Lever (404) or the key no longer works: nothing to send.
            return self._end(Status.ERROR, f"cannot read the opportunity: {_error_message(exc)}")
        if not candidate.entered_stage:
            return self._end(Status.NOT_SENT, "the opportunity never entered this stage")
        if candidate.archived:
            return self._end(Status.NOT_SENT, "the opportunity is archived")
        if self.state.withdrawal is not None:
            return self._end(
                Status.CANCELLED, decisions.withdrawal_reason_text(self.state.withdrawal.reason)
            )

        settings = input.settings
        names = decisions.names_to_look_up(candidate.tags, settings.default_test)
        py_tests: dict[str, str] = (
            await py_call(PyActivity.find_tests, FindTests(names=tuple(names))) if names else {}
        )
        choice = decisions.choose_tests(candidate.tags, py_tests, settings.default_test)
        if not choice.tests:
            return await self._end_tagged_v1(
                lever, decisions.TAG_NO_TEST, Status.NOT_SENT, choice.reason
            )
        if not candidate.email:
            return await self._end_tagged_v1(
                lever, decisions.TAG_NO_EMAIL, Status.ERROR, "the candidate has no email address"
            )
        if self.state.withdrawal is not None:
            return self._end(
                Status.CANCELLED, decisions.withdrawal_reason_text(self.state.withdrawal.reason)
            )

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
            if self.state.withdrawal is not None:
                break  # withdrawn while starting: start no more children
            child_id = decisions.invitation_workflow_id(parent_id, test.id)
            handle = await workflow.start_child_workflow(
                "InvitationWorkflow",
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
                result_type=InvitationResult,
                static_summary=decisions.summary(candidate.name, test.name, Status.RESOLVING),
            )
            self._children.append(handle)
            started.append(test)
            await self._forward_withdrawal()
        if not started:
            assert self.state.withdrawal is not None
            return self._end(
                Status.CANCELLED, decisions.withdrawal_reason_text(self.state.withdrawal.reason)
            )
        self._set_status(Status.INVITED)
        outcomes = await asyncio.gather(*self._children, return_exceptions=True)
        results = [
            outcome
            if isinstance(outcome, InvitationResult)
            else InvitationResult(test=test, status=Status.ERROR, error=_error_message(outcome))
            for test, outcome in zip(started, outcomes, strict=True)
        ]
        reason = decisions.reason_after_withdrawn_children(
            self.state.withdrawal.reason if self.state.withdrawal is not None else None
        )
        if len(choice.tests) > 1 and self.state.withdrawal is None:
            reason = await self._conclude_several_v1(lever, results)
        return self._end(decisions.overall_status(results), reason, tuple(results))

    async def _conclude_several_v1(
        self, lever: LeverOps, results: list[InvitationResult]
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

    async def _end_tagged_v1(
        self, lever: LeverOps, tag: str, status: Status, reason: str | None
    ) -> AssessmentResult:
        """End without an invitation, telling the recruiter why with a tag."""
        try:
            await lever.change_tags(decisions.TagChange(add=(tag,)))
        except ActivityError as exc:  # the candidate is gone, or the key no longer works
            reason = f"{reason}; cannot tag {tag!r} in Lever: {_error_message(exc)}"
        return self._end(status, reason)

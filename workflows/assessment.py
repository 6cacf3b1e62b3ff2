"""The durable assessment of one candidate in one trigger stage (the parent workflow).

``AssessmentWorkflow`` (one per account, opportunity and trigger stage) re-reads
the opportunity, chooses the tests and starts one ``InvitationWorkflow`` child per
test (``workflows.invitation``, where each invitation's promises are listed).
Decisions come from ``workflows.decisions``; every outside call is an activity
(``workflows.calls``).

Promises kept here (docs/architecture.md, "Durability"):

- Cancel (Web UI, ``temporal workflow cancel``, ``cli.py cancel``) cancels the
  children with their parent and waits for them, then clears the tags the tests
  share; a result a child applied ends the assessment completed with it.
- A re-run adopts what the earlier run left open at Py; a withdrawal (archive,
  delete, account removed) reaches every child, including one still starting.

Executions started before these promises run the shipped shape
(``workflows.shipped_v1``), chosen by ``workflow.patched(DURABLE)``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    CancelledError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    # Not "from workflows import decisions": a submodule named in a fromlist bypasses
    # the sandbox's import hook, so decisions.py was executed again for every workflow
    # instance (twice the CPU and memory of creating one; see docs/benchmarks.md).
    import workflows.decisions as decisions
    from pylever.contracts import search_attributes as sa
    from pylever.contracts.activities import PyActivity, TemporalActivity
    from pylever.contracts.records import (
        AssessmentInput,
        AssessmentResult,
        Candidate,
        ChosenTest,
        FindTests,
        InvitationInput,
        InvitationResult,
        Status,
        Withdrawal,
    )
    from workflows.calls import LeverOps, call, durable_horizon, error_message, py_call
    from workflows.invitation import InvitationWorkflow
    from workflows.shipped_v1 import AssessmentV1
    from workflows.versions import DURABLE


@dataclass
class AssessmentState:
    """What an assessment knows: the query and the memo show it; the withdrawal reaches
    every child it started."""

    status: Status = Status.RESOLVING
    reason: str | None = None  # why it ended so
    withdrawal: Withdrawal | None = None
    started: list[ChosenTest] = field(default_factory=list)  # tests whose child started
    told: set[str] = field(default_factory=set)  # children already sent the withdrawal


@workflow.defn
class AssessmentWorkflow(AssessmentV1):
    """One candidate in one trigger stage: check, choose tests, one child per test."""

    @workflow.init
    def __init__(self, input: AssessmentInput) -> None:
        self._input = input
        self.state = AssessmentState()
        # The started children's handles, in the order started: work in flight, not state
        # (awaited for their results, signalled, cancelled).
        self._children: list[workflow.ChildWorkflowHandle[Any, InvitationResult]] = []

    @workflow.signal(name="withdraw")
    async def withdraw(self, withdrawal: Withdrawal) -> None:
        if self.state.withdrawal is not None:
            return
        self.state.withdrawal = withdrawal
        await self._forward_withdrawal()

    async def _forward_withdrawal(self) -> None:
        """Tell every started child, once. ``run`` calls it too after each child starts:
        a withdrawal that arrives while a child's start is pending is not lost."""
        if self.state.withdrawal is None:
            return
        for child in list(self._children):
            if child.id in self.state.told:
                continue
            self.state.told.add(child.id)
            try:
                await child.signal(InvitationWorkflow.withdraw, self.state.withdrawal)
            except Exception as exc:  # the child has finished already
                if is_cancelled_exception(exc):
                    raise

    @workflow.query(name="status")
    def status(self) -> dict[str, object]:
        return {"status": self.state.status.value, "reason": self.state.reason}

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
            return self._end(Status.ERROR, f"cannot read the opportunity: {error_message(exc)}")
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
        if input.retake_tests:
            names = []  # a recruiter's retake: the same tests again, no choice
        try:
            py_tests: dict[str, str] = (
                await py_call(PyActivity.find_tests, FindTests(names=tuple(names))) if names else {}
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            if (removed := self._account_removed()) is not None:
                return removed
            return self._end(Status.ERROR, f"cannot list Py's tests: {error_message(exc)}")
        if (removed := self._account_removed()) is not None:
            return removed  # nothing more goes to Lever (no "No Test" / "No Email" tag)
        choice = (
            decisions.Choice(tests=input.retake_tests)
            if input.retake_tests
            else decisions.choose_tests(candidate.tags, py_tests, settings.default_test)
        )
        if not choice.tests:
            return await self._end_tagged(
                lever, decisions.TAG_NO_TEST, Status.NOT_SENT, choice.reason
            )
        if not candidate.email:
            return await self._end_tagged(
                lever, decisions.TAG_NO_EMAIL, Status.ERROR, "the candidate has no email address"
            )
        if self.state.withdrawal is not None:
            return self._end(
                Status.CANCELLED, decisions.withdrawal_reason_text(self.state.withdrawal.reason)
            )

        stale = decisions.stale_tags(candidate.tags)
        if input.retake and len(choice.tests) > 1:
            # A retake of several tests: their verdicts come one by one, so the earlier
            # verdicts go now (one test's retake replaces its verdict when it arrives).
            stale = (*stale, *decisions.verdict_tags(candidate.tags))
        if stale:
            # A re-run after "No Test Configured", "No Email", ...: that tag is no longer true.
            try:
                await lever.change_tags(decisions.TagChange(remove=stale))
            except ActivityError as exc:
                if is_cancelled_exception(exc):
                    raise
                return self._end(Status.ERROR, f"cannot update Lever: {error_message(exc)}")

        parent_id = workflow.info().workflow_id
        child_ids = {t.id: decisions.invitation_workflow_id(parent_id, t.id) for t in choice.tests}
        earlier = await self._earlier_invitations(list(child_ids.values())) if input.rerun else {}
        busy: list[InvitationResult] = []  # tests whose earlier invitation workflow still runs
        for test in choice.tests:
            if self.state.withdrawal is not None:
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
            self.state.started.append(test)
            await self._forward_withdrawal()
        if not self.state.started:
            if busy:
                return self._end(Status.ERROR, busy[0].error, tuple(busy))
            assert self.state.withdrawal is not None
            return self._end(
                Status.CANCELLED, decisions.withdrawal_reason_text(self.state.withdrawal.reason)
            )
        self._set_status(Status.INVITED)
        results = [*await self._child_results(), *busy]
        reason = decisions.reason_after_withdrawn_children(
            self.state.withdrawal.reason if self.state.withdrawal is not None else None
        ) or decisions.reason_of_cancelled_children(results)
        if len(choice.tests) > 1 and self.state.withdrawal is None:
            reason = await self._conclude_several(lever, results) or reason
        return self._end(decisions.overall_status(results), reason, tuple(results))

    def _account_removed(self) -> AssessmentResult | None:
        """Ended ``cancelled`` when the account was removed from the configuration (a
        withdrawal that writes nothing more to Lever); None otherwise."""
        withdrawal = self.state.withdrawal
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
                retake=input.retake,
                retake_id=input.retake_id,
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
            found: dict[str, str] = await call(
                TemporalActivity.previous_invitations,
                child_ids,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=timedelta(hours=1),
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.warning("earlier invitations unknown: %s", error_message(exc))
            return {}
        return found

    async def _child_results(self) -> list[InvitationResult]:
        outcomes = await asyncio.gather(*self._children, return_exceptions=True)
        results = []
        for test, outcome in zip(self.state.started, outcomes, strict=True):
            if isinstance(outcome, InvitationResult):
                results.append(outcome)
            elif isinstance(outcome, BaseException) and is_cancelled_exception(outcome):
                results.append(InvitationResult(test=test, status=Status.CANCELLED))
            else:
                results.append(
                    InvitationResult(test=test, status=Status.ERROR, error=error_message(outcome))
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
                reason += f"; cannot update Lever: {error_message(exc)}"
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
            problems.append(f"cannot update Lever: {error_message(exc)}")
        target = decisions.combined_move_target([r.verdict for r in results], self._input.settings)
        if target and not problems:
            try:
                await durable.move_to_stage(target)
            except ActivityError as exc:
                if is_cancelled_exception(exc):
                    raise
                problems.append(f"cannot move the candidate: {error_message(exc)}")
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
            reason = f"{reason}; cannot tag {tag!r} in Lever: {error_message(exc)}"
        return self._end(status, reason)

    def _set_status(self, status: Status) -> None:
        self.state.status = status
        workflow.upsert_search_attributes([sa.PY_STATUS.value_set(status.value)])
        workflow.upsert_memo({"assessment": {"status": status.value, "reason": self.state.reason}})

    def _end(
        self,
        status: Status,
        reason: str | None,
        invitations: tuple[InvitationResult, ...] = (),
    ) -> AssessmentResult:
        self.state.reason = reason
        self._set_status(status)
        if reason:
            workflow.logger.info("assessment ended %s: %s", status.value, reason)
        return AssessmentResult(status=status, reason=reason, invitations=invitations)

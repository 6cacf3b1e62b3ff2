"""Recruiters steer invitations from Lever: ``Py - Resend``, ``Extend``, ``Cancel``, ``Retake``.

Lever sends no webhook when a tag changes, so the service looks for the command tags.

- ``CommandWatchWorkflow`` (one run per account at a time, started by the account's
  Schedule, ``pylever.temporal.schedules``): every ``commands_every`` one Lever list call
  finds the account's candidates that carry any command tag (Lever's repeated ``tag``
  filter is a union), page by page, and starts one ``CandidateCommandsWorkflow`` per
  tagged candidate. Each run lasts a window (ten minutes, or ``commands_every`` if
  longer) and ends ``commands_every`` after its last look, so the next run's first look
  keeps the pace. Its calls run at the background priority, with the account's fairness
  key: they count against the account's own Lever rate, after webhook-driven work.
- ``CandidateCommandsWorkflow`` (id ``commands:<account>:<opportunity>``, one at a time
  per candidate): re-reads the candidate's tags (a listing may be older than the removal
  of a tag a previous run applied), applies the commands in a fixed order (Cancel,
  Retake, Extend, Resend), records each outcome (its memo, the status endpoint, the
  Web UI), and removes the tags it handled, applied or not.

A command reaches an open invitation as the update ``command`` of its
``InvitationWorkflow`` (recorded in that history, answered with the outcome; the update
id makes a retried delivery apply once). A retake starts a new run of the finished
assessment (``activities/commands.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, WorkflowAlreadyStartedError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import workflows.decisions as decisions
    from pylever.contracts import search_attributes as sa
    from pylever.contracts.activities import Activity, CommandActivity, LeverActivity
    from pylever.contracts.commands import (
        CandidateCommandsInput,
        CandidateTags,
        Command,
        CommandKind,
        CommandOutcome,
        CommandPlan,
        CommandPlanRequest,
        CommandTargetsRequest,
        CommandWatchInput,
        DeliverCommand,
        ListCommanded,
        RetakeRequest,
    )
    from pylever.contracts.errors import UNKNOWN_ACCOUNT
    from pylever.contracts.records import OpportunityRef
    from workflows.calls import (
        COMMAND_HORIZON,
        LeverOps,
        background_lever_call,
        call,
        error_message,
        failure_type,
    )
    from workflows.decisions import candidate_commands_workflow_id

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")
TEMPORAL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)
)


TAG_REMOVAL_HORIZON = timedelta(days=7)


async def _temporal(stub: Activity[ArgT, ResultT], arg: ArgT) -> ResultT:
    """A question to (or a start on) Temporal: tried for an hour (``COMMAND_HORIZON``)."""
    return await call(
        stub,
        arg,
        start_to_close_timeout=timedelta(minutes=2),
        schedule_to_close_timeout=COMMAND_HORIZON,
        retry_policy=TEMPORAL_RETRY,
    )


# --- the watch ---------------------------------------------------------------------


@dataclass
class WatchState:
    looks: int = 0  # Lever list calls made (one per look, plus pages)
    candidates: int = 0  # tagged candidates found
    started: int = 0  # their CandidateCommandsWorkflow started (others still running)


@workflow.defn
class CommandWatchWorkflow:
    """One account's look for command tags, every ``commands_every`` for a window."""

    @workflow.init
    def __init__(self, input: CommandWatchInput) -> None:
        self.state = WatchState()

    @workflow.query(name="progress")
    def progress(self) -> dict[str, int]:
        s = self.state
        return {"looks": s.looks, "candidates": s.candidates, "started": s.started}

    @workflow.run
    async def run(self, input: CommandWatchInput) -> dict[str, int]:
        deadline = workflow.now() + timedelta(seconds=input.window_seconds)
        # The settings once per run: a reload reaches the looks within a window.
        try:
            plan = await background_lever_call(
                CommandActivity.plan,
                CommandPlanRequest(account_id=input.account_id),
                input.account_id,
            )
        except ActivityError as exc:
            if failure_type(exc) != UNKNOWN_ACCOUNT:
                raise
            workflow.logger.info("account %s is not configured: no look", input.account_id)
            return self.progress()  # removed from the configuration: its schedule goes too
        while True:
            try:
                await self._look(input.account_id, plan)
            except ActivityError as exc:
                if failure_type(exc) != UNKNOWN_ACCOUNT:
                    raise
                workflow.logger.info("account %s was removed: no more looks", input.account_id)
                break
            if input.window_seconds <= 0:
                break  # one look (tests, operators)
            # The next look (or the next run's first) is commands_every after this one.
            await workflow.sleep(timedelta(seconds=plan.every_seconds))
            if workflow.now() >= deadline:
                break
        return self.progress()

    async def _look(self, account_id: str, plan: CommandPlan) -> None:
        offset: str | None = None
        while True:
            page = await background_lever_call(
                LeverActivity.list_commanded,
                ListCommanded(account_id=account_id, offset=offset),
                account_id,
            )
            self.state.looks += 1
            for candidate in page.candidates:
                self.state.candidates += 1
                await self._start(account_id, candidate.opportunity_id, candidate.tags, plan)
            if page.next_offset is None:
                return
            offset = page.next_offset

    async def _start(
        self, account_id: str, opportunity_id: str, tags: tuple[str, ...], plan: CommandPlan
    ) -> None:
        """The candidate's commands, unless a run for them is still going (it removes its
        tags before it ends; a tag added meanwhile is found by the next look)."""
        try:
            await workflow.start_child_workflow(
                CandidateCommandsWorkflow.run,
                CandidateCommandsInput(
                    account_id=account_id,
                    opportunity_id=opportunity_id,
                    plan=plan,
                    seen_tags=tags,
                ),
                id=candidate_commands_workflow_id(account_id, opportunity_id),
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                priority=decisions.background_priority(account_id),
                static_summary=f"commands for opportunity {opportunity_id}",
            )
        except WorkflowAlreadyStartedError:
            return
        self.state.started += 1


# --- one candidate's commands ----------------------------------------------------------


@dataclass
class CandidateCommandsState:
    commands: list[CommandKind] = field(default_factory=list)  # found on the candidate
    outcomes: list[CommandOutcome] = field(default_factory=list)
    removed: bool = False  # the handled tags are gone from Lever


@workflow.defn
class CandidateCommandsWorkflow:
    """Apply one candidate's command tags (in order), record the outcomes, remove the tags."""

    @workflow.init
    def __init__(self, input: CandidateCommandsInput) -> None:
        self._input = input
        self.state = CandidateCommandsState()

    @workflow.query(name="status")
    def status(self) -> dict[str, object]:
        return self._details()

    @workflow.run
    async def run(self, input: CandidateCommandsInput) -> list[CommandOutcome]:
        # Removing the tags is retried for a week (this run stays open meanwhile, so no
        # later look applies them again).
        lever = LeverOps(input.account_id, input.opportunity_id).durable(TAG_REMOVAL_HORIZON)
        ref = OpportunityRef(account_id=input.account_id, opportunity_id=input.opportunity_id)
        try:
            now: CandidateTags = await background_lever_call(
                LeverActivity.read_tags, ref, input.account_id
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.info("cannot read the candidate's tags: %s", error_message(exc))
            return []  # gone from Lever, or Lever failing for a day: the next look retries
        self.state.commands = list(decisions.commands_in_order(now.tags))
        if not self.state.commands:
            return []  # an earlier run handled them after the listing: nothing to do
        workflow.upsert_search_attributes(
            [
                sa.LEVER_ACCOUNT.value_set(input.account_id),
                sa.LEVER_OPPORTUNITY_ID.value_set(input.opportunity_id),
            ]
        )
        self._show()
        previous = await _temporal(CommandActivity.previous, ref)
        for kind in self.state.commands:
            if kind.value in previous.unremoved:
                # Applied by the previous run, which could not remove the tag: once only.
                self._note(kind, False, "applied already by the previous run (its tag "
                           "could not be removed then); not applied again")  # fmt: skip
            elif now.archived:
                self._note(kind, False, "the candidate is archived")
            else:
                await self._apply(input, kind)
            self._show()
        await self._remove_tags(lever)
        self._show()
        return self.state.outcomes

    async def _apply(self, input: CandidateCommandsInput, kind: CommandKind) -> None:
        command = Command(
            kind=kind,
            requested_at=workflow.now(),
            extend_by_seconds=input.plan.extend_by_seconds if kind is CommandKind.EXTEND else 0,
        )
        try:
            targets = await _temporal(
                CommandActivity.targets,
                CommandTargetsRequest(
                    account_id=input.account_id,
                    opportunity_id=input.opportunity_id,
                    stage_ids=tuple(s.stage_id for s in input.plan.stages),
                ),
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            self._note(
                kind, False, f"cannot find the candidate's assessments: {error_message(exc)}"
            )
            return
        steps = decisions.command_steps(kind, targets)
        if steps.not_applicable is not None:
            self._note(kind, False, steps.not_applicable)
            return
        for invitation in steps.invitations:
            await self._deliver(command, invitation)
        stages = {s.stage_id: s for s in input.plan.stages}
        for target in steps.retakes:
            await self._retake(kind, RetakeRequest(
                account_id=input.account_id,
                opportunity_id=input.opportunity_id,
                stage=stages[target.stage_id],
                target=target,
                retake_id=workflow.info().run_id,
            ))  # fmt: skip

    async def _deliver(self, command: Command, invitation: str) -> None:
        try:
            outcome: CommandOutcome = await call(
                CommandActivity.deliver,
                DeliverCommand(
                    workflow_id=invitation,
                    # One update per run and command: a retried delivery is applied once.
                    update_id=f"{workflow.info().run_id}:{command.kind.name.lower()}",
                    command=command,
                ),
                start_to_close_timeout=COMMAND_HORIZON + timedelta(minutes=5),
                retry_policy=TEMPORAL_RETRY,
                schedule_to_close_timeout=COMMAND_HORIZON * 2,
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            self._note(command.kind, False, f"not delivered: {error_message(exc)}", invitation)
            return
        self.state.outcomes.append(outcome)

    async def _retake(self, kind: CommandKind, req: RetakeRequest) -> None:
        try:
            outcome = await _temporal(CommandActivity.retake, req)
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            self._note(
                kind,
                False,
                f"cannot start the retake: {error_message(exc)}",
                req.target.workflow_id,
            )
            return
        self.state.outcomes.append(outcome)

    async def _remove_tags(self, lever: LeverOps) -> None:
        """Every command tag handled, applied or not (a command acts once)."""
        tags = tuple(kind.value for kind in self.state.commands)
        try:
            await lever.change_tags(decisions.TagChange(remove=tags))
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.warning("cannot remove the command tags: %s", error_message(exc))
            return
        self.state.removed = True

    def _note(
        self, kind: CommandKind, applied: bool, detail: str, target: str | None = None
    ) -> None:
        self.state.outcomes.append(
            CommandOutcome(
                command=kind, applied=applied, detail=detail, target=target, at=workflow.now()
            )
        )
        workflow.logger.info("%s: %s", kind.value, detail)

    # --- visibility ------------------------------------------------------------------

    def _details(self) -> dict[str, object]:
        return {
            "commands": [kind.value for kind in self.state.commands],
            "outcomes": [o.model_dump(mode="json") for o in self.state.outcomes],
            "tags_removed": self.state.removed,
        }

    def _show(self) -> None:
        workflow.upsert_memo({"commands": self._details()})
        lines = [f"**commands: {', '.join(k.value for k in self.state.commands)}**"]
        for o in self.state.outcomes:
            what = "applied" if o.applied else "not applicable"
            lines.append(f"- {o.command.value}: {what} ({o.detail})")
        if self.state.removed:
            lines.append("- tags removed from Lever")
        workflow.set_current_details("\n".join(lines))

"""The recruiter commands' own activities (``workflows/commands.py``).

- ``plan``: the account's ``commands_every``, ``extend_by`` and trigger stages now (a
  reload takes effect at the next look). On the shared Lever queue: the stage list may
  need one Lever call, counted against the account.
- ``targets``: the candidate's assessments (one per trigger stage, by their
  deterministic ids), each running one with its open invitations (its pending children:
  no visibility lag), each closed one with the tests it sent.
- ``deliver``: one command to one open invitation, as the workflow update ``command``;
  the update id makes a retried delivery apply once.
- ``retake``: a new run of a finished assessment for the same tests
  (``Gateway.start_retake``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.errors import activity_errors
from activities.lever import LeverClients
from activities.sweep import configured_account, planned_stages
from pylever.config.file import AppConfig
from pylever.contracts import search_attributes as sa
from pylever.contracts.activities import CommandActivity
from pylever.contracts.commands import (
    RETAKE_MEMO,
    AssessmentTarget,
    CommandKind,
    CommandOutcome,
    CommandPlan,
    CommandPlanRequest,
    CommandTargets,
    CommandTargetsRequest,
    DeliverCommand,
    PreviousCommands,
    RetakeRequest,
)
from pylever.contracts.records import (
    AssessmentInput,
    AssessmentResult,
    ChosenTest,
    OpportunityRef,
    Status,
)
from pylever.ops.logs import log_event
from workflows import decisions

log = logging.getLogger("pylever.activities.commands")

# Statuses of a test that was sent and ended: a retake is for these.
_RETAKEABLE = (Status.COMPLETED, Status.EXPIRED, Status.CANCELLED)
CLOSING_WAIT = 30.0  # seconds an assessment whose invitations all ended is given to close


class Retaker(Protocol):
    """What starts a retake: ``pylever.temporal.gateway.Gateway``."""

    client: Client

    async def start_retake(self, input: AssessmentInput) -> Any: ...


class CommandActivities:
    def __init__(self, config: AppConfig, levers: LeverClients, gateway: Retaker) -> None:
        self._config = config
        self._levers = levers
        self._gateway = gateway
        self._client: Client = gateway.client

    def use(self, config: AppConfig) -> None:
        """A reload: the next look reads the new configuration."""
        self._config = config

    @CommandActivity.plan.implementation
    async def plan(self, req: CommandPlanRequest) -> CommandPlan:
        account, client = configured_account(self._config, self._levers, req.account_id)
        with activity_errors():
            stages = await planned_stages(self._config, account, client)
        commands = self._config.commands(account)
        return CommandPlan(
            every_seconds=max(1, int(commands.every.total_seconds())),
            extend_by_seconds=int(commands.extend_by.total_seconds()),
            stages=tuple(stages),
        )

    @CommandActivity.targets.implementation
    async def targets(self, req: CommandTargetsRequest) -> CommandTargets:
        found: list[AssessmentTarget] = []
        for stage_id in req.stage_ids:
            workflow_id = decisions.assessment_workflow_id(
                req.account_id, req.opportunity_id, stage_id
            )
            try:
                desc = await self._settled(workflow_id)
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    continue
                raise
            found.append(await self._target(req, stage_id, desc))
        return CommandTargets(assessments=tuple(found))

    async def _settled(self, workflow_id: str) -> WorkflowExecutionDescription:
        """The assessment now; one closing (its invitations have all ended, e.g. just
        cancelled by the same look's ``Py - Cancel``) is given ``CLOSING_WAIT`` to close,
        so that a Retake after a Cancel finds it finished."""
        handle = self._client.get_workflow_handle(workflow_id)
        deadline = time.monotonic() + CLOSING_WAIT
        while True:
            desc = await handle.describe()
            if not await self._closing(desc) or time.monotonic() > deadline:
                return desc
            await asyncio.sleep(0.5)

    async def _closing(self, desc: WorkflowExecutionDescription) -> bool:
        """Running, past starting its invitations, and none of them running any more (the
        parent's list of pending children can lag a child's close: each is asked)."""
        if (
            desc.status != WorkflowExecutionStatus.RUNNING
            or desc.typed_search_attributes.get(sa.PY_STATUS) == Status.RESOLVING.value
        ):
            return False
        for child in desc.raw_description.pending_children:
            if child.workflow_type_name != "InvitationWorkflow":
                continue
            state = await self._client.get_workflow_handle(
                child.workflow_id, run_id=child.run_id
            ).describe()
            if state.status == WorkflowExecutionStatus.RUNNING:
                return False
        return True

    async def _target(
        self, req: CommandTargetsRequest, stage_id: str, desc: WorkflowExecutionDescription
    ) -> AssessmentTarget:
        raw_status = desc.typed_search_attributes.get(sa.PY_STATUS)
        status = next((s for s in Status if s.value == raw_status), None)
        memo = await desc.memo()
        retakes = memo.get(RETAKE_MEMO)
        target = AssessmentTarget(
            stage_id=stage_id,
            workflow_id=desc.id,
            running=desc.status == WorkflowExecutionStatus.RUNNING,
            status=status,
            closed_at=desc.close_time,
            retakes=retakes if isinstance(retakes, int) else 0,
        )
        if target.running:
            children = tuple(
                c.workflow_id
                for c in desc.raw_description.pending_children
                if c.workflow_type_name == "InvitationWorkflow"
            )
            return target.model_copy(update={"open_invitations": children})
        tests = await self._sent_tests(req, stage_id, desc)
        return target.model_copy(update={"finished_tests": tests})

    async def _sent_tests(
        self, req: CommandTargetsRequest, stage_id: str, desc: WorkflowExecutionDescription
    ) -> tuple[ChosenTest, ...]:
        """The tests a closed assessment's invitations were sent for and ended (completed,
        expired, cancelled): from its result, or (cancelled by an operator: no result)
        from its invitation workflows."""
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            handle = self._client.get_workflow_handle(
                desc.id, run_id=desc.run_id, result_type=AssessmentResult
            )
            result: AssessmentResult = await handle.result()
            return tuple(
                r.test for r in result.invitations if r.invitation_id and r.status in _RETAKEABLE
            )
        prefix = f"{desc.id}:"
        query = (
            f"{sa.candidate_query(req.account_id, req.opportunity_id)} AND "
            f"{sa.LEVER_STAGE_ID.name} = {sa.quote(stage_id)} AND "
            "WorkflowType = 'InvitationWorkflow' AND ExecutionStatus != 'Running'"
        )
        tests: dict[str, ChosenTest] = {}
        async for wf in self._client.list_workflows(query):
            if not wf.id.startswith(prefix) or wf.start_time < desc.start_time:
                continue
            name = wf.typed_search_attributes.get(sa.PY_TEST)
            status = wf.typed_search_attributes.get(sa.PY_STATUS)
            if name and status in _RETAKEABLE:
                test_id = wf.id[len(prefix) :]
                tests[test_id] = ChosenTest(id=test_id, name=name)
        return tuple(tests.values())

    @CommandActivity.previous.implementation
    async def previous(self, req: OpportunityRef) -> PreviousCommands:
        """The candidate's latest closed command run that handled commands: if it could not
        remove their tags, those commands are applied already and must not be again."""
        workflow_id = decisions.candidate_commands_workflow_id(req.account_id, req.opportunity_id)
        query = f"WorkflowId = {sa.quote(workflow_id)} AND ExecutionStatus != 'Running'"
        latest: tuple[datetime, str, dict[str, Any]] | None = None
        async for wf in self._client.list_workflows(query):
            details = (await wf.memo()).get("commands")
            closed = wf.close_time or wf.start_time
            if isinstance(details, dict) and details.get("commands"):
                if latest is None or closed > latest[0]:
                    latest = (closed, wf.run_id, details)
        if latest is None or latest[2].get("tags_removed"):
            return PreviousCommands()
        handled = latest[2].get("commands") or []
        return PreviousCommands(unremoved=tuple(str(t) for t in handled), workflow_run=latest[1])

    @CommandActivity.deliver.implementation
    async def deliver(self, req: DeliverCommand) -> CommandOutcome:
        handle = self._client.get_workflow_handle(req.workflow_id)
        try:
            outcome: CommandOutcome = await handle.execute_update(
                "command", req.command, id=req.update_id, result_type=CommandOutcome
            )
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            return _refused(req, "the invitation had finished")
        except WorkflowUpdateFailedError as exc:
            return _refused(req, f"the invitation refused it: {exc.cause or exc}")
        log_event(log, "recruiter command", command=req.command.kind.value,
                  applied=outcome.applied, workflow_id=req.workflow_id)  # fmt: skip
        return outcome

    @CommandActivity.retake.implementation
    async def retake(self, req: RetakeRequest) -> CommandOutcome:
        n = req.target.retakes + 1
        tests = req.target.finished_tests
        started = await self._gateway.start_retake(
            AssessmentInput(
                account_id=req.account_id,
                opportunity_id=req.opportunity_id,
                stage_id=req.stage.stage_id,
                settings=req.stage.settings,
                retake=n,
                retake_tests=tests,
                retake_id=req.retake_id,
            )
        )
        names = ", ".join(t.name for t in tests)
        applied = started.status == "started"
        detail = (
            f"retake {n} started: a new invitation for {names} (the assessment's status follows it)"
            if applied
            else "another run of this assessment started meanwhile"
        )
        log_event(log, "recruiter command", command=CommandKind.RETAKE.value, applied=applied,
                  workflow_id=started.workflow_id)  # fmt: skip
        return CommandOutcome(
            command=CommandKind.RETAKE,
            applied=applied,
            detail=detail,
            target=started.workflow_id,
            at=datetime.now(UTC),
        )


def _refused(req: DeliverCommand, detail: str) -> CommandOutcome:
    return CommandOutcome(
        command=req.command.kind,
        applied=False,
        detail=detail,
        target=req.workflow_id,
        at=datetime.now(UTC),
    )

"""The sweep's and the backfill's own activities (``workflows/sweep.py``).

- ``plan``: the account's trigger stages now (names resolved through Lever's cached
  stage list), each with the settings a webhook would snapshot, and its lookback. On
  the shared Lever queue: its one possible Lever call counts against the account.
- ``start_waiting``: starts each listed candidate's assessment through the gateway,
  the idempotent start the webhook uses (``Gateway.start_assessment`` with the
  candidate's entry time). Progress is heartbeated: a retry resumes where it stopped.
- ``report``: the worker's metrics and, when a sweep had to start assessments, the
  warning that Lever's webhook may be misconfigured.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Protocol

from temporalio import activity
from temporalio.common import Priority
from temporalio.exceptions import ApplicationError

from activities.errors import activity_errors
from activities.lever import LeverClients
from pylever.clients.lever import LeverClient
from pylever.clients.triggers import trigger_settings
from pylever.config.file import Account, AppConfig
from pylever.contracts.activities import SweepActivity
from pylever.contracts.errors import UNKNOWN_ACCOUNT, UnknownStageError
from pylever.contracts.records import AssessmentInput
from pylever.contracts.sweep import (
    PlannedStage,
    StartedCandidate,
    StartedPage,
    StartWaiting,
    SweepMode,
    SweepPlan,
    SweepPlanRequest,
    SweepReport,
    WaitingOutcome,
)
from pylever.ops.logs import log_event
from pylever.ops.metrics import SWEEP_RUNS, SWEEP_STARTED
from workflows.decisions import background_priority

log = logging.getLogger("pylever.activities.sweep")


class Starter(Protocol):
    """What starts assessments: ``pylever.temporal.gateway.Gateway``, the webhook's own."""

    async def start_assessment(
        self, input: AssessmentInput, *, entered_at: datetime | None = ...,
        priority: Priority | None = ...,
    ) -> Any: ...  # fmt: skip

    async def would_start(self, input: AssessmentInput, *, entered_at: datetime) -> bool: ...


NOT_A_TRIGGER_STAGE = "NotATriggerStage"  # a backfill's --stage that is no trigger stage


class SweepActivities:
    def __init__(self, config: AppConfig, levers: LeverClients, starter: Starter) -> None:
        self._config = config
        self._levers = levers
        self._starter = starter

    def use(self, config: AppConfig) -> None:
        """A reload: the next plan reads the new configuration."""
        self._config = config

    def _account(self, account_id: str) -> tuple[Account, LeverClient]:
        return configured_account(self._config, self._levers, account_id)

    @SweepActivity.plan.implementation
    async def plan(self, req: SweepPlanRequest) -> SweepPlan:
        account, client = self._account(req.account_id)
        wanted = None
        with activity_errors():
            if req.stage is not None:
                wanted = await self._resolve(client, req.stage)
            stages = [
                s
                for s in await planned_stages(self._config, account, client)
                if wanted is None or s.stage_id == wanted
            ]
        if wanted is not None and not stages:
            raise ApplicationError(
                f"{req.stage!r} is not a trigger stage of account {account.id!r}",
                type=NOT_A_TRIGGER_STAGE,
                non_retryable=True,
            )
        lookback = self._config.sweep(account).lookback
        return SweepPlan(stages=tuple(stages), lookback_seconds=int(lookback.total_seconds()))

    @staticmethod
    async def _resolve(client: LeverClient, stage: str) -> str:
        try:
            return await client.resolve_stage(stage)
        except UnknownStageError:
            raise ApplicationError(
                f"Lever has no stage {stage!r}", type=NOT_A_TRIGGER_STAGE, non_retryable=True
            ) from None

    @SweepActivity.start_waiting.implementation
    async def start_waiting(self, req: StartWaiting) -> StartedPage:
        """Start each candidate's assessment as its webhook would have (idempotent), at the
        sweep's lower priority: the assessment's own Lever and Py calls inherit it."""
        if self._config.account(req.account_id) is None:  # removed while the sweep ran
            raise ApplicationError(
                f"account {req.account_id!r} is not in this worker's configuration",
                type=UNKNOWN_ACCOUNT,
                non_retryable=True,
            )
        done = _resumed(req)
        for candidate in req.candidates[len(done) :]:
            # Lever always sends lastAdvancedAt; without one, the epoch: any earlier run counts.
            entered = datetime.fromtimestamp((candidate.entered_at_ms or 0) / 1000, UTC)
            input = AssessmentInput(
                account_id=req.account_id,
                opportunity_id=candidate.opportunity_id,
                stage_id=req.stage.stage_id,
                settings=req.stage.settings,
            )
            if req.dry_run:
                starts = await self._starter.would_start(input, entered_at=entered)
            else:
                started = await self._starter.start_assessment(
                    input, entered_at=entered, priority=background_priority(req.account_id)
                )
                starts = started.status == "started"
            outcome = WaitingOutcome.STARTED if starts else WaitingOutcome.ASSESSED
            done.append(StartedCandidate(opportunity_id=candidate.opportunity_id, outcome=outcome))
            activity.heartbeat([c.outcome.value for c in done])
        return StartedPage(candidates=tuple(done))

    @SweepActivity.report.implementation
    async def report(self, req: SweepReport) -> None:
        SWEEP_RUNS.labels(account=req.account_id, mode=req.mode.value).inc()
        if req.mode is not SweepMode.DRY_RUN:
            SWEEP_STARTED.labels(account=req.account_id, mode=req.mode.value).inc(req.started)
        counts = {"listed": req.listed, "assessed": req.assessed, "started": req.started}
        if req.mode is SweepMode.SWEEP and req.started:
            log_event(
                log,
                f"{req.started} candidates reached a trigger stage without a webhook — check "
                "Lever's webhook settings",
                logging.WARNING,
                account=req.account_id,
                **counts,
            )
        else:
            log_event(log, f"{req.mode.value} done", account=req.account_id,
                      no_test=req.no_test, **counts)  # fmt: skip


def configured_account(
    config: AppConfig, levers: LeverClients, account_id: str
) -> tuple[Account, LeverClient]:
    """The account and its Lever client; one the configuration lacks fails for good."""
    account = config.account(account_id)
    client = levers.get(account_id) if account is not None else None
    if account is None or client is None:
        raise ApplicationError(
            f"account {account_id!r} is not in this worker's configuration",
            type=UNKNOWN_ACCOUNT,
            non_retryable=True,
        )
    return account, client


async def planned_stages(
    config: AppConfig, account: Account, client: LeverClient
) -> list[PlannedStage]:
    """The account's trigger stages now (names resolved through Lever's cached stage list),
    each with the settings a webhook would snapshot; a stage Lever lacks is reported."""
    stages: list[PlannedStage] = []
    for trigger in account.triggers:
        try:
            stage_id = await client.resolve_stage(trigger.stage)
        except UnknownStageError:
            log_event(log, "trigger stage not found in Lever", logging.WARNING,
                      account=account.id, stage=trigger.stage)  # fmt: skip
            continue
        settings = trigger_settings(config, account, trigger)
        name = client.stage_name(stage_id) or trigger.stage
        stages.append(PlannedStage(stage_id=stage_id, name=name, settings=settings))
    return stages


def _resumed(req: StartWaiting) -> list[StartedCandidate]:
    """What an earlier attempt heartbeated (the outcomes, in the request's order): those
    candidates are not started again, and a retry still counts them as started."""
    details = activity.info().heartbeat_details
    outcomes = details[0] if details and isinstance(details[0], list) else []
    return [
        StartedCandidate(opportunity_id=c.opportunity_id, outcome=WaitingOutcome(outcome))
        for c, outcome in zip(req.candidates, outcomes, strict=False)
    ]

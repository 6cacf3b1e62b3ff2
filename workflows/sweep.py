"""No candidate left behind: the reconciliation sweep and the backfill.

``SweepWorkflow`` walks one account's trigger stages: for each, the opportunities now
in the stage, not archived, whose last stage change is at or after ``since`` (Lever's
filters, a page at a time), and starts each one's assessment through the start the
webhook uses. A candidate whose webhook was lost is invited; one already invited,
finished, or decided since entering the stage is left alone (``Gateway.start_assessment``
with the entry time).

- The account's Schedule (``pylever.temporal.schedules``) runs it every ``sweep_every``
  in ``SweepMode.SWEEP``: everyone waiting is started, as their webhooks would have.
- ``cli.py backfill`` runs it in ``BACKFILL`` (only candidates with a test configured
  are started; the others are reported) or ``DRY_RUN`` (starts nothing; lists who would
  be invited and with which test).

Its Lever calls run on the shared Lever queue with the account's fairness key (its own
rate limit) at a lower priority than webhook-driven work (``calls.background_priority``).
The result carries the counts (listed, already assessed, started) and, for a backfill,
the candidates. ``progress`` (a query) tells a waiting operator how far it got.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import workflows.decisions as decisions
    from pylever.contracts.activities import LeverActivity, PyActivity, SweepActivity
    from pylever.contracts.records import FindTests
    from pylever.contracts.sweep import (
        ListWaiting,
        PlannedStage,
        StartWaiting,
        SweepInput,
        SweepMode,
        SweepPlanRequest,
        SweepReport,
        SweepResult,
        SweptCandidate,
        WaitingCandidate,
        WaitingOutcome,
    )
    from workflows.calls import (
        START_TO_CLOSE,
        background_lever_call,
        call,
        py_call,
    )

MAX_LISTED_CANDIDATES = 2_000  # a backfill's result lists at most this many (counts are whole)
# Temporal unreachable for an hour: the page fails, and so does this sweep; the next one
# (SKIP overlap: it waits for this one to close) lists the same candidates again.
START_HORIZON = timedelta(hours=1)
START_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)
)


@dataclass
class SweepState:
    """What the sweep has done so far (the ``progress`` query, then the result)."""

    stages: list[str] = field(default_factory=list)
    stages_done: int = 0
    listed: int = 0
    assessed: int = 0
    started: int = 0
    no_test: int = 0
    candidates: list[SweptCandidate] = field(default_factory=list)
    finished: bool = False


@workflow.defn
class SweepWorkflow:
    @workflow.init
    def __init__(self, input: SweepInput) -> None:
        self.state = SweepState()

    @workflow.query(name="progress")
    def progress(self) -> dict[str, object]:
        s = self.state
        return {
            "stages": len(s.stages),
            "stages_done": s.stages_done,
            "listed": s.listed,
            "assessed": s.assessed,
            "started": s.started,
            "no_test": s.no_test,
            "finished": s.finished,
        }

    @workflow.run
    async def run(self, input: SweepInput) -> SweepResult:
        plan = await background_lever_call(
            SweepActivity.plan,
            SweepPlanRequest(account_id=input.account_id, stage=input.stage),
            input.account_id,
        )
        since = input.since or workflow.now() - timedelta(seconds=plan.lookback_seconds)
        self.state.stages = [stage.stage_id for stage in plan.stages]
        for stage in plan.stages:
            await self._sweep_stage(input, stage, since)
            self.state.stages_done += 1
        s = self.state
        report = SweepReport(
            account_id=input.account_id,
            mode=input.mode,
            listed=s.listed,
            assessed=s.assessed,
            started=s.started,
            no_test=s.no_test,
        )
        try:
            await call(
                SweepActivity.report,
                report,
                start_to_close_timeout=START_TO_CLOSE,
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError as exc:  # the log line and the counters only: the work is done
            if is_cancelled_exception(exc):
                raise
            workflow.logger.warning("sweep report failed: %s", exc)
        s.finished = True
        return SweepResult(
            account_id=input.account_id,
            mode=input.mode,
            since=since,
            stages=tuple(s.stages),
            listed=s.listed,
            assessed=s.assessed,
            started=s.started,
            no_test=s.no_test,
            candidates=tuple(s.candidates[:MAX_LISTED_CANDIDATES]),
        )

    async def _sweep_stage(self, input: SweepInput, stage: PlannedStage, since: datetime) -> None:
        offset: str | None = None
        while True:
            page = await background_lever_call(
                LeverActivity.list_waiting,
                ListWaiting(
                    account_id=input.account_id,
                    stage_id=stage.stage_id,
                    since_ms=int(since.timestamp() * 1000),
                    offset=offset,
                ),  # fmt: skip
                input.account_id,
            )
            self.state.listed += len(page.candidates)
            await self._take(input, stage, page.candidates)
            if page.next_offset is None:
                return
            offset = page.next_offset

    async def _take(
        self, input: SweepInput, stage: PlannedStage, candidates: tuple[WaitingCandidate, ...]
    ) -> None:
        """Start (or, in a dry run, judge) one page of waiting candidates."""
        if not candidates:
            return
        tests = await self._tests(stage, candidates) if input.mode is not SweepMode.SWEEP else {}
        eligible = tuple(
            c for c in candidates if input.mode is SweepMode.SWEEP or tests[c.opportunity_id]
        )
        self.state.no_test += len(candidates) - len(eligible)
        outcomes: dict[str, WaitingOutcome] = {}
        if eligible:
            started = await call(
                SweepActivity.start_waiting,
                StartWaiting(
                    account_id=input.account_id,
                    stage=stage,
                    candidates=eligible,
                    dry_run=input.mode is SweepMode.DRY_RUN,
                ),  # fmt: skip
                start_to_close_timeout=timedelta(minutes=10),
                schedule_to_close_timeout=START_HORIZON,
                heartbeat_timeout=timedelta(minutes=1),
                retry_policy=START_RETRY,
                priority=decisions.background_priority(input.account_id),
            )
            outcomes = {c.opportunity_id: c.outcome for c in started.candidates}
        for outcome in outcomes.values():
            if outcome is WaitingOutcome.STARTED:
                self.state.started += 1
            else:
                self.state.assessed += 1
        if input.mode is not SweepMode.SWEEP:
            for c in candidates:
                self.state.candidates.append(
                    SweptCandidate(
                        opportunity_id=c.opportunity_id,
                        name=c.name,
                        stage=stage.name or stage.settings.stage,
                        entered_at_ms=c.entered_at_ms,
                        tests=tests[c.opportunity_id],
                        outcome=_outcome_text(input.mode, outcomes.get(c.opportunity_id)),
                    )
                )

    async def _tests(
        self, stage: PlannedStage, candidates: tuple[WaitingCandidate, ...]
    ) -> dict[str, tuple[str, ...]]:
        """Each candidate's test(s), chosen as the assessment would (a tag naming a Py test
        overrides the stage's default test); an empty tuple: no test configured."""
        default = stage.settings.default_test
        names = sorted({n for c in candidates for n in decisions.names_to_look_up(c.tags, default)})
        py_tests: dict[str, str] = (
            await py_call(PyActivity.find_tests, FindTests(names=tuple(names))) if names else {}
        )
        return {
            c.opportunity_id: tuple(
                t.name for t in decisions.choose_tests(c.tags, py_tests, default).tests
            )
            for c in candidates
        }


def _outcome_text(mode: SweepMode, outcome: WaitingOutcome | None) -> str:
    if outcome is None:
        return "no_test"
    if outcome is WaitingOutcome.ASSESSED:
        return "assessed"
    return "would_start" if mode is SweepMode.DRY_RUN else "started"

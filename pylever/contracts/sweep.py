"""The sweep's and the backfill's records (``workflows/sweep.py``, ``activities/sweep.py``).

A sweep lists, per trigger stage, the opportunities now in the stage, not archived,
whose last stage change is recent, and starts each one's assessment the way a webhook
does. A backfill is the same walk started by an operator (``cli.py backfill``), with its
own window and stage, a dry run that starts nothing, and no start for a candidate whose
test is not configured.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from pylever.contracts.records import TriggerSettings

LIST_PAGE_SIZE = 100  # Lever's largest page


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class SweepMode(StrEnum):
    SWEEP = "sweep"  # the schedule: start every waiting candidate, like a webhook would
    BACKFILL = "backfill"  # cli.py backfill --yes: start those with a test configured
    DRY_RUN = "dry_run"  # cli.py backfill --dry-run: list who would be invited, start nothing


class SweepInput(_Record):
    account_id: str
    mode: SweepMode = SweepMode.SWEEP
    stage: str | None = None  # a trigger stage name or id; None: every trigger stage
    since: datetime | None = None  # entries at or after; None: now - the account's lookback


class SweepPlanRequest(_Record):
    account_id: str
    stage: str | None = None


class PlannedStage(_Record):
    stage_id: str
    name: str = ""  # Lever's name of the stage, for people
    settings: TriggerSettings  # the trigger's settings now, as a webhook would snapshot them


class SweepPlan(_Record):
    stages: tuple[PlannedStage, ...] = ()
    lookback_seconds: int


class ListWaiting(_Record):
    """One page of the opportunities in ``stage_id``, not archived, advanced since ``since_ms``."""

    account_id: str
    stage_id: str
    since_ms: int
    offset: str | None = None


class WaitingCandidate(_Record):
    opportunity_id: str
    name: str = ""  # for the dry run's list (the payload codec encrypts it)
    entered_at_ms: int | None = None  # Lever's lastAdvancedAt
    tags: tuple[str, ...] = ()


class WaitingPage(_Record):
    candidates: tuple[WaitingCandidate, ...] = ()
    next_offset: str | None = None


class StartWaiting(_Record):
    account_id: str
    stage: PlannedStage
    candidates: tuple[WaitingCandidate, ...]
    dry_run: bool = False  # only tell whether each would start (STARTED) or not (ASSESSED)


class WaitingOutcome(StrEnum):
    STARTED = "started"  # no assessment had seen this entry into the stage: started now
    ASSESSED = "assessed"  # running, finished, or ended after this entry: left alone


class StartedCandidate(_Record):
    opportunity_id: str
    outcome: WaitingOutcome


class SweptCandidate(_Record):
    """A line of the backfill's list: who, where, since when, which test (None: none)."""

    opportunity_id: str
    name: str = ""
    stage: str
    entered_at_ms: int | None = None
    tests: tuple[str, ...] = ()
    outcome: str = ""  # started, assessed, no_test, would_start


class SweepReport(_Record):
    account_id: str
    mode: SweepMode
    listed: int
    assessed: int
    started: int
    no_test: int = 0


class SweepResult(_Record):
    """Counts (and, for a backfill, the candidates) of one sweep: its workflow result."""

    account_id: str
    mode: SweepMode
    since: datetime
    stages: tuple[str, ...] = ()
    listed: int = 0  # waiting in a trigger stage, not archived, within the window
    assessed: int = 0  # already assessed (running, finished, or ended after this entry)
    started: int = 0  # started now: their webhook never came (or a backfill)
    no_test: int = 0  # backfill: no test configured for them, not started
    candidates: tuple[SweptCandidate, ...] = ()  # backfill and dry run only


class StartedPage(_Record):
    candidates: tuple[StartedCandidate, ...] = ()

"""The recruiter commands' records (``workflows/commands.py``, ``activities/commands.py``).

A recruiter adds a command tag (``Py - Resend``, ``Py - Extend``, ``Py - Cancel``,
``Py - Retake``) to a candidate in Lever. Each account's ``CommandWatchWorkflow`` looks
for the tags every ``commands_every`` (one Lever list call for all four), and starts one
``CandidateCommandsWorkflow`` per tagged candidate, which applies each command to the
candidate's assessments, records the outcome, and removes the tags.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from pylever.contracts.records import ChosenTest, Status
from pylever.contracts.sweep import PlannedStage


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class CommandKind(StrEnum):
    """A command, named as its tag; the order here is the order they are applied in."""

    CANCEL = "Py - Cancel"
    RETAKE = "Py - Retake"
    EXTEND = "Py - Extend"
    RESEND = "Py - Resend"


COMMAND_TAGS: tuple[str, ...] = tuple(kind.value for kind in CommandKind)

RETAKE_MEMO = "retake"  # an assessment run's memo: which retake it is (absent: none)
RETAKE_ID_MEMO = "retake_id"  # and the command that started it

# How long one run of an account's watch lasts (its Schedule starts the next): the
# interval of the schedule, unless ``commands_every`` is longer.
WATCH_WINDOW_SECONDS = 600


class CommandWatchInput(_Record):
    account_id: str
    window_seconds: int = WATCH_WINDOW_SECONDS  # 0: look once and end


class CommandPlanRequest(_Record):
    account_id: str


class CommandPlan(_Record):
    """The account's command settings now, and its trigger stages (the webhook's settings)."""

    every_seconds: int
    extend_by_seconds: int
    stages: tuple[PlannedStage, ...] = ()


class ListCommanded(_Record):
    """One page of the account's opportunities that carry a command tag."""

    account_id: str
    offset: str | None = None


class CommandedCandidate(_Record):
    opportunity_id: str
    tags: tuple[str, ...] = ()  # its command tags (only those)


class CommandedPage(_Record):
    candidates: tuple[CommandedCandidate, ...] = ()
    next_offset: str | None = None


class CandidateTags(_Record):
    """A candidate's tags now (``lever.read_tags``), and whether it is archived."""

    tags: tuple[str, ...] = ()
    archived: bool = False


class PreviousCommands(_Record):
    """What the candidate's previous command run left: the commands it applied whose tags
    it could not remove (Lever failing for a week): they are not applied again."""

    unremoved: tuple[str, ...] = ()
    workflow_run: str | None = None


class CandidateCommandsInput(_Record):
    account_id: str
    opportunity_id: str
    plan: CommandPlan
    seen_tags: tuple[str, ...] = ()  # the command tags the listing showed (re-read first)


class Command(_Record):
    """One command as sent to an invitation workflow (an update)."""

    kind: CommandKind
    requested_at: datetime  # when the service found the tag
    extend_by_seconds: int = 0  # Extend: how much later the expiry moves


class CommandOutcome(_Record):
    """What a command did to one invitation (or to the candidate): applied, or why not."""

    command: CommandKind
    applied: bool
    detail: str
    target: str | None = None  # the workflow it was applied to
    at: datetime | None = None


class CommandTargetsRequest(_Record):
    account_id: str
    opportunity_id: str
    stage_ids: tuple[str, ...]


class AssessmentTarget(_Record):
    """One of the candidate's assessments (one per trigger stage), as Temporal holds it."""

    stage_id: str
    workflow_id: str
    running: bool
    status: Status | None = None  # PyStatus
    closed_at: datetime | None = None  # a closed one's close time (a Retake takes the latest)
    open_invitations: tuple[str, ...] = ()  # running InvitationWorkflow children (ids)
    finished_tests: tuple[ChosenTest, ...] = ()  # closed: the tests an invitation was sent for
    retakes: int = 0  # how many retakes this assessment has had


class CommandTargets(_Record):
    assessments: tuple[AssessmentTarget, ...] = ()


class DeliverCommand(_Record):
    """Send ``command`` to a running invitation workflow, as an update with ``update_id``."""

    workflow_id: str
    update_id: str
    command: Command


class RetakeRequest(_Record):
    account_id: str
    opportunity_id: str
    stage: PlannedStage
    target: AssessmentTarget
    retake_id: str  # unique per command run: Py's idempotency key of the new invitation

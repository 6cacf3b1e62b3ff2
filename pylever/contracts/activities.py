"""Every activity's name, argument and result: what a workflow may call, what a worker must run.

Workflows call these stubs (``workflows.calls``), never the activity classes, so they
import no I/O code. Each implementation is declared with the stub it implements::

    @LeverActivity.read_candidate.implementation
    async def read_candidate(self, req: ReadCandidate) -> Candidate: ...

and the type checker holds both sides to one signature: changing an activity's argument
or result on one side only fails ``make lint``. The names are recorded in every
workflow history: renaming one breaks the replay of executions already started.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from temporalio import activity

from pylever.contracts.commands import (
    CandidateTags,
    CommandedPage,
    CommandOutcome,
    CommandPlan,
    CommandPlanRequest,
    CommandTargets,
    CommandTargetsRequest,
    DeliverCommand,
    ListCommanded,
    PreviousCommands,
    RetakeRequest,
)
from pylever.contracts.records import (
    AccountPage,
    AssessmentPage,
    Candidate,
    CandidateRef,
    CreateInvitation,
    FindTests,
    InvitationRecord,
    LinkWrite,
    OpportunityRef,
    ReadCandidate,
    StageMove,
    TagWrite,
)
from pylever.contracts.sweep import (
    ListWaiting,
    StartedPage,
    StartWaiting,
    SweepPlan,
    SweepPlanRequest,
    SweepReport,
    WaitingPage,
)

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")
SelfT = TypeVar("SelfT")


@dataclass(frozen=True)
class Activity(Generic[ArgT, ResultT]):
    """One activity: its registered name and the type its result decodes to."""

    name: str
    result_type: Any  # a class, a generic alias or a union, for the payload converter

    def implementation(
        self, fn: Callable[[SelfT, ArgT], Awaitable[ResultT]]
    ) -> Callable[[SelfT, ArgT], Awaitable[ResultT]]:
        """Register ``fn`` (a method) as this activity, under this name."""
        return activity.defn(name=self.name)(fn)


class LeverActivity:
    """Reads and writes of one Lever opportunity, on the shared Lever task queue."""

    read_candidate: Final = Activity[ReadCandidate, Candidate]("lever.read_candidate", Candidate)
    opportunity_state: Final = Activity[OpportunityRef, str]("lever.opportunity_state", str)
    add_tags: Final = Activity[TagWrite, None]("lever.add_tags", None)
    remove_tags: Final = Activity[TagWrite, None]("lever.remove_tags", None)
    add_links: Final = Activity[LinkWrite, None]("lever.add_links", None)
    move_to_stage: Final = Activity[StageMove, str]("lever.move_to_stage", str)
    list_waiting: Final = Activity[ListWaiting, WaitingPage]("lever.list_waiting", WaitingPage)
    list_commanded: Final = Activity[ListCommanded, CommandedPage](
        "lever.list_commanded", CommandedPage
    )
    read_tags: Final = Activity[OpportunityRef, CandidateTags]("lever.read_tags", CandidateTags)


class PyActivity:
    """Calls to the Py platform API."""

    find_tests: Final = Activity[FindTests, dict[str, str]]("py.find_tests", dict[str, str])
    create_invitation: Final = Activity[CreateInvitation, InvitationRecord](
        "py.create_invitation", InvitationRecord
    )
    get_invitation: Final = Activity[str, InvitationRecord]("py.get_invitation", InvitationRecord)
    remind: Final = Activity[str, bool]("py.remind", bool)
    cancel: Final = Activity[str, InvitationRecord | None]("py.cancel", InvitationRecord | None)


class TemporalActivity:
    """Questions to Temporal's own visibility and deletions (the withdrawals, removals)."""

    running_assessments: Final = Activity[CandidateRef, list[str]](
        "temporal.running_assessments", list[str]
    )
    account_assessments: Final = Activity[AccountPage, AssessmentPage](
        "temporal.account_assessments", AssessmentPage
    )
    previous_invitations: Final = Activity[list[str], dict[str, str]](
        "temporal.previous_invitations", dict[str, str]
    )
    delete_executions: Final = Activity[list[str], list[str]](
        "temporal.delete_executions", list[str]
    )
    wait_closed: Final = Activity[list[str], None]("temporal.wait_closed", None)
    delete_candidate_executions: Final = Activity[CandidateRef, int](
        "temporal.delete_candidate_executions", int
    )


class SweepActivity:
    """The sweep's and the backfill's own steps (``activities/sweep.py``)."""

    # On the shared Lever queue (it may ask Lever for the stage list).
    plan: Final = Activity[SweepPlanRequest, SweepPlan]("sweep.plan", SweepPlan)
    # On the main queue: Temporal calls only.
    start_waiting: Final = Activity[StartWaiting, StartedPage]("sweep.start_waiting", StartedPage)
    report: Final = Activity[SweepReport, None]("sweep.report", None)


class CommandActivity:
    """The recruiter commands' own steps (``activities/commands.py``)."""

    # On the shared Lever queue (it may ask Lever for the stage list).
    plan: Final = Activity[CommandPlanRequest, CommandPlan]("commands.plan", CommandPlan)
    # On the main queue: Temporal calls only.
    targets: Final = Activity[CommandTargetsRequest, CommandTargets](
        "commands.targets", CommandTargets
    )
    deliver: Final = Activity[DeliverCommand, CommandOutcome]("commands.deliver", CommandOutcome)
    previous: Final = Activity[OpportunityRef, PreviousCommands](
        "commands.previous", PreviousCommands
    )
    retake: Final = Activity[RetakeRequest, CommandOutcome]("commands.retake", CommandOutcome)

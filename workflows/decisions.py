"""Pure decisions of the assessment: no I/O, no clock, no call to Temporal.

Which tests to send, which verdict a score earns, which Lever tags to add and
remove, when reminders and the expiry fall, what an invitation's wait ended in, how
ids are spelled. The workflows call these; the unit tests call them directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum

from temporalio.common import Priority

from pylever.contracts.commands import (
    COMMAND_TAGS,
    AssessmentTarget,
    CommandKind,
    CommandTargets,
)
from pylever.contracts.records import (
    ChosenTest,
    InvitationRecord,
    InvitationResult,
    Status,
    TriggerSettings,
    Verdict,
    Withdrawal,
)

TAG_INVITED = "Py - Invited"
TAG_STARTED = "Py - Started"
TAG_PASS = "Py - Pass"
TAG_FAIL = "Py - Fail"
TAG_NEEDS_REVIEW = "Py - Needs Review"
TAG_EXPIRED = "Py - Expired"
TAG_NO_TEST = "Py - No Test Configured"
TAG_NO_EMAIL = "Py - Error: No Email"
TAG_INVITE_FAILED = "Py - Error: Invite Failed"

VERDICT_TAGS = {
    Verdict.PASS: TAG_PASS,
    Verdict.FAIL: TAG_FAIL,
    Verdict.NEEDS_REVIEW: TAG_NEEDS_REVIEW,
}
IN_PROGRESS_TAGS = (TAG_INVITED, TAG_STARTED)

WORKFLOW_ID_PREFIX = "assessment"


# --- ids ---------------------------------------------------------------------


def assessment_workflow_id(account_id: str, opportunity_id: str, stage_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}:{account_id}:{opportunity_id}:{stage_id}"


def candidate_commands_workflow_id(account_id: str, opportunity_id: str) -> str:
    """One candidate's recruiter commands (``workflows.commands``): one run at a time."""
    return f"commands:{account_id}:{opportunity_id}"


def invitation_workflow_id(assessment_id: str, test_id: str) -> str:
    """The child's id; also the Py ``reference`` and the invitation's idempotency key."""
    return f"{assessment_id}:{test_id}"


def idempotency_key(reference: str, stage_entry: int, retake_id: str = "") -> str:
    """Py's ``Idempotency-Key`` for an invitation: one invitation per entry into the stage.

    The first entry uses the reference (the child's workflow id) as it is; the n-th
    entry (n >= 2: the candidate left the stage and came back, and the previous
    assessment may run again, see ``models.RERUNNABLE``) appends ``#n``. Retries
    and re-delivered webhooks of the same entry keep the key, so Py answers with
    the same invitation.

    A recruiter's ``Py - Retake`` appends ``#retake-<id>``, the id of the command's run:
    a new invitation for the same test, whatever runs came between (a count kept in a
    run's memo could start over and hand back an earlier retake's invitation).
    """
    key = reference if stage_entry <= 1 else f"{reference}#{stage_entry}"
    return f"{key}#retake-{retake_id}" if retake_id else key


_REFERENCE = re.compile(rf"{WORKFLOW_ID_PREFIX}:[^:\s]+:[^:\s]+:[^:\s]+:[^:\s]+")


def is_invitation_reference(reference: str) -> bool:
    return len(reference) <= 400 and bool(_REFERENCE.fullmatch(reference))


# Temporal's priority keys run from 1 (first) to 5; unset is 3. The sweep's and the
# backfill's work (their own calls, and the assessments they start) comes after
# webhook-driven work on every queue they share with it.
BACKGROUND_PRIORITY_KEY = 5


def background_priority(account_id: str) -> Priority:
    """A sweep's or a backfill's work: behind webhook-driven work, with the account's
    fairness key, so its Lever calls count against the account's own rate."""
    return Priority(priority_key=BACKGROUND_PRIORITY_KEY, fairness_key=account_id)


def lever_task_queue(base_queue: str) -> str:
    """Every account's Lever activities run on this one task queue, each keyed by its
    account (``Priority(fairness_key=account)``): the server limits each key's rate."""
    return f"{base_queue}-lever"


def legacy_lever_task_queue(base_queue: str, account_id: str) -> str:
    """Where Lever activities ran before the shared queue (one queue per account).

    Activities scheduled there before a deployment moved to the shared queue stay
    there, retries included; ``pylever.temporal.legacy_queues`` drains them."""
    return f"{base_queue}-lever-{account_id}"


# --- test choice ---------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    tests: tuple[ChosenTest, ...] = ()
    reason: str | None = None  # why nothing is sent


def names_to_look_up(candidate_tags: Iterable[str], default_test: str | None) -> list[str]:
    """The names worth asking Py about: every candidate tag, and the default test."""
    names = [t for t in dict.fromkeys(candidate_tags) if t and not t.startswith("Py - ")]
    if default_test and default_test not in names:
        names.append(default_test)
    return names


def choose_tests(
    candidate_tags: Sequence[str],
    py_tests: Mapping[str, str],
    default_test: str | None,
) -> Choice:
    """Candidate tags equal to a Py test name (exact, case-sensitive) win; else the default.

    ``py_tests`` maps Py test names to ids.
    """
    tagged = [
        ChosenTest(id=py_tests[t], name=t) for t in dict.fromkeys(candidate_tags) if t in py_tests
    ]
    if tagged:
        return Choice(tests=tuple(tagged))
    if default_test is None:
        return Choice(reason="no candidate tag names a Py test and the stage has no default test")
    if default_test not in py_tests:
        return Choice(reason=f"the default test {default_test!r} does not exist at Py")
    return Choice(tests=(ChosenTest(id=py_tests[default_test], name=default_test),))


# --- verdict -------------------------------------------------------------------


def verdict_for(
    score: float, pass_threshold: float | None, fail_threshold: float | None
) -> Verdict:
    """``Pass`` at or above pass, ``Fail`` at or below fail, else ``Needs Review``."""
    if pass_threshold is not None and score >= pass_threshold:
        return Verdict.PASS
    if fail_threshold is not None and score <= fail_threshold:
        return Verdict.FAIL
    return Verdict.NEEDS_REVIEW


def move_target(verdict: Verdict, settings: TriggerSettings) -> str | None:
    if verdict is Verdict.PASS:
        return settings.move_on_pass
    if verdict is Verdict.FAIL:
        return settings.move_on_fail
    return None


def combined_move_target(
    verdicts: Sequence[Verdict | None], settings: TriggerSettings
) -> str | None:
    """Several tests for one candidate: any Fail moves on fail; all Pass moves on pass.

    ``None`` stands for a test without a verdict (expired, cancelled, not sent).
    """
    if any(v is Verdict.FAIL for v in verdicts):
        return settings.move_on_fail
    if verdicts and all(v is Verdict.PASS for v in verdicts):
        return settings.move_on_pass
    return None


# --- tags ----------------------------------------------------------------------


@dataclass(frozen=True)
class TagChange:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = field(default_factory=tuple)


def tags_on_result(verdict: Verdict, *, last: bool = True, retake: bool = False) -> TagChange:
    """The verdict tag; the in-progress tags go only with the candidate's last open test.

    With several tests (one child workflow each), ``last`` is False for every test
    and the parent clears the in-progress tags once all have finished. A retake's
    verdict replaces the earlier one (and an earlier ``Py - Expired``).
    """
    remove = IN_PROGRESS_TAGS if last else ()
    if retake:
        earlier = tuple(
            t for t in (*VERDICT_TAGS.values(), TAG_EXPIRED) if t != VERDICT_TAGS[verdict]
        )
        remove = (*remove, *earlier)
    return TagChange(add=(VERDICT_TAGS[verdict],), remove=remove)


# Tags of an earlier run that ended without an invitation (SPEC section 6: such a run is
# redone when the candidate re-enters the stage) or was withdrawn and then expired.
OUTCOME_OF_A_RUN_WITHOUT_RESULT = (TAG_NO_TEST, TAG_NO_EMAIL, TAG_INVITE_FAILED, TAG_EXPIRED)


def stale_tags(candidate_tags: Iterable[str]) -> tuple[str, ...]:
    """Tags left by an earlier run that an invitation now being sent makes untrue."""
    present = set(candidate_tags)
    return tuple(t for t in OUTCOME_OF_A_RUN_WITHOUT_RESULT if t in present)


def verdict_tags(candidate_tags: Iterable[str]) -> tuple[str, ...]:
    """The verdict tags the candidate carries."""
    present = set(candidate_tags)
    return tuple(t for t in VERDICT_TAGS.values() if t in present)


def tags_on_expiry(*, last: bool = True) -> TagChange:
    return TagChange(add=(TAG_EXPIRED,), remove=IN_PROGRESS_TAGS if last else ())


def tags_on_withdrawal(reason: str) -> TagChange:
    """Archived: clear the in-progress tags. Deleted, account removed: write nothing."""
    if not withdrawal_writes_lever(reason):
        return TagChange()
    return TagChange(remove=IN_PROGRESS_TAGS)


# --- withdrawal ----------------------------------------------------------------

ACCOUNT_REMOVED = "account_removed"  # a ``Withdrawal.reason``: the account left the configuration
ACCOUNT_REMOVED_TEXT = "account removed from configuration"
RECRUITER_CANCELLED = "recruiter_cancelled"  # a ``Withdrawal.reason``: the ``Py - Cancel`` tag
RECRUITER_CANCELLED_TEXT = "cancelled by a recruiter (Py - Cancel)"
# Withdrawals that write nothing to Lever: the candidate is gone (deleted), or the customer
# left (its Lever key may already be revoked).
_NO_LEVER_WRITES = frozenset({"deleted", ACCOUNT_REMOVED})


def withdrawal_writes_lever(reason: str) -> bool:
    """Whether a withdrawn invitation still writes to Lever (in-progress tags cleared, a
    result Py already held applied): only for an archived candidate."""
    return reason not in _NO_LEVER_WRITES


def withdrawal_reason_text(reason: str) -> str:
    """Why a withdrawn assessment ended: ``candidate archived``, ``candidate deleted``,
    ``account removed from configuration``."""
    if reason == ACCOUNT_REMOVED:
        return ACCOUNT_REMOVED_TEXT
    if reason == RECRUITER_CANCELLED:
        return RECRUITER_CANCELLED_TEXT
    return f"candidate {reason}"


def withdrawal_stops_lever_calls(reason: str) -> bool:
    """Whether a withdrawal gives up the Lever calls in flight (a queued cosmetic tag, the
    first read of the opportunity) instead of waiting for them: only an account removal,
    whose Lever key may be revoked and whose Lever task queue may have no worker left."""
    return reason == ACCOUNT_REMOVED


def reason_after_withdrawn_children(reason: str | None) -> str | None:
    """The reason an assessment gives when it ends after its withdrawn children: only an
    account removal names itself (an archive or delete keeps ending without one)."""
    if reason == ACCOUNT_REMOVED:
        return ACCOUNT_REMOVED_TEXT
    return RECRUITER_CANCELLED_TEXT if reason == RECRUITER_CANCELLED else None


def reason_of_cancelled_children(results: Sequence[InvitationResult]) -> str | None:
    """An assessment whose invitations a recruiter cancelled (``Py - Cancel``) says so."""
    if results and all(
        r.status is Status.CANCELLED and r.error == RECRUITER_CANCELLED_TEXT for r in results
    ):
        return RECRUITER_CANCELLED_TEXT
    return None


# --- time ----------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    at_seconds: int  # after the invitation was sent
    kind: str  # "reminder" | "expiry"


def checkpoints(reminders_seconds: Iterable[int], expire_after_seconds: int) -> list[Checkpoint]:
    """Reminders before the expiry, in order, without repeats; the expiry last."""
    reminders = sorted({r for r in reminders_seconds if 0 < r < expire_after_seconds})
    return [Checkpoint(r, "reminder") for r in reminders] + [
        Checkpoint(expire_after_seconds, "expiry")
    ]


# --- the outcome of one invitation ------------------------------------------------


class Halt(Enum):
    """Why an invitation stops waiting without a result from Py."""

    LEVER_GONE = "lever_gone"  # Lever answers 404 for the opportunity: the candidate is gone
    PY_CONTRACT = "py_contract"  # Py sent a record that breaks its contract
    LEVER_UNREACHABLE = "lever_unreachable"  # a write still failed after the durable horizon


class Outcome(Enum):
    """What an invitation writes once its wait is over (``InvitationWorkflow._apply``)."""

    RESULT = "result"  # completed at Py: the verdict, the report link, the stage move
    EXPIRED = "expired"  # expired (cancelled at Py by the workflow): "Py - Expired"
    CANCELLED_AT_PY = "cancelled_at_py"  # cancelled at Py by someone else: clear the tags
    STOPPED = "stopped"  # withdrawn, or the candidate gone: cancel at Py first, clear the tags
    BROKEN_CONTRACT = "broken_contract"  # Py broke its contract, no result: clear, end error


def invitation_outcome(
    final: InvitationRecord | None, withdrawal: Withdrawal | None, halt: Halt | None
) -> Outcome:
    """The outcome of an invitation whose wait is over, from what it holds then: Py's final
    record (completed, expired or cancelled), a withdrawal, a halt.

    A completed result is always written (a withdrawal or a halt changes only how much of
    it); a contract Py broke without a result ends in an error; a withdrawal or a halt
    stops it (cancelled at Py first, where a result may still turn up); otherwise Py's
    record says whether it expired or was cancelled.
    """
    completed = final is not None and final.status == "completed"
    if halt is Halt.PY_CONTRACT and not completed:
        return Outcome.BROKEN_CONTRACT
    if completed:
        return Outcome.RESULT
    if final is None or withdrawal is not None or halt is not None:
        return Outcome.STOPPED
    if final.status == "expired":
        return Outcome.EXPIRED
    return Outcome.CANCELLED_AT_PY


# --- outcome of an assessment ------------------------------------------------------


def overall_status(results: Sequence[InvitationResult]) -> Status:
    """The parent's status from its invitations': the most advanced one speaks for all."""
    if not results:
        return Status.NOT_SENT
    order = [
        Status.COMPLETED,
        Status.STARTED,
        Status.INVITED,
        Status.EXPIRED,
        Status.CANCELLED,
        Status.ERROR,
        Status.NOT_SENT,
    ]
    present = {r.status for r in results}
    for status in order:
        if status in present:
            return status
    return results[0].status


def summary(
    candidate: str, test: str | None, status: Status, verdict: Verdict | None = None
) -> str:
    """The line the Temporal UI shows for a workflow (encrypted in history by the codec)."""
    parts = [candidate or "(unnamed candidate)"]
    if test:
        parts.append(test)
    parts.append(status.value if verdict is None else f"{status.value} ({verdict.value})")
    return " · ".join(parts)


# --- recruiter commands ------------------------------------------------------------


def commands_in_order(tags: Iterable[str]) -> tuple[CommandKind, ...]:
    """The command tags among ``tags``, in the order they are applied: Cancel, Retake,
    Extend, Resend (a Cancel and a Retake together restart the test; an Extend or a
    Resend after a Cancel has nothing left to act on)."""
    present = set(tags)
    return tuple(kind for kind in CommandKind if kind.value in present)


def is_command_tag(tag: str) -> bool:
    return tag in COMMAND_TAGS


@dataclass(frozen=True)
class CommandSteps:
    """Where one command goes: the open invitations (Resend, Extend, Cancel), or the
    finished assessments to retake; none, with the reason it does not apply."""

    invitations: tuple[str, ...] = ()
    retakes: tuple[AssessmentTarget, ...] = ()
    not_applicable: str | None = None


def command_steps(command: CommandKind, targets: CommandTargets) -> CommandSteps:
    """What ``command`` acts on among the candidate's assessments (one per trigger stage)."""
    assessments = targets.assessments
    if not assessments:
        return CommandSteps(not_applicable="the candidate has no Py assessment")
    if command is CommandKind.RETAKE:
        finished = [a for a in assessments if not a.running and a.finished_tests]
        if finished:
            # The test the candidate took last (one trigger stage's), not every stage's.
            latest = max(finished, key=lambda a: a.closed_at or _LONG_AGO)
            return CommandSteps(retakes=(latest,))
        if any(a.running for a in assessments):
            return CommandSteps(
                not_applicable="the test is still open (Py - Cancel it first to retake it)"
            )
        return CommandSteps(not_applicable=f"no finished test to retake ({_latest(assessments)})")
    invitations = tuple(i for a in assessments if a.running for i in a.open_invitations)
    if invitations:
        return CommandSteps(invitations=invitations)
    return CommandSteps(not_applicable=f"no open invitation ({_latest(assessments)})")


_LONG_AGO = datetime.min.replace(tzinfo=UTC)


def _latest(assessments: Sequence[AssessmentTarget]) -> str:
    statuses = ", ".join(f"{a.status.value if a.status else 'unknown'}" for a in assessments)
    return f"the assessment is {statuses}" if len(assessments) == 1 else f"assessments: {statuses}"


def invitation_command_refusal(
    command: CommandKind,
    status: Status,
    *,
    invitation_id: str | None,
    settled: bool,
    expiring: bool,
) -> str | None:
    """Why an invitation cannot take ``command`` now (None: it can)."""
    if command is CommandKind.RETAKE:
        return "a retake is for a finished test"
    if status not in (Status.INVITED, Status.STARTED) or invitation_id is None:
        if status is Status.RESOLVING:
            return "the invitation is not sent yet"
        return f"the test is {status.value}"
    if settled:
        return "the test is finishing"
    if expiring and command is not CommandKind.CANCEL:
        return "the invitation is expiring now"
    return None

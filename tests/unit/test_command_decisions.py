"""Recruiter command tags (``Py - Cancel``, ``Retake``, ``Extend``, ``Resend``): the pure rules.

``workflows/decisions.py`` decides which commands a candidate carries and in which order,
where each one goes (the open invitations, or the finished assessments to retake), why an
invitation refuses one, the retake's idempotency key and tags; ``pylever.temporal.schedules``
how often an account's watch runs; ``cli.py status`` prints the outcomes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import ScheduleActionStartWorkflow, ScheduleOverlapPolicy

from pylever.config.file import AppConfig, parse_config
from pylever.contracts.commands import (
    COMMAND_TAGS,
    WATCH_WINDOW_SECONDS,
    AssessmentTarget,
    CommandKind,
    CommandTargets,
    CommandWatchInput,
)
from pylever.contracts.records import ChosenTest, InvitationResult, Status, Verdict
from pylever.ops.commands.status import render_status
from pylever.temporal.schedules import (
    WATCH_OVERRUN,
    command_schedule,
    schedule_id,
    watch_interval,
)
from workflows import decisions
from workflows.decisions import (
    IN_PROGRESS_TAGS,
    RECRUITER_CANCELLED_TEXT,
    TAG_EXPIRED,
    TAG_FAIL,
    TAG_INVITED,
    TAG_NEEDS_REVIEW,
    TAG_PASS,
    TAG_STARTED,
    VERDICT_TAGS,
)

CANCEL, RETAKE, EXTEND, RESEND = (
    CommandKind.CANCEL,
    CommandKind.RETAKE,
    CommandKind.EXTEND,
    CommandKind.RESEND,
)
TEST = ChosenTest(id="t-py", name="Python Basics")
SQL = ChosenTest(id="t-sql", name="SQL Fundamentals")


# --- which commands, in which order ----------------------------------------------------


def test_the_command_tags_are_the_four_of_the_contract():
    assert COMMAND_TAGS == ("Py - Cancel", "Py - Retake", "Py - Extend", "Py - Resend")
    assert all(decisions.is_command_tag(t) for t in COMMAND_TAGS)
    assert not decisions.is_command_tag("Py - Invited")


def test_commands_are_applied_cancel_retake_extend_resend_whatever_the_tag_order():
    tags = ["Py - Resend", "Py - Extend", "Py - Retake", "Py - Cancel"]
    assert decisions.commands_in_order(tags) == (CANCEL, RETAKE, EXTEND, RESEND)
    assert decisions.commands_in_order(reversed(tags)) == (CANCEL, RETAKE, EXTEND, RESEND)
    assert decisions.commands_in_order(["Py - Resend", "Py - Cancel"]) == (CANCEL, RESEND)
    assert decisions.commands_in_order(["Py - Extend", "Py - Retake"]) == (RETAKE, EXTEND)


def test_other_tags_are_not_commands_and_a_repeated_tag_is_one_command():
    tags = ["Py - Invited", "Py - Pass", "Python Basics", "Py - Extend", "Py - Extend", "vip"]
    assert decisions.commands_in_order(tags) == (EXTEND,)
    assert decisions.commands_in_order(["Py - Invited", TAG_EXPIRED, "Senior"]) == ()
    assert decisions.commands_in_order([]) == ()


@pytest.mark.parametrize(
    "near_miss",
    ["py - resend", "PY - RESEND", "Py - resend", "Py-Resend", "Py - Resend ", " Py - Resend",
     "Py -  Resend", "Resend", "Py - Resend!"],
)  # fmt: skip
def test_a_command_tag_is_matched_exactly(near_miss: str):
    assert decisions.commands_in_order([near_miss]) == ()
    assert not decisions.is_command_tag(near_miss)


# --- where a command goes ------------------------------------------------------------------


def running(stage: str, *invitations: str, status: Status = Status.INVITED) -> AssessmentTarget:
    return AssessmentTarget(
        stage_id=stage,
        workflow_id=f"assessment:acme:opp-1:{stage}",
        running=True,
        status=status,
        open_invitations=invitations,
    )


def closed(
    stage: str, *tests: ChosenTest, status: Status | None = Status.COMPLETED, retakes: int = 0
) -> AssessmentTarget:
    return AssessmentTarget(
        stage_id=stage,
        workflow_id=f"assessment:acme:opp-1:{stage}",
        running=False,
        status=status,
        finished_tests=tests,
        retakes=retakes,
    )


def targets(*assessments: AssessmentTarget) -> CommandTargets:
    return CommandTargets(assessments=assessments)


@pytest.mark.parametrize("kind", list(CommandKind))
def test_a_candidate_without_an_assessment_takes_no_command(kind: CommandKind):
    steps = decisions.command_steps(kind, targets())
    assert steps == decisions.CommandSteps(not_applicable="the candidate has no Py assessment")


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.EXPIRED, Status.CANCELLED])
def test_retake_goes_to_the_finished_assessment(status: Status):
    done = closed("s1", TEST, status=status, retakes=1)
    steps = decisions.command_steps(RETAKE, targets(done))
    assert steps.retakes == (done,)
    assert steps.invitations == () and steps.not_applicable is None


def test_retake_goes_to_the_test_taken_last_and_leaves_an_open_one_alone():
    day = datetime(2026, 11, 30, tzinfo=UTC)
    older = closed("s1", TEST).model_copy(update={"closed_at": day})
    latest = closed("s3", TEST, SQL, status=Status.EXPIRED).model_copy(
        update={"closed_at": day + timedelta(hours=1)}
    )
    steps = decisions.command_steps(RETAKE, targets(latest, running("s2", "inv-2"), older))
    assert steps.retakes == (latest,)  # one new invitation, not one per stage
    assert steps.invitations == () and steps.not_applicable is None
    swapped = older.model_copy(update={"closed_at": day + timedelta(hours=2)})
    assert decisions.command_steps(RETAKE, targets(latest, swapped)).retakes == (swapped,)


def test_retake_while_the_test_is_open_says_cancel_it_first():
    steps = decisions.command_steps(RETAKE, targets(running("s1", "inv-1")))
    assert steps.retakes == () and steps.invitations == ()
    assert steps.not_applicable == "the test is still open (Py - Cancel it first to retake it)"
    # Open beside a closed one that sent nothing: still "open", not "nothing finished".
    both = targets(closed("s1", status=Status.NOT_SENT), running("s2", status=Status.RESOLVING))
    assert decisions.command_steps(RETAKE, both).not_applicable == (
        "the test is still open (Py - Cancel it first to retake it)"
    )


def test_retake_with_no_finished_test_names_how_the_assessments_ended():
    one = decisions.command_steps(RETAKE, targets(closed("s1", status=Status.NOT_SENT)))
    assert one == decisions.CommandSteps(
        not_applicable="no finished test to retake (the assessment is not_sent)"
    )
    two = decisions.command_steps(
        RETAKE, targets(closed("s1", status=Status.ERROR), closed("s2", status=None))
    )
    assert two.retakes == ()
    assert two.not_applicable == "no finished test to retake (assessments: error, unknown)"


@pytest.mark.parametrize("kind", [RESEND, EXTEND, CANCEL])
def test_resend_extend_cancel_go_to_every_open_invitation_across_stages(kind: CommandKind):
    candidate = targets(
        running("s1", "inv-a", "inv-b"),
        closed("s2", TEST),
        running("s3", "inv-c", status=Status.STARTED),
    )
    steps = decisions.command_steps(kind, candidate)
    assert steps.invitations == ("inv-a", "inv-b", "inv-c")
    assert steps.retakes == () and steps.not_applicable is None


@pytest.mark.parametrize("kind", [RESEND, EXTEND, CANCEL])
def test_resend_extend_cancel_with_nothing_open_say_why(kind: CommandKind):
    finished = decisions.command_steps(kind, targets(closed("s1", TEST, status=Status.EXPIRED)))
    assert finished == decisions.CommandSteps(
        not_applicable="no open invitation (the assessment is expired)"
    )
    # Running but not sent yet (no child), and a closed one: neither has an open invitation.
    starting = targets(running("s1", status=Status.RESOLVING), closed("s2", TEST))
    assert decisions.command_steps(kind, starting) == decisions.CommandSteps(
        not_applicable="no open invitation (assessments: resolving, completed)"
    )


def test_a_closed_assessment_never_receives_an_invitation_command():
    # Only running assessments' invitations are delivered to, whatever a target lists.
    stale = closed("s1", TEST).model_copy(update={"open_invitations": ("inv-gone",)})
    steps = decisions.command_steps(RESEND, targets(stale))
    assert steps.invitations == ()
    assert steps.not_applicable == "no open invitation (the assessment is completed)"


# --- what an invitation says to a command ------------------------------------------------------


def refusal(
    kind: CommandKind,
    status: Status = Status.INVITED,
    *,
    invitation_id: str | None = "inv-1",
    settled: bool = False,
    expiring: bool = False,
) -> str | None:
    return decisions.invitation_command_refusal(
        kind, status, invitation_id=invitation_id, settled=settled, expiring=expiring
    )


@pytest.mark.parametrize("kind", [RESEND, EXTEND, CANCEL])
@pytest.mark.parametrize("status", [Status.INVITED, Status.STARTED])
def test_an_open_invitation_takes_resend_extend_and_cancel(kind: CommandKind, status: Status):
    assert refusal(kind, status) is None


@pytest.mark.parametrize("status", list(Status))
def test_an_invitation_never_takes_a_retake(status: Status):
    assert refusal(RETAKE, status) == "a retake is for a finished test"


@pytest.mark.parametrize("kind", [RESEND, EXTEND, CANCEL])
def test_an_invitation_not_sent_yet_refuses(kind: CommandKind):
    assert refusal(kind, Status.RESOLVING, invitation_id=None) == "the invitation is not sent yet"
    # An open status without Py's id yet is not sent either: nothing to act on at Py.
    assert refusal(kind, Status.INVITED, invitation_id=None) is not None


@pytest.mark.parametrize("kind", [RESEND, EXTEND, CANCEL])
@pytest.mark.parametrize(
    "status",
    [Status.COMPLETED, Status.EXPIRED, Status.CANCELLED, Status.ERROR, Status.NOT_SENT],
)
def test_a_finished_invitation_refuses_with_its_status(kind: CommandKind, status: Status):
    assert refusal(kind, status) == f"the test is {status.value}"


@pytest.mark.parametrize("kind", [RESEND, EXTEND, CANCEL])
def test_an_invitation_whose_result_is_being_written_refuses(kind: CommandKind):
    assert refusal(kind, settled=True) == "the test is finishing"
    assert refusal(kind, Status.STARTED, settled=True, expiring=True) == "the test is finishing"


def test_at_the_expiry_check_only_a_cancel_is_taken():
    assert refusal(RESEND, expiring=True) == "the invitation is expiring now"
    assert refusal(EXTEND, Status.STARTED, expiring=True) == "the invitation is expiring now"
    assert refusal(CANCEL, expiring=True) is None


# --- a retake's invitation and tags ----------------------------------------------------------


REF = "assessment:acme:opp-1:stage-1:t-py"


def test_a_retake_is_a_new_idempotency_key_per_retake_keeping_the_stage_entry():
    assert decisions.idempotency_key(REF, 1) == REF
    assert decisions.idempotency_key(REF, 1, "") == REF
    assert decisions.idempotency_key(REF, 3, "") == f"{REF}#3"
    assert decisions.idempotency_key(REF, 1, "run-a") == f"{REF}#retake-run-a"
    assert decisions.idempotency_key(REF, 3, "run-b") == f"{REF}#3#retake-run-b"
    keys = {
        decisions.idempotency_key(REF, entry, run)
        for entry in (1, 2, 3)
        for run in ("", "run-a", "run-b", "run-c")
    }
    assert len(keys) == 12  # every (entry, retake) pair is its own invitation at Py


@pytest.mark.parametrize("verdict", list(Verdict))
def test_a_retakes_verdict_replaces_the_earlier_verdicts_and_expired(verdict: Verdict):
    mine = VERDICT_TAGS[verdict]
    change = decisions.tags_on_result(verdict, retake=True)
    assert change.add == (mine,)
    assert mine not in change.remove
    others = {t for t in (TAG_PASS, TAG_FAIL, TAG_NEEDS_REVIEW) if t != mine}
    assert set(change.remove) == {*IN_PROGRESS_TAGS, *others, TAG_EXPIRED}


@pytest.mark.parametrize("verdict", list(Verdict))
def test_a_retakes_in_progress_tags_still_go_only_with_the_last_test(verdict: Verdict):
    not_last = decisions.tags_on_result(verdict, last=False, retake=True)
    assert TAG_INVITED not in not_last.remove and TAG_STARTED not in not_last.remove
    assert TAG_EXPIRED in not_last.remove


@pytest.mark.parametrize("verdict", list(Verdict))
def test_a_first_verdict_keeps_the_other_tags(verdict: Verdict):
    change = decisions.tags_on_result(verdict)
    assert change.add == (VERDICT_TAGS[verdict],)
    assert change.remove == IN_PROGRESS_TAGS
    assert decisions.tags_on_result(verdict, last=False).remove == ()


def test_verdict_tags_are_the_verdicts_a_candidate_carries():
    tags = ["Py - Invited", TAG_FAIL, "Python Basics", TAG_EXPIRED, TAG_PASS, "Py - Retake"]
    assert decisions.verdict_tags(tags) == (TAG_PASS, TAG_FAIL)
    assert decisions.verdict_tags([TAG_NEEDS_REVIEW]) == (TAG_NEEDS_REVIEW,)
    assert decisions.verdict_tags(["py - pass", TAG_EXPIRED, *IN_PROGRESS_TAGS]) == ()


def result(status: Status, error: str | None = None, test: ChosenTest = TEST) -> InvitationResult:
    return InvitationResult(test=test, status=status, invitation_id="inv", error=error)


def test_an_assessment_whose_invitations_a_recruiter_cancelled_says_so():
    cancelled = result(Status.CANCELLED, RECRUITER_CANCELLED_TEXT)
    assert decisions.reason_of_cancelled_children([cancelled]) == RECRUITER_CANCELLED_TEXT
    both = [cancelled, result(Status.CANCELLED, RECRUITER_CANCELLED_TEXT, SQL)]
    assert decisions.reason_of_cancelled_children(both) == RECRUITER_CANCELLED_TEXT


def test_other_endings_are_not_a_recruiters_cancel():
    cancelled = result(Status.CANCELLED, RECRUITER_CANCELLED_TEXT)
    assert decisions.reason_of_cancelled_children([]) is None
    # One test finished before the cancel: the assessment did not end by the recruiter alone.
    assert decisions.reason_of_cancelled_children([cancelled, result(Status.COMPLETED)]) is None
    assert decisions.reason_of_cancelled_children([result(Status.CANCELLED)]) is None
    archived = result(Status.CANCELLED, decisions.withdrawal_reason_text("archived"))
    assert decisions.reason_of_cancelled_children([archived]) is None
    # The same words on an invitation that did not end cancelled do not count.
    assert (
        decisions.reason_of_cancelled_children([result(Status.ERROR, RECRUITER_CANCELLED_TEXT)])
        is None
    )


def test_the_recruiter_cancel_reason_reads_as_such():
    assert decisions.withdrawal_reason_text("recruiter_cancelled") == RECRUITER_CANCELLED_TEXT
    assert RECRUITER_CANCELLED_TEXT == "cancelled by a recruiter (Py - Cancel)"
    assert (
        decisions.reason_after_withdrawn_children("recruiter_cancelled") == RECRUITER_CANCELLED_TEXT
    )
    assert decisions.reason_after_withdrawn_children("archived") is None


# --- the account's watch schedule ---------------------------------------------------------


def config(defaults: dict[str, Any] | None = None, **account: Any) -> AppConfig:
    return parse_config(
        {
            "service": {"public_url": "https://lever.py.example"},
            "py": {"api_url": "https://py.example", "api_key": "k", "callback_secret": "s"},
            "defaults": defaults or {},
            "accounts": [
                {
                    "id": "acme",
                    "lever_api_key": "k",
                    "webhook_signature_tokens": ["t"],
                    "triggers": [{"stage": "S"}],
                    **account,
                },
            ],
        }  # fmt: skip
    )


def interval_of(cfg: AppConfig) -> timedelta:
    return watch_interval(cfg, cfg.accounts[0])


def test_a_watch_run_lasts_ten_minutes_at_the_default_and_shorter_commands_every():
    assert WATCH_WINDOW_SECONDS == 600
    assert interval_of(config()) == timedelta(minutes=10)  # commands_every 1m
    assert interval_of(config(commands_every="1s")) == timedelta(minutes=10)
    assert interval_of(config({"commands_every": "30s"})) == timedelta(minutes=10)
    assert interval_of(config(commands_every="10m")) == timedelta(minutes=10)


def test_a_longer_commands_every_is_the_watch_interval():
    assert interval_of(config(commands_every="15m")) == timedelta(minutes=15)
    assert interval_of(config({"commands_every": "2h"})) == timedelta(hours=2)
    # The account's own setting wins over [defaults].
    assert interval_of(config({"commands_every": "2h"}, commands_every="1m")) == timedelta(
        minutes=10
    )
    assert interval_of(config({"commands_every": "1m"}, commands_every="1h")) == timedelta(hours=1)


@pytest.mark.parametrize("interval", [timedelta(minutes=10), timedelta(minutes=45)])
def test_the_command_schedule_buffers_one_run_and_ends_a_stuck_one(interval: timedelta):
    schedule = command_schedule("py-lever", "acme", interval)
    assert schedule.policy.overlap == ScheduleOverlapPolicy.BUFFER_ONE
    assert schedule.policy.catchup_window == interval
    [every] = schedule.spec.intervals
    assert every.every == interval
    action = schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert action.workflow == "CommandWatchWorkflow"
    assert action.task_queue == "py-lever"
    assert action.id == schedule_id("py-lever", "acme", "commands") == "py-lever-commands-acme"
    assert WATCH_OVERRUN == timedelta(hours=1)
    assert action.execution_timeout == interval + timedelta(hours=1)
    # Each run looks for the whole interval (the next run is buffered behind it).
    assert list(action.args) == [
        CommandWatchInput(account_id="acme", window_seconds=int(interval.total_seconds()))
    ]
    assert action.priority.priority_key == decisions.BACKGROUND_PRIORITY_KEY
    assert action.priority.fairness_key == "acme"


# --- cli.py status -------------------------------------------------------------------------


def test_cli_status_lists_the_recruiter_commands_and_their_outcomes():
    outcomes: list[dict[str, Any]] = [
        {"command": "Py - Cancel", "applied": True, "at": "2026-11-30T10:00:01Z",
         "detail": "cancelled at Py; in-progress tags removed",
         "target": "assessment:acme:opp-1:s1:t-py"},
        {"command": "Py - Resend", "applied": False, "at": "2026-11-30T10:00:02Z",
         "detail": "no open invitation (the assessment is cancelled)", "target": None},
    ]  # fmt: skip
    commands_row = {
        "workflow_id": "commands:acme:opp-1",
        "kind": "commands",
        "commands": ["Py - Cancel", "Py - Resend"],
        "outcomes": outcomes,
        "tags_removed": True,
        "execution_status": "completed",
    }
    invitation_row = {
        "workflow_id": "assessment:acme:opp-1:s1:t-py",
        "kind": "invitation",
        "test": "Python Basics",
        "status": "cancelled",
        "commands": [outcomes[0]],
    }
    body = {"account_id": "acme", "opportunity_id": "opp-1",
            "assessments": [invitation_row, commands_row]}  # fmt: skip
    text = render_status(body)
    lines = text.splitlines()
    start = lines.index("recruiter commands:")
    assert lines[start + 1 : start + 3] == [
        "  2026-11-30 10:00:01Z  Py - Cancel: applied (cancelled at Py; in-progress tags removed)",
        "  2026-11-30 10:00:02Z  Py - Resend: not applicable "
        "(no open invitation (the assessment is cancelled))",
    ]
    assert lines[start + 3] == ""  # then the workflow ids, the command run's among them
    assert "  commands:acme:opp-1" in lines[start:]
    # Each outcome once: an invitation's own record of a command is not printed again.
    assert text.count("cancelled at Py; in-progress tags removed") == 1


def test_cli_status_without_commands_has_no_commands_section():
    row = {"workflow_id": "assessment:acme:opp-1:s1", "kind": "assessment", "status": "invited"}
    text = render_status({"account_id": "acme", "opportunity_id": "opp-1", "assessments": [row]})
    assert "recruiter commands" not in text
    ran_nothing = {"workflow_id": "commands:acme:opp-1", "kind": "commands", "outcomes": []}
    text = render_status(
        {"account_id": "acme", "opportunity_id": "opp-1", "assessments": [row, ran_nothing]}
    )
    assert "recruiter commands" not in text

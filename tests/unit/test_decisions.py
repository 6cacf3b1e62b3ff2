"""Pure decisions of an assessment (workflows/decisions.py): tests, verdicts, tags, time, ids."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pylever.contracts.records import (
    ChosenTest,
    InvitationRecord,
    InvitationResult,
    Status,
    TriggerSettings,
    Verdict,
    Withdrawal,
)
from workflows import decisions
from workflows.decisions import (
    IN_PROGRESS_TAGS,
    TAG_EXPIRED,
    TAG_FAIL,
    TAG_INVITED,
    TAG_NEEDS_REVIEW,
    TAG_PASS,
    TAG_STARTED,
    VERDICT_TAGS,
    Checkpoint,
    Choice,
    assessment_workflow_id,
    checkpoints,
    choose_tests,
    invitation_workflow_id,
    is_invitation_reference,
    legacy_lever_task_queue,
    lever_task_queue,
    move_target,
    names_to_look_up,
    overall_status,
    summary,
    tags_on_expiry,
    tags_on_result,
    tags_on_withdrawal,
    verdict_for,
)

PY_TESTS = {
    "Python Basics": "tst_basics",
    "Advanced Python": "tst_advanced",
    "SQL": "tst_sql",
}


def test_tag_texts_match_the_spec():
    assert TAG_INVITED == "Py - Invited"
    assert TAG_STARTED == "Py - Started"
    assert TAG_PASS == "Py - Pass"
    assert TAG_FAIL == "Py - Fail"
    assert TAG_NEEDS_REVIEW == "Py - Needs Review"
    assert TAG_EXPIRED == "Py - Expired"


# --- choose_tests -------------------------------------------------------------------


def test_candidate_tag_overrides_default():
    choice = choose_tests(["Senior", "SQL"], PY_TESTS, "Python Basics")
    assert choice == Choice(tests=(ChosenTest(id="tst_sql", name="SQL"),))
    assert choice.reason is None


def test_tag_match_is_exact_and_case_sensitive():
    choice = choose_tests(["sql", "python basics", " SQL", "SQL "], PY_TESTS, "Python Basics")
    assert choice.tests == (ChosenTest(id="tst_basics", name="Python Basics"),)


def test_several_tags_send_several_tests_in_tag_order_without_duplicates():
    tags = ["SQL", "Remote", "Advanced Python", "SQL", "Python Basics", "Advanced Python"]
    choice = choose_tests(tags, PY_TESTS, None)
    assert choice.tests == (
        ChosenTest(id="tst_sql", name="SQL"),
        ChosenTest(id="tst_advanced", name="Advanced Python"),
        ChosenTest(id="tst_basics", name="Python Basics"),
    )
    assert choice.reason is None


def test_tags_win_even_when_they_include_the_default():
    choice = choose_tests(["Advanced Python", "Python Basics"], PY_TESTS, "Python Basics")
    assert [t.name for t in choice.tests] == ["Advanced Python", "Python Basics"]


def test_default_used_when_no_tag_matches():
    choice = choose_tests(["Remote", "Senior"], PY_TESTS, "Python Basics")
    assert choice.tests == (ChosenTest(id="tst_basics", name="Python Basics"),)
    assert choice.reason is None


def test_default_used_without_tags():
    assert choose_tests([], PY_TESTS, "SQL").tests == (ChosenTest(id="tst_sql", name="SQL"),)


def test_no_tag_and_no_default_gives_a_reason():
    choice = choose_tests(["Remote"], PY_TESTS, None)
    assert choice.tests == ()
    assert choice.reason
    assert "default" in choice.reason


def test_default_missing_at_py_gives_a_reason_naming_it():
    choice = choose_tests(["Remote"], PY_TESTS, "Rust Basics")
    assert choice.tests == ()
    assert choice.reason
    assert "Rust Basics" in choice.reason


def test_matching_tag_wins_even_if_default_missing_at_py():
    choice = choose_tests(["SQL"], PY_TESTS, "Rust Basics")
    assert choice.tests == (ChosenTest(id="tst_sql", name="SQL"),)
    assert choice.reason is None


# --- names_to_look_up -------------------------------------------------------------------


def test_names_to_look_up_skips_our_own_tags_and_appends_default_once():
    tags = ["SQL", "Py - Invited", "Remote", "SQL", "Py - Needs Review", ""]
    assert names_to_look_up(tags, "Python Basics") == ["SQL", "Remote", "Python Basics"]


def test_names_to_look_up_does_not_repeat_a_default_that_is_a_tag():
    assert names_to_look_up(["Python Basics", "SQL"], "Python Basics") == ["Python Basics", "SQL"]


def test_names_to_look_up_without_default():
    assert names_to_look_up(["SQL", "Py - Pass"], None) == ["SQL"]
    assert names_to_look_up([], None) == []
    assert names_to_look_up([], "") == []


def test_names_to_look_up_keeps_case_variants():
    assert names_to_look_up(["sql", "SQL"], None) == ["sql", "SQL"]


# --- verdict_for -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "pass_t", "fail_t", "expected"),
    [
        (80, 80, 40, Verdict.PASS),  # exactly the pass threshold
        (80.0001, 80, 40, Verdict.PASS),
        (79.9999, 80, 40, Verdict.NEEDS_REVIEW),
        (40, 80, 40, Verdict.FAIL),  # exactly the fail threshold
        (40.0001, 80, 40, Verdict.NEEDS_REVIEW),
        (39.9999, 80, 40, Verdict.FAIL),
        (60, 80, 40, Verdict.NEEDS_REVIEW),
        (100, 80, 40, Verdict.PASS),
        (0, 80, 40, Verdict.FAIL),
        # only a pass threshold
        (80, 80, None, Verdict.PASS),
        (79, 80, None, Verdict.NEEDS_REVIEW),
        (0, 80, None, Verdict.NEEDS_REVIEW),
        # only a fail threshold
        (40, None, 40, Verdict.FAIL),
        (41, None, 40, Verdict.NEEDS_REVIEW),
        (100, None, 40, Verdict.NEEDS_REVIEW),
        # none
        (0, None, None, Verdict.NEEDS_REVIEW),
        (50, None, None, Verdict.NEEDS_REVIEW),
        (100, None, None, Verdict.NEEDS_REVIEW),
        # thresholds at the ends of the scale
        (100, 100, 0, Verdict.PASS),
        (99.9, 100, 0, Verdict.NEEDS_REVIEW),
        (0, 100, 0, Verdict.FAIL),
        (0.1, 100, 0, Verdict.NEEDS_REVIEW),
        (0, 0, None, Verdict.PASS),  # pass threshold 0: every score passes
        (100, None, 100, Verdict.FAIL),  # fail threshold 100: every score fails
    ],
)
def test_verdict_edges(score, pass_t, fail_t, expected):
    assert verdict_for(score, pass_t, fail_t) is expected


scores = st.floats(min_value=0, max_value=100, allow_nan=False)
thresholds = st.one_of(st.none(), scores)


@given(score=scores, pass_t=thresholds, fail_t=thresholds)
def test_verdict_property(score, pass_t, fail_t):
    if pass_t is not None and fail_t is not None:
        assume(fail_t < pass_t)
    verdict = verdict_for(score, pass_t, fail_t)

    if pass_t is not None and score >= pass_t:
        expected = Verdict.PASS
    elif fail_t is not None and score <= fail_t:
        expected = Verdict.FAIL
    else:
        expected = Verdict.NEEDS_REVIEW
    assert verdict is expected

    change = tags_on_result(verdict)
    verdict_tags = [t for t in change.add if t in VERDICT_TAGS.values()]
    assert len(verdict_tags) == 1
    assert change.add == (VERDICT_TAGS[verdict],)
    assert set(change.remove) == {TAG_INVITED, TAG_STARTED}
    assert not set(change.add) & set(change.remove)


@given(score=scores, fail_t=scores, pass_t=scores)
def test_verdict_never_contradicts_ordered_thresholds(score, fail_t, pass_t):
    assume(fail_t < pass_t)
    verdict = verdict_for(score, pass_t, fail_t)
    if verdict is Verdict.PASS:
        assert score >= pass_t
    elif verdict is Verdict.FAIL:
        assert score <= fail_t
    else:
        assert fail_t < score < pass_t


def _settings(**kwargs) -> TriggerSettings:
    return TriggerSettings(stage="Py Assessment", expire_after_seconds=7 * 86400, **kwargs)


def test_move_target():
    settings = _settings(move_on_pass="stage-onsite", move_on_fail="stage-rejected")
    assert move_target(Verdict.PASS, settings) == "stage-onsite"
    assert move_target(Verdict.FAIL, settings) == "stage-rejected"
    assert move_target(Verdict.NEEDS_REVIEW, settings) is None
    assert move_target(Verdict.FAIL, _settings(move_on_pass="stage-onsite")) is None


# --- tags -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "tag"),
    [
        (Verdict.PASS, "Py - Pass"),
        (Verdict.FAIL, "Py - Fail"),
        (Verdict.NEEDS_REVIEW, "Py - Needs Review"),
    ],
)
def test_tags_on_result(verdict, tag):
    change = tags_on_result(verdict)
    assert change.add == (tag,)
    assert set(change.remove) == {"Py - Invited", "Py - Started"}


def test_tags_on_expiry():
    change = tags_on_expiry()
    assert change.add == ("Py - Expired",)
    assert set(change.remove) == {"Py - Invited", "Py - Started"}


def test_tags_on_withdrawal_archived_clears_in_progress_tags():
    change = tags_on_withdrawal("archived")
    assert change.add == ()
    assert set(change.remove) == set(IN_PROGRESS_TAGS) == {"Py - Invited", "Py - Started"}


def test_tags_on_withdrawal_deleted_writes_nothing():
    change = tags_on_withdrawal("deleted")
    assert change.add == ()
    assert change.remove == ()


# --- checkpoints ------------------------------------------------------------------------


def test_checkpoints_sorted_deduplicated_expiry_last():
    day = 86400
    assert checkpoints([5 * day, 2 * day, 2 * day], 7 * day) == [
        Checkpoint(2 * day, "reminder"),
        Checkpoint(5 * day, "reminder"),
        Checkpoint(7 * day, "expiry"),
    ]


def test_checkpoints_drop_reminders_at_or_after_expiry():
    assert checkpoints([100, 50, 150, 99], 100) == [
        Checkpoint(50, "reminder"),
        Checkpoint(99, "reminder"),
        Checkpoint(100, "expiry"),
    ]


def test_checkpoints_without_reminders():
    assert checkpoints([], 3600) == [Checkpoint(3600, "expiry")]
    assert checkpoints(iter([0, -5]), 3600) == [Checkpoint(3600, "expiry")]


@given(
    st.lists(st.integers(min_value=-10, max_value=10**7)), st.integers(min_value=1, max_value=10**7)
)
def test_checkpoints_property(reminders, expire):
    result = checkpoints(reminders, expire)
    assert result[-1] == Checkpoint(expire, "expiry")
    times = [c.at_seconds for c in result[:-1]]
    assert all(c.kind == "reminder" for c in result[:-1])
    assert times == sorted(set(times))
    assert set(times) == {r for r in reminders if 0 < r < expire}


# --- ids ----------------------------------------------------------------------------


def test_workflow_ids():
    parent = assessment_workflow_id("acme", "opp-1", "stage-9")
    assert parent == "assessment:acme:opp-1:stage-9"
    child = invitation_workflow_id(parent, "tst_basics")
    assert child == "assessment:acme:opp-1:stage-9:tst_basics"


def test_ids_differ_per_account_opportunity_stage_and_test():
    ids = {
        invitation_workflow_id(assessment_workflow_id(a, o, s), t)
        for a in ("acme", "globex")
        for o in ("opp-1", "opp-2")
        for s in ("st-1", "st-2")
        for t in ("tst_a", "tst_b")
    }
    assert len(ids) == 16


def test_reference_accepts_child_ids():
    uuid = "3410c8b9-5c31-4bab-b7e9-9f710206d647"
    stage = "7c2690d8-6308-4ed9-ae2a-cbfe7db26593"
    child = invitation_workflow_id(assessment_workflow_id("acme", uuid, stage), "tst_123")
    assert is_invitation_reference(child)
    assert is_invitation_reference(
        invitation_workflow_id(assessment_workflow_id("a", "b", "c"), "d")
    )


@pytest.mark.parametrize(
    "reference",
    [
        "",
        "garbage",
        "assessment:acme:opp:stage",  # the parent, not a child
        "assessment:acme:opp:stage:test:extra",
        "assessment:acme::stage:test",
        "withdraw:acme:opp:stage:test",
        "Assessment:acme:opp:stage:test",
        "xassessment:acme:opp:stage:test",
        "assessment:acme:opp:stage:tst 1",
        " assessment:acme:opp:stage:test",
        "assessment:acme:opp:stage:test ",
        "assessment:ac\tme:opp:stage:test",
        "assessment:acme:opp:stage:" + "t" * 400,
    ],
)
def test_reference_rejects_garbage(reference):
    assert not is_invitation_reference(reference)


def test_reference_length_limit_edge():
    prefix = "assessment:a:b:c:"
    assert is_invitation_reference(prefix + "t" * (400 - len(prefix)))
    assert not is_invitation_reference(prefix + "t" * (401 - len(prefix)))


def test_reference_rejects_trailing_newline():
    assert not is_invitation_reference("assessment:acme:opp:stage:test\n")


def test_lever_task_queue_is_shared_and_the_old_one_per_account():
    assert lever_task_queue("py-lever") == "py-lever-lever"
    # Where Lever calls ran before: still polled while old executions remain.
    assert legacy_lever_task_queue("py-lever", "acme") == "py-lever-lever-acme"
    assert legacy_lever_task_queue("q", "acme") != legacy_lever_task_queue("q", "globex")


# --- outcome ------------------------------------------------------------------------


def _result(status: Status) -> InvitationResult:
    return InvitationResult(
        test=ChosenTest(id=f"tst_{status.value}", name=status.value), status=status
    )


def test_overall_status_empty_is_not_sent():
    assert overall_status([]) is Status.NOT_SENT


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([Status.COMPLETED], Status.COMPLETED),
        ([Status.ERROR, Status.COMPLETED], Status.COMPLETED),
        ([Status.EXPIRED, Status.STARTED, Status.COMPLETED], Status.COMPLETED),
        ([Status.INVITED, Status.STARTED], Status.STARTED),
        ([Status.EXPIRED, Status.INVITED], Status.INVITED),
        ([Status.CANCELLED, Status.EXPIRED], Status.EXPIRED),
        ([Status.ERROR, Status.CANCELLED], Status.CANCELLED),
        ([Status.NOT_SENT, Status.ERROR], Status.ERROR),
        ([Status.NOT_SENT], Status.NOT_SENT),
    ],
)
def test_overall_status_most_advanced_wins(statuses, expected):
    assert overall_status([_result(s) for s in statuses]) is expected
    assert overall_status([_result(s) for s in reversed(statuses)]) is expected


def test_summary():
    assert (
        summary("Ada Lovelace", "Python Basics", Status.INVITED)
        == "Ada Lovelace · Python Basics · invited"
    )
    assert (
        summary("Ada Lovelace", "SQL", Status.COMPLETED, Verdict.PASS)
        == "Ada Lovelace · SQL · completed (pass)"
    )
    assert summary("", None, Status.RESOLVING) == "(unnamed candidate) · resolving"


def test_stale_tags_are_the_outcomes_of_runs_without_a_result() -> None:
    assert decisions.stale_tags(["Algorithms", decisions.TAG_NO_EMAIL, decisions.TAG_PASS]) == (
        decisions.TAG_NO_EMAIL,
    )
    assert decisions.stale_tags([decisions.TAG_INVITE_FAILED, decisions.TAG_NO_TEST]) == (
        decisions.TAG_NO_TEST,
        decisions.TAG_INVITE_FAILED,
    )
    assert decisions.stale_tags(["Python Basics", decisions.TAG_INVITED]) == ()


def test_several_tests_leave_the_in_progress_tags_to_the_last() -> None:
    assert decisions.tags_on_result(Verdict.PASS, last=False) == decisions.TagChange(
        add=(decisions.TAG_PASS,)
    )
    assert decisions.tags_on_result(Verdict.PASS).remove == decisions.IN_PROGRESS_TAGS
    assert decisions.tags_on_expiry(last=False).remove == ()
    assert decisions.tags_on_expiry().remove == decisions.IN_PROGRESS_TAGS


def test_combined_move_target() -> None:
    settings = TriggerSettings(
        stage="s", move_on_pass="On-site", move_on_fail="Rejected", expire_after_seconds=60
    )
    move = decisions.combined_move_target
    assert move([Verdict.PASS, Verdict.PASS], settings) == "On-site"
    assert move([Verdict.PASS, Verdict.FAIL], settings) == "Rejected"
    assert move([Verdict.FAIL, None], settings) == "Rejected"
    assert move([Verdict.PASS, Verdict.NEEDS_REVIEW], settings) is None
    assert move([Verdict.PASS, None], settings) is None  # one expired: a recruiter decides
    assert move([], settings) is None


# --- the outcome of one invitation ---------------------------------------------------

Halt = decisions.Halt
Outcome = decisions.Outcome
invitation_outcome = decisions.invitation_outcome


def _record(status: str) -> InvitationRecord:
    return InvitationRecord(id="inv_1", status=status)


ARCHIVED, DELETED = Withdrawal(reason="archived"), Withdrawal(reason="deleted")
REMOVED = Withdrawal(reason="account_removed")


@pytest.mark.parametrize(
    ("final", "withdrawal", "halt", "expected"),
    [
        # A completed result is written whatever else happened (how: see InvitationWorkflow).
        ("completed", None, None, Outcome.RESULT),
        ("completed", ARCHIVED, None, Outcome.RESULT),
        ("completed", DELETED, None, Outcome.RESULT),
        ("completed", None, Halt.LEVER_GONE, Outcome.RESULT),
        ("completed", None, Halt.PY_CONTRACT, Outcome.RESULT),
        ("completed", REMOVED, Halt.PY_CONTRACT, Outcome.RESULT),
        # Py broke its contract and no result: an error, even when withdrawn meanwhile.
        (None, None, Halt.PY_CONTRACT, Outcome.BROKEN_CONTRACT),
        ("expired", None, Halt.PY_CONTRACT, Outcome.BROKEN_CONTRACT),
        ("cancelled", ARCHIVED, Halt.PY_CONTRACT, Outcome.BROKEN_CONTRACT),
        # Withdrawn, or the candidate gone, without a result: stopped (cancelled at Py).
        (None, ARCHIVED, None, Outcome.STOPPED),
        (None, DELETED, None, Outcome.STOPPED),
        (None, REMOVED, None, Outcome.STOPPED),
        (None, None, Halt.LEVER_GONE, Outcome.STOPPED),
        (None, None, Halt.LEVER_UNREACHABLE, Outcome.STOPPED),
        ("expired", ARCHIVED, None, Outcome.STOPPED),
        ("cancelled", DELETED, None, Outcome.STOPPED),
        ("expired", None, Halt.LEVER_GONE, Outcome.STOPPED),
        (None, None, None, Outcome.STOPPED),  # nothing known: never left live at Py
        # Py's own end, nothing else.
        ("expired", None, None, Outcome.EXPIRED),
        ("cancelled", None, None, Outcome.CANCELLED_AT_PY),
    ],
)
def test_invitation_outcome(final, withdrawal, halt, expected):
    record = None if final is None else _record(final)
    assert invitation_outcome(record, withdrawal, halt) is expected


@given(
    final=st.one_of(
        st.none(), st.sampled_from(["invited", "started", "completed", "expired", "cancelled"])
    ),
    withdrawal=st.sampled_from([None, ARCHIVED, DELETED, REMOVED]),
    halt=st.one_of(st.none(), st.sampled_from(list(Halt))),
)
def test_invitation_outcome_is_the_workflows_branching(final, withdrawal, halt):
    """The branches ``InvitationWorkflow`` took before the choice was a function of its own."""
    record = None if final is None else _record(final)
    if halt is Halt.PY_CONTRACT and (record is None or record.status != "completed"):
        expected = Outcome.BROKEN_CONTRACT
    elif record is not None and record.status == "completed":
        expected = Outcome.RESULT
    elif withdrawal is not None or halt is not None or record is None:
        expected = Outcome.STOPPED
    elif record.status == "expired":
        expected = Outcome.EXPIRED
    else:
        expected = Outcome.CANCELLED_AT_PY
    assert invitation_outcome(record, withdrawal, halt) is expected

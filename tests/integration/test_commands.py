"""Recruiters steer invitations from Lever (issue 15): the command tags on a real stack.

The module has its own stack: a look lists every candidate of the account that carries a
command tag, so other modules' candidates must not be in reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleHandle,
    ScheduleOverlapPolicy,
)
from temporalio.service import RPCError

from pylever.contracts.commands import (
    COMMAND_TAGS,
    CommandKind,
    CommandOutcome,
    CommandWatchInput,
)
from pylever.contracts.records import AssessmentResult, Status
from pylever.temporal.schedules import apply_command_schedules, schedule_id
from sandbox.lever import PY_ASSESSMENT_STAGE_ID, lever_error
from sandbox.py import PyError
from tests.support.integration_stack import Stack, running_stack
from tests.support.pipeline_support import assessment_id, candidate_status, verdict_tags
from workflows.commands import CommandWatchWorkflow
from workflows.decisions import BACKGROUND_PRIORITY_KEY, candidate_commands_workflow_id


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    async with running_stack("py-lever-commands") as s:
        yield s


async def look(stack: Stack, account: str = "acme") -> dict[str, int]:
    """One look for command tags (what the account's schedule does every commands_every)."""
    return await stack.client.execute_workflow(
        CommandWatchWorkflow.run,
        CommandWatchInput(account_id=account, window_seconds=0),
        id=f"test-look-{uuid.uuid4().hex[:8]}",
        task_queue=stack.task_queue,
        execution_timeout=timedelta(seconds=60),
    )


async def commands_of(stack: Stack, opp_id: str, account: str = "acme") -> list[CommandOutcome]:
    handle = stack.client.get_workflow_handle(
        candidate_commands_workflow_id(account, opp_id), result_type=list[CommandOutcome]
    )
    return await asyncio.wait_for(handle.result(), 30)


async def invited(stack: Stack, name: str) -> tuple[str, dict[str, Any]]:
    opp = stack.candidate(name=name, email=f"{uuid.uuid4().hex[:6]}@example.com")
    await stack.move(opp, "Py Assessment")
    await stack.wait_tag(opp, "Py - Invited")
    return opp, await stack.invitation(opp)


async def test_resend_reminds_at_py_once_and_the_tag_goes(stack: Stack):
    opp, invitation = await invited(stack, "Resend Rita")
    stack.lever.recruiter_tags(opp, add=["Py - Resend"])
    before = stack.py.invitations[invitation["id"]].reminders
    looked = await look(stack)
    assert looked["candidates"] >= 1
    [outcome] = await commands_of(stack, opp)
    assert outcome.applied, outcome
    assert stack.py.invitations[invitation["id"]].reminders == before + 1
    assert "Py - Resend" not in stack.tags(opp)
    assert "Py - Invited" in stack.tags(opp)
    rows = await candidate_status(stack, "acme", opp)
    invitation_row = next(r for r in rows if r["kind"] == "invitation")
    assert invitation_row["status"] == "invited"
    # A second look finds no tag: nothing is applied twice.
    await look(stack)
    assert stack.py.invitations[invitation["id"]].reminders == before + 1
    _ = assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID)


# --- helpers for the tests below ------------------------------------------------------------


def tagged(stack: Stack, opp: str, *tags: str) -> None:
    stack.lever.recruiter_tags(opp, add=list(tags))


def command_tags(stack: Stack, opp: str) -> list[str]:
    return [t for t in stack.tags(opp) if t in COMMAND_TAGS]


def error_tags(stack: Stack, opp: str) -> list[str]:
    return [t for t in stack.tags(opp) if t.startswith("Py - Error")]


async def row_where(
    stack: Stack, opp: str, kind: str, probe: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The candidate's status row of ``kind`` for which ``probe`` holds (visibility lags)."""

    async def find() -> dict[str, Any] | None:
        rows = await candidate_status(stack, "acme", opp)
        return next((r for r in rows if r["kind"] == kind and probe(r)), None)

    return await stack.eventually(find, timeout=15)


async def commands_row(stack: Stack, opp: str) -> dict[str, Any]:
    """The candidate's ``commands`` row once its tags are removed."""
    return await row_where(stack, opp, "commands", lambda r: r["tags_removed"])


async def assessment_of(stack: Stack, opp: str) -> AssessmentResult:
    return await stack.result(assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID))


def py_status(stack: Stack, invitation_id: str) -> str:
    return str(stack.py.invitations[invitation_id].invitation["status"])


# --- Extend, Cancel, Retake --------------------------------------------------------------


async def test_extend_moves_the_open_invitations_expiry_and_the_tag_goes(stack: Stack):
    account = stack.config.account("acme")
    assert account is not None
    expire_after = stack.config.timing(account, account.triggers[0]).expire_after
    extend_by = stack.config.commands(account).extend_by
    assert (expire_after, extend_by) == (timedelta(days=7), timedelta(days=3))  # defaults
    opp, invitation = await invited(stack, "Extend Ezra")
    before = await row_where(stack, opp, "invitation", lambda r: r["sent_at"] is not None)
    sent_at = datetime.fromisoformat(before["sent_at"])
    assert before.get("expires_at") is None  # not extended yet
    tagged(stack, opp, "Py - Extend")

    await look(stack)
    [outcome] = await commands_of(stack, opp)
    expected = sent_at + expire_after + extend_by
    assert outcome.command is CommandKind.EXTEND and outcome.applied, outcome
    assert outcome.detail == f"expiry moved to {expected.isoformat()}"
    assert outcome.target == before["workflow_id"]

    row = await row_where(stack, opp, "invitation", lambda r: bool(r["commands"]))
    assert datetime.fromisoformat(row["expires_at"]) == expected
    [recorded] = row["commands"]
    assert recorded["command"] == "Py - Extend" and recorded["applied"] is True
    # Reminders keep their times: the next check is still the first reminder (2 days).
    assert datetime.fromisoformat(row["next_check_at"]) == sent_at + timedelta(days=2)
    assert row["status"] == "invited"
    assert command_tags(stack, opp) == []
    assert "Py - Invited" in stack.tags(opp)
    assert py_status(stack, invitation["id"]) == "invited"
    assert stack.py.invitations[invitation["id"]].reminders == 0
    commands = await commands_row(stack, opp)
    assert commands["commands"] == ["Py - Extend"]
    assert [o["applied"] for o in commands["outcomes"]] == [True]


async def test_cancel_cancels_at_py_clears_the_tags_and_ends_the_assessment(stack: Stack):
    opp, invitation = await invited(stack, "Cancel Cora")
    cancels = stack.py.stats.cancels
    tagged(stack, opp, "Py - Cancel")

    await look(stack)
    [outcome] = await commands_of(stack, opp)
    assert outcome.command is CommandKind.CANCEL and outcome.applied, outcome

    assert py_status(stack, invitation["id"]) == "cancelled"
    assert stack.py.stats.cancels == cancels + 1
    result = await assessment_of(stack, opp)
    assert result.status is Status.CANCELLED
    assert result.reason == "cancelled by a recruiter (Py - Cancel)"
    tags = stack.tags(opp)
    assert "Py - Invited" not in tags and "Py - Started" not in tags
    assert verdict_tags(tags) == set() and "Py - Expired" not in tags
    assert command_tags(stack, opp) == [] and error_tags(stack, opp) == []

    row = await row_where(stack, opp, "assessment", lambda r: r["status"] == "cancelled")
    assert row["reason"] == "cancelled by a recruiter (Py - Cancel)"
    child = await row_where(stack, opp, "invitation", lambda r: r["status"] == "cancelled")
    assert [c["command"] for c in child["commands"]] == ["Py - Cancel"]
    assert child["commands"][0]["applied"] is True
    # Nothing left to cancel: a second look finds no tag and Py sees no second cancel.
    await look(stack)
    assert stack.py.stats.cancels == cancels + 1


async def test_retake_after_a_fail_sends_a_new_invitation_and_replaces_the_verdict(
    stack: Stack,
):
    opp, first = await invited(stack, "Retake Remy")
    await stack.py.complete(first["id"], 20)  # acme: fail below 40
    await stack.wait_tag(opp, "Py - Fail")
    assert (await assessment_of(stack, opp)).status is Status.COMPLETED
    first_link = stack.py.invitation(first["id"])["report_url"]
    tagged(stack, opp, "Py - Retake")

    await look(stack)
    [outcome] = await commands_of(stack, opp)
    assert outcome.command is CommandKind.RETAKE and outcome.applied, outcome
    assert outcome.detail.startswith("retake 1 started: a new invitation for Python Basics")
    assert outcome.target == assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID)
    second = await stack.eventually(
        lambda: [i for i in stack.invitations(opp) if i["id"] != first["id"]] or None
    )
    [second_invitation] = second
    assert len(stack.invitations(opp)) == 2
    assert second_invitation["test_id"] == first["test_id"] == "tst_python_basics"
    assert second_invitation["idempotency_key"] != first["idempotency_key"]
    # Py's key names the command's run: a later Retake gets a new invitation again.
    commands_run = await stack.client.get_workflow_handle(
        candidate_commands_workflow_id("acme", opp)
    ).describe()
    assert second_invitation["idempotency_key"] == (
        f"{first['idempotency_key']}#retake-{commands_run.run_id}"
    )
    assert command_tags(stack, opp) == []
    await stack.wait_tag(opp, "Py - Invited")
    assert "Py - Fail" in stack.tags(opp)  # the earlier verdict stays until the new one

    await stack.py.complete(second_invitation["id"], 90)
    tags = await stack.wait_tag(opp, "Py - Pass")
    assert "Py - Fail" not in tags and "Py - Invited" not in tags
    result = await assessment_of(stack, opp)
    assert result.status is Status.COMPLETED
    second_link = stack.py.invitation(second_invitation["id"])["report_url"]
    assert first_link != second_link
    links = stack.lever.opportunity(opp)["links"]
    assert first_link in links and second_link in links
    retaken = await row_where(
        stack, opp, "assessment", lambda r: r["retake"] == 1 and r["status"] == "completed"
    )
    assert retaken["execution_status"] == "completed"
    again = await row_where(
        stack, opp, "invitation", lambda r: r["invitation_id"] == second_invitation["id"]
    )
    assert (again["status"], again["verdict"], again["score"]) == ("completed", "pass", 90)
    failed = await row_where(stack, opp, "invitation", lambda r: r["invitation_id"] == first["id"])
    assert (failed["status"], failed["verdict"]) == ("completed", "fail")
    first_run = await row_where(stack, opp, "assessment", lambda r: r["retake"] is None)
    assert first_run["status"] == "completed"


# --- commands that do not apply ----------------------------------------------------------


async def test_commands_that_do_not_apply_are_removed_with_the_reason(stack: Stack):
    # Resend to a finished (completed) test.
    done, invitation = await invited(stack, "Finished Fay")
    await stack.py.complete(invitation["id"], 90)
    await stack.wait_tag(done, "Py - Pass")
    await assessment_of(stack, done)
    reminders = stack.py.stats.reminders
    # A candidate with no assessment at all.
    nobody = stack.candidate(name="Nobody Ned", email="ned@example.com")
    # A retake while the test is still open.
    still_open, open_invitation = await invited(stack, "Open Olga")
    tagged(stack, done, "Py - Resend")
    tagged(stack, nobody, "Py - Extend")
    tagged(stack, still_open, "Py - Retake")

    looked = await look(stack)
    assert looked["candidates"] >= 3 and looked["started"] >= 3

    [resend] = await commands_of(stack, done)
    assert resend.command is CommandKind.RESEND and not resend.applied
    assert resend.detail == "no open invitation (the assessment is completed)"
    [extend] = await commands_of(stack, nobody)
    assert extend.command is CommandKind.EXTEND and not extend.applied
    assert extend.detail == "the candidate has no Py assessment"
    [retake] = await commands_of(stack, still_open)
    assert retake.command is CommandKind.RETAKE and not retake.applied
    assert retake.detail.startswith("the test is still open"), retake.detail

    assert stack.py.stats.reminders == reminders
    assert stack.py.invitations[invitation["id"]].reminders == 0
    assert len(stack.invitations(still_open)) == 1 and stack.invitations(nobody) == []
    assert py_status(stack, open_invitation["id"]) == "invited"
    for opp in (done, nobody, still_open):
        assert command_tags(stack, opp) == [], opp
        assert error_tags(stack, opp) == [], opp
        row = await commands_row(stack, opp)
        [shown] = row["outcomes"]
        assert shown["applied"] is False and shown["detail"], row
    assert "Py - Pass" in stack.tags(done) and "Py - Invited" in stack.tags(still_open)
    assert (await commands_row(stack, nobody))["outcomes"][0]["detail"] == (
        "the candidate has no Py assessment"
    )


# --- two commands at once ------------------------------------------------------------------


def removals(stack: Stack, opp: str) -> list[list[str]]:
    """The removeTags writes that named a command tag."""
    return [
        w["values"]
        for w in stack.lever.api_writes(opp)
        if w["op"] == "removeTags" and set(w["values"]) & set(COMMAND_TAGS)
    ]


async def test_two_commands_in_one_look_apply_in_order_and_go_in_one_write(stack: Stack):
    opp, invitation = await invited(stack, "Twice Tom")
    tagged(stack, opp, "Py - Resend", "Py - Extend")  # added in the other order

    await look(stack)
    outcomes = await commands_of(stack, opp)
    assert [(o.command, o.applied) for o in outcomes] == [
        (CommandKind.EXTEND, True),
        (CommandKind.RESEND, True),
    ], outcomes
    assert stack.py.invitations[invitation["id"]].reminders == 1
    assert removals(stack, opp) == [["Py - Extend", "Py - Resend"]]
    assert command_tags(stack, opp) == []
    row = await row_where(stack, opp, "invitation", lambda r: len(r["commands"]) == 2)
    assert [c["command"] for c in row["commands"]] == ["Py - Extend", "Py - Resend"]
    assert row["expires_at"] is not None and row["status"] == "invited"

    # Cancel and Resend: the cancel goes first, the resend has nothing left to remind.
    other, other_invitation = await invited(stack, "Twice Tina")
    tagged(stack, other, "Py - Resend", "Py - Cancel")
    await look(stack)
    outcomes = await commands_of(stack, other)
    assert [(o.command, o.applied) for o in outcomes] == [
        (CommandKind.CANCEL, True),
        (CommandKind.RESEND, False),
    ], outcomes
    assert py_status(stack, other_invitation["id"]) == "cancelled"
    assert stack.py.invitations[other_invitation["id"]].reminders == 0
    assert removals(stack, other) == [["Py - Cancel", "Py - Resend"]]
    assert (await assessment_of(stack, other)).status is Status.CANCELLED
    assert verdict_tags(stack.tags(other)) == set()


# --- a command racing the result ------------------------------------------------------------


async def raced(stack: Stack, opp: str, invitation_id: str, completed: bool) -> CommandOutcome:
    """The end of a Cancel that raced the result: exactly one of them took effect."""
    [outcome] = await commands_of(stack, opp)
    result = await assessment_of(stack, opp)
    tags = stack.tags(opp)
    at_py = py_status(stack, invitation_id)
    assert outcome.command is CommandKind.CANCEL
    assert command_tags(stack, opp) == [] and error_tags(stack, opp) == []
    assert "Py - Invited" not in tags and "Py - Started" not in tags
    if outcome.applied:
        assert not completed and at_py == "cancelled", outcome
        assert result.status is Status.CANCELLED, result
        assert verdict_tags(tags) == set(), tags
    else:
        assert completed and at_py == "completed", outcome
        assert result.status is Status.COMPLETED, result
        assert verdict_tags(tags) == {"Py - Fail"}, tags
        assert outcome.detail in (
            "the result arrived first and was applied",  # inside the invitation's update
            "the test is finishing",  # the result was being written
            "the invitation had finished",  # it closed just before the update
            "no open invitation (the assessment is completed)",  # the assessment had ended
        ), outcome
    if outcome.detail in ANSWERED_BY_THE_INVITATION:  # recorded in its own history too
        child = await row_where(stack, opp, "invitation", lambda r: bool(r["commands"]))
        assert child["workflow_id"] == outcome.target
        assert [(c["command"], c["applied"], c["detail"]) for c in child["commands"]] == [
            ("Py - Cancel", outcome.applied, outcome.detail)
        ]
    return outcome


ANSWERED_BY_THE_INVITATION = (
    "cancelled at Py; in-progress tags removed",
    "the result arrived first and was applied",
    "the test is finishing",
)


async def test_a_cancel_racing_the_result_callback_applies_exactly_one_of_them(stack: Stack):
    # Deterministic first: Py completes the test just as the cancel reaches it (Py answers
    # 409 and the callback is on its way): the result wins, the Cancel says so.
    opp, invitation = await invited(stack, "Race Exact")
    tagged(stack, opp, "Py - Cancel")
    py = stack.py
    inner = py._api_response

    async def complete_first(request: Any, handler: Any) -> Any:
        if request.url.path == f"/v1/invitations/{invitation['id']}/cancel":
            await py.complete(invitation["id"], 20)
        return await inner(request, handler)

    py._api_response = complete_first  # type: ignore[method-assign]
    try:
        await look(stack)
        outcome = await raced(stack, opp, invitation["id"], completed=True)
    finally:
        py._api_response = inner  # type: ignore[method-assign]
    assert outcome.detail == "the result arrived first and was applied", outcome
    assert stack.lever.opportunity(opp)["stage"] != "On-site interview"  # fail: no move

    # Then the callback and the look at once, the callback a little later each time: on
    # an idle machine the first ones find the result first, the later ones the cancel.
    # Whichever wins, only it takes effect (a loaded machine may shift which one).
    for delay in (0.0, 0.35, 0.45, 0.55, 1.0):
        opp, invitation = await invited(stack, f"Race {int(delay * 100)}")
        tagged(stack, opp, "Py - Cancel")

        async def result_later(inv_id: str = invitation["id"], after: float = delay) -> bool:
            await asyncio.sleep(after)
            try:
                await stack.py.complete(inv_id, 20)  # and its callback
            except PyError as exc:  # Py cancelled it first
                assert exc.status == 409, exc
                return False
            return True

        completed, _ = await asyncio.gather(result_later(), look(stack))
        await raced(stack, opp, invitation["id"], completed)


# --- cost and priority of a look --------------------------------------------------------------


async def test_one_look_is_one_lever_list_call_at_background_priority(stack: Stack):
    opps = []
    for name, tag in (("Cheap Ann", "Py - Resend"), ("Cheap Ben", "Py - Extend")):
        opp, _ = await invited(stack, name)
        tagged(stack, opp, tag)
        opps.append(opp)
    nobody = stack.candidate(name="Cheap Cid", email="cid@example.com", tags=("Py - Cancel",))
    opps.append(nobody)

    lists: list[list[str]] = []
    lever = stack.lever
    inner = lever._api_response

    async def spied(request: Any, handler: Any) -> Any:
        if request.method == "GET" and request.url.path == "/v1/opportunities":
            lists.append(request.query_params.getlist("tag"))
        return await inner(request, handler)

    lever._api_response = spied  # type: ignore[method-assign]
    try:
        handle = await stack.client.start_workflow(
            CommandWatchWorkflow.run,
            CommandWatchInput(account_id="acme", window_seconds=0),
            id=f"test-look-{uuid.uuid4().hex[:8]}",
            task_queue=stack.task_queue,
            execution_timeout=timedelta(seconds=60),
        )
        progress = await handle.result()
        for opp in opps:
            await commands_of(stack, opp)
    finally:
        lever._api_response = inner  # type: ignore[method-assign]
    assert len(lists) == 1, lists
    assert sorted(lists[0]) == sorted(COMMAND_TAGS)
    assert progress["looks"] == 1 and progress["candidates"] == progress["started"] == 3

    history = await handle.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert sorted(a.activity_type.name for a in scheduled) == [
        "commands.plan",
        "lever.list_commanded",
    ]
    for attributes in scheduled:
        assert attributes.task_queue.name == f"{stack.task_queue}-lever"
        assert attributes.priority.priority_key == BACKGROUND_PRIORITY_KEY
        assert attributes.priority.fairness_key == "acme"
    children = [
        e.start_child_workflow_execution_initiated_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
    ]
    assert sorted(c.workflow_id for c in children) == sorted(
        candidate_commands_workflow_id("acme", opp) for opp in opps
    )
    for child in children:
        assert child.priority.priority_key == BACKGROUND_PRIORITY_KEY
        assert child.priority.fairness_key == "acme"
    # A candidate's own reads (its tags) run at the same priority.
    child_history = await stack.client.get_workflow_handle(
        candidate_commands_workflow_id("acme", nobody)
    ).fetch_history()
    reads = [
        e.activity_task_scheduled_event_attributes
        for e in child_history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "lever.read_tags"
    ]
    assert len(reads) == 1
    assert reads[0].priority.priority_key == BACKGROUND_PRIORITY_KEY
    assert reads[0].priority.fairness_key == "acme"


# --- the schedule ----------------------------------------------------------------------------


async def first_run(stack: Stack, handle: ScheduleHandle) -> str:
    """The workflow id of the schedule's first action (it appears in its description)."""

    async def started() -> str | None:
        for result in (await handle.describe()).info.recent_actions:
            if isinstance(result.action, ScheduleActionExecutionStartWorkflow):
                return result.action.workflow_id
        return None

    return await stack.eventually(started, timeout=15)


async def test_command_schedules_follow_the_configuration(stack: Stack):
    queue = f"{stack.task_queue}-command-schedules"  # no worker: the runs only appear
    base = stack.config
    acme, globex = base.accounts
    config = base.model_copy(
        update={
            "accounts": (acme.model_copy(update={"commands_every": timedelta(minutes=15)}), globex)
        }
    )
    ids = {a: schedule_id(queue, a, "commands") for a in ("acme", "globex")}
    assert ids["acme"] == f"{queue}-commands-acme"
    runs: list[str] = []
    try:
        first = await apply_command_schedules(stack.client, queue, config)
        assert sorted(first.created) == ["acme", "globex"]
        for account, every in (("acme", timedelta(minutes=15)), ("globex", timedelta(minutes=10))):
            handle = stack.client.get_schedule_handle(ids[account])
            described = await handle.describe()
            assert described.schedule.spec.intervals[0].every == every, account
            assert described.schedule.policy.overlap == ScheduleOverlapPolicy.BUFFER_ONE
            action = described.schedule.action
            assert isinstance(action, ScheduleActionStartWorkflow)
            assert action.workflow == "CommandWatchWorkflow" and action.task_queue == queue
            [watch_input] = await stack.client.data_converter.decode(
                action.args, [CommandWatchInput]
            )
            assert watch_input == CommandWatchInput(
                account_id=account, window_seconds=int(every.total_seconds())
            )

            run_id = await first_run(stack, handle)  # triggered at creation
            runs.append(run_id)
            assert run_id.startswith(ids[account])
            run = await stack.client.get_workflow_handle(run_id).describe()
            assert run.workflow_type == "CommandWatchWorkflow"

        again = await apply_command_schedules(stack.client, queue, config)
        assert (again.created, again.updated, again.deleted) == ([], [], [])

        only_acme = config.model_copy(update={"accounts": (config.accounts[0],)})
        third = await apply_command_schedules(stack.client, queue, only_acme, removed=["globex"])
        assert (third.created, third.updated, third.deleted) == ([], [], ["globex"])
        with pytest.raises(RPCError):
            await stack.client.get_schedule_handle(ids["globex"]).describe()
    finally:
        for sid in ids.values():
            with contextlib.suppress(RPCError):
                await stack.client.get_schedule_handle(sid).delete()
        for run_id in runs:  # on a queue no worker polls: they would wait an hour and more
            with contextlib.suppress(RPCError):
                await stack.client.get_workflow_handle(run_id).terminate("test cleanup")


# --- after review: Cancel + Retake, a Cancel losing to a Pass, archived, failed removal -------


async def test_cancel_and_retake_in_one_look_restart_the_test(stack: Stack):
    opp, first = await invited(stack, "Restart Rhea")
    cancels = stack.py.stats.cancels
    tagged(stack, opp, "Py - Retake", "Py - Cancel")

    await look(stack)
    outcomes = await commands_of(stack, opp)
    assert [(o.command, o.applied) for o in outcomes] == [
        (CommandKind.CANCEL, True),
        (CommandKind.RETAKE, True),
    ], outcomes
    cancel, retake = outcomes
    assert cancel.detail == "cancelled at Py; in-progress tags removed", cancel
    # The Retake found the assessment closed (targets waits for it to close after the Cancel).
    assert retake.detail.startswith("retake 1 started: a new invitation for Python Basics")
    assert retake.target == assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID)
    assert py_status(stack, first["id"]) == "cancelled"
    assert stack.py.stats.cancels == cancels + 1

    second = await stack.eventually(
        lambda: [i for i in stack.invitations(opp) if i["id"] != first["id"]] or None
    )
    [again] = second
    assert again["test_id"] == first["test_id"] == "tst_python_basics"
    commands_run = await stack.client.get_workflow_handle(
        candidate_commands_workflow_id("acme", opp)
    ).describe()
    assert again["idempotency_key"] == f"{first['idempotency_key']}#retake-{commands_run.run_id}"
    assert py_status(stack, again["id"]) == "invited"
    assert py_status(stack, first["id"]) == "cancelled"  # the new one did not reopen it
    tags = await stack.wait_tag(opp, "Py - Invited")
    assert command_tags(stack, opp) == [] and error_tags(stack, opp) == []
    assert verdict_tags(tags) == set()
    assert removals(stack, opp) == [["Py - Cancel", "Py - Retake"]]
    retaken = await row_where(
        stack, opp, "assessment", lambda r: r["retake"] == 1 and r["status"] == "invited"
    )
    assert retaken["execution_status"] == "running"
    cancelled = await row_where(stack, opp, "assessment", lambda r: r["retake"] is None)
    assert cancelled["status"] == "cancelled"


async def test_a_cancel_losing_to_a_pass_still_moves_the_candidate(stack: Stack):
    opp, invitation = await invited(stack, "Passing Pia")
    on_site = stack.lever.resolve_stage("On-site interview")
    assert stack.lever.opportunity(opp)["stage"] == PY_ASSESSMENT_STAGE_ID
    cancels = stack.py.stats.cancels
    # Completed at Py, its callback not sent: the Cancel reaches Py first and gets 409.
    await stack.py.complete(invitation["id"], 95, callback=False)
    tagged(stack, opp, "Py - Cancel")

    await look(stack)
    [outcome] = await commands_of(stack, opp)
    assert outcome.command is CommandKind.CANCEL and not outcome.applied, outcome
    assert outcome.detail == "the result arrived first and was applied", outcome
    result = await assessment_of(stack, opp)
    assert result.status is Status.COMPLETED, result
    [done] = result.invitations
    assert (done.status, done.verdict) == (Status.COMPLETED, "pass")
    assert py_status(stack, invitation["id"]) == "completed"
    assert stack.py.stats.cancels == cancels  # Py refused it: nothing cancelled
    tags = stack.tags(opp)
    assert verdict_tags(tags) == {"Py - Pass"}, tags
    assert "Py - Invited" not in tags and command_tags(stack, opp) == []
    assert error_tags(stack, opp) == []
    # The result's move on pass happens, as it would have without the Cancel.
    assert stack.lever.opportunity(opp)["stage"] == on_site
    assert stack.lever.count_api_writes(opp, "stage", on_site) == 1
    assert stack.lever.count_api_writes(opp, "addLinks") == 1  # the report link


async def test_a_command_on_an_archived_candidate_is_not_applied(stack: Stack):
    opp, invitation = await invited(stack, "Archived Abe")
    _, attempt = await stack.lever.archive_candidate(opp, True)
    assert attempt is not None and attempt.status == 202, attempt
    await stack.client.get_workflow_handle(attempt.body["workflow_id"]).result()
    assert (await assessment_of(stack, opp)).status is Status.CANCELLED  # withdrawn
    assert py_status(stack, invitation["id"]) == "cancelled"
    cancels, reminders = stack.py.stats.cancels, stack.py.stats.reminders
    # A Retake would otherwise start a new invitation for the cancelled test.
    tagged(stack, opp, "Py - Resend", "Py - Retake")

    await look(stack)
    outcomes = await commands_of(stack, opp)
    assert [(o.command, o.applied, o.detail) for o in outcomes] == [
        (CommandKind.RETAKE, False, "the candidate is archived"),
        (CommandKind.RESEND, False, "the candidate is archived"),
    ], outcomes
    assert [i["id"] for i in stack.invitations(opp)] == [invitation["id"]]
    assert py_status(stack, invitation["id"]) == "cancelled"
    assert (stack.py.stats.cancels, stack.py.stats.reminders) == (cancels, reminders)
    assert stack.py.invitations[invitation["id"]].reminders == 0
    assert command_tags(stack, opp) == [] and error_tags(stack, opp) == []
    assert removals(stack, opp) == [["Py - Retake", "Py - Resend"]]
    assert stack.lever.opportunity(opp)["archived"] is not None
    row = await commands_row(stack, opp)
    assert [o["detail"] for o in row["outcomes"]] == ["the candidate is archived"] * 2
    runs = await stack.client.get_workflow_handle(
        assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID)
    ).describe()
    assert runs.status is not None and runs.status.name == "COMPLETED"  # no retake run


async def test_a_command_whose_tag_removal_failed_is_not_applied_again(stack: Stack):
    opp, invitation = await invited(stack, "Stuck Stu")
    tagged(stack, opp, "Py - Resend")
    lever = stack.lever
    inner = lever._api_response
    refused: list[str] = []

    async def refuse_removal(request: Any, handler: Any) -> Any:
        if request.method == "POST" and request.url.path == f"/v1/opportunities/{opp}/removeTags":
            refused.append(request.url.path)
            return lever_error(400, "BadRequest", "tags cannot be removed from this candidate")
        return await inner(request, handler)

    lever._api_response = refuse_removal  # type: ignore[method-assign]
    try:
        await look(stack)
        [applied] = await commands_of(stack, opp)
    finally:
        lever._api_response = inner  # type: ignore[method-assign]
    assert applied.command is CommandKind.RESEND and applied.applied, applied
    assert stack.py.invitations[invitation["id"]].reminders == 1
    assert len(refused) == 1  # a 400 is final: not retried
    assert "Py - Resend" in stack.tags(opp) and removals(stack, opp) == []
    first_run = (
        await stack.client.get_workflow_handle(
            candidate_commands_workflow_id("acme", opp)
        ).describe()
    ).run_id
    # The next look comes commands_every later: the closed run is visible by then.
    stuck = await row_where(
        stack,
        opp,
        "commands",
        lambda r: r["run_id"] == first_run and r["execution_status"] == "completed",
    )
    assert stuck["tags_removed"] is False and stuck["commands"] == ["Py - Resend"]

    await look(stack)  # Lever accepts removals again
    [again] = await commands_of(stack, opp)
    assert again.command is CommandKind.RESEND and not again.applied, again
    assert again.detail == (
        "applied already by the previous run (its tag could not be removed then); not applied again"
    )
    second_run = (
        await stack.client.get_workflow_handle(
            candidate_commands_workflow_id("acme", opp)
        ).describe()
    ).run_id
    assert second_run != first_run
    assert stack.py.invitations[invitation["id"]].reminders == 1  # still one reminder
    assert command_tags(stack, opp) == [] and removals(stack, opp) == [["Py - Resend"]]
    assert "Py - Invited" in stack.tags(opp)
    done = await commands_row(stack, opp)
    assert done["run_id"] == second_run
    # A third look finds nothing: no third run.
    await look(stack)
    assert stack.py.invitations[invitation["id"]].reminders == 1
    last = await stack.client.get_workflow_handle(
        candidate_commands_workflow_id("acme", opp)
    ).describe()
    assert last.run_id == second_run

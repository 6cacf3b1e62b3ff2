"""No candidate left behind (issue 14): the sweep, its schedules and the backfill.

The module has its own stack (tests/support/integration_stack.py): a sweep walks every
candidate of the account's trigger stages, so the session stack's candidates, which other
tests move silently on purpose, must not be in reach.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, ScheduleActionStartWorkflow, WorkflowExecutionStatus
from temporalio.service import RPCError

from pylever.clients.triggers import trigger_settings
from pylever.contracts.records import AssessmentInput
from pylever.contracts.sweep import SweepInput, SweepMode, SweepResult
from pylever.temporal.codec import AesGcmCodec, data_converter
from pylever.temporal.gateway import Gateway
from pylever.temporal.schedules import (
    apply_sweep_schedules,
    schedule_id,
    unconfigured_schedules,
)
from sandbox.lever import PY_ASSESSMENT_STAGE_ID, TECHNICAL_SCREEN_STAGE_ID
from tests.support.integration_stack import PAYLOAD_KEY, Stack, running_stack
from tests.support.pipeline_support import (
    PY_TESTS,
    assessment_id,
    enter_silently,
    post_webhook,
    signed,
)
from workflows.decisions import BACKGROUND_PRIORITY_KEY
from workflows.sweep import SweepWorkflow

ROOT = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    async with running_stack("py-lever-sweep") as s:
        yield s


async def sweep(
    stack: Stack,
    mode: SweepMode = SweepMode.SWEEP,
    *,
    stage: str | None = None,
    since: datetime | None = None,
    account: str = "acme",
) -> SweepResult:
    return await stack.client.execute_workflow(
        SweepWorkflow.run,
        SweepInput(account_id=account, mode=mode, stage=stage, since=since),
        id=f"test-sweep-{uuid.uuid4().hex[:8]}",
        task_queue=stack.task_queue,
        result_type=SweepResult,
        execution_timeout=timedelta(seconds=60),
    )


def waiting_in_stage(stack: Stack, name: str, *, days_ago: float = 0, tags: tuple = ()) -> str:
    """A candidate added straight into "Py Assessment" (Lever sends no webhook for that)."""
    entered = int(time.time() * 1000 - days_ago * DAY_MS)
    return stack.lever.create_candidate(
        name=name,
        emails=[f"{name.split()[0].lower()}@example.com"],
        tags=list(tags),
        stage="Py Assessment",
        advanced_at=entered,
    )["id"]


def later_than_the_margin(stack: Stack, opp: str) -> None:
    """As if the candidate had re-entered two minutes after its last run started: the
    sweep takes a run that started up to a minute before the entry as having seen it
    (``gateway.ENTRY_CLOCK_MARGIN``, for Lever's clock against ours)."""
    stack.lever.opportunities[opp]["lastAdvancedAt"] += 120_000


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def closed_status(stack: Stack, workflow_id: str) -> WorkflowExecutionStatus | None:
    description = await stack.client.get_workflow_handle(workflow_id).describe()
    return description.status


# --- the sweep ----------------------------------------------------------------------------


async def test_a_lost_webhook_is_recovered_by_the_next_scheduled_sweep(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    changes = await apply_sweep_schedules(stack.client, stack.task_queue, stack.config)
    assert set(changes.created) == {"acme", "globex"}  # default sweep_every: 15 min
    handle = stack.client.get_schedule_handle(schedule_id(stack.task_queue, "acme"))
    description = await handle.describe()
    assert description.schedule.spec.intervals[0].every == timedelta(minutes=15)
    action = description.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert action.workflow == "SweepWorkflow" and action.task_queue == stack.task_queue

    opp = stack.candidate("Grace Hopper", "grace@example.com")
    await enter_silently(stack, opp, "Py Assessment")  # the webhook never comes
    assert stack.invitations(opp) == []
    started_before = counter("pylever_sweep_started_total", account="acme", mode="sweep")

    caplog.set_level(logging.WARNING, logger="pylever.activities.sweep")
    await handle.trigger()  # the next sweep, now
    invitation = await stack.invitation(opp, timeout=30)
    assert invitation["test_id"] == PY_TESTS["Python Basics"]
    await stack.wait_tag(opp, "Py - Invited")

    runs = await stack.eventually(lambda: _closed_sweeps(stack), timeout=30)
    result = await stack.client.get_workflow_handle(runs[0], result_type=SweepResult).result()
    assert result.started >= 1 and result.listed >= result.started
    assert counter("pylever_sweep_started_total", account="acme", mode="sweep") >= (
        started_before + 1
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "reached a trigger stage without a webhook — check Lever's webhook settings" in m
        for m in warnings
    ), warnings

    # The sweep after that finds the candidate assessed: nothing new is sent.
    again = await sweep(stack)
    assert again.started == 0 and again.assessed >= 1
    assert len(stack.invitations(opp)) == 1


async def _closed_sweeps(stack: Stack) -> list[str]:
    prefix = schedule_id(stack.task_queue, "acme")
    found = []
    query = "WorkflowType = 'SweepWorkflow' AND ExecutionStatus = 'Completed'"
    async for wf in stack.client.list_workflows(query):
        if wf.id.startswith(prefix):
            found.append(wf.id)
    return found


async def test_the_sweep_leaves_alone_old_archived_finished_and_decided_candidates(
    stack: Stack,
) -> None:
    # No ``since``: the sweep's own window, the account's sweep_lookback (3 days) back.
    old = waiting_in_stage(stack, "Old Entry", days_ago=3.1)  # just before the lookback
    inside = waiting_in_stage(stack, "Inside Entry", days_ago=2.9)  # just inside it
    archived = waiting_in_stage(stack, "Archived Entry")
    stack.lever.opportunities[archived]["archived"] = {"reason": "hired", "archivedAt": 1}
    finished = stack.candidate("Finished Entry", "fin@example.com")
    await stack.move(finished, "Py Assessment")
    done = await stack.invitation(finished)
    await stack.py.complete(done["id"], 91)
    await stack.wait_tag(finished, "Py - Pass")
    # Technical Screen has no default test: the webhook's run ended not_sent ("No Test").
    untested = stack.candidate("Untested Entry", "untested@example.com")
    await stack.move(untested, "Technical Screen")
    await stack.wait_tag(untested, "Py - No Test Configured")
    lost = waiting_in_stage(stack, "Lost Webhook")

    result = await sweep(stack)
    assert result.started == 2, result  # lost and inside (earlier tests' are all assessed)
    assert (datetime.now(UTC) - result.since) - timedelta(days=3) < timedelta(minutes=1)
    await stack.invitation(inside)
    assert stack.invitations(old) == [] and stack.invitations(archived) == []
    assert len(stack.invitations(finished)) == 1
    assert stack.invitations(untested) == []
    for opp, stage in ((old, PY_ASSESSMENT_STAGE_ID), (archived, PY_ASSESSMENT_STAGE_ID)):
        with pytest.raises(RPCError):
            await stack.client.get_workflow_handle(assessment_id("acme", opp, stage)).describe()
    # The not_sent run saw this entry: the sweep does not run it again.
    untested_id = assessment_id("acme", untested, TECHNICAL_SCREEN_STAGE_ID)
    runs = [r async for r in stack.client.list_workflows(f"WorkflowId = '{untested_id}'")]
    assert len(runs) == 1
    await stack.invitation(lost)


async def test_the_sweep_and_a_webhook_starting_at_once_make_one_run(stack: Stack) -> None:
    """Whichever comes first: the gateway's start with an entry time (the sweep) and
    without (the webhook), at the same moment, for a new entry and for a re-entry after
    an assessment that ended without an invitation."""
    gateway = Gateway(stack.client, stack.task_queue)
    account = stack.config.accounts[0]
    settings = trigger_settings(stack.config, account, account.triggers[0])

    async def both(opp: str) -> list[str]:
        input = AssessmentInput(account_id="acme", opportunity_id=opp,
                                stage_id=PY_ASSESSMENT_STAGE_ID, settings=settings)  # fmt: skip
        advanced = stack.lever.opportunity(opp)["lastAdvancedAt"]
        entered = datetime.fromtimestamp(advanced / 1000, UTC)
        sweep_start = gateway.start_assessment(input, entered_at=entered)
        webhook_start = gateway.start_assessment(input)
        started = await asyncio.gather(sweep_start, webhook_start)
        return sorted(s.status for s in started)

    fresh = stack.candidate("Both Fresh", "both.fresh@example.com")
    await enter_silently(stack, fresh, "Py Assessment")
    assert await both(fresh) == ["already_running", "started"]
    await stack.invitation(fresh)

    # No email: the run ends "error" (rerunnable); the recruiter adds one and moves the
    # candidate out and back in; the webhook is lost and a sweep meets the webhook's retry.
    again = stack.candidate("Both Again", None)
    await stack.move(again, "Py Assessment")
    await stack.wait_tag(again, "Py - Error: No Email")
    workflow_id = assessment_id("acme", again, PY_ASSESSMENT_STAGE_ID)
    assert (await stack.result(workflow_id)).status == "error"  # closed before the re-entry
    stack.lever.opportunities[again]["emails"] = ["both.again@example.com"]
    await enter_silently(stack, again, "lead-new")
    await enter_silently(stack, again, "Py Assessment")
    later_than_the_margin(stack, again)
    assert await both(again) == ["already_running", "started"]
    await stack.invitation(again)
    runs = [r async for r in stack.client.list_workflows(f"WorkflowId = '{workflow_id}'")]
    assert len(runs) == 2  # the first (error) and one re-run


async def test_a_sweep_reruns_what_ended_before_the_last_entry(stack: Stack) -> None:
    """Moved out and back in after an assessment that sent nothing, webhook lost: the
    sweep runs it again, as that webhook would have; a sweep right after does not."""
    opp = stack.candidate("Rerun Entry", "rerun@example.com")
    await stack.move(opp, "Technical Screen")  # no default test there: not_sent
    await stack.wait_tag(opp, "Py - No Test Configured")
    screen_id = assessment_id("acme", opp, TECHNICAL_SCREEN_STAGE_ID)
    assert (await stack.result(screen_id)).status == "not_sent"
    stack.lever.opportunities[opp]["tags"].append("SQL Fundamentals")  # the recruiter's fix
    await enter_silently(stack, opp, "lead-new")
    await enter_silently(stack, opp, "Technical Screen")
    within_margin = await sweep(stack, stage="Technical Screen")
    assert within_margin.started == 0  # back within a minute of that run: taken as seen
    later_than_the_margin(stack, opp)
    first = await sweep(stack, stage="Technical Screen")
    assert first.started == 1, first
    invitation = await stack.invitation(opp)
    assert invitation["test_id"] == PY_TESTS["SQL Fundamentals"]
    assert (await sweep(stack, stage="Technical Screen")).started == 0
    assert len(stack.invitations(opp)) == 1


async def test_a_sweep_racing_a_late_webhook_sends_one_invitation(stack: Stack) -> None:
    opp = stack.candidate("Race Entry", "race@example.com")
    data = await enter_silently(stack, opp, "Py Assessment")
    raw = signed(stack.config.accounts[0].webhook_signature_tokens[0].get_secret_value(), data)
    response, result = await asyncio.gather(post_webhook(stack, raw), sweep(stack))
    assert response.status_code == 202
    await stack.invitation(opp)
    await asyncio.sleep(1)
    assert len(stack.invitations(opp)) == 1
    workflow_id = assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID)
    runs = [r async for r in stack.client.list_workflows(f"WorkflowId = '{workflow_id}'")]
    assert len(runs) == 1
    assert result.listed >= 1


async def test_sweep_lever_calls_run_behind_webhook_work_on_the_account_key(stack: Stack) -> None:
    result_handle = await stack.client.start_workflow(
        SweepWorkflow.run,
        SweepInput(account_id="globex"),
        id=f"test-sweep-priority-{uuid.uuid4().hex[:8]}",
        task_queue=stack.task_queue,
    )
    await result_handle.result()
    history = await result_handle.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    by_type = {a.activity_type.name: a for a in scheduled}
    assert {"sweep.plan", "lever.list_waiting", "sweep.report"} <= set(by_type)
    for name in ("sweep.plan", "lever.list_waiting"):
        attributes = by_type[name]
        assert attributes.task_queue.name == f"{stack.task_queue}-lever"
        assert attributes.priority.priority_key == BACKGROUND_PRIORITY_KEY
        assert attributes.priority.fairness_key == "globex"


async def test_assessments_a_sweep_starts_run_behind_webhook_work(stack: Stack) -> None:
    lost = waiting_in_stage(stack, "Low Priority")
    webhooked = stack.candidate("Normal Priority", "normal@example.com")
    await stack.move(webhooked, "Py Assessment")
    await stack.invitation(webhooked)
    await sweep(stack)
    await stack.invitation(lost)

    async def priority(opp: str) -> tuple[int, str]:
        workflow_id = assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID)
        info = (await stack.client.get_workflow_handle(workflow_id).describe()).raw_description
        p = info.workflow_execution_info.priority
        return p.priority_key, p.fairness_key

    assert await priority(lost) == (BACKGROUND_PRIORITY_KEY, "acme")
    assert await priority(webhooked) == (0, "acme")  # unset: the default (3)


# --- schedules ------------------------------------------------------------------------------


async def test_schedules_follow_the_configuration(stack: Stack) -> None:
    queue = f"{stack.task_queue}-schedules"
    base = stack.config
    first = await apply_sweep_schedules(stack.client, queue, base)
    assert sorted(first.created) == ["acme", "globex"]
    again = await apply_sweep_schedules(stack.client, queue, base)
    assert (again.created, again.updated, again.deleted) == ([], [], [])  # nothing to write

    acme, globex = base.accounts
    changed = base.model_copy(
        update={
            "accounts": (
                acme.model_copy(update={"sweep_every": timedelta(minutes=5)}),
                globex.model_copy(update={"sweep_every": "off"}),
            )
        }
    )
    second = await apply_sweep_schedules(stack.client, queue, changed)
    assert second.updated == ["acme"] and second.deleted == ["globex"]
    described = await stack.client.get_schedule_handle(schedule_id(queue, "acme")).describe()
    assert described.schedule.spec.intervals[0].every == timedelta(minutes=5)
    with pytest.raises(RPCError):
        await stack.client.get_schedule_handle(schedule_id(queue, "globex")).describe()

    # A payload key rotation: the schedules are written again under the new key.
    rotated_codec = AesGcmCodec([bytes(range(32, 64)), PAYLOAD_KEY])
    rotated = Client(**{**stack.client.config(), "data_converter": data_converter(rotated_codec)})
    after_rotation = await apply_sweep_schedules(rotated, queue, changed)
    assert after_rotation.updated == ["acme"], after_rotation
    assert (await apply_sweep_schedules(rotated, queue, changed)).updated == []

    only_globex = base.model_copy(update={"accounts": (globex,)})
    assert await unconfigured_schedules(stack.client, queue, only_globex) == ["acme"]
    third = await apply_sweep_schedules(stack.client, queue, only_globex, removed=["acme"])
    assert third.created == ["globex"] and third.deleted == ["acme"]
    await stack.client.get_schedule_handle(schedule_id(queue, "globex")).delete()


# --- backfill -------------------------------------------------------------------------------


def cli_env(stack: Stack, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "backfill.toml"
    config.write_text(
        '[service]\npublic_url = "https://lever.py.example"\n'
        '[py]\napi_url = "https://py.example"\napi_key = "k"\ncallback_secret = "s"\n'
        '[[accounts]]\nid = "acme"\nlever_api_key = "k"\nwebhook_signature_tokens = ["t"]\n'
        '[[accounts.triggers]]\nstage = "Py Assessment"\n'
    )
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYLEVER_CONFIG": str(config),
        "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
        "PYLEVER_TASK_QUEUE": stack.task_queue,
        "PYLEVER_PAYLOAD_KEYS": base64.b64encode(PAYLOAD_KEY).decode(),
    }


async def backfill(env: Mapping[str, str], *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "cli.py"), "backfill", *args,
        cwd=ROOT, env=dict(env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_backfill_dry_run_then_run_then_run_again(stack: Stack, tmp_path: Path) -> None:
    env = cli_env(stack, tmp_path)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    ada = waiting_in_stage(stack, "Backfill Ada", tags=("SQL Fundamentals",))
    bob = waiting_in_stage(stack, "Backfill Bob")
    # In Technical Screen (no default test) with no test tag: reported, never invited.
    carl = stack.lever.create_candidate(
        name="Backfill Carl", emails=["carl@example.com"], stage="Technical Screen"
    )["id"]
    archived = waiting_in_stage(stack, "Backfill Archived")
    stack.lever.opportunities[archived]["archived"] = {"reason": "withdrew", "archivedAt": 1}

    code, out, err = await backfill(env, "acme", "--since", today, "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("dry_run: workflow ")
    assert any(line.startswith("progress: ") for line in lines)
    row = {line.split("  ")[0]: line for line in lines if line.startswith("Backfill ")}
    assert "SQL Fundamentals" in row["Backfill Ada"] and "would be invited" in row["Backfill Ada"]
    assert "Python Basics" in row["Backfill Bob"] and "Py Assessment" in row["Backfill Bob"]
    assert (
        "no test configured" in row["Backfill Carl"] and "Technical Screen" in row["Backfill Carl"]
    )
    assert today in row["Backfill Bob"]  # the entry date
    assert "Backfill Archived" not in row
    assert stack.invitations(ada) == [] and stack.invitations(bob) == []  # nothing sent

    code, out, err = await backfill(env, "acme", "--since", today, "--yes")
    assert code == 0, err
    assert "without a test configured (not invited)" in out
    await stack.invitation(ada)
    await stack.invitation(bob)
    assert stack.invitations(carl) == [] and stack.invitations(archived) == []
    with pytest.raises(RPCError):  # carl was reported, not started
        await stack.client.get_workflow_handle(
            assessment_id("acme", carl, TECHNICAL_SCREEN_STAGE_ID)
        ).describe()

    code, out, err = await backfill(env, "acme", "--since", today, "--yes")
    assert code == 0, err
    assert " 0 invited" in out, out  # running it twice sends nothing new
    assert len(stack.invitations(ada)) == 1 and len(stack.invitations(bob)) == 1


async def test_backfill_asks_before_sending(stack: Stack, tmp_path: Path) -> None:
    env = cli_env(stack, tmp_path)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    dora = waiting_in_stage(stack, "Prompt Dora")
    code, out, _ = await backfill(env, "acme", "--since", today, stdin=b"n\n")
    assert code == 0 and "Invite these" in out and "nothing sent" in out
    assert stack.invitations(dora) == []
    code, out, err = await backfill(env, "acme", "--since", today, stdin=b"y\n")
    assert code == 0, err
    await stack.invitation(dora)


async def test_backfill_refuses_unknown_accounts_and_stages(stack: Stack, tmp_path: Path) -> None:
    env = cli_env(stack, tmp_path)
    code, _, err = await backfill(env, "initech", "--dry-run")
    assert code == 2 and "not in the configuration" in err
    code, _, err = await backfill(env, "acme", "--stage", "Offer", "--dry-run")
    assert code == 1 and "not a trigger stage" in err, err
    code, _, err = await backfill(env, "acme", "--since", "last week")
    assert code == 2 and "YYYY-MM-DD" in err
    assert "Traceback" not in err


async def test_backfill_draws_a_progress_bar_on_a_terminal(stack: Stack, tmp_path: Path) -> None:
    import pty

    env = cli_env(stack, tmp_path)
    waiting_in_stage(stack, "Terminal Tess")
    main, terminal = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "cli.py"), "backfill", "acme", "--dry-run",
            cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=terminal,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        os.close(terminal)
        _, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(main)
    shown = b"".join(chunks).decode()
    assert "\r[####################] stages 2/2:" in shown, shown
    assert "progress: " not in shown
    assert "Terminal Tess" in shown

"""Recruiters steer invitations from Lever (issue 15) with the deployment as real processes.

One ``ProcessStack`` whose account looks for command tags every 2 s
(``commands_every = "2s"``):

1. The worker writes the account's command watch Schedule at start (every ten minutes,
   overlap BUFFER_ONE) and triggers its first run at once: a ``CommandWatchWorkflow``
   is running.
2. A candidate is invited through the webhook; the recruiter adds ``Py - Resend`` in
   Lever: within seconds Py has reminded the candidate once and the tag is gone.
3. The candidate fails; the recruiter adds ``Py - Retake``: a second invitation for the
   same test (its own idempotency key), ``Py - Invited`` is back; its pass replaces
   ``Py - Fail``.
4. The status endpoint lists both commands (rows of kind "commands") with their outcomes.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import (
    ScheduleActionExecutionStartWorkflow,
    ScheduleDescription,
    ScheduleOverlapPolicy,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError, RPCStatusCode

from pylever.contracts.commands import CommandKind
from pylever.contracts.records import Verdict
from pylever.temporal.schedules import schedule_id
from sandbox.process_stack import ACCOUNT, ProcessStack
from workflows.decisions import TAG_INVITED, VERDICT_TAGS

pytestmark = pytest.mark.slow

RESEND, RETAKE = CommandKind.RESEND.value, CommandKind.RETAKE.value
# The commands should be applied within a look (2 s) plus the work; generous for slow CI.
WITHIN = 20


async def test_resend_and_retake_on_real_processes(tmp_path: Path) -> None:
    # The sweep is on, as by default: its schedule is written first, and the command
    # watch's must be written too (a failed log line of the sweep's once stopped it).
    options = {"workers": 1, "commands_every": "2s", "sweep_every": "1d"}
    async with ProcessStack(tmp_path / "stack", **options) as stack:
        # 1. The schedule, written at start, and its first run triggered at once.
        client = await stack.client()
        handle = client.get_schedule_handle(
            schedule_id(stack.options.task_queue, ACCOUNT, "commands")
        )

        async def watching() -> ScheduleDescription | None:
            try:
                description = await handle.describe()
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    return None
                raise
            return description if description.info.running_actions else None

        description = await stack.eventually(watching, timeout=30, what="a running watch")
        assert description.schedule.spec.intervals[0].every == timedelta(minutes=10)
        assert description.schedule.policy.overlap == ScheduleOverlapPolicy.BUFFER_ONE
        [action] = description.info.running_actions
        assert isinstance(action, ScheduleActionExecutionStartWorkflow)
        watch = await client.get_workflow_handle(action.workflow_id).describe()
        assert watch.workflow_type == "CommandWatchWorkflow"
        assert watch.status == WorkflowExecutionStatus.RUNNING
        assert await client.get_schedule_handle(
            schedule_id(stack.options.task_queue, ACCOUNT)
        ).describe()
        assert "writing the schedules" not in stack.workers[0].log_since_start()
        looks_before = await _list_calls(stack)
        started = time.monotonic()

        # 2. Resend: Py reminds the candidate now, once, and the tag goes.
        opp = await stack.create_candidate("Resend Rita", "rita@example.com")
        await stack.move(opp)
        [first] = await stack.wait_invitations(opp)
        await stack.wait_tag(opp, TAG_INVITED)
        assert first["reminders"] == 0
        assert RESEND in await stack.recruiter_tags(opp, add=[RESEND])

        async def reminded() -> dict[str, Any] | None:
            invitation = await stack.invitation(first["id"])
            gone = RESEND not in await stack.tags(opp)
            return invitation if invitation["reminders"] >= 1 and gone else None

        reminded_invitation = await stack.eventually(
            reminded, WITHIN, what="the resend applied and its tag removed"
        )
        assert reminded_invitation["reminders"] == 1
        assert reminded_invitation["status"] == "invited"
        assert TAG_INVITED in await stack.tags(opp)
        assert (await stack.py_stats())["reminders"] == 1

        # 3. Fail, then Retake: a new invitation for the same test.
        await stack.complete(first["id"], 20)
        await stack.wait_tag(opp, VERDICT_TAGS[Verdict.FAIL])

        async def assessment_closed() -> bool:
            rows = (await stack.candidate_status(opp))["assessments"]
            return any(
                r["kind"] == "assessment" and r["execution_status"] == "completed" for r in rows
            )

        # A recruiter reads the verdict and the report first: the assessment has ended.
        await stack.eventually(assessment_closed, 30, what="the assessment closed")
        await stack.recruiter_tags(opp, add=[RETAKE])
        first_done, second = await stack.wait_invitations(opp, count=2, timeout=WITHIN)
        assert first_done["id"] == first["id"]
        assert second["test_id"] == first["test_id"]
        # A new idempotency key (the first one's, marked as a retake): a new invitation.
        assert second["idempotency_key"].startswith(f"{first['idempotency_key']}#retake")
        tags = await stack.wait_tag(opp, TAG_INVITED)
        await stack.eventually(
            lambda: _without(stack, opp, RETAKE), WITHIN, what="the retake tag removed"
        )
        assert len(await stack.invitations(opp)) == 2  # one retake, not one per look

        await stack.complete(second["id"], 95)
        tags = await stack.wait_tag(opp, VERDICT_TAGS[Verdict.PASS])

        async def settled() -> list[str] | None:
            now = await stack.tags(opp)
            return now if VERDICT_TAGS[Verdict.FAIL] not in now else None

        tags = await stack.eventually(settled, WITHIN, what="Py - Fail replaced")
        assert TAG_INVITED not in tags

        # 4. Both commands in the status endpoint, with their outcomes.
        async def command_rows() -> list[dict[str, Any]] | None:
            rows = (await stack.candidate_status(opp))["assessments"]
            found = [r for r in rows if r["kind"] == "commands" and r["tags_removed"]]
            return found if len(found) == 2 else None

        rows = await stack.eventually(command_rows, 30, what="two command rows")
        by_command = {tuple(r["commands"]): r for r in rows}
        assert set(by_command) == {(RESEND,), (RETAKE,)}, rows
        for command, row in by_command.items():
            [outcome] = row["outcomes"]
            assert outcome["command"] == command[0]
            assert outcome["applied"] is True, outcome
            assert row["execution_status"] == "completed"

        # Cheap: one Lever list call per look (every 2 s) for all four tags, no more.
        looks = await _list_calls(stack) - looks_before
        assert 1 <= looks <= (time.monotonic() - started) / 2 + 2, looks


async def _list_calls(stack: ProcessStack) -> int:
    """Lever's ``GET /opportunities`` calls so far (the looks: the sweep is off)."""
    stats = await stack.lever_stats()
    return int(stats["requests"]["by_endpoint"].get("GET /opportunities", 0))


async def _without(stack: ProcessStack, opp: str, tag: str) -> bool:
    return tag not in await stack.tags(opp)

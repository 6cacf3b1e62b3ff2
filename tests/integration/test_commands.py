"""Recruiters steer invitations from Lever (issue 15): the command tags on a real stack.

The module has its own stack: a look lists every candidate of the account that carries a
command tag, so other modules' candidates must not be in reach.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from pylever.contracts.commands import CommandOutcome, CommandWatchInput
from sandbox.lever import PY_ASSESSMENT_STAGE_ID
from tests.support.integration_stack import Stack, running_stack
from tests.support.pipeline_support import assessment_id, candidate_status
from workflows.commands import CommandWatchWorkflow, candidate_commands_workflow_id


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
    return await handle.result()


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

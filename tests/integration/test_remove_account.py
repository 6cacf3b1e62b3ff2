"""An account removed from the configuration: its running assessments are withdrawn.

``RemoveAccountWorkflow`` (started by ``Gateway.remove_account`` from the worker's
reload) signals each running assessment of the account ``withdraw`` with the
reason ``account_removed``: the invitation is cancelled at Py, nothing more is
written to Lever, and the assessment ends ``cancelled`` with the reason
"account removed from configuration". The stack is this module's own (real dev
server): removing an account withdraws every one of its running assessments, also
those that start after its first listing; it lists until nothing new turns up for a
while, continues as new when its history grows, and ends early on ``stop``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus

from pylever.contracts.records import (
    InvitationResult,
    RemoveAccountInput,
    RemoveAccountResult,
    Status,
    Withdrawal,
)
from pylever.temporal.gateway import Gateway
from tests.integration.test_lifecycle import RequestSpy
from tests.support.integration_stack import Stack, running_stack
from workflows import decisions
from workflows.decisions import TAG_INVITED
from workflows.remove_account import (
    RemoveAccountWorkflow,
    next_listing_in,
    quiet_enough,
    remove_account_workflow_id,
)

# --- the rules (pure) --------------------------------------------------------------------


def test_archived_and_deleted_keep_their_rules_and_texts() -> None:
    """Recorded histories depend on these: byte-identical reasons, same Lever writes."""
    assert decisions.withdrawal_reason_text("archived") == "candidate archived"
    assert decisions.withdrawal_reason_text("deleted") == "candidate deleted"
    assert decisions.withdrawal_writes_lever("archived") is True
    assert decisions.withdrawal_writes_lever("deleted") is False
    assert decisions.tags_on_withdrawal("archived").remove == decisions.IN_PROGRESS_TAGS
    assert decisions.tags_on_withdrawal("deleted") == decisions.TagChange()
    for reason in ("archived", "deleted"):
        assert decisions.withdrawal_stops_lever_calls(reason) is False
        assert decisions.reason_after_withdrawn_children(reason) is None
    assert decisions.reason_after_withdrawn_children(None) is None


def test_an_account_removal_writes_nothing_to_lever_and_names_itself() -> None:
    reason = Withdrawal(reason="account_removed").reason
    assert decisions.withdrawal_reason_text(reason) == "account removed from configuration"
    assert decisions.withdrawal_writes_lever(reason) is False
    assert decisions.withdrawal_stops_lever_calls(reason) is True
    assert decisions.tags_on_withdrawal(reason) == decisions.TagChange()
    assert decisions.reason_after_withdrawn_children(reason) == (
        "account removed from configuration"
    )


def test_the_listings_slow_down_to_the_quiet_interval() -> None:
    """Listed at 0, then 15 s, 30 s, 1 min, 2 min, 4 min, 6 min, ... (the defaults)."""
    at, times = 0.0, [0.0]
    while at < 6 * 60:
        at += next_listing_in(at, 15, 120)
        times.append(at)
    assert times == [0, 15, 30, 60, 120, 240, 360]


def test_quiet_means_nothing_new_for_the_whole_interval() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    assert not quiet_enough(None, t0, 120)  # the last listing found something
    assert not quiet_enough(t0, t0 + timedelta(seconds=119), 120)
    assert quiet_enough(t0, t0 + timedelta(seconds=120), 120)


# --- on the stack --------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    async with running_stack("py-lever-remove-account") as s:
        yield s


async def invited(stack: Stack, name: str, account: str = "acme") -> tuple[str, str]:
    """A candidate moved into Py Assessment whose invitation is live: (opportunity, parent id)."""
    lever = stack.lever if account == "acme" else stack.globex
    opp = stack.candidate(name, f"{name.lower().replace(' ', '.')}@example.com", lever=lever)
    attempt = await stack.move(opp, "Py Assessment", lever=lever)
    assert attempt.status == 202, attempt.body
    await stack.invitation(opp)
    await stack.wait_tag(opp, TAG_INVITED, lever=lever)
    return opp, attempt.body["workflow_id"]


async def test_a_revoked_key_does_not_hold_the_removal_up(stack: Stack) -> None:
    """The customer revoked its Lever key before leaving: the ``Py - Invited`` tag is still
    being retried (401) when the account is removed. The removal does not wait for it: the
    invitation is cancelled at Py and the assessment ends at once, nothing written."""
    spy = RequestSpy(stack.lever)
    opp = stack.candidate("Revoked Key", "revoked.key@example.com")
    try:
        with spy.hook("POST", f"/v1/opportunities/{opp}/addTags", before=revoke(stack)) as refused:
            attempt = await stack.move(opp, "Py Assessment")
            assert attempt.status == 202, attempt.body
            await asyncio.wait_for(refused.fired.wait(), 30)
        assert spy.requests("POST", f"{opp}/addTags")[0][2] == 401
        await stack.invitation(opp)
        started = time.monotonic()
        handle = await stack.client.start_workflow(
            RemoveAccountWorkflow.run,
            RemoveAccountInput(account_id="acme", settle_seconds=0),
            id="remove-account:acme-revoked",
            task_queue=stack.task_queue,
            result_type=RemoveAccountResult,
        )
        assert await handle.result() == RemoveAccountResult(found=1, signalled=1)
        result = await stack.result(attempt.body["workflow_id"], timeout=30)
        assert (result.status, result.reason) == (
            Status.CANCELLED,
            "account removed from configuration",
        )
        assert time.monotonic() - started < 20  # not held by the tag's retries
        assert [i["status"] for i in stack.invitations(opp)] == ["cancelled"]
        assert stack.lever.api_writes(opp) == []
    finally:
        stack.lever.refuse_key_for(0)


def revoke(stack: Stack) -> Callable[[], Awaitable[None]]:
    async def refuse() -> None:
        stack.lever.refuse_key_for(600)

    return refuse


async def test_removal_cancels_at_py_and_writes_nothing_to_lever(stack: Stack) -> None:
    opp, parent_id = await invited(stack, "Removed Customer")
    writes_before = stack.lever.api_writes(opp)
    assert [w["op"] for w in writes_before] == ["addTags"]  # Py - Invited
    gateway = Gateway(stack.client, stack.task_queue)

    workflow_id = await gateway.remove_account("acme")
    again = await gateway.remove_account("acme")  # a second worker reloading at the same time
    assert workflow_id == again == remove_account_workflow_id("acme") == "remove-account:acme"
    runs = [wf.run_id async for wf in stack.client.list_workflows(f'WorkflowId = "{workflow_id}"')]
    assert len(runs) == 1, runs

    result = await stack.result(parent_id, timeout=30)
    assert result.status == Status.CANCELLED
    assert result.reason == "account removed from configuration"
    [child] = result.invitations
    assert child.status == Status.CANCELLED
    [invitation] = stack.invitations(opp)
    assert invitation["status"] == "cancelled"  # cancelled at Py: nothing left open
    desc = await stack.client.get_workflow_handle(parent_id).describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    memo = await desc.memo()
    assert memo["assessment"] == {
        "status": "cancelled",
        "reason": "account removed from configuration",
    }
    child_handle = stack.client.get_workflow_handle(
        decisions.invitation_workflow_id(parent_id, child.test.id), result_type=InvitationResult
    )
    assert (await child_handle.result()).status == Status.CANCELLED
    # Not even the in-progress tags are cleared: the customer's key may be revoked.
    assert stack.lever.api_writes(opp) == writes_before
    assert TAG_INVITED in stack.tags(opp)
    # It keeps listing (minutes); the account configured again: ``stop`` ends it.
    remover = stack.client.get_workflow_handle(workflow_id, result_type=RemoveAccountResult)
    progress = await remover.query(RemoveAccountWorkflow.progress)
    assert progress == RemoveAccountResult(found=1, signalled=1)
    await remover.signal(RemoveAccountWorkflow.stop)
    assert await asyncio.wait_for(remover.result(), 20) == progress


async def test_every_page_of_running_assessments_is_withdrawn(stack: Stack) -> None:
    """globex's three candidates, listed one per page; a finished assessment is not counted."""
    opps = [await invited(stack, f"Globex Candidate {i}", "globex") for i in range(3)]
    handle = await stack.client.start_workflow(
        RemoveAccountWorkflow.run,
        RemoveAccountInput(account_id="globex", settle_seconds=0, page_size=1, signals_per_run=1),
        id="remove-account:globex-pages",
        task_queue=stack.task_queue,
        result_type=RemoveAccountResult,
    )
    assert await handle.result() == RemoveAccountResult(found=3, signalled=3)
    # One signal per run: continued as new twice, the listing in progress carried over.
    runs, sent = [handle.result_run_id], []
    while True:
        events = [e async for e in stack.client.get_workflow_handle(
            handle.id, run_id=runs[-1]).fetch_history_events()]  # fmt: skip
        sent.append(sum(e.event_type == SIGNAL_SENT for e in events))
        closing = events[-1]
        if closing.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            break
        runs.append(
            closing.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        )
    # (a last run may only read the listing's empty last page)
    assert sent in ([1, 1, 1], [1, 1, 1, 0]), sent
    for opp, parent_id in opps:
        result = await stack.result(parent_id, timeout=30)
        assert (result.status, result.reason) == (
            Status.CANCELLED,
            "account removed from configuration",
        )
        assert [i["status"] for i in stack.invitations(opp)] == ["cancelled"]
        assert [w["op"] for w in stack.globex.api_writes(opp)] == ["addTags"]
    # Nothing of the account runs any more: a second removal finds nothing.
    again = await stack.client.execute_workflow(
        RemoveAccountWorkflow.run,
        RemoveAccountInput(account_id="globex", settle_seconds=0),
        id="remove-account:globex-again",
        task_queue=stack.task_queue,
        result_type=RemoveAccountResult,
    )
    assert again == RemoveAccountResult(found=0, signalled=0)


SIGNAL_SENT = EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED


async def test_an_assessment_started_after_the_first_listing_is_withdrawn(stack: Stack) -> None:
    """An API that had not reloaded yet starts one more: a later listing withdraws it; the
    listings stop once nothing new turned up for ``quiet_seconds``."""
    _, first_id = await invited(stack, "Early Candidate", "globex")
    handle = await stack.client.start_workflow(
        RemoveAccountWorkflow.run,
        RemoveAccountInput(account_id="globex", settle_seconds=1, quiet_seconds=6),
        id="remove-account:globex-late",
        task_queue=stack.task_queue,
        result_type=RemoveAccountResult,
    )
    first = await stack.result(first_id, timeout=30)
    assert (first.status, first.reason) == (Status.CANCELLED, decisions.ACCOUNT_REMOVED_TEXT)
    late_opp = stack.candidate("Late Candidate", "late.candidate@example.com", lever=stack.globex)
    attempt = await stack.move(late_opp, "Py Assessment", lever=stack.globex)
    assert attempt.status == 202, attempt.body
    late = await stack.result(attempt.body["workflow_id"], timeout=30)
    assert (late.status, late.reason) == (Status.CANCELLED, decisions.ACCOUNT_REMOVED_TEXT)
    assert all(i["status"] == "cancelled" for i in stack.invitations(late_opp))
    started = time.monotonic()
    assert await asyncio.wait_for(handle.result(), 30) == RemoveAccountResult(found=2, signalled=2)
    assert time.monotonic() - started < 20  # it stopped once quiet

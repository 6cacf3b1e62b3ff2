"""Recording the saved histories of tests/workflows/test_replay.py (``tests/histories/*.json``).

Each recording drives one path of the workflows through a whole stack
(tests/support/integration_stack.py) and returns the histories it produced, by saved name.
Importing this module starts nothing; tests/integration/test_replay_recording.py calls it:

- ``FAST`` (pass, invite-failed) run on the session ``stack`` (a plain dev server)
  in every test run, and are replayed at once;
- ``SLOW`` (every other path) need a stack of their own (``recording_stack``: per-workflow
  time skipping as in tests/integration/test_lifecycle.py, and a stand-in for the deleting activities)
  and run only when histories are recorded;
- ``DURABLE_ONLY`` (lever-refused, adopted, account-removed) are paths of the durable
  shape only (``workflow.patched("durable-invitation")``), on the recording stack too;
  ``account-removed`` also records a ``RemoveAccountWorkflow`` run, and, recorded with the
  shared Lever task queue, Lever activities carrying the account as fairness key;
- ``MORE`` (unconfirmed, lever-gone, contract-error, cancel-holds-result): more paths
  of the durable shape only, recorded together as the group ``more``
  (``PYLEVER_RECORD_HISTORIES=durable:more``) or one by one.

There are two saved sets (tests/workflows/test_replay.py): the *shipped* one (``assessment-pass``,
...), recorded from the code before ``durable-invitation`` and frozen since, and the
*durable* one (``durable-assessment-pass``, ...), what the current code writes.
``record(..., prefix=...)`` names the histories of a set; recording writes the durable
set unless the shipped one is named::

    PYLEVER_RECORD_HISTORIES=durable:all .venv/bin/pytest tests/integration/test_replay_recording.py        # all
    PYLEVER_RECORD_HISTORIES=durable:expired,adopted .venv/bin/pytest tests/integration/test_replay_recording.py  # some
    PYLEVER_RECORD_HISTORIES=durable:more .venv/bin/pytest tests/integration/test_replay_recording.py  # MORE's paths

A recording waits for each step's effect (a tag in Lever, a memo status, a closed
execution) before the next step, so the same path writes the same events each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
)
from temporalio.exceptions import CancelledError
from temporalio.service import RPCError, RPCStatusCode

from activities.temporal_ops import TemporalActivities
from pylever.contracts import search_attributes as sa
from pylever.contracts.records import RemoveAccountResult, Status
from pylever.temporal import workers
from pylever.temporal.gateway import Gateway
from sandbox.devserver import wait_for_visibility
from tests.integration.test_forged_withdrawals import ACME_TOKEN, withdrawal_data
from tests.integration.test_lifecycle import start_lifecycle_env, unstamped_client
from tests.support.integration_stack import ON_SITE, Stack, running_stack
from tests.support.pipeline_support import PY_TESTS, post_webhook, signed, webhooks_off
from workflows import decisions

Histories = dict[str, WorkflowHistory]
Recording = Callable[[Stack], Awaitable[Histories]]


# --- helpers ------------------------------------------------------------------------------


async def history(stack: Stack, workflow_id: str, run_id: str | None = None) -> WorkflowHistory:
    """The history of the latest run (or of ``run_id``)."""
    return await stack.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()


async def closed(stack: Stack, workflow_id: str, timeout: float = 30) -> WorkflowExecutionStatus:
    """Wait until the execution has closed; its close status."""

    async def status() -> WorkflowExecutionStatus | None:
        desc = await stack.client.get_workflow_handle(workflow_id).describe()
        return None if desc.status == WorkflowExecutionStatus.RUNNING else desc.status

    return await stack.eventually(status, timeout)


async def memo_status(handle: WorkflowHandle[Any, Any]) -> str | None:
    memo = await (await handle.describe()).memo()
    return (memo.get("assessment") or {}).get("status")


async def started(
    stack: Stack, name: str, tags: tuple[str, ...] = (), email: str | None = None
) -> tuple[str, str]:
    """A candidate moved into "Py Assessment": (opportunity id, assessment workflow id)."""
    slug = name.lower().replace(" ", ".")
    opp = stack.candidate(name, email or f"{slug}@example.com", tags=tags)
    attempt = await stack.move(opp, "Py Assessment")
    assert attempt.status == 202 and attempt.body["status"] == "started", attempt.body
    return opp, attempt.body["workflow_id"]


async def waiting(
    stack: Stack, name: str, test: str = "Python Basics"
) -> tuple[str, str, WorkflowHandle[Any, Any], str]:
    """Invited, tagged, and the child waits for its first check:
    (opportunity id, parent id, child handle, invitation id)."""
    opp, parent_id = await started(stack, name)
    child = stack.client.get_workflow_handle(
        decisions.invitation_workflow_id(parent_id, PY_TESTS[test])
    )
    invitation = await stack.invitation(opp)
    await stack.wait_tag(opp, decisions.TAG_INVITED)

    async def is_waiting() -> bool:
        memo = await (await child.describe()).memo()
        return bool((memo.get("assessment") or {}).get("next_check_at"))

    await stack.eventually(is_waiting)
    return opp, parent_id, child, invitation["id"]


async def fast_forward(stack: Stack, child: WorkflowHandle[Any, Any], days: float | None) -> bool:
    duration = None if days is None else timedelta(days=days)
    return await asyncio.wait_for(stack.env.fast_forward(child, duration), 60)


# --- fast paths (the session stack) -------------------------------------------------------


async def record_pass(stack: Stack) -> Histories:
    """Invited, started callback, completed callback (92: pass), moved on pass."""
    opp = stack.candidate("Replay Pass", "replay.pass@example.com")
    attempt = await stack.move(opp, "Py Assessment")
    workflow_id = attempt.body["workflow_id"]
    invitation = await stack.invitation(opp)
    await stack.py.start(invitation["id"])
    await stack.wait_tag(opp, decisions.TAG_STARTED)
    await stack.py.complete(invitation["id"], 92)
    result = await stack.result(workflow_id)
    assert result.status == Status.COMPLETED and result.invitations[0].verdict == "pass"
    return {
        "assessment-pass": await history(stack, workflow_id),
        "invitation-pass": await history(stack, invitation["reference"]),
    }


async def record_invite_failed(stack: Stack) -> Histories:
    """Py refuses the invitation for good (422 for a ``@localhost`` address)."""
    opp = stack.candidate("Replay Refused", "replay-refused@localhost")
    attempt = await stack.move(opp, "Py Assessment")
    workflow_id = attempt.body["workflow_id"]
    result = await stack.result(workflow_id)
    assert result.status == Status.ERROR
    child_id = decisions.invitation_workflow_id(workflow_id, result.invitations[0].test.id)
    return {
        "assessment-invite-failed": await history(stack, workflow_id),
        "invitation-invite-failed": await history(stack, child_id),
    }


# --- the other paths (``recording_stack``) ------------------------------------------------


async def record_several(stack: Stack) -> Histories:
    """Two candidate tags name Py tests: two children; Python Basics passes (92), then
    SQL Fundamentals fails (30); the parent clears the in-progress tags (no move: acme's
    "Py Assessment" has no ``move_on_fail``)."""
    tests = ("Python Basics", "SQL Fundamentals")
    opp, parent_id = await started(stack, "Replay Several", tags=tests)
    child_ids = [decisions.invitation_workflow_id(parent_id, PY_TESTS[t]) for t in tests]
    invitations = await stack.eventually(
        lambda: (found := stack.invitations(opp)) and len(found) == 2 and found
    )
    by_reference = {i["reference"]: i["id"] for i in invitations}
    assert set(by_reference) == set(child_ids), by_reference
    await stack.eventually(lambda: stack.lever.count_api_writes(opp, "addTags") >= 2)
    for child_id in child_ids:
        await stack.eventually(lambda c=child_id: _status_is(stack, c, Status.INVITED.value))
    for child_id, score in zip(child_ids, (92, 30), strict=True):
        await stack.py.complete(by_reference[child_id], score)
        assert await closed(stack, child_id) == WorkflowExecutionStatus.COMPLETED
    result = await stack.result(parent_id)
    assert result.status == Status.COMPLETED, result
    assert [i.verdict for i in result.invitations] == ["pass", "fail"], result
    assert decisions.TAG_INVITED not in stack.tags(opp)
    return {
        "assessment-several": await history(stack, parent_id),
        "invitation-several-1": await history(stack, child_ids[0]),
        "invitation-several-2": await history(stack, child_ids[1]),
    }


async def _status_is(stack: Stack, workflow_id: str, status: str) -> bool:
    return await memo_status(stack.client.get_workflow_handle(workflow_id)) == status


async def record_lost_callback(stack: Stack) -> Histories:
    """Completed at Py (30: fail) without a callback; the 2-day check finds it, no reminder."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Lostcallback")
    _, callback = await stack.py.complete(invitation_id, 30, callback=False)
    assert callback is None
    assert await fast_forward(stack, child, None) is False  # closed at the 2-day check
    result = await stack.result(parent_id)
    assert result.status == Status.COMPLETED and result.invitations[0].verdict == "fail"
    assert stack.py.invitations[invitation_id].reminders == 0
    return {
        "assessment-lost-callback": await history(stack, parent_id),
        "invitation-lost-callback": await history(stack, child.id),
    }


async def record_expired(stack: Stack) -> Histories:
    """No result: reminders at 2 and 5 days, at 7 days Py's cancel and "Py - Expired"."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Expired")
    assert await fast_forward(stack, child, None) is False
    result = await stack.result(parent_id)
    assert result.status == Status.EXPIRED, result
    assert stack.py.invitation(invitation_id)["status"] == "cancelled"
    assert stack.py.invitations[invitation_id].reminders == 2
    assert decisions.TAG_EXPIRED in stack.tags(opp)
    return {
        "assessment-expired": await history(stack, parent_id),
        "invitation-expired": await history(stack, child.id),
    }


async def _running_in_visibility(stack: Stack, opp: str, ids: set[str]) -> None:
    """The withdraw workflow finds the candidate's assessments through visibility."""
    query = f'{sa.LEVER_OPPORTUNITY_ID.name} = "{opp}" AND ExecutionStatus = "Running"'
    await wait_for_visibility(stack.client, query, expected_ids=ids, within=30)


async def record_archived(stack: Stack) -> Histories:
    """Invited and started, then archived in Lever: the withdraw workflow signals the
    assessment, which tells its child; the child cancels at Py and clears the tags."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Archived")
    await stack.py.start(invitation_id)
    await stack.wait_tag(opp, decisions.TAG_STARTED)
    await stack.eventually(lambda: _status_is(stack, child.id, Status.STARTED.value))
    await _running_in_visibility(stack, opp, {parent_id, child.id})
    _, attempt = await stack.lever.archive_candidate(opp, True)
    assert attempt is not None and attempt.status == 202, attempt
    withdraw_id = attempt.body["workflow_id"]
    withdrawn = await asyncio.wait_for(stack.client.get_workflow_handle(withdraw_id).result(), 60)
    assert withdrawn == 1
    result = await stack.result(parent_id)
    assert result.status == Status.CANCELLED, result
    assert stack.py.invitation(invitation_id)["status"] == "cancelled"
    assert not {decisions.TAG_INVITED, decisions.TAG_STARTED} & set(stack.tags(opp))
    return {
        "withdraw-archived": await history(stack, withdraw_id),
        "assessment-archived": await history(stack, parent_id),
        "invitation-archived": await history(stack, child.id),
    }


async def record_deleted(stack: Stack) -> Histories:
    """Invited, then deleted in Lever: the withdraw workflow signals the assessment, waits
    until it closed and deletes the candidate's executions (here: ``KeepingExecutions``,
    which deletes nothing, so the closed histories can be fetched)."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Deleted")
    await _running_in_visibility(stack, opp, {parent_id, child.id})
    _, attempt = await stack.lever.delete_candidate(opp)
    assert attempt is not None and attempt.status == 202, attempt
    withdraw_id = attempt.body["workflow_id"]
    counted = await asyncio.wait_for(stack.client.get_workflow_handle(withdraw_id).result(), 60)
    assert counted == 2  # what the real activities would have deleted: parent and child
    result = await stack.result(parent_id)
    assert result.status == Status.CANCELLED, result
    assert stack.py.invitation(invitation_id)["status"] == "cancelled"
    return {
        "withdraw-deleted": await history(stack, withdraw_id),
        "assessment-deleted": await history(stack, parent_id),
        "invitation-deleted": await history(stack, child.id),
    }


async def record_operator_cancel(stack: Stack) -> Histories:
    """An operator cancels a running assessment (``handle.cancel()``) while its child waits
    for the result. Whatever the code does is recorded; a child still running once the
    parent closed is given 10 s, then terminated (its history must be closed).

    With the code of the shipped recording the child is neither left running nor
    terminated: it ends CANCELED, without cancelling at Py or touching the Lever tags
    (see ``test_operator_cancel_as_recorded`` in tests/workflows/test_replay.py). The durable shape
    cancels at Py and clears the in-progress tags first (``test_durable_operator_cancel``)."""
    seen: dict[str, str] = {}
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Operatorcancel")
    parent = stack.client.get_workflow_handle(parent_id)
    await parent.cancel()
    try:
        await asyncio.wait_for(parent.result(), 30)
        outcome = "completed"
    except WorkflowFailureError as exc:
        outcome = type(exc.cause).__name__
        assert isinstance(exc.cause, CancelledError), exc
    parent_status = await closed(stack, parent_id)
    seen["parent"] = f"{parent_status.name} ({outcome})"
    try:
        child_status = await closed(stack, child.id, timeout=10)
        seen["child"] = child_status.name
    except AssertionError:
        seen["child"] = "RUNNING after the parent closed: terminated here"
        await child.terminate("record_histories: left running by the cancelled parent")
        await closed(stack, child.id)
    seen["py"] = stack.py.invitation(invitation_id)["status"]
    seen["tags"] = ", ".join(sorted(stack.tags(opp))) or "-"
    print(f"operator-cancel: {seen}")
    return {
        "assessment-operator-cancel": await history(stack, parent_id),
        "invitation-operator-cancel": await history(stack, child.id),
    }


# --- paths of the durable shape only (``recording_stack``) --------------------------------


async def record_lever_refused(stack: Stack) -> Histories:
    """Invited and tagged; then Lever refuses the key (401, as while a customer rotates it)
    while the completed result (92: pass) arrives. The verdict write (its first request,
    removing the in-progress tags) is one activity retried until the key is accepted again;
    then the verdict tag, the report link and the move on pass."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Leverrefused")
    removals = stack.lever.count_api_writes(opp, "removeTags")
    stack.lever.refuse_key_for(REFUSED_FOR)
    try:
        await stack.py.complete(invitation_id, 92)
        result = await stack.result(parent_id, timeout=REFUSED_FOR + 60)
    finally:
        stack.lever.refuse_key_for(0)
    assert result.status == Status.COMPLETED, result
    assert result.invitations[0].verdict == "pass", result
    assert stack.lever.count_api_writes(opp, "removeTags") == removals + 1  # once accepted
    assert decisions.TAG_INVITED not in stack.tags(opp)
    assert stack.lever.opportunity(opp)["stage"] == stack.lever.resolve_stage(ON_SITE)
    return {
        "assessment-lever-refused": await history(stack, parent_id),
        "invitation-lever-refused": await history(stack, child.id),
    }


REFUSED_FOR = 6.0  # seconds: retries after 1, 2 and 4 s are refused, the next is accepted


async def record_adopted(stack: Stack) -> Histories:
    """A re-run adopts the invitation an earlier run left open at Py.

    First run (``-1``): invited and waiting, its child is terminated (no clean-up: the
    invitation stays "invited" at Py), so the parent ends ``error``. The candidate is moved
    out of the stage and back in: the API starts a re-run (``rerun``), which asks for the
    earlier children's invitations (``temporal.previous_invitations``); its child (``-2``)
    reads that one at Py (``py.get_invitation``) instead of creating one, and takes its
    result (92: pass)."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Adopted")
    first_parent = (await stack.client.get_workflow_handle(parent_id).describe()).run_id
    first_child = (await child.describe()).run_id
    await child.terminate("record_histories: the first run's child is lost")
    first = await stack.result(parent_id)
    assert first.status == Status.ERROR, first
    assert stack.py.invitation(invitation_id)["status"] == "invited"

    await stack.move(opp, "New lead")
    attempt = await stack.move(opp, "Py Assessment")
    assert attempt.status == 202 and attempt.body["status"] == "started", attempt.body
    assert attempt.body["workflow_id"] == parent_id

    async def rerun_waiting() -> bool:
        desc = await child.describe()
        if desc.run_id == first_child or desc.status != WorkflowExecutionStatus.RUNNING:
            return False
        memo = await desc.memo()
        return bool((memo.get("assessment") or {}).get("next_check_at"))

    await stack.eventually(rerun_waiting)
    assert len(stack.invitations(opp)) == 1  # adopted: no second invitation
    await stack.py.complete(invitation_id, 92)
    result = await stack.result(parent_id)
    assert result.status == Status.COMPLETED, result
    assert result.invitations[0].invitation_id == invitation_id, result
    assert result.invitations[0].verdict == "pass", result
    assert len(stack.invitations(opp)) == 1
    return {
        "assessment-adopted-1": await history(stack, parent_id, first_parent),
        "invitation-adopted-1": await history(stack, child.id, first_child),
        "assessment-adopted-2": await history(stack, parent_id),
        "invitation-adopted-2": await history(stack, child.id),
    }


async def record_account_removed(stack: Stack) -> Histories:
    """Invited; then acme is removed from the configuration (``Gateway.remove_account``, as
    the worker's reload does): the removal lists acme's running assessments and signals
    each ``withdraw`` (``account_removed``); the child cancels at Py and writes nothing to
    Lever; the assessment ends ``cancelled``, "account removed from configuration". The
    removal's later listings (after 15 s, 30 s, 1 min, 2 min and 4 min: skipped with
    ``fast_forward``) find nothing new; it ends after 2 quiet minutes."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Accountremoved")
    query = (
        f"{sa.account_query('acme')} "
        "AND WorkflowType = 'AssessmentWorkflow' AND ExecutionStatus = 'Running'"
    )
    await wait_for_visibility(stack.client, query, expected_ids={parent_id}, within=30)
    writes = stack.lever.api_writes(opp)
    remover_id = await Gateway(stack.client, stack.task_queue).remove_account("acme")
    result = await stack.result(parent_id)
    assert result.status == Status.CANCELLED, result
    assert result.reason == decisions.ACCOUNT_REMOVED_TEXT, result
    assert [i.status for i in result.invitations] == [Status.CANCELLED], result
    assert stack.py.invitation(invitation_id)["status"] == "cancelled"
    assert await closed(stack, child.id) == WorkflowExecutionStatus.COMPLETED
    assert stack.lever.api_writes(opp) == writes  # nothing written to Lever
    remover = stack.client.get_workflow_handle(remover_id, result_type=RemoveAccountResult)
    assert await fast_forward(stack, remover, None) is False  # the later listings; closed
    assert await remover.result() == RemoveAccountResult(found=1, signalled=1)
    return {
        "remove-account-account-removed": await history(stack, remover_id),
        "assessment-account-removed": await history(stack, parent_id),
        "invitation-account-removed": await history(stack, child.id),
    }


# --- more paths of the durable shape only (``recording_stack``) ---------------------------


async def record_unconfirmed(stack: Stack) -> Histories:
    """A forged ``candidateDeleted`` webhook (a freshly signed delivery: Lever's signature
    does not cover ``data``) naming an invited candidate Lever still shows active. The
    withdrawal reads ``lever.opportunity_state`` at once and again after 10 s, 1 min and
    5 min (skipped: ``fast_forward``), is never confirmed and ends with 0, signalling
    nothing. Only the withdrawal is recorded; the assessment, untouched, is then completed
    (92: pass) so that nothing stays running."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Unconfirmed")
    event = "candidateDeleted"
    response = await post_webhook(stack, signed(ACME_TOKEN, withdrawal_data(opp, event), event))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "withdrawing", response.text
    withdraw = stack.client.get_workflow_handle(response.json()["workflow_id"])
    assert await fast_forward(stack, withdraw, None) is False  # the re-reads; then closed
    assert await withdraw.result() == 0
    memo = await (await withdraw.describe()).memo()
    assert memo.get("withdrawal") == {"confirmed": False, "lever_says": "active"}, memo
    assert stack.py.invitation(invitation_id)["status"] == "invited"
    assert decisions.TAG_INVITED in stack.tags(opp)
    assert await _status_is(stack, child.id, Status.INVITED.value)
    recorded = {"withdraw-unconfirmed": await history(stack, withdraw.id)}
    await stack.py.complete(invitation_id, 92)  # the assessment ends: a clean stack
    result = await stack.result(parent_id)
    assert result.status == Status.COMPLETED, result
    return recorded


async def record_lever_gone(stack: Stack) -> Histories:
    """Invited; then deleted in Lever without a webhook, and Py's ``invitation.started``
    callback arrives: the background "Py - Started" tag meets Lever's 404 (the candidate
    is gone), the invitation is cancelled at Py and ends ``cancelled``, nothing else
    written to Lever."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Levergone")
    with webhooks_off(stack.lever):
        _, attempt = await stack.lever.delete_candidate(opp)
    assert attempt is None  # no delivery: no withdrawal
    await stack.py.start(invitation_id)  # the Started tag meets a 404
    result = await stack.result(parent_id)
    assert result.status == Status.CANCELLED, result
    [invitation] = result.invitations
    assert invitation.status == Status.CANCELLED, invitation
    assert invitation.verdict is None and "404" in (invitation.error or ""), invitation
    assert stack.py.invitation(invitation_id)["status"] == "cancelled"
    assert await closed(stack, child.id) == WorkflowExecutionStatus.COMPLETED
    return {
        "assessment-lever-gone": await history(stack, parent_id),
        "invitation-lever-gone": await history(stack, child.id),
    }


async def record_contract_error(stack: Stack) -> Histories:
    """Py completes the invitation without a ``report_url`` and sends no callback; the
    2-day check's ``py.get_invitation`` meets a record that breaks Py's contract
    (``PyContractError``): the in-progress tags are cleared, no verdict, ends ``error``."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Contracterror")
    _, callback = await stack.py.complete(invitation_id, 70, callback=False, omit=("report_url",))
    assert callback is None
    assert await fast_forward(stack, child, None) is False  # closed at the 2-day check
    result = await stack.result(parent_id)
    assert result.status == Status.ERROR, result
    [invitation] = result.invitations
    assert invitation.status == Status.ERROR and invitation.verdict is None, invitation
    assert "report_url" in (invitation.error or ""), invitation
    assert not {decisions.TAG_INVITED, decisions.TAG_STARTED} & set(stack.tags(opp))
    assert stack.py.invitations[invitation_id].reminders == 0
    return {
        "assessment-contract-error": await history(stack, parent_id),
        "invitation-contract-error": await history(stack, child.id),
    }


async def record_cancel_holds_result(stack: Stack) -> Histories:
    """Py completes the invitation (95: pass) without a callback; then an operator cancels
    the assessment. The child cancels at Py, gets the completed invitation back (409) and
    writes its verdict (tags, report link, move on pass); the child and the assessment end
    COMPLETED with that result, not cancelled."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Cancelheld")
    _, callback = await stack.py.complete(invitation_id, 95, callback=False)
    assert callback is None
    parent = stack.client.get_workflow_handle(parent_id)
    await parent.cancel()
    assert await closed(stack, parent_id) == WorkflowExecutionStatus.COMPLETED
    assert await closed(stack, child.id) == WorkflowExecutionStatus.COMPLETED
    result = await stack.result(parent_id)
    assert result.status == Status.COMPLETED, result
    assert "cancelled by an operator" in (result.reason or ""), result
    [invitation] = result.invitations
    assert invitation.status == Status.COMPLETED and invitation.verdict == "pass", invitation
    tags = set(stack.tags(opp))
    assert decisions.TAG_PASS in tags, tags
    assert not {decisions.TAG_INVITED, decisions.TAG_STARTED} & tags, tags
    assert stack.lever.opportunity(opp)["stage"] == stack.lever.resolve_stage(ON_SITE)
    return {
        "assessment-cancel-holds-result": await history(stack, parent_id),
        "invitation-cancel-holds-result": await history(stack, child.id),
    }


FAST: dict[str, Recording] = {
    "pass": record_pass,
    "invite-failed": record_invite_failed,
}
SLOW: dict[str, Recording] = {
    "several": record_several,
    "lost-callback": record_lost_callback,
    "expired": record_expired,
    "archived": record_archived,
    "deleted": record_deleted,
    "operator-cancel": record_operator_cancel,
}
DURABLE_ONLY: dict[str, Recording] = {
    "lever-refused": record_lever_refused,
    "adopted": record_adopted,
    "account-removed": record_account_removed,
}


async def record_swept(stack: Stack) -> Histories:
    """A sweep (issue 14) finds one candidate whose webhook never came and starts its
    assessment: plan, one page listed, one start, the report."""
    from datetime import UTC, datetime

    from pylever.contracts.sweep import SweepInput, SweepResult
    from workflows.sweep import SweepWorkflow

    since = datetime.now(UTC) - timedelta(seconds=5)
    opp = stack.candidate("Replay Swept", "replay.swept@example.com")
    with webhooks_off(stack.lever):
        await stack.lever.move_candidate(opp, "Py Assessment")
    workflow_id = "replay-sweep-acme"
    result = await unstamped_client(stack.env).execute_workflow(
        SweepWorkflow.run,
        SweepInput(account_id="acme", since=since),
        id=workflow_id,
        task_queue=stack.task_queue,
        result_type=SweepResult,
    )
    assert (result.listed, result.started) == (1, 1), result
    await stack.invitation(opp)
    return {"sweep-swept": await history(stack, workflow_id)}


async def _look(stack: Stack, workflow_id: str) -> None:
    """One look for command tags (issue 15), on the wall clock like the schedule's runs."""
    from pylever.contracts.commands import CommandWatchInput
    from workflows.commands import CommandWatchWorkflow

    await unstamped_client(stack.env).execute_workflow(
        CommandWatchWorkflow.run,
        CommandWatchInput(account_id="acme", window_seconds=0),
        id=workflow_id,
        task_queue=stack.task_queue,
    )


async def _commands_done(stack: Stack, opp: str) -> tuple[str, list[Any]]:
    from pylever.contracts.commands import CommandOutcome
    from workflows.commands import candidate_commands_workflow_id

    workflow_id = candidate_commands_workflow_id("acme", opp)
    handle = stack.client.get_workflow_handle(workflow_id, result_type=list[CommandOutcome])
    return workflow_id, await asyncio.wait_for(handle.result(), 60)


async def record_commanded(stack: Stack) -> Histories:
    """Issue 15: a recruiter tags ``Py - Extend`` and ``Py - Resend``; one look applies both
    to the open invitation (two updates: the expiry moves, Py reminds), removes the tags;
    then the result (92: pass) arrives."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Commanded")
    stack.lever.recruiter_tags(opp, add=["Py - Extend", "Py - Resend"])
    await _look(stack, "replay-watch-commanded")
    commands_id, outcomes = await _commands_done(stack, opp)
    assert [(o.command.value, o.applied) for o in outcomes] == [
        ("Py - Extend", True),
        ("Py - Resend", True),
    ], outcomes
    assert stack.py.invitations[invitation_id].reminders == 1
    await stack.py.complete(invitation_id, 92)
    result = await stack.result(parent_id)
    assert result.status == Status.COMPLETED, result
    return {
        "assessment-commanded": await history(stack, parent_id),
        "invitation-commanded": await history(stack, child.id),
        "commands-commanded": await history(stack, commands_id),
        "watch-commanded": await history(stack, "replay-watch-commanded"),
    }


async def record_recruiter_cancel(stack: Stack) -> Histories:
    """Issue 15: ``Py - Cancel``: the invitation is cancelled at Py, the in-progress tags
    removed, no verdict; the assessment ends cancelled (completed execution)."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Recruitercancel")
    stack.lever.recruiter_tags(opp, add=["Py - Cancel"])
    await _look(stack, "replay-watch-recruiter-cancel")
    _, outcomes = await _commands_done(stack, opp)
    assert [(o.command.value, o.applied) for o in outcomes] == [("Py - Cancel", True)], outcomes
    result = await stack.result(parent_id)
    assert result.status == Status.CANCELLED, result
    assert stack.py.invitations[invitation_id].invitation["status"] == "cancelled"
    return {
        "assessment-recruiter-cancel": await history(stack, parent_id),
        "invitation-recruiter-cancel": await history(stack, child.id),
    }


async def record_retake(stack: Stack) -> Histories:
    """Issue 15: a fail (30), then ``Py - Retake``: a new run of the assessment for the same
    test, a new invitation (``#retake-<run id>``), whose pass (92) replaces ``Py - Fail``."""
    opp, parent_id, child, invitation_id = await waiting(stack, "Replay Retake")
    await stack.py.complete(invitation_id, 30)
    first = await stack.result(parent_id)
    assert first.invitations[0].verdict == "fail", first
    stack.lever.recruiter_tags(opp, add=["Py - Retake"])
    await _look(stack, "replay-watch-retake")
    _, outcomes = await _commands_done(stack, opp)
    assert [(o.command.value, o.applied) for o in outcomes] == [("Py - Retake", True)], outcomes

    async def second_invitation() -> dict[str, Any] | None:
        found = [i for i in stack.invitations(opp) if i["id"] != invitation_id]
        return found[0] if found else None

    second = await stack.eventually(second_invitation)
    await stack.wait_tag(opp, decisions.TAG_INVITED)
    await stack.py.complete(second["id"], 92)
    await stack.wait_tag(opp, decisions.TAG_PASS)
    result = await stack.result(parent_id)
    assert result.status == Status.COMPLETED and result.invitations[0].verdict == "pass"
    assert decisions.TAG_FAIL not in stack.tags(opp)
    return {
        "assessment-retake": await history(stack, parent_id),
        "invitation-retake": await history(stack, child.id),
    }


MORE: dict[str, Recording] = {  # of the durable shape only; the group ``more`` names them all
    "unconfirmed": record_unconfirmed,
    "lever-gone": record_lever_gone,
    "contract-error": record_contract_error,
    "cancel-holds-result": record_cancel_holds_result,
    "swept": record_swept,
    "commanded": record_commanded,
    "recruiter-cancel": record_recruiter_cancel,
    "retake": record_retake,
}


# --- the recording stack ------------------------------------------------------------------


class KeepingExecutions(TemporalActivities):
    """The deleting activities (``temporal.delete_executions``,
    ``temporal.delete_candidate_executions``) without the deletion: each execution they
    would delete is counted once, as if deleted, so the deleted path's histories stay
    fetchable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._as_if_deleted: set[tuple[str, str]] = set()

    async def _delete(self, workflow_id: str, run_id: str = "") -> int:
        try:
            desc = await self._client.get_workflow_handle(workflow_id, run_id=run_id).describe()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            return 0
        if (workflow_id, desc.run_id) in self._as_if_deleted:
            return 0
        self._as_if_deleted.add((workflow_id, desc.run_id))
        return 1


# The stand-in replaces this helper of the real activities; renamed, they would delete.
assert "_delete" in vars(TemporalActivities), "KeepingExecutions no longer stands in"


@contextlib.asynccontextmanager
async def recording_stack() -> AsyncIterator[Stack]:
    """The lifecycle tests' stack (time skipping per workflow, the API on the wall clock)
    whose worker keeps the executions of a deleted candidate."""
    real = workers.TemporalActivities
    workers.TemporalActivities = KeepingExecutions  # type: ignore[misc]  # Workers uses it
    try:
        async with running_stack(
            "py-lever-record", start_env=start_lifecycle_env, api_client=unstamped_client
        ) as stack:
            workers.TemporalActivities = real  # type: ignore[misc]
            yield stack
    finally:
        workers.TemporalActivities = real  # type: ignore[misc]


async def record(
    stack: Stack, recordings: dict[str, Recording], only: set[str], prefix: str = ""
) -> Histories:
    """The histories of the ``only`` groups, each name with ``prefix`` (``durable-``: the
    durable set)."""
    out: Histories = {}
    for group, recording in recordings.items():
        if group in only:
            began = time.monotonic()
            out.update({prefix + n: h for n, h in (await recording(stack)).items()})
            print(f"recorded {group} in {time.monotonic() - began:.1f}s")
    return out


__all__ = ["DURABLE_ONLY", "FAST", "MORE", "SLOW", "record", "recording_stack"]

"""Archive and delete webhooks are carried out only when Lever confirms them.

Lever's signature covers ``token`` + ``triggeredAt``, not ``data``: a captured
genuine delivery re-sent with ``event`` set to ``candidateDeleted`` or
``candidateArchiveChange`` and another candidate's ``opportunityId`` passes the
signature check on an API replica that has not seen the token. The withdrawal
workflow first asks Lever (``lever.opportunity_state``): archived needs the
opportunity archived (or gone), deleted needs a 404; an answer that does not
confirm it is re-read after 10 s, 1 min and 5 min. Otherwise nothing is
withdrawn: the invitation stays live, the tags stay, no execution is deleted,
and the withdrawal's memo and details say why.

The stack runs on a time-skipping dev server (tests/integration/test_lifecycle.py explains
how): each withdrawal's clock is skipped to its end, so the re-reads take no time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType

from pylever.contracts.records import Status
from tests.integration.test_lifecycle import start_lifecycle_env, unstamped_client
from tests.support.integration_stack import SECRETS, Stack, running_stack
from tests.support.pipeline_support import (
    assessment_id,
    describe,
    post_webhook,
    signed,
    webhooks_off,
)
from workflows.decisions import TAG_INVITED

ACME_TOKEN = SECRETS["acme_token_2"]  # the archive webhook's token; any of the account's does
ARCHIVED = {"reason": "f0d3c1e2-0000-4000-8000-000000000001", "archivedAt": 1_700_000_000_000}


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    async with running_stack(
        "py-lever-forged", start_env=start_lifecycle_env, api_client=unstamped_client
    ) as s:
        yield s


def withdrawal_data(opp: str, event: str) -> dict[str, Any]:
    data: dict[str, Any] = {"opportunityId": opp, "candidateId": opp, "contactId": opp}
    if event == "candidateArchiveChange":
        data.update(fromArchived=None, toArchived=ARCHIVED)
    return data


async def forge(stack: Stack, opp: str, event: str) -> tuple[int, dict[str, Any]]:
    """A validly signed delivery the API has not seen, naming ``opp``; the withdrawal's
    result and memo once it has finished."""
    response = await post_webhook(stack, signed(ACME_TOKEN, withdrawal_data(opp, event), event))
    assert response.status_code == 202 and response.json()["status"] == "withdrawing", response.text
    handle = stack.client.get_workflow_handle(response.json()["workflow_id"])
    await asyncio.wait_for(stack.env.fast_forward(handle, None), 60)  # the re-reads
    count = await handle.result()
    memo = await (await handle.describe()).memo()
    return int(count), dict(memo.get("withdrawal") or {})


async def invited_candidate(stack: Stack, name: str) -> tuple[str, str]:
    opp = stack.candidate(name, f"{name.lower().replace(' ', '.')}@example.com")
    attempt = await stack.move(opp, "Py Assessment")
    assert attempt.status == 202, attempt.body
    await stack.invitation(opp)
    await stack.wait_tag(opp, TAG_INVITED)
    return opp, attempt.body["workflow_id"]


@pytest.mark.parametrize("event", ["candidateDeleted", "candidateArchiveChange"])
async def test_a_forged_withdrawal_of_an_active_candidate_changes_nothing(
    stack: Stack, event: str
) -> None:
    opp, parent_id = await invited_candidate(stack, f"Active {event[9:]}")
    count, memo = await forge(stack, opp, event)
    assert count == 0
    assert memo == {"confirmed": False, "lever_says": "active"}
    reads = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        async for e in stack.client.get_workflow_handle(
            f"withdraw:acme:{opp}:{'deleted' if event == 'candidateDeleted' else 'archived'}"
        ).fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert reads == ["lever.opportunity_state"] * 4  # asked, then again at 10 s, 1 min, 5 min
    [invitation] = stack.invitations(opp)
    assert invitation["status"] == "invited"
    assert TAG_INVITED in stack.tags(opp)
    assert [w["op"] for w in stack.lever.api_writes(opp)] == ["addTags"]  # Py - Invited only
    desc = await describe(stack, parent_id)
    assert desc is not None and desc.status.name == "RUNNING"


async def test_an_archive_lever_confirms_is_carried_out(stack: Stack) -> None:
    opp, parent_id = await invited_candidate(stack, "Really Archived")
    with webhooks_off(stack.lever):
        await stack.lever.archive_candidate(opp, True)
    count, memo = await forge(stack, opp, "candidateArchiveChange")
    assert count == 1 and memo == {}
    result = await stack.result(parent_id)
    assert result.status == Status.CANCELLED
    assert stack.invitations(opp)[0]["status"] == "cancelled"
    assert TAG_INVITED not in stack.tags(opp)


async def test_a_delete_of_an_archived_candidate_is_not_confirmed(stack: Stack) -> None:
    """Archived is not deleted: Lever still answers for it, so nothing is erased."""
    opp, parent_id = await invited_candidate(stack, "Archived Not Deleted")
    with webhooks_off(stack.lever):
        await stack.lever.archive_candidate(opp, True)
    count, memo = await forge(stack, opp, "candidateDeleted")
    assert count == 0 and memo == {"confirmed": False, "lever_says": "archived"}
    assert await describe(stack, parent_id) is not None  # no execution deleted


@pytest.mark.parametrize("event", ["candidateDeleted", "candidateArchiveChange"])
async def test_a_withdrawal_of_an_opportunity_lever_does_not_know(stack: Stack, event: str) -> None:
    """Lever answers 404: confirmed (gone), and there is nothing to withdraw."""
    opp = f"unknown-{event[9:].lower()}-0001"
    count, memo = await forge(stack, opp, event)
    assert count == 0 and memo == {}
    assert await describe(stack, assessment_id("acme", opp, "any")) is None


async def test_an_archive_lever_shows_only_later_is_carried_out_at_a_re_read(
    stack: Stack,
) -> None:
    """Lever's read lags its webhook: the first answer is "active", the re-read confirms."""
    opp, parent_id = await invited_candidate(stack, "Lagging Lou")
    data = withdrawal_data(opp, "candidateArchiveChange")
    response = await post_webhook(stack, signed(ACME_TOKEN, data, "candidateArchiveChange"))
    handle = stack.client.get_workflow_handle(response.json()["workflow_id"])

    async def first_read_done() -> bool:
        async for e in handle.fetch_history_events():
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                return True
        return False

    await stack.eventually(first_read_done)
    with webhooks_off(stack.lever):
        await stack.lever.archive_candidate(opp, True)
    await asyncio.wait_for(stack.env.fast_forward(handle, None), 60)
    assert await handle.result() == 1
    assert (await stack.result(parent_id)).status == Status.CANCELLED
    assert stack.invitations(opp)[0]["status"] == "cancelled"

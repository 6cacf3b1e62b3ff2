"""Faults against the deployment as real processes (sandbox/process_stack.py).

Lever and Py failing often, a worker SIGKILLed mid-flight, Temporal stopped while
webhooks and callbacks arrive, callbacks arriving while no worker runs: every
candidate still ends with exactly one Py invitation and the verdict its score earns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pylever.contracts.records import AssessmentResult
from sandbox.process_stack import ACCOUNT, PY_ASSESSMENT_STAGE_ID, ProcessStack
from tests.support.process_stacks import process_stack
from workflows.decisions import (
    TAG_FAIL,
    TAG_INVITED,
    TAG_NEEDS_REVIEW,
    TAG_PASS,
    TAG_STARTED,
    assessment_workflow_id,
)

pytestmark = pytest.mark.slow

# Thresholds of the stack's account: pass >= 80, fail <= 40.
SCORES = (95, 80, 79.5, 60, 41, 40, 12, 0)
VERDICT_TAGS = {TAG_PASS, TAG_FAIL, TAG_NEEDS_REVIEW}


def expected_tag(score: float) -> str:
    if score >= 80:
        return TAG_PASS
    if score <= 40:
        return TAG_FAIL
    return TAG_NEEDS_REVIEW


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ProcessStack]:
    """A fresh deployment per test (about 2 s to start): one worker, no faults yet."""
    async with process_stack(tmp_path / "stack", workers=1) as s:
        yield s


# --- helpers ------------------------------------------------------------------------------


async def new_candidates(stack: ProcessStack, n: int, prefix: str) -> list[str]:
    return list(
        await asyncio.gather(
            *(stack.create_candidate(f"{prefix} {i}", f"{prefix}{i}@example.com") for i in range(n))
        )
    )


async def move_all(stack: ProcessStack, opps: Sequence[str]) -> list[dict[str, Any]]:
    """Move every candidate into the trigger stage; the webhooks' first attempts."""
    gate = asyncio.Semaphore(10)

    async def one(opp: str) -> dict[str, Any]:
        async with gate:
            return await stack.move(opp)

    return list(await asyncio.gather(*(one(o) for o in opps)))


async def wait_one_invitation_each(
    stack: ProcessStack, opps: Sequence[str], timeout: float = 120
) -> dict[str, dict[str, Any]]:
    """Until every candidate has an invitation at Py; then exactly one each."""

    async def probe() -> dict[str, list[dict[str, Any]]] | None:
        grouped = await stack.invitations_by_opportunity()
        return grouped if all(grouped.get(o) for o in opps) else None

    grouped = await stack.eventually(probe, timeout, what=f"an invitation for all {len(opps)}")
    assert {o: len(grouped[o]) for o in opps} == {o: 1 for o in opps}
    return {o: grouped[o][0] for o in opps}


async def complete_all(
    stack: ProcessStack, invitations: dict[str, dict[str, Any]], scores: dict[str, float]
) -> list[int | None]:
    """The candidates finish their tests; the first attempt's status of each callback."""
    results = await asyncio.gather(
        *(stack.complete(invitations[o]["id"], scores[o]) for o in invitations)
    )
    return [(r["callback"] or {}).get("status") for r in results]


async def wait_verdicts(
    stack: ProcessStack, scores: dict[str, float], timeout: float = 120
) -> dict[str, list[str]]:
    """Until every candidate carries one verdict tag; returns the tags."""

    async def probe() -> dict[str, list[str]] | None:
        tags = dict(
            zip(scores, await asyncio.gather(*(stack.tags(o) for o in scores)), strict=True)
        )
        return tags if all(VERDICT_TAGS & set(t) for t in tags.values()) else None

    return await stack.eventually(probe, timeout, what=f"verdicts for {len(scores)} candidates")


async def assert_converged(
    stack: ProcessStack,
    scores: dict[str, float],
    *,
    invited_writes: tuple[int, ...] = (1,),
    timeout: float = 120,
) -> None:
    """One invitation, the right verdict, no leftover tags, writes not doubled, workflows done."""
    tags = await wait_verdicts(stack, scores, timeout)
    grouped = await stack.invitations_by_opportunity()
    client = await stack.client()
    for opp, score in scores.items():
        invitations = grouped.get(opp, [])
        assert len(invitations) == 1, (opp, invitations)
        assert invitations[0]["status"] == "completed"
        assert VERDICT_TAGS & set(tags[opp]) == {expected_tag(score)}, (opp, score, tags[opp])
        assert TAG_INVITED not in tags[opp] and TAG_STARTED not in tags[opp], tags[opp]
        writes = await stack.writes(opp)
        count = {
            tag: sum(1 for w in writes if w["op"] == "addTags" and tag in w["values"])
            for tag in (TAG_INVITED, expected_tag(score))
        }
        assert count[TAG_INVITED] in invited_writes, (opp, writes)
        assert count[expected_tag(score)] == 1, (opp, writes)
        handle = client.get_workflow_handle(
            assessment_workflow_id(ACCOUNT, opp, PY_ASSESSMENT_STAGE_ID),
            result_type=AssessmentResult,
        )
        result = await asyncio.wait_for(handle.result(), timeout=30)
        assert result.status == "completed", (opp, result)


def scores_for(opps: Sequence[str], offset: int = 0) -> dict[str, float]:
    return {o: SCORES[(i + offset) % len(SCORES)] for i, o in enumerate(opps)}


# --- the tests ----------------------------------------------------------------------------


async def test_lever_503s_and_py_500s_still_give_one_invitation_and_verdict_each(
    stack: ProcessStack,
) -> None:
    # Warm the worker's Py test catalogue first, so the lost responses below all hit
    # POST /invitations (the call whose retry must not invite twice).
    [warm] = await new_candidates(stack, 1, "Warm")
    await move_all(stack, [warm])
    await wait_one_invitation_each(stack, [warm], timeout=60)

    await stack.lever_faults(error_rate=1 / 3)
    await stack.py_faults(error_rate=0.2, lose_response_next=4)
    opps = await new_candidates(stack, 20, "Faulty")
    scores = scores_for(opps)
    first = await move_all(stack, opps)
    # Each webhook is accepted at once or, if the API could not list Lever's stages,
    # answered 503 and redelivered by Lever.
    assert {a["status"] for a in first} <= {202, 503}

    invitations = await wait_one_invitation_each(stack, opps, timeout=150)
    assert set(await complete_all(stack, invitations, scores)) == {202}
    await assert_converged(stack, scores, timeout=150)

    lever, py = await stack.lever_stats(), await stack.py_stats()
    print(
        f"\nfaults: Lever {lever['requests']['total']} calls, {lever['faults_injected']} 503s;"
        f" Py {py['requests']['total']} calls, {py['faults_injected']} 500s,"
        f" {py['lost_responses']} lost responses, {py['idempotent_replays']} idempotent replays"
    )
    # The faults really happened (about 1 in 3 of 100+ Lever calls, 1 in 5 of 25+ Py calls).
    assert lever["faults_injected"] >= 10, lever
    assert py["faults_injected"] >= 1, py
    assert py["lost_responses"] == 4
    assert py["idempotent_replays"] >= 1, py  # a lost creation was retried, not redone
    assert py["invitations_created"] == len(opps) + 1
    assert lever["rate_limited"] == 0, lever


async def test_worker_sigkilled_mid_flight_then_restarted(stack: ProcessStack) -> None:
    opps = await new_candidates(stack, 30, "Crash")
    scores = scores_for(opps, offset=3)
    assert {a["status"] for a in await move_all(stack, opps)} == {202}

    # Kill the only worker while the invitations are going out.
    async def some_invited() -> int | None:
        grouped = await stack.invitations_by_opportunity()
        n = sum(1 for o in opps if grouped.get(o))
        return n if n >= 3 else None

    await stack.eventually(some_invited, 60, interval=0.1, what="the first invitations")
    assert await stack.kill_worker(0) == -9
    grouped = await stack.invitations_by_opportunity()
    invited_at_kill = sum(1 for o in opps if grouped.get(o))
    assert invited_at_kill < len(opps), "the kill came too late to be mid-flight"

    await stack.start_worker(0)
    invitations = await wait_one_invitation_each(stack, opps, timeout=120)
    assert set(await complete_all(stack, invitations, scores)) == {202}
    # An addTags that reached Lever just before the kill is retried: at most one extra write.
    # None at all when the candidate completed the test before the restarted worker learned
    # the invitation was sent (Py answers the retried create with the completed invitation,
    # whose result is applied straight away: "Py - Invited" would be removed at once).
    await assert_converged(stack, scores, invited_writes=(0, 1, 2), timeout=120)
    assert (await stack.py_stats())["invitations_created"] == len(opps)


async def test_temporal_down_webhooks_and_callbacks_retried_then_processed(
    stack: ProcessStack,
) -> None:
    # Three candidates wait for their results when Temporal goes down.
    early = await new_candidates(stack, 3, "Early")
    await move_all(stack, early)
    early_invitations = await wait_one_invitation_each(stack, early, timeout=60)
    for opp in early:
        await stack.wait_tag(opp, TAG_INVITED)
    assert await stack.readyz() == 200

    await stack.stop_temporal()
    down_at = time.monotonic()
    assert await stack.readyz() == 503
    late = await new_candidates(stack, 10, "Late")
    first = await move_all(stack, late)
    assert [a["status"] for a in first] == [503] * len(late), first
    assert all(a["body"]["error"]["code"] == "unavailable" for a in first)
    early_scores = scores_for(early)
    assert set(await complete_all(stack, early_invitations, early_scores)) == {503}
    assert await stack.readyz() == 503
    # Lever retries after 1, 2, 4, 8, 16 s and Py after 1, 2, 4 s: come back within that.
    await stack.start_temporal()
    assert time.monotonic() - down_at < 6

    async def ready() -> bool:
        return await stack.readyz() == 200

    await stack.eventually(ready, 30, what="/readyz 200 after the restart")

    # The retried webhooks start the late candidates; the retried callbacks finish the early.
    late_invitations = await wait_one_invitation_each(stack, late, timeout=90)
    # Lever (or an admin) delivering the same events again changes nothing.
    deliveries = await stack.webhook_deliveries()
    assert all(d["delivered"] for d in deliveries), deliveries
    for delivery in deliveries[-len(late) :]:
        rerun = await stack.http.post(
            f"{stack.lever_url}/_sandbox/webhooks/deliveries/{delivery['id']}/rerun"
        )
        assert rerun.json()["webhook"]["status"] == 202
        assert rerun.json()["webhook"]["body"]["status"] in ("already_running", "already_done")

    late_scores = scores_for(late, offset=1)
    assert set(await complete_all(stack, late_invitations, late_scores)) == {202}
    await assert_converged(stack, {**early_scores, **late_scores}, timeout=90)
    webhooks = (await stack.lever_stats())["webhooks"]
    assert webhooks["delivered_by_event"]["candidateStageChange"] == len(early) + len(late) * 2
    py = await stack.py_stats()
    assert py["invitations_created"] == len(early) + len(late)
    assert py["callbacks"]["attempts_by_status"].get("503", 0) >= len(early)
    assert stack.running_workers == [0]  # the worker rode out the outage


async def test_callbacks_while_no_worker_runs_are_applied_when_one_starts(
    stack: ProcessStack,
) -> None:
    opps = await new_candidates(stack, 6, "Idle")
    await move_all(stack, opps)
    invitations = await wait_one_invitation_each(stack, opps, timeout=60)
    for opp in opps:
        await stack.wait_tag(opp, TAG_INVITED)

    assert await stack.stop_worker(0) == 0  # graceful: SIGTERM, nothing in flight
    assert stack.running_workers == []
    scores = scores_for(opps, offset=2)
    # Temporal takes the signals with no worker polling.
    assert set(await complete_all(stack, invitations, scores)) == {202}
    tags = await asyncio.gather(*(stack.tags(o) for o in opps))
    assert all(TAG_INVITED in t and not VERDICT_TAGS & set(t) for t in tags), tags

    await stack.start_worker(0)
    await assert_converged(stack, scores, timeout=60)

"""Durability promises (workflows/invitation.py, workflows/assessment.py) against the deployment as real processes.

Lever refusing the key while a result arrives, everything at once (503s, 500s, a refused
key, a SIGKILLed worker, a Temporal restart) over 40 candidates, an operator cancelling
through ``cli.py cancel`` and ``temporal workflow cancel``, and a candidate archived 100 ms
after entering the trigger stage.

The first two count Lever's and Py's calls and invitations over the whole deployment, so
each starts its own; the cancels and the archive race look only at their own candidates
and share one deployment (the module's ``stack``), started after the others have ended.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from pylever.contracts import search_attributes as sa
from sandbox.devserver import find_temporal_bin
from sandbox.process_stack import ACCOUNT, PY_ASSESSMENT_STAGE_ID, TRIGGER_STAGE, ProcessStack
from tests.support.process_stacks import process_stack
from tests.system.test_faults import SCORES, VERDICT_TAGS, expected_tag, move_all, new_candidates
from workflows.decisions import TAG_INVITED, TAG_PASS, TAG_STARTED, assessment_workflow_id

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ON_SITE = "On-site interview"
ON_SITE_ID = "d09b0083-b7d4-4f86-8d90-d1532e53a3bb"  # sandbox.lever.DEFAULT_STAGES
IN_PROGRESS = {TAG_INVITED, TAG_STARTED}


@pytest.fixture
async def own_stack(tmp_path: Path) -> AsyncIterator[ProcessStack]:
    """A fresh deployment for one test: one worker, no faults yet, no move on pass."""
    async with process_stack(tmp_path / "stack", workers=1) as s:
        yield s


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProcessStack]:
    """One deployment for the tests that use it (each its own candidates, no faults): one
    worker, no move on pass."""
    async with process_stack(tmp_path_factory.mktemp("durability") / "stack", workers=1) as s:
        yield s


def assessment_id(opp: str) -> str:
    return assessment_workflow_id(ACCOUNT, opp, PY_ASSESSMENT_STAGE_ID)


async def invited(stack: ProcessStack, opp: str) -> dict[str, Any]:
    """Move the candidate into the trigger stage; its one invitation, once ``Py - Invited`` shows."""
    assert (await stack.move(opp))["status"] == 202
    [invitation] = await stack.wait_invitations(opp, timeout=60)
    await stack.wait_tag(opp, TAG_INVITED, timeout=60)
    return invitation


async def wait_closed(stack: ProcessStack, workflow_id: str, timeout: float = 60) -> Any:
    """The execution's description once it is no longer running."""
    client = await stack.client()

    async def probe() -> Any:
        try:
            description = await client.get_workflow_handle(workflow_id).describe()
        except RPCError:
            return None
        return description if description.status != WorkflowExecutionStatus.RUNNING else None

    return await stack.eventually(probe, timeout, what=f"{workflow_id} closed")


async def run_command(*args: str, env: dict[str, str], timeout: float = 90) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


# --- 1. key rotation ----------------------------------------------------------------------


async def test_result_during_key_rotation_is_written_once_the_key_works(tmp_path: Path) -> None:
    async with process_stack(tmp_path / "stack", workers=1, move_on_pass=ON_SITE) as stack:
        opp = (await new_candidates(stack, 1, "Rotated"))[0]
        invitation = await invited(stack, opp)

        # Refused until the rotation is done below (60 s: a bound, not the expected length).
        faults = await stack.lever_faults(refuse_key_for=60)
        assert 55 < faults["refuse_key_for"] <= 60, faults
        refused_until = time.monotonic() + 60
        done = await stack.complete(invitation["id"], 92)
        assert done["callback"]["status"] == 202, done

        # While refused, the status endpoint says what the invitation keeps retrying.
        async def waiting_on_401() -> dict[str, Any] | None:
            rows = (await stack.candidate_status(opp))["assessments"]
            for row in rows:
                waiting = row.get("waiting")
                if (
                    row["kind"] == "invitation"
                    and waiting
                    and "401" in (waiting["last_error"] or "")
                ):
                    return waiting
            return None

        waiting = await stack.eventually(
            waiting_on_401, 20, interval=0.5, what="a waiting row with a 401"
        )
        assert waiting["activity"].startswith("lever."), waiting
        assert waiting["attempts"] >= 1 and waiting["since"], waiting
        assert time.monotonic() < refused_until, "the refusal ended before the row was seen"
        tags = await stack.tags(opp)
        assert not VERDICT_TAGS & set(tags), tags  # nothing written while the key is refused
        assert (await stack.lever_stats())["key_refusals"] >= 1

        # The write is retried and refused again; then the rotation is done. How long it took
        # changes only how far apart the retries are by then (1, 2, 4... s), not the outcome.
        async def retried_while_refused() -> int | None:
            refusals = int((await stack.lever_stats())["key_refusals"])
            return refusals if refusals >= 3 else None

        await stack.eventually(retried_while_refused, 30, what="three refused attempts")
        tags = await stack.tags(opp)
        assert not VERDICT_TAGS & set(tags), tags
        assert time.monotonic() < refused_until
        await stack.lever_faults(refuse_key_for=0)

        # Once the key works again, the outcome lands on the next retry.
        tags = await stack.wait_tag(opp, TAG_PASS, timeout=90)

        async def settled() -> dict[str, Any] | None:
            o = await stack.opportunity(opp)
            done = TAG_INVITED not in o["tags"] and o["stage"] == ON_SITE_ID and o["links"]
            return o if done else None

        o = await stack.eventually(settled, 60, what="in-progress tag cleared and moved on pass")
        assert VERDICT_TAGS & set(o["tags"]) == {TAG_PASS}, o["tags"]
        assert any(invitation["id"] in link for link in o["links"]), o["links"]
        result = await wait_closed(stack, assessment_id(opp))
        assert result.typed_search_attributes.get(sa.PY_STATUS) == "completed"
        assert len(await stack.invitations(opp)) == 1

        # The recruiter moves the candidate out of the trigger stage and back in.
        await stack.move(opp, "Phone screen")
        back = await stack.move(opp, TRIGGER_STAGE)
        assert back["status"] == 202, back
        assert back["body"]["status"] == "already_done", back
        await asyncio.sleep(3)
        assert len(await stack.invitations(opp)) == 1
        assert (await stack.py_stats())["invitations_created"] == 1


# --- 2. everything at once ---------------------------------------------------------------------


async def test_forty_candidates_through_every_fault(own_stack: ProcessStack) -> None:
    stack = own_stack
    started = time.monotonic()
    await stack.lever_faults(error_rate=0.2)
    await stack.py_faults(error_rate=0.1)
    opps = await new_candidates(stack, 40, "Chaos")
    scores = {o: SCORES[i % len(SCORES)] for i, o in enumerate(opps)}
    moving = asyncio.create_task(move_all(stack, opps))

    async def some_invited() -> int | None:
        grouped = await stack.invitations_by_opportunity()
        n = sum(1 for o in opps if grouped.get(o))
        return n if n >= 5 else None

    await stack.eventually(some_invited, 60, interval=0.1, what="the first invitations")
    # Lever refuses the key from the kill until the restarted worker, on the restarted
    # Temporal, has been refused again: the refusal spans every other fault. It ends then,
    # not after a fixed time: each 401 doubles an activity's retry interval, so with the
    # 503s a longer refusal only pushes the last retries 16-64 s further out.
    await stack.lever_faults(refuse_key_for=120)
    assert await stack.kill_worker(0) == -9
    await asyncio.sleep(1)
    await stack.start_worker(0)
    first = await moving
    assert {a["status"] for a in first} <= {202, 503}, first

    await stack.stop_temporal()
    await stack.start_temporal()

    async def ready() -> bool:
        return await stack.readyz() == 200

    await stack.eventually(ready, 30, what="/readyz 200 after the Temporal restart")
    refused_before = (await stack.lever_stats())["key_refusals"]

    async def refused_again() -> int | None:
        refusals = int((await stack.lever_stats())["key_refusals"])
        return refusals if refusals >= refused_before + 5 else None

    await stack.eventually(refused_again, 60, interval=0.1, what="401s after the restarts")
    await stack.lever_faults(refuse_key_for=0)

    async def one_each() -> dict[str, list[dict[str, Any]]] | None:
        grouped = await stack.invitations_by_opportunity()
        return grouped if all(grouped.get(o) for o in opps) else None

    # Generous: retries back off to 16-32 s across the key refusal and the restarts, and
    # the machine may be busy; on a quiet 2-core machine this takes about 20 s (activities
    # in flight at the kill are retried once their 15 s start-to-close timeout passes).
    grouped = await stack.eventually(one_each, 240, what="an invitation for all 40")
    assert {o: len(grouped[o]) for o in opps} == {o: 1 for o in opps}
    invitations = {o: grouped[o][0] for o in opps}
    completed = await asyncio.gather(
        *(stack.complete(invitations[o]["id"], scores[o]) for o in opps)
    )
    # A callback refused (503) while a just-restarted Temporal settles is retried by Py.
    assert {(c["callback"] or {}).get("status") for c in completed} <= {202, 503}

    async def converged() -> dict[str, dict[str, Any]] | None:
        opportunities = {o["id"]: o for o in await stack.candidates() if o["id"] in scores}
        for opp in opps:
            o = opportunities[opp]
            if VERDICT_TAGS & set(o["tags"]) != {expected_tag(scores[opp])}:
                return None
            if IN_PROGRESS & set(o["tags"]) or not o["links"]:
                return None
        return opportunities

    try:
        opportunities = await stack.eventually(
            converged, 240, interval=1, what="verdict and report link on all 40"
        )
    except AssertionError:
        opportunities = {o["id"]: o for o in await stack.candidates() if o["id"] in scores}
        stuck = {
            o: (opportunities[o]["tags"], opportunities[o]["links"], scores[o])
            for o in opps
            if VERDICT_TAGS & set(opportunities[o]["tags"]) != {expected_tag(scores[o])}
            or IN_PROGRESS & set(opportunities[o]["tags"])
            or not opportunities[o]["links"]
        }
        raise AssertionError(f"{len(stuck)} candidates not converged: {stuck}") from None

    grouped = await stack.invitations_by_opportunity()
    for opp in opps:
        assert [i["status"] for i in grouped[opp]] == ["completed"], (opp, grouped[opp])
        assert opportunities[opp]["links"] == [grouped[opp][0]["report_url"]], opportunities[opp]
        assert await stack.count_writes(opp, "addTags", expected_tag(scores[opp])) == 1, opp
    lever, py = await stack.lever_stats(), await stack.py_stats()
    assert lever["faults_injected"] >= 10 and lever["key_refusals"] >= 1, lever
    assert py["faults_injected"] >= 1, py
    assert py["invitations_created"] == len(opps)
    elapsed = time.monotonic() - started
    print(
        f"\n40 candidates in {elapsed:.0f} s: Lever {lever['requests']['total']} calls, "
        f"{lever['faults_injected']} 503s, {lever['key_refusals']} 401s; "
        f"Py {py['requests']['total']} calls, {py['faults_injected']} 500s"
    )
    assert elapsed < 240, elapsed


# --- 3. operator cancel ---------------------------------------------------------------------


async def assert_cancelled_everywhere(stack: ProcessStack, opp: str, invitation_id: str) -> None:
    """Py cancelled, no in-progress or verdict tag, both executions CANCELED / ``cancelled``."""

    async def py_cancelled() -> bool:
        [inv] = await stack.invitations(opp)
        return inv["id"] == invitation_id and inv["status"] == "cancelled"

    await stack.eventually(py_cancelled, 60, what="the invitation cancelled at Py")
    parent = await wait_closed(stack, assessment_id(opp))
    assert parent.status == WorkflowExecutionStatus.CANCELED, parent.status
    assert parent.typed_search_attributes.get(sa.PY_STATUS) == "cancelled"
    [inv] = await stack.invitations(opp)
    child = await wait_closed(stack, inv["reference"], timeout=30)
    assert child.status == WorkflowExecutionStatus.CANCELED, child.status
    assert child.typed_search_attributes.get(sa.PY_STATUS) == "cancelled"

    async def tags_cleared() -> tuple[list[str]] | None:  # a tuple: [] is a fine answer
        tags = await stack.tags(opp)
        return (tags,) if not IN_PROGRESS & set(tags) else None

    try:
        (tags,) = await stack.eventually(tags_cleared, 30, what="in-progress tags cleared")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; Lever writes: {await stack.writes(opp)}") from None
    assert not VERDICT_TAGS & set(tags), tags
    rows = (await stack.candidate_status(opp))["assessments"]
    assert {r["kind"]: r["status"] for r in rows} == {
        "assessment": "cancelled",
        "invitation": "cancelled",
    }, rows
    assert all(r["execution_status"] == "canceled" for r in rows), rows
    await asyncio.sleep(2)  # nothing more arrives later
    tags = await stack.tags(opp)
    assert not (IN_PROGRESS | VERDICT_TAGS) & set(tags), tags
    assert len(await stack.invitations(opp)) == 1


async def test_operator_cancel_through_cli(stack: ProcessStack) -> None:
    opp = (await new_candidates(stack, 1, "Cancelled"))[0]
    invitation = await invited(stack, opp)

    code, out = await run_command(
        sys.executable, str(ROOT / "cli.py"), "cancel", ACCOUNT, opp, env=stack._app_env()
    )
    assert code == 0, out
    assert f"cancelled {assessment_id(opp)}" in out, out
    assert f"closed {assessment_id(opp)}: canceled, PyStatus cancelled" in out, out
    await assert_cancelled_everywhere(stack, opp, invitation["id"])

    # Nothing left to cancel: exit 1, says so.
    code, out = await run_command(
        sys.executable, str(ROOT / "cli.py"), "cancel", ACCOUNT, opp, env=stack._app_env()
    )
    assert code == 1, out
    assert f"not running {assessment_id(opp)} (canceled, PyStatus cancelled)" in out, out
    assert "no running assessment" in out, out


async def test_operator_cancel_through_temporal_cli(stack: ProcessStack) -> None:
    opp = (await new_candidates(stack, 1, "TemporalCancelled"))[0]
    invitation = await invited(stack, opp)

    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    code, out = await run_command(
        find_temporal_bin(), "workflow", "cancel",
        "--workflow-id", assessment_id(opp), "--address", stack.temporal.target,
        env=env,
    )  # fmt: skip
    assert code == 0, out
    await assert_cancelled_everywhere(stack, opp, invitation["id"])


# --- 4. archive race --------------------------------------------------------------------------


async def test_archived_100ms_after_entering_the_stage_leaves_nothing_live(
    stack: ProcessStack,
) -> None:
    opps = await new_candidates(stack, 5, "Archived")
    outcomes = []
    for opp in opps:
        move = asyncio.create_task(stack.move(opp))
        await asyncio.sleep(0.1)
        archive = await stack.http.post(
            f"{stack.lever_url}/_sandbox/candidates/{opp}/archive", json={"archived": True}
        )
        archive.raise_for_status()
        assert (await move)["status"] == 202
        assert archive.json()["webhook"]["status"] == 202, archive.json()

        parent = await wait_closed(stack, assessment_id(opp), timeout=60)

        async def all_closed(opp: str = opp) -> list[dict[str, Any]] | None:
            rows = (await stack.candidate_status(opp))["assessments"]
            closed = rows and all(r["execution_status"] != "running" for r in rows)
            return rows if closed else None

        await stack.eventually(all_closed, 60, what=f"every execution of {opp} closed")
        invitations = await stack.invitations(opp)
        assert all(i["status"] == "cancelled" for i in invitations), invitations
        assert len(invitations) <= 1, invitations
        await asyncio.sleep(1)  # a late cosmetic write would show now
        tags = await stack.tags(opp)
        assert not (IN_PROGRESS | VERDICT_TAGS) & set(tags), (opp, tags)
        outcomes.append((parent.typed_search_attributes.get(sa.PY_STATUS), len(invitations)))
    print(f"\narchive race outcomes (PyStatus, invitations): {outcomes}")
    assert all(status in ("cancelled", "not_sent") for status, _ in outcomes), outcomes

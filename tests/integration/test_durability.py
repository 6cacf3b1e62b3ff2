"""A live invitation is held to the end (issue: never lose a result, never invite twice).

Under time skipping on the whole in-process stack (tests/integration/test_lifecycle.py explains
how time is driven): Lever refusing the key for three days while the result
arrives, a candidate gone from Lever, a record from Py that breaks its contract,
a stage move Lever refuses, operator cancels of an assessment, of one invitation
and of a candidate with several tests, and a re-run that adopts the invitation an
earlier run left open at Py. Real-process versions of the key rotation, the
operator cancel, the archive race and a combined fault run are in
tests/system/test_durability_processes.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle

from pylever.contracts import search_attributes as sa
from pylever.contracts.records import Status
from tests.integration.test_lifecycle import (
    Case,
    Lifecycle,
    RequestSpy,
    details,
    invited,
    py_status,
    py_tags,
    result,
    start_lifecycle_env,
    unstamped_client,
)
from tests.support.integration_stack import running_stack
from tests.support.pipeline_support import PY_TESTS, webhooks_off
from workflows.decisions import (
    TAG_FAIL,
    TAG_INVITED,
    TAG_PASS,
    TAG_STARTED,
    invitation_workflow_id,
)

ON_SITE = "On-site interview"


@pytest.fixture(scope="module")
async def lc() -> AsyncIterator[Lifecycle]:
    async with running_stack(
        "py-lever-durability", start_env=start_lifecycle_env, api_client=unstamped_client
    ) as stack:
        yield Lifecycle(stack, RequestSpy(stack.py), RequestSpy(stack.lever))


async def fast_forward(lc: Lifecycle, case: Case, days: float | None) -> bool:
    """As tests.integration.test_lifecycle's, with room for the retries of a days-long Lever outage
    (each attempt is a real, if refused, request)."""
    duration = None if days is None else timedelta(days=days)
    return await asyncio.wait_for(lc.env.fast_forward(case.child, duration), 180)


async def pending_attempts(handle: WorkflowHandle[Any, Any]) -> list[tuple[str, int]]:
    """(activity type, attempt) of each pending activity."""
    desc = await handle.describe()
    return [(p.activity_type.name, p.attempt) for p in desc.raw_description.pending_activities]


async def closed(handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionStatus:
    async def done() -> WorkflowExecutionStatus | None:
        status = (await handle.describe()).status
        return None if status == WorkflowExecutionStatus.RUNNING else status

    return await asyncio.wait_for(_poll(done), 30)


async def _poll(probe: Any) -> Any:
    while True:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.1)


async def py_status_attr(handle: WorkflowHandle[Any, Any]) -> str | None:
    return (await handle.describe()).typed_search_attributes.get(sa.PY_STATUS)


# ------------------------------------------------------------------- Lever failing


async def test_lever_refusing_the_key_for_three_days_loses_nothing(lc: Lifecycle) -> None:
    """The key is refused while the candidate starts and completes: nothing ends; the
    Started tag, then the verdict, link and move are written once Lever takes the key."""
    lever = lc.stack.lever
    case = await invited(lc, "Rotation Rosa")
    lever.refuse_key_for(10**9)
    try:
        await lc.stack.py.start(case.invitation_id)
        await lc.stack.py.complete(case.invitation_id, 91)
        assert await fast_forward(lc, case, 3) is True  # still running after 3 days
        pending = await pending_attempts(case.child)
        [(activity, attempts)] = pending
        assert activity == "lever.add_tags"  # the Started tag, retried, before the verdict
        assert attempts > 10, pending
        assert (await details(case.child))["status"] in ("invited", "started")
        assert py_tags(lc, case.opp) == {TAG_INVITED}
    finally:
        lever.refuse_key_for(0)
    assert await fast_forward(lc, case, None) is False  # closes once the key works
    res = await result(lc, case)
    assert res.status == Status.COMPLETED, res
    [inv] = res.invitations
    assert inv.verdict == "pass" and inv.invitation_id == case.invitation_id
    assert py_tags(lc, case.opp) == {TAG_PASS}
    assert lever.count_api_writes(case.opp, "addLinks") == 1
    assert lever.opportunity(case.opp)["stage"] == lever.resolve_stage(ON_SITE)
    assert len(lc.stack.invitations(case.opp)) == 1


async def test_a_candidate_gone_from_lever_ends_it_and_cancels_at_py(lc: Lifecycle) -> None:
    """404 on a tag write: the candidate is gone; the invitation is cancelled at Py."""
    case = await invited(lc, "Gone Gina")
    with webhooks_off(lc.stack.lever):
        await lc.stack.lever.delete_candidate(case.opp)
    await lc.stack.py.start(case.invitation_id)  # the Started tag meets a 404
    res = await result(lc, case)
    assert res.status == Status.CANCELLED, res
    [inv] = res.invitations
    assert inv.verdict is None and "404" in (inv.error or ""), inv
    assert py_status(lc, case) == "cancelled"


async def test_a_stage_move_lever_refuses_is_recorded_and_the_rest_applied(
    lc: Lifecycle,
) -> None:
    lever = lc.stack.lever
    case = await invited(lc, "Moved Morgan")
    stages = list(lever.stages)
    lever.stages = [s for s in stages if s["text"] != ON_SITE]  # the stage was deleted
    try:
        await lc.stack.py.complete(case.invitation_id, 95)
        res = await result(lc, case)
    finally:
        lever.stages = stages
    [inv] = res.invitations
    assert inv.status == Status.COMPLETED and inv.verdict == "pass"
    assert ON_SITE in (inv.error or ""), inv
    assert py_tags(lc, case.opp) == {TAG_PASS}
    assert lever.count_api_writes(case.opp, "addLinks") == 1
    assert (await details(case.child))["last_error"] == inv.error


# ------------------------------------------------------------------------ Py data


async def test_a_completed_record_without_report_ends_visibly(lc: Lifecycle) -> None:
    """Py completes without a report_url (its callback is refused with 422): the reminder's
    check meets a contract error, and the invitation ends ``error`` instead of wedging."""
    case = await invited(lc, "Contract Carla")
    await lc.stack.py.complete(case.invitation_id, 70, callback=False, omit=("report_url",))
    assert await fast_forward(lc, case, None) is False
    res = await result(lc, case)
    [inv] = res.invitations
    assert inv.status == Status.ERROR, inv
    assert "Py contract error" in (inv.error or "") and "report_url" in (inv.error or "")
    assert py_tags(lc, case.opp) == set()  # in-progress tags cleared, no verdict
    memo = await details(case.child)
    assert memo["status"] == "error" and "report_url" in memo["last_error"]


# ------------------------------------------------------------------ operator cancel


async def test_cancelling_an_assessment_cancels_at_py_and_clears_the_tags(
    lc: Lifecycle,
) -> None:
    case = await invited(lc, "Operator Olga")
    await lc.stack.py.start(case.invitation_id)
    await lc.stack.wait_tag(case.opp, TAG_STARTED)
    parent = lc.stack.client.get_workflow_handle(case.parent_id)
    await parent.cancel()
    assert await closed(parent) == WorkflowExecutionStatus.CANCELED
    assert await closed(case.child) == WorkflowExecutionStatus.CANCELED
    assert py_status(lc, case) == "cancelled"
    assert py_tags(lc, case.opp) == set()
    assert await py_status_attr(parent) == "cancelled"
    assert await py_status_attr(case.child) == "cancelled"
    assert (await details(case.child))["verdict"] is None


async def test_cancelling_one_invitation_ends_the_assessment_cancelled(lc: Lifecycle) -> None:
    case = await invited(lc, "Child Chloe")
    await case.child.cancel()
    assert await closed(case.child) == WorkflowExecutionStatus.CANCELED
    res = await result(lc, case)
    assert res.status == Status.CANCELLED
    assert [i.status for i in res.invitations] == [Status.CANCELLED]
    assert py_status(lc, case) == "cancelled"
    assert py_tags(lc, case.opp) == set()


async def test_a_result_py_already_holds_wins_over_a_cancel(lc: Lifecycle) -> None:
    """Completed at Py, callback lost, then cancelled: Py answers the cancel with the result,
    which is applied (a result is never lost)."""
    case = await invited(lc, "Late Lena")
    await lc.stack.py.complete(case.invitation_id, 20, callback=False)
    await case.child.cancel()
    assert await closed(case.child) == WorkflowExecutionStatus.COMPLETED
    res = await result(lc, case)
    [inv] = res.invitations
    assert inv.status == Status.COMPLETED and inv.verdict == "fail"
    assert py_tags(lc, case.opp) == {TAG_FAIL}


async def test_cancelling_several_tests_cancels_each_and_clears_the_shared_tags(
    lc: Lifecycle,
) -> None:
    s = lc.stack
    opp = s.candidate(
        "Several Sven", "several.sven@example.com", tags=("Python Basics", "SQL Fundamentals")
    )
    attempt = await s.move(opp, "Py Assessment")
    parent_id = attempt.body["workflow_id"]
    await s.eventually(lambda: len(s.invitations(opp)) == 2 or None)
    await s.wait_tag(opp, TAG_INVITED)
    children = [
        s.client.get_workflow_handle(invitation_workflow_id(parent_id, PY_TESTS[t]))
        for t in ("Python Basics", "SQL Fundamentals")
    ]
    parent = s.client.get_workflow_handle(parent_id)
    await parent.cancel()
    assert await closed(parent) == WorkflowExecutionStatus.CANCELED
    for child in children:
        assert await closed(child) == WorkflowExecutionStatus.CANCELED
    assert {i["status"] for i in s.invitations(opp)} == {"cancelled"}
    assert py_tags(lc, opp) == set()


# ------------------------------------------------------------------------ re-runs


async def test_a_rerun_adopts_the_open_invitation_and_keeps_its_clock(lc: Lifecycle) -> None:
    """An earlier run ended without a result while its invitation stayed open at Py (as the
    shipped code did on a Lever 401): moving the candidate out and back in adopts it."""
    s = lc.stack
    case = await invited(lc, "Adopted Ada")
    created = datetime.fromisoformat(s.py.invitation(case.invitation_id)["created_at"])
    await case.child.terminate("simulates a run that ended without its result")
    first = await result(lc, case)
    assert first.status == Status.ERROR

    await s.move(case.opp, "Phone screen")
    attempt = await s.move(case.opp, "Py Assessment")
    assert attempt.status == 202 and attempt.body["status"] == "started", attempt.body

    async def following() -> dict[str, Any] | None:
        memo = await details(case.child)
        return memo if memo.get("next_check_at") and memo["status"] == "invited" else None

    memo = await s.eventually(following)
    assert memo["invitation_id"] == case.invitation_id
    assert len(s.invitations(case.opp)) == 1  # no second invitation
    sent_at = datetime.fromisoformat(memo["sent_at"])
    assert abs((sent_at - created).total_seconds()) < 1  # the clock counts from Py's created_at
    assert datetime.fromisoformat(memo["next_check_at"]) == sent_at + timedelta(days=2)

    await s.py.complete(case.invitation_id, 88)
    second = await result(lc, case)
    assert second.status == Status.COMPLETED and second.invitations[0].verdict == "pass"
    assert len(s.invitations(case.opp)) == 1


@pytest.mark.parametrize("name", ["Retried Rita"])
async def test_a_rerun_applies_a_result_the_earlier_run_never_wrote(
    lc: Lifecycle, name: str
) -> None:
    """The key-rotation case of the shipped code: the result came while the run could not
    write it, and the run ended. The re-run finds the invitation completed and writes it."""
    s = lc.stack
    case = await invited(lc, name)
    await case.child.terminate("simulates the shipped code ending on a Lever 401")
    await result(lc, case)
    await s.py.complete(case.invitation_id, 30, callback=False)
    await s.move(case.opp, "Phone screen")
    attempt = await s.move(case.opp, "Py Assessment")
    assert attempt.body["status"] == "started", attempt.body
    res = await result(
        lc, Case(case.opp, case.parent_id, case.child, case.invitation_id, case.sent_at)
    )
    [inv] = res.invitations
    assert inv.status == Status.COMPLETED and inv.verdict == "fail"
    assert inv.invitation_id == case.invitation_id
    assert py_tags(lc, case.opp) == {TAG_FAIL}
    assert len(s.invitations(case.opp)) == 1


async def test_a_cancel_while_py_creates_the_invitation_still_cancels_it(lc: Lifecycle) -> None:
    """The create is shielded: the workflow learns the new invitation's id, then cancels it."""
    s = lc.stack
    opp = s.candidate("Racing Rae", "racing.rae@example.com")
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        arrived.set()
        await asyncio.wait_for(release.wait(), 8)

    with lc.py_spy.hook("POST", "/v1/invitations", before=hold):
        attempt = await s.move(opp, "Py Assessment")
        child = s.client.get_workflow_handle(
            invitation_workflow_id(attempt.body["workflow_id"], PY_TESTS["Python Basics"])
        )
        await asyncio.wait_for(arrived.wait(), 20)  # Py is creating it now
        await child.cancel()
        await asyncio.sleep(1)  # the cancel reaches the workflow while the create is held
        release.set()
        assert await closed(child) == WorkflowExecutionStatus.CANCELED
    [invitation] = s.invitations(opp)
    assert invitation["status"] == "cancelled"
    assert py_tags(lc, opp) == set()
    assert (await details(child))["invitation_id"] == invitation["id"]


async def test_a_cancel_while_a_rerun_adopts_cancels_the_earlier_invitation(
    lc: Lifecycle,
) -> None:
    s = lc.stack
    case = await invited(lc, "Adopting Abe")
    await case.child.terminate("simulates a run that ended without its result")
    await result(lc, case)
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        arrived.set()
        await asyncio.wait_for(release.wait(), 8)

    with lc.py_spy.hook("GET", case.inv_path, before=hold):
        await s.move(case.opp, "Phone screen")
        await s.move(case.opp, "Py Assessment")
        await asyncio.wait_for(arrived.wait(), 20)  # the re-run asks Py about it
        await case.child.cancel()
        await asyncio.sleep(1)
        release.set()
        assert await closed(case.child) == WorkflowExecutionStatus.CANCELED
    assert py_status(lc, case) == "cancelled"
    assert len(s.invitations(case.opp)) == 1


async def test_cancelling_an_assessment_whose_result_py_holds_ends_completed(
    lc: Lifecycle,
) -> None:
    """The parent too: a child that applied a result Py already held makes the assessment
    end with that result, not cancelled (a re-entry then sends and writes nothing new)."""
    case = await invited(lc, "Held Hugo")
    await lc.stack.py.complete(case.invitation_id, 95, callback=False)
    parent = lc.stack.client.get_workflow_handle(case.parent_id)
    await parent.cancel()
    assert await closed(parent) == WorkflowExecutionStatus.COMPLETED
    res = await result(lc, case)
    assert res.status == Status.COMPLETED and res.invitations[0].verdict == "pass"
    assert "cancelled by an operator" in (res.reason or "")
    assert py_tags(lc, case.opp) == {TAG_PASS}
    again = await lc.stack.move(case.opp, "Py Assessment")
    assert again.body["status"] in ("already_done", "ignored"), again.body

"""The assessment pipeline end to end: Lever webhook -> Temporal -> Py -> verdict in Lever."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pylever.contracts.records import Status
from sandbox.lever import PY_ASSESSMENT_STAGE_ID, TECHNICAL_SCREEN_STAGE_ID
from tests.support.integration_stack import ON_SITE, Stack
from tests.support.pipeline_support import (
    PY_TESTS,
    assert_no_workflow,
    assessment_id,
    candidate_status,
    describe,
    lever_control_url,
    verdict_tags,
)
from workflows.decisions import (
    TAG_FAIL,
    TAG_INVITE_FAILED,
    TAG_INVITED,
    TAG_NEEDS_REVIEW,
    TAG_NO_EMAIL,
    TAG_NO_TEST,
    TAG_PASS,
    TAG_STARTED,
)


async def test_pass_moves_candidate_and_links_report(stack: Stack) -> None:
    opp = stack.candidate("Ada Lovelace", "ada@example.com")
    attempt = await stack.move(opp, "Py Assessment")
    assert attempt.status == 202, attempt.body
    assert attempt.body["status"] == "started"
    tags = await stack.wait_tag(opp, TAG_INVITED)
    invitation = await stack.invitation(opp)
    assert invitation["candidate"] == {"name": "Ada Lovelace", "email": "ada@example.com"}
    assert invitation["reference"] == f"{attempt.body['workflow_id']}:tst_python_basics"
    assert invitation["callback_url"] == f"{stack.api_url}/callbacks/py"

    _, callback = await stack.py.complete(invitation["id"], 92)
    assert callback is not None and callback.status == 202, callback.body
    result = await stack.result(attempt.body["workflow_id"])
    assert result.status == "completed"
    tags = stack.tags(opp)
    assert TAG_PASS in tags and TAG_INVITED not in tags and TAG_STARTED not in tags
    opportunity = stack.lever.opportunity(opp)
    assert invitation_report(stack, invitation["id"]) in opportunity["links"]
    assert stack.lever.resolve_stage(ON_SITE) == opportunity["stage"]
    # At most 2 Lever calls to invite; the tag writes happened once each.
    assert stack.lever.count_api_writes(opp, "addTags", TAG_INVITED) == 1
    assert stack.lever.count_api_writes(opp, "addTags", TAG_PASS) == 1


def invitation_report(stack: Stack, invitation_id: str) -> str:
    return stack.py.invitation(invitation_id)["report_url"]


@pytest.mark.parametrize(
    ("score", "tag"),
    [
        (80, TAG_PASS),
        (79.5, TAG_NEEDS_REVIEW),
        (41, TAG_NEEDS_REVIEW),
        (40, TAG_FAIL),
        (0, TAG_FAIL),
    ],
)
async def test_verdict_bands_at_the_edges(stack: Stack, score: float, tag: str) -> None:
    opp = stack.candidate(f"Edge {score}", f"edge{score}@example.com")
    attempt = await stack.move(opp, "Py Assessment")
    invitation = await stack.invitation(opp)
    await stack.py.complete(invitation["id"], score)
    await stack.result(attempt.body["workflow_id"])
    verdicts = {TAG_PASS, TAG_FAIL, TAG_NEEDS_REVIEW} & set(stack.tags(opp))
    assert verdicts == {tag}
    # Only a pass moves (acme's Py Assessment has move_on_pass and no move_on_fail).
    expected_stage = (
        stack.lever.resolve_stage(ON_SITE) if tag == TAG_PASS else PY_ASSESSMENT_STAGE_ID
    )
    assert stack.lever.opportunity(opp)["stage"] == expected_stage


# --- thresholds --------------------------------------------------------------------------


@pytest.mark.parametrize("score", [100, 0])
async def test_no_thresholds_is_always_needs_review(stack: Stack, score: float) -> None:
    """globex configures no thresholds at all: every score needs a human."""
    opp = stack.candidate(f"Globex {score}", f"globex{score}@example.com", lever=stack.globex)
    attempt = await stack.move(opp, "Py Assessment", lever=stack.globex)
    assert attempt.status == 202 and attempt.body["status"] == "started", attempt.body
    assert attempt.body["workflow_id"].startswith("assessment:globex:")
    invitation = await stack.invitation(opp)
    await stack.py.complete(invitation["id"], score)
    result = await stack.result(attempt.body["workflow_id"])
    assert [i.verdict for i in result.invitations] == ["needs_review"]
    assert verdict_tags(stack.tags(opp, stack.globex)) == {TAG_NEEDS_REVIEW}
    assert stack.globex.opportunity(opp)["stage"] == PY_ASSESSMENT_STAGE_ID  # no move


@pytest.mark.parametrize(
    ("score", "tag"),
    # acme's own thresholds (80/40) would make 70 and 50 "Needs Review".
    [(70, TAG_PASS), (69.9, TAG_NEEDS_REVIEW), (51, TAG_NEEDS_REVIEW), (50, TAG_FAIL)],
)
async def test_trigger_thresholds_override_the_accounts(
    stack: Stack, score: float, tag: str
) -> None:
    """Technical Screen is configured by stage id, with 70/50 and no default test."""
    opp = stack.candidate(f"Screen {score}", f"screen{score}@example.com", tags=("Python Basics",))
    attempt = await stack.move(opp, "Technical Screen")
    assert attempt.status == 202, attempt.body
    assert attempt.body["workflow_id"] == assessment_id("acme", opp, TECHNICAL_SCREEN_STAGE_ID)
    invitation = await stack.invitation(opp)
    assert invitation["test_id"] == PY_TESTS["Python Basics"]
    await stack.py.complete(invitation["id"], score)
    result = await stack.result(attempt.body["workflow_id"])
    assert result.status == Status.COMPLETED
    assert verdict_tags(stack.tags(opp)) == {tag}
    # This trigger moves nobody, whatever the verdict.
    assert stack.lever.opportunity(opp)["stage"] == TECHNICAL_SCREEN_STAGE_ID


# --- which tests -------------------------------------------------------------------------


async def test_candidate_tag_naming_a_test_overrides_the_default(stack: Stack) -> None:
    # "python basics" is not the test's exact name (case-sensitive): it does not count.
    opp = stack.candidate(
        "Edsger Dijkstra",
        "edsger@example.com",
        tags=("Referral", "python basics", "SQL Fundamentals"),
    )
    attempt = await stack.move(opp, "Py Assessment")
    invitation = await stack.invitation(opp)
    assert invitation["test_id"] == PY_TESTS["SQL Fundamentals"]
    await stack.py.complete(invitation["id"], 90)
    result = await stack.result(attempt.body["workflow_id"])
    # The default (Python Basics) was not sent beside it.
    assert [i.test.name for i in result.invitations] == ["SQL Fundamentals"]
    assert [i["test_id"] for i in stack.invitations(opp)] == [PY_TESTS["SQL Fundamentals"]]
    assert verdict_tags(stack.tags(opp)) == {TAG_PASS}


async def test_two_test_tags_send_two_invitations(stack: Stack) -> None:
    opp = stack.candidate(
        "Grace Hopper", "grace@example.com", tags=("Algorithms", "SQL Fundamentals")
    )
    attempt = await stack.move(opp, "Py Assessment")
    workflow_id = attempt.body["workflow_id"]

    def both() -> list[dict] | None:
        found = stack.invitations(opp)
        return found if len(found) == 2 else None

    by_test = {i["test_id"]: i for i in await stack.eventually(both)}
    assert set(by_test) == {PY_TESTS["Algorithms"], PY_TESTS["SQL Fundamentals"]}
    for test_id, invitation in by_test.items():
        child_id = f"{workflow_id}:{test_id}"
        assert invitation["reference"] == child_id
        child = await describe(stack, child_id)
        assert child is not None and child.workflow_type == "InvitationWorkflow"
        assert child.parent_id == workflow_id

    await stack.py.complete(by_test[PY_TESTS["SQL Fundamentals"]]["id"], 95)
    tags = await stack.wait_tag(opp, TAG_PASS)
    # One test is still open: the candidate is still invited and has not moved.
    assert TAG_INVITED in tags
    assert stack.lever.opportunity(opp)["stage"] == stack.lever.resolve_stage("Py Assessment")
    await stack.py.complete(by_test[PY_TESTS["Algorithms"]]["id"], 12)
    result = await stack.result(workflow_id)
    assert result.status == Status.COMPLETED
    assert {(i.test.name, i.verdict) for i in result.invitations} == {
        ("SQL Fundamentals", "pass"),
        ("Algorithms", "fail"),
    }
    tags = stack.tags(opp)
    assert verdict_tags(tags) == {TAG_PASS, TAG_FAIL}
    assert TAG_INVITED not in tags
    links = stack.lever.opportunity(opp)["links"]
    for invitation in by_test.values():
        assert stack.py.invitation(invitation["id"])["report_url"] in links
    assert stack.lever.count_api_writes(opp, "addLinks") == 2
    # A Fail among the tests: no move on pass (this trigger has no move_on_fail).
    assert stack.lever.opportunity(opp)["stage"] == stack.lever.resolve_stage("Py Assessment")


async def test_two_tests_both_passed_move_the_candidate_once(stack: Stack) -> None:
    opp = stack.candidate(
        "Katherine Johnson", "katherine@example.com", tags=("Algorithms", "SQL Fundamentals")
    )
    attempt = await stack.move(opp, "Py Assessment")

    def both() -> list[dict] | None:
        found = stack.invitations(opp)
        return found if len(found) == 2 else None

    for invitation in await stack.eventually(both):
        await stack.py.complete(invitation["id"], 90)
    result = await stack.result(attempt.body["workflow_id"])
    assert {i.verdict for i in result.invitations} == {"pass"}
    tags = stack.tags(opp)
    assert TAG_PASS in tags and TAG_INVITED not in tags
    assert stack.lever.opportunity(opp)["stage"] == stack.lever.resolve_stage(ON_SITE)
    assert stack.lever.count_api_writes(opp, "stage") == 1


async def test_no_test_configured_then_the_recruiter_fixes_the_tag(stack: Stack) -> None:
    # Technical Screen has no default test; "sql fundamentals" is not a test's exact name.
    opp = stack.candidate("Alan Turing", "alan@example.com", tags=("sql fundamentals",))
    attempt = await stack.move(opp, "Technical Screen")
    assert attempt.status == 202 and attempt.body["status"] == "started", attempt.body
    workflow_id = attempt.body["workflow_id"]
    first = await stack.result(workflow_id)
    assert first.status == Status.NOT_SENT and first.invitations == ()
    assert first.reason and "test" in first.reason
    tags = stack.tags(opp)
    assert TAG_NO_TEST in tags and TAG_INVITED not in tags
    assert stack.invitations(opp) == []
    run = await describe(stack, workflow_id)
    assert run is not None and run.search_attributes.get("PyStatus") == ["not_sent"]

    # The recruiter tags the candidate in Lever, then moves them out and back in.
    response = await stack.http.post(
        f"{lever_control_url(stack)}/_sandbox/candidates/{opp}/tags",
        json={"add": ["SQL Fundamentals"]},
    )
    assert response.status_code == 200, response.text
    out = await stack.move(opp, "Phone screen")
    assert out.status == 200 and out.body["status"] == "ignored"
    back = await stack.move(opp, "Technical Screen")
    assert back.status == 202, back.body
    assert back.body == {"status": "started", "workflow_id": workflow_id}

    invitation = await stack.invitation(opp)
    assert invitation["test_id"] == PY_TESTS["SQL Fundamentals"]
    await stack.py.complete(invitation["id"], 75)
    second = await stack.result(workflow_id)  # the latest run
    assert second.status == Status.COMPLETED
    assert verdict_tags(stack.tags(opp)) == {TAG_PASS}  # 75 >= the trigger's 70
    assert TAG_NO_TEST not in stack.tags(opp)  # the first run's outcome no longer holds
    rerun = await describe(stack, workflow_id)
    assert rerun is not None and rerun.run_id != run.run_id


async def test_no_email_is_tagged_then_the_recruiter_adds_one(stack: Stack) -> None:
    opp = stack.candidate("No Mail", email=None)
    attempt = await stack.move(opp, "Py Assessment")
    workflow_id = attempt.body["workflow_id"]
    result = await stack.result(workflow_id)
    assert result.status == Status.ERROR and result.invitations == ()
    assert result.reason and "email" in result.reason
    tags = stack.tags(opp)
    assert TAG_NO_EMAIL in tags and TAG_INVITED not in tags
    assert stack.invitations(opp) == []

    # The recruiter adds an address in Lever (the sandbox has no endpoint for emails),
    # then moves the candidate out and back in: an "error" run is redone.
    stack.lever.opportunities[opp]["emails"] = ["no.mail@example.com"]
    await stack.move(opp, "Phone screen")
    back = await stack.move(opp, "Py Assessment")
    assert back.body == {"status": "started", "workflow_id": workflow_id}
    invitation = await stack.invitation(opp)
    assert invitation["candidate"]["email"] == "no.mail@example.com"
    tags = await stack.wait_tag(opp, TAG_INVITED)
    assert TAG_NO_EMAIL not in tags


async def test_py_refusing_the_invitation_is_tagged_with_the_reason(stack: Stack) -> None:
    email = "bad-mail@localhost"  # the Py sandbox answers 422 invalid_email (no dot in the domain)
    opp = stack.candidate("Bad Mail", email)
    attempt = await stack.move(opp, "Py Assessment")
    workflow_id = attempt.body["workflow_id"]
    result = await stack.result(workflow_id)
    assert result.status == Status.ERROR
    [refused] = result.invitations
    assert refused.status == Status.ERROR and refused.invitation_id is None
    assert refused.error and "422" in refused.error and "invalid_email" in refused.error
    assert email not in refused.error
    tags = stack.tags(opp)
    assert TAG_INVITE_FAILED in tags and TAG_INVITED not in tags
    assert stack.invitations(opp) == []

    # The reason is in the operators' status endpoint (from the child's memo) too.
    async def refused_row() -> dict | None:
        rows = await candidate_status(stack, "acme", opp)
        return next((r for r in rows if r["kind"] == "invitation" and r["last_error"]), None)

    row = await stack.eventually(refused_row)
    assert row["status"] == "error" and "invalid_email" in row["last_error"]
    assert email not in str(row)


# --- which assessments run ------------------------------------------------------------


async def test_a_stage_that_is_not_a_trigger_is_ignored(stack: Stack) -> None:
    opp = stack.candidate("Phone Screen", "phone@example.com")
    attempt = await stack.move(opp, "Phone screen")
    assert attempt.status == 200
    assert attempt.body == {"status": "ignored", "reason": "not a trigger stage"}
    await assert_no_workflow(
        stack, assessment_id("acme", opp, stack.lever.resolve_stage("Phone screen"))
    )
    assert stack.invitations(opp) == [] and stack.lever.api_writes(opp) == []


async def test_moving_into_the_stage_again_while_running_sends_one_invitation(stack: Stack) -> None:
    opp = stack.candidate("Twice In", "twice@example.com")
    first = await stack.move(opp, "Py Assessment")
    await stack.invitation(opp)
    run = await describe(stack, first.body["workflow_id"])
    again = await stack.move(opp, "Py Assessment")
    assert again.status == 202
    assert again.body == {"status": "already_running", "workflow_id": first.body["workflow_id"]}
    now = await describe(stack, first.body["workflow_id"])
    assert run is not None and now is not None and now.run_id == run.run_id
    assert len(stack.invitations(opp)) == 1


async def test_reentry_after_completion_sends_no_second_invitation(stack: Stack) -> None:
    opp = stack.candidate("Done Once", "done@example.com")
    first = await stack.move(opp, "Py Assessment")
    workflow_id = first.body["workflow_id"]
    invitation = await stack.invitation(opp)
    await stack.py.complete(invitation["id"], 85)
    await stack.result(workflow_id)
    run = await describe(stack, workflow_id)

    await stack.move(opp, "Phone screen")
    again = await stack.move(opp, "Py Assessment")
    assert again.status == 202
    assert again.body == {"status": "already_done", "workflow_id": workflow_id}
    now = await describe(stack, workflow_id)
    assert run is not None and now is not None and now.run_id == run.run_id
    assert len(stack.invitations(opp)) == 1
    assert stack.lever.count_api_writes(opp, "addTags", TAG_PASS) == 1


async def test_parallel_candidates_do_not_mix(stack: Stack) -> None:
    """Several candidates at once: each gets exactly their own invitation and verdict."""
    opps = [stack.candidate(f"Parallel {n}", f"parallel{n}@example.com") for n in range(3)]
    attempts = await asyncio.gather(*(stack.move(o, "Py Assessment") for o in opps))
    assert all(a.status == 202 and a.body["status"] == "started" for a in attempts)
    invitations = await asyncio.gather(*(stack.invitation(o) for o in opps))
    scores = [90, 60, 10]
    for invitation, score in zip(invitations, scores, strict=True):
        await stack.py.complete(invitation["id"], score)
    await asyncio.gather(*(stack.result(a.body["workflow_id"]) for a in attempts))
    expected = [TAG_PASS, TAG_NEEDS_REVIEW, TAG_FAIL]
    for opp, invitation, tag in zip(opps, invitations, expected, strict=True):
        assert invitation["reference"].startswith(
            assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID)
        )
        assert verdict_tags(stack.tags(opp)) == {tag}


async def test_healthz_and_readyz(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text

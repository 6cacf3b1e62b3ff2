"""The assessment pipeline end to end: Lever webhook -> Temporal -> Py -> verdict in Lever."""

from __future__ import annotations

import pytest

from tests.integration_stack import ON_SITE, Stack
from workflows.decisions import (
    TAG_FAIL,
    TAG_INVITED,
    TAG_NEEDS_REVIEW,
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
    [(80, TAG_PASS), (79.5, TAG_NEEDS_REVIEW), (41, TAG_NEEDS_REVIEW), (40, TAG_FAIL), (0, TAG_FAIL)],
)
async def test_verdict_bands_at_the_edges(stack: Stack, score: float, tag: str) -> None:
    opp = stack.candidate(f"Edge {score}", f"edge{score}@example.com")
    attempt = await stack.move(opp, "Py Assessment")
    invitation = await stack.invitation(opp)
    await stack.py.complete(invitation["id"], score)
    await stack.result(attempt.body["workflow_id"])
    verdicts = {TAG_PASS, TAG_FAIL, TAG_NEEDS_REVIEW} & set(stack.tags(opp))
    assert verdicts == {tag}

"""Py result callbacks (SPEC section 3, ``POST /callbacks/py``) against the running stack."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from pylever.edge.inbound import MAX_BODY_BYTES
from pylever.edge.signatures import py_signature_header
from sandbox.py import build_callback
from tests.support.integration_stack import SECRETS, Stack
from tests.support.pipeline_support import assert_error, describe, post_callback, verdict_tags
from workflows.decisions import TAG_INVITED, TAG_PASS, TAG_STARTED

SECRET = SECRETS["callback_secret"]


async def invited(stack: Stack, name: str) -> tuple[str, str, dict[str, Any]]:
    """A candidate with a running assessment and a sent invitation: (opportunity, workflow id, invitation)."""
    opp = stack.candidate(name, f"{name.lower().replace(' ', '.')}@example.com")
    attempt = await stack.move(opp, "Py Assessment")
    assert attempt.status == 202, attempt.body
    await stack.wait_tag(opp, TAG_INVITED)
    invitation = await stack.invitation(opp)
    return opp, attempt.body["workflow_id"], stack.py.invitation(invitation["id"])


def completed(invitation: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {
        **invitation,
        "status": "completed",
        "score": 88,
        "report_url": f"https://py.example/reports/{invitation['id']}",
        "completed_at": "2030-01-01T00:00:00Z",
        **changes,
    }


async def assert_still_waiting(stack: Stack, opp: str, workflow_id: str) -> None:
    run = await describe(stack, workflow_id)
    assert run is not None and run.status is not None and run.status.name == "RUNNING"
    assert verdict_tags(stack.tags(opp)) == set()
    assert stack.lever.count_api_writes(opp, "addLinks") == 0


# --- signatures --------------------------------------------------------------------------


async def test_bad_or_stale_signatures_are_401(stack: Stack) -> None:
    opp, workflow_id, invitation = await invited(stack, "Cal Lback")
    body = completed(invitation)
    now = int(time.time())
    raw, headers = build_callback(SECRET, "invitation.completed", body)
    url = f"{stack.api_url}/callbacks/py"

    cases = {
        "wrong secret": await post_callback(stack, "invitation.completed", body, secret="nope"),
        "Lever's token as secret": await post_callback(
            stack, "invitation.completed", body, secret=SECRETS["acme_token"]
        ),
        "stale (301 s)": await post_callback(
            stack, "invitation.completed", body, timestamp=now - 301
        ),
        "an hour old": await post_callback(
            stack, "invitation.completed", body, timestamp=now - 3600
        ),
        "from the future": await post_callback(
            stack, "invitation.completed", body, timestamp=now + 600
        ),
        "missing header": await stack.http.post(
            url, content=raw, headers={"Content-Type": "application/json"}
        ),
        "malformed header": await stack.http.post(
            url, content=raw, headers={"Py-Signature": "v1=abc"}
        ),
        "body changed after signing": await stack.http.post(
            url, content=raw.replace(b"88", b"99"), headers=headers
        ),
        "timestamp changed after signing": await stack.http.post(
            url,
            content=raw,
            headers={
                "Py-Signature": headers["Py-Signature"].replace(
                    headers["Py-Signature"].split(",")[0], f"t={now - 1}"
                )
            },
        ),
    }
    for name, response in cases.items():
        assert response.status_code == 401, (name, response.text)
        assert_error(response, 401, "bad_signature")
    await assert_still_waiting(stack, opp, workflow_id)

    # Within the five minutes it is accepted.
    fresh = await post_callback(stack, "invitation.completed", body, timestamp=now - 240)
    assert fresh.status_code == 202, fresh.text
    assert fresh.json() == {"status": "signalled", "workflow_id": invitation["reference"]}
    await stack.result(workflow_id)
    assert verdict_tags(stack.tags(opp)) == {TAG_PASS}


# --- validation -------------------------------------------------------------------------------


async def test_invalid_completed_callbacks_are_422_and_change_nothing(stack: Stack) -> None:
    opp, workflow_id, invitation = await invited(stack, "Val Idation")
    no_report = completed(invitation)
    del no_report["report_url"]
    no_score = completed(invitation)
    del no_score["score"]
    cases: dict[str, dict[str, Any]] = {
        "score 101": completed(invitation, score=101),
        "score -1": completed(invitation, score=-1),
        "score 100.0001": completed(invitation, score=100.0001),
        'score "80"': completed(invitation, score="80"),
        "score null": completed(invitation, score=None),
        "score true": completed(invitation, score=True),
        "score missing": no_score,
        "report_url null": completed(invitation, report_url=None),
        "report_url missing": no_report,
        "report_url empty": completed(invitation, report_url=""),
        "report_url not http": completed(invitation, report_url="javascript:alert(1)"),
        "report_url http": completed(invitation, report_url="http://py.example/r/1"),
        "report_url user info": completed(invitation, report_url="https://u:p@py.example/r/1"),
        "report_url 2049": completed(invitation, report_url="https://py.example/" + "r" * 2030),
        "report_url 1 MB": completed(invitation, report_url="https://py.example/" + "r" * 10**6),
        "score 401 digits": completed(invitation, score=10**400),
        "score -401 digits": completed(invitation, score=-(10**400)),
    }
    for name, body in cases.items():
        response = await post_callback(stack, "invitation.completed", body)
        assert response.status_code == 422, (name, response.text)
        assert_error(response, 422, leaks=(invitation["candidate"]["email"],))

    # Other shapes that are not a callback at all.
    for body, event in (
        ({"id": invitation["id"]}, "invitation.completed"),  # no status, no reference
        (completed(invitation), "invitation.deleted"),  # not an event Py sends
    ):
        response = await post_callback(stack, event, body)
        assert_error(response, 422)
    # A score that overflows to infinity in JSON.
    raw = json.dumps({"event": "invitation.completed", "invitation": completed(invitation)})
    raw = raw.replace('"score": 88', '"score": 1e999').encode()
    response = await stack.http.post(
        f"{stack.api_url}/callbacks/py",
        content=raw,
        headers={"Py-Signature": py_signature_header(SECRET, raw)},
    )
    assert_error(response, 422, "invalid_score")
    for raw in (b"{", b"[]", b'{"score": NaN}'):
        response = await stack.http.post(
            f"{stack.api_url}/callbacks/py",
            content=raw,
            headers={"Py-Signature": py_signature_header(SECRET, raw)},
        )
        assert_error(response, 400, "invalid_json")

    await assert_still_waiting(stack, opp, workflow_id)
    assert stack.py.invitation(invitation["id"])["status"] == "invited"
    # A valid completion still works afterwards: nothing above was taken as the result.
    await stack.py.complete(invitation["id"], 85)
    await stack.result(workflow_id)
    assert verdict_tags(stack.tags(opp)) == {TAG_PASS}


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_callback_body_over_one_mib_is_413(stack: Stack, streamed: bool) -> None:
    raw = b" " * (MAX_BODY_BYTES + 1)

    async def chunks() -> Any:
        for start in range(0, len(raw), 65536):
            yield raw[start : start + 65536]

    response = await stack.http.post(
        f"{stack.api_url}/callbacks/py",
        content=chunks() if streamed else raw,
        headers={"Py-Signature": py_signature_header(SECRET, raw)},
    )
    assert_error(response, 413, "too_large")


# --- references ---------------------------------------------------------------------------------


async def test_unknown_reference_is_404(stack: Stack) -> None:
    _, workflow_id, invitation = await invited(stack, "Ref Erence")
    for reference in (
        f"{workflow_id}:tst_does_not_exist",  # well-formed, no such workflow
        "assessment:acme:no-such-opportunity:stage:tst_python_basics",
        workflow_id,  # the parent's id is not an invitation
        "withdraw:acme:x:archived",
        "not a reference",
        "",
        "x" * 1000,
    ):
        response = await post_callback(
            stack, "invitation.completed", completed(invitation, reference=reference)
        )
        assert_error(response, 404, "not_found")


async def test_callback_for_a_finished_assessment_is_409(stack: Stack) -> None:
    opp, workflow_id, invitation = await invited(stack, "Fin Ished")
    await stack.py.complete(invitation["id"], 95)
    await stack.result(workflow_id)
    again = await post_callback(
        stack, "invitation.completed", stack.py.invitation(invitation["id"])
    )
    assert_error(again, 409, "finished")
    late_start = await post_callback(stack, "invitation.started", invitation)
    assert_error(late_start, 409, "finished")
    assert stack.lever.count_api_writes(opp, "addTags", TAG_PASS) == 1
    assert TAG_STARTED not in stack.tags(opp)


# --- duplicates and order ----------------------------------------------------------------------


async def test_duplicate_completed_callbacks_apply_the_verdict_once(stack: Stack) -> None:
    opp, workflow_id, invitation = await invited(stack, "Du Plicate")
    final, _ = await stack.py.complete(invitation["id"], 91, callback=False)
    raw, headers = build_callback(SECRET, "invitation.completed", final)
    url = f"{stack.api_url}/callbacks/py"
    responses = await asyncio.gather(
        *(stack.http.post(url, content=raw, headers=headers) for _ in range(5))
    )
    # Each is either signalled (the workflow was still running) or 409 (it had finished).
    assert {r.status_code for r in responses} <= {202, 409}, [r.text for r in responses]
    assert any(r.status_code == 202 for r in responses)
    result = await stack.result(workflow_id)
    assert [i.score for i in result.invitations] == [91]
    # And once more after the end: 409, nothing written.
    assert_error(await stack.http.post(url, content=raw, headers=headers), 409, "finished")
    # A later, different "completed" for the same invitation is no second verdict either.
    other = await post_callback(stack, "invitation.completed", completed(final, score=10))
    assert_error(other, 409, "finished")
    assert stack.lever.count_api_writes(opp, "addTags") == 2  # "Py - Invited", then the verdict
    assert stack.lever.count_api_writes(opp, "addTags", TAG_PASS) == 1
    assert stack.lever.count_api_writes(opp, "addLinks") == 1
    assert stack.lever.count_api_writes(opp, "stage") == 1
    assert verdict_tags(stack.tags(opp)) == {TAG_PASS}


async def test_duplicates_while_running_are_signalled_and_ignored(stack: Stack) -> None:
    """Two different completions at once: one of them is the result, the other changes nothing."""
    opp, workflow_id, invitation = await invited(stack, "Two Results")
    first = completed(invitation, score=95)
    second = completed(invitation, score=5)
    r1, r2 = await asyncio.gather(
        post_callback(stack, "invitation.completed", first),
        post_callback(stack, "invitation.completed", second),
    )
    assert {r1.status_code, r2.status_code} <= {202, 409}
    result = await stack.result(workflow_id)
    [outcome] = result.invitations
    assert outcome.score in (95, 5)
    assert len(verdict_tags(stack.tags(opp))) == 1
    assert stack.lever.count_api_writes(opp, "addLinks") == 1


async def test_started_callback_tags_started_until_the_verdict(stack: Stack) -> None:
    opp, workflow_id, invitation = await invited(stack, "Star Ted")
    _, callback = await stack.py.start(invitation["id"])
    assert callback is not None and callback.status == 202, callback and callback.body
    tags = await stack.wait_tag(opp, TAG_STARTED)
    assert TAG_INVITED in tags and verdict_tags(tags) == set()

    async def status_started() -> bool:
        run = await describe(stack, f"{invitation['reference']}")
        return bool(run and run.search_attributes.get("PyStatus") == ["started"])

    await stack.eventually(status_started)
    # A duplicate "started" writes nothing more.
    again = await post_callback(stack, "invitation.started", stack.py.invitation(invitation["id"]))
    assert again.status_code == 202, again.text
    await stack.py.complete(invitation["id"], 99)
    await stack.result(workflow_id)
    tags = stack.tags(opp)
    assert TAG_STARTED not in tags and TAG_INVITED not in tags
    assert verdict_tags(tags) == {TAG_PASS}
    assert stack.lever.count_api_writes(opp, "addTags", TAG_STARTED) == 1
    removed = [w for w in stack.lever.api_writes(opp) if w["op"] == "removeTags"]
    assert removed and set(removed[-1]["changed"]) == {TAG_INVITED, TAG_STARTED}

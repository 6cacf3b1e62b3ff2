"""The Lever webhook edge of the API (SPEC section 3) against the running stack.

Hostile input goes as raw HTTP to ``stack.api_url``; a real recruiter's moves go
through the Lever sandbox. "Nothing started" is checked in Temporal itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from pylever.config.environment import Settings
from pylever.edge.app import create_app
from pylever.edge.deliveries import DeliveryLedger
from pylever.edge.inbound import MAX_BODY_BYTES
from sandbox.devserver import SEARCH_ATTRIBUTES, free_port, start_dev_server
from sandbox.lever import PY_ASSESSMENT_STAGE_ID, TECHNICAL_SCREEN_STAGE_ID
from sandbox.py import build_callback
from tests.support.integration_stack import ADMIN_TOKEN, PAYLOAD_KEY, SECRETS, Stack
from tests.support.pipeline_support import (
    assert_error,
    assert_no_workflow,
    assessment_id,
    describe,
    enter_silently,
    lever_control_url,
    post_webhook,
    signed,
    webhook_url,
    webhooks_off,
)
from workflows.decisions import TAG_INVITED

ACME_TOKEN = SECRETS["acme_token"]


# --- Lever's own deliveries ------------------------------------------------------------


async def test_verify_connection_is_answered_200(stack: Stack) -> None:
    for lever in (stack.lever, stack.globex):
        attempt = await lever.send_verify()
        assert attempt is not None and attempt.status == 200, attempt and attempt.body
        assert attempt.body == {"status": "ok"}


async def test_events_we_do_not_act_on_are_ignored(stack: Stack) -> None:
    opp = stack.candidate("Hired Already", "hired@example.com")
    data = {"opportunityId": opp, "candidateId": opp, "contactId": "c", "toStageId": "offer"}
    response = await post_webhook(stack, signed(ACME_TOKEN, data, event="candidateHired"))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ignored"
    # An unarchive is not a withdrawal either.
    unarchive = {
        "opportunityId": opp,
        "candidateId": opp,
        "contactId": "c",
        "fromArchived": {"archivedAt": 1, "reason": "r"},
        "toArchived": None,
    }
    response = await post_webhook(
        stack, signed(ACME_TOKEN, unarchive, event="candidateArchiveChange")
    )
    assert response.status_code == 200 and response.json()["status"] == "ignored", response.text


# --- duplicates ------------------------------------------------------------------------


async def test_eight_concurrent_duplicates_send_one_invitation(stack: Stack) -> None:
    opp = stack.candidate("Dup Licate", "dup@example.com")
    raw = signed(ACME_TOKEN, await enter_silently(stack, opp, "Py Assessment"))
    responses = await asyncio.gather(*(post_webhook(stack, raw) for _ in range(8)))
    assert [r.status_code for r in responses] == [202] * 8, [r.text for r in responses]
    bodies = [r.json() for r in responses]
    workflow_id = assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID)
    assert {b["workflow_id"] for b in bodies} == {workflow_id}
    statuses = sorted(b["status"] for b in bodies)
    assert statuses == ["already_running"] * 7 + ["started"], statuses
    await stack.invitation(opp)  # exactly one
    await stack.wait_tag(opp, TAG_INVITED)
    # A ninth, later rerun of the same delivery changes nothing either.
    late = await post_webhook(stack, raw)
    assert late.status_code == 202 and late.json()["status"] == "already_running"
    assert len(stack.invitations(opp)) == 1
    assert stack.lever.count_api_writes(opp, "addTags", TAG_INVITED) == 1


async def test_concurrent_reentries_after_a_not_sent_run_start_one_new_run(stack: Stack) -> None:
    """A closed ``not_sent`` run is redone once, however many deliveries race to redo it."""
    opp = stack.candidate("Re Try", "retry@example.com")
    first = await stack.move(opp, "Technical Screen")  # no tag, no default test: not sent
    workflow_id = first.body["workflow_id"]
    assert (await stack.result(workflow_id)).status == "not_sent"
    closed = await describe(stack, workflow_id)
    response = await stack.http.post(
        f"{lever_control_url(stack)}/_sandbox/candidates/{opp}/tags", json={"add": ["Algorithms"]}
    )
    assert response.status_code == 200
    await stack.move(opp, "Phone screen")
    raw = signed(ACME_TOKEN, await enter_silently(stack, opp, "Technical Screen"))
    responses = await asyncio.gather(*(post_webhook(stack, raw) for _ in range(8)))
    assert [r.status_code for r in responses] == [202] * 8, [r.text for r in responses]
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses == ["already_running"] * 7 + ["started"], statuses
    invitation = await stack.invitation(opp)
    assert invitation["test_id"] == "tst_algorithms"
    rerun = await describe(stack, workflow_id)
    assert closed is not None and rerun is not None and rerun.run_id != closed.run_id


# --- forged data under a valid signature -----------------------------------------------


async def test_forged_data_under_a_replayed_signature_changes_nothing(stack: Stack) -> None:
    """Lever's signature does not cover ``data``: the workflow re-reads the opportunity."""
    # A's tag names a test, so Technical Screen (no default test) would invite A if it trusted data.
    a = stack.candidate("Alice Real", "alice@example.com", tags=("Algorithms",))
    b = stack.candidate("Bob Bystander", "bob@example.com")
    genuine = await stack.move(a, "Py Assessment")
    assert genuine.status == 202, genuine.body
    await stack.wait_tag(a, TAG_INVITED)
    body = json.loads(genuine.delivery.body)

    # The API has seen A's token with A's body: another body under it is a forgery.
    forged = json.loads(json.dumps(body))
    forged["data"].update(opportunityId=b, candidateId=b)
    refused = await post_webhook(stack, json.dumps(forged).encode())
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "replayed_token"
    again = await post_webhook(stack, genuine.delivery.body)  # a genuine retry: same body
    assert again.status_code == 202 and again.json()["status"] == "already_running", again.text

    # An API replica that has not seen the token yet (the ledger is per process) lets it
    # through; the workflow's re-read of the opportunity still acts on nothing.
    stack.api_app.state.service.deliveries = DeliveryLedger()

    # Another candidate's id under A's signature: B never entered the stage.
    to_b = json.loads(json.dumps(body))
    to_b["data"].update(opportunityId=b, candidateId=b)
    response = await post_webhook(stack, json.dumps(to_b).encode())
    assert response.status_code == 202, response.text
    result = await stack.result(response.json()["workflow_id"])
    assert response.json()["workflow_id"] == assessment_id("acme", b, PY_ASSESSMENT_STAGE_ID)
    assert result.status == "not_sent" and result.invitations == ()
    assert "never entered" in (result.reason or "")
    assert stack.invitations(b) == []
    assert stack.lever.api_writes(b) == []  # no tag, no link, no move

    # Another trigger stage under A's signature: A never entered Technical Screen.
    stack.api_app.state.service.deliveries = DeliveryLedger()
    to_stage = json.loads(json.dumps(body))
    to_stage["data"]["toStageId"] = TECHNICAL_SCREEN_STAGE_ID
    response = await post_webhook(stack, json.dumps(to_stage).encode())
    assert response.status_code == 202, response.text
    assert response.json()["workflow_id"] == assessment_id("acme", a, TECHNICAL_SCREEN_STAGE_ID)
    result = await stack.result(response.json()["workflow_id"])
    assert result.status == "not_sent" and result.invitations == ()
    assert "never entered" in (result.reason or "")
    assert all(TECHNICAL_SCREEN_STAGE_ID not in i["reference"] for i in stack.invitations(a))
    assert len(stack.invitations(a)) == 1  # A's genuine invitation only
    assert [w["op"] for w in stack.lever.api_writes(a)] == ["addTags"]  # "Py - Invited", once


async def test_an_archived_candidate_is_not_invited(stack: Stack) -> None:
    opp = stack.candidate("Archived Meanwhile", "archived@example.com")
    raw = signed(ACME_TOKEN, await enter_silently(stack, opp, "Py Assessment"))
    with webhooks_off(stack.lever):  # archived before the stage change arrives
        await stack.lever.archive_candidate(opp, True)
    response = await post_webhook(stack, raw)
    assert response.status_code == 202, response.text
    result = await stack.result(response.json()["workflow_id"])
    assert result.status == "not_sent" and "archived" in (result.reason or "")
    assert stack.invitations(opp) == [] and stack.lever.api_writes(opp) == []


# --- signatures ----------------------------------------------------------------------------


async def test_bad_signatures_start_nothing_and_a_rotated_token_is_accepted(stack: Stack) -> None:
    opp = stack.candidate("Sig Nature", "sig@example.com")
    data = await enter_silently(stack, opp, "Py Assessment")
    workflow_id = assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID)
    good = json.loads(signed(ACME_TOKEN, data))

    def variant(**changes: object) -> bytes:
        body = {**good, **changes}
        return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()

    forged = {
        "wrong signature": variant(signature="0" * 64),
        "flipped signature": variant(
            signature=good["signature"][:-1] + ("0" if good["signature"][-1] != "0" else "1")
        ),
        "missing signature": variant(signature=...),
        "empty signature": variant(signature=""),
        "signature not a string": variant(signature=12345),
        "missing token": variant(token=...),
        "triggeredAt changed": variant(triggeredAt=good["triggeredAt"] + 1),
        "non-ascii signature": variant(signature="é" * 64),
        "another account's token": signed(SECRETS["globex_token"], data),
        "the Lever API key": signed(SECRETS["acme_lever_key"], data),
    }
    for name, raw in forged.items():
        response = await post_webhook(stack, raw)
        assert_error(response, 401, "bad_signature")
        assert response.status_code == 401, name
    # A genuine acme delivery to globex's URL is not globex's either.
    assert_error(
        await post_webhook(stack, signed(ACME_TOKEN, data), "globex"), 401, "bad_signature"
    )
    await assert_no_workflow(stack, workflow_id)
    assert stack.invitations(opp) == [] and stack.lever.api_writes(opp) == []

    # The account's second (rotated-in) token is genuine.
    response = await post_webhook(stack, signed(SECRETS["acme_token_2"], data))
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "started", "workflow_id": workflow_id}
    await stack.invitation(opp)


# --- malformed requests ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe{}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"[]",
        b"[1, 2]",
        b'"a string"',
        b"42",
        b"null",
        b"[" * 100_000,
    ],
    ids=[
        "empty",
        "truncated",
        "text",
        "not-utf8",
        "nan",
        "infinity",
        "empty-array",
        "array",
        "string",
        "number",
        "null",
        "deep-nesting",
    ],
)
async def test_malformed_json_is_400(stack: Stack, raw: bytes) -> None:
    assert_error(await post_webhook(stack, raw), 400, "invalid_json")


async def test_signed_body_with_bad_data_is_400_and_starts_nothing(stack: Stack) -> None:
    opp = stack.candidate("Bad Data", "baddata@example.com")
    data = await enter_silently(stack, opp, "Py Assessment")
    for bad in (
        {**data, "opportunityId": None},
        {**data, "opportunityId": "../../etc"},
        {**data, "opportunityId": "x" * 200},
        {**data, "opportunityId": f"{opp}\n"},  # "$" would let a trailing newline through
        {**data, "toStageId": 7},
        {k: v for k, v in data.items() if k != "toStageId"},
    ):
        assert_error(await post_webhook(stack, signed(ACME_TOKEN, bad)), 400, "invalid_webhook")
    body = json.loads(signed(ACME_TOKEN, data))
    body["data"] = ["not", "an", "object"]
    assert_error(await post_webhook(stack, json.dumps(body).encode()), 400, "invalid_webhook")
    await assert_no_workflow(stack, assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID))


async def _chunks(raw: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


def _padded_verify(total: int) -> bytes:
    """A genuine "Verify Connection" body padded with JSON whitespace to ``total`` bytes."""
    raw = signed(ACME_TOKEN, {})
    return raw + b" " * (total - len(raw))


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_body_over_one_mib_is_413(stack: Stack, streamed: bool) -> None:
    exactly = _padded_verify(MAX_BODY_BYTES)
    over = _padded_verify(MAX_BODY_BYTES + 1)
    for raw, status in ((exactly, 200), (over, 413)):
        content = _chunks(raw) if streamed else raw
        response = await stack.http.post(webhook_url(stack), content=content)
        if streamed:
            assert "content-length" not in response.request.headers
        else:
            assert response.request.headers["content-length"] == str(len(raw))
        if status == 413:
            assert_error(response, 413, "too_large")
        else:
            assert response.status_code == 200, response.text


async def test_unknown_account_is_404(stack: Stack) -> None:
    data = {"opportunityId": "x", "toStageId": PY_ASSESSMENT_STAGE_ID}
    for account in ("initech", "ACME", "acme%20", "globex-2"):
        response = await stack.http.post(
            f"{stack.api_url}/webhooks/lever/{account}", content=signed(ACME_TOKEN, data)
        )
        assert_error(response, 404, "unknown_account")


async def test_wrong_method_and_unknown_path_have_the_error_shape(stack: Stack) -> None:
    assert_error(await stack.http.get(webhook_url(stack)), 405)
    assert_error(await stack.http.post(f"{stack.api_url}/webhooks/other/acme", content=b"{}"), 404)


# --- Temporal unreachable ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def api_without_temporal(
    stack: Stack, port: int | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A second API, as ``uvicorn api:app`` builds it, whose Temporal address is a closed port."""
    settings = Settings(
        temporal_address=f"127.0.0.1:{port or free_port()}",
        task_queue=stack.task_queue,
        admin_token=ADMIN_TOKEN,
        payload_keys=base64.b64encode(PAYLOAD_KEY).decode(),
    )
    app = create_app(stack.config, settings)  # connects lazily, in its lifespan
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield http


async def test_temporal_unreachable_is_503_and_lever_retries(stack: Stack) -> None:
    opp = stack.candidate("Temporal Down", "down@example.com")
    data = await enter_silently(stack, opp, "Technical Screen")
    started = time.monotonic()
    async with api_without_temporal(stack) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert_error(await http.get("/readyz"), 503, "unavailable")
        # A trigger stage by id (no Lever lookup) and one by name (GET /stages first).
        for stage_data in (data, {**data, "toStageId": PY_ASSESSMENT_STAGE_ID}):
            response = await http.post(
                "/webhooks/lever/acme", content=signed(ACME_TOKEN, stage_data)
            )
            assert_error(response, 503, "unavailable")
        archived = {**data, "toArchived": {"archivedAt": 1, "reason": "r"}, "fromArchived": None}
        response = await http.post(
            "/webhooks/lever/acme",
            content=signed(ACME_TOKEN, archived, event="candidateArchiveChange"),
        )
        assert_error(response, 503, "unavailable")
        # Py's callbacks and the operators' status endpoint: 503 as well.
        reference = f"{assessment_id('acme', opp, PY_ASSESSMENT_STAGE_ID)}:tst_python_basics"
        raw, headers = build_callback(
            SECRETS["callback_secret"],
            "invitation.started",
            {"id": "inv_1", "status": "started", "reference": reference},
        )
        assert_error(
            await http.post("/callbacks/py", content=raw, headers=headers), 503, "unavailable"
        )
        status = await http.get(
            f"/accounts/acme/candidates/{opp}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert_error(status, 503, "unavailable")
        # Checks that need no Temporal still answer as usual.
        assert (
            await http.post("/webhooks/lever/acme", content=signed(ACME_TOKEN, {}))
        ).status_code == 200
        assert_error(await http.post("/webhooks/lever/acme", content=b"{"), 400)
        assert (await http.get("/metrics")).status_code == 200
    assert time.monotonic() - started < 15  # answered promptly, not after a long hang
    await assert_no_workflow(stack, assessment_id("acme", opp, TECHNICAL_SCREEN_STAGE_ID))
    # The real API (Temporal up) accepts the same delivery: nothing was lost by the 503.
    response = await post_webhook(stack, signed(ACME_TOKEN, data))
    assert response.status_code == 202 and response.json()["status"] == "started", response.text
    run = await describe(stack, response.json()["workflow_id"])
    assert run is not None


async def test_the_api_recovers_when_temporal_comes_back(stack: Stack) -> None:
    """The lazy client reconnects: Lever's retry after the 503 is accepted, nothing is lost."""
    opp = stack.candidate("Comes Back", "back@example.com")
    raw = signed(ACME_TOKEN, await enter_silently(stack, opp, "Technical Screen"))
    port = free_port()
    async with api_without_temporal(stack, port) as http:
        assert_error(await http.post("/webhooks/lever/acme", content=raw), 503, "unavailable")
        env = await start_dev_server(
            port=port,
            data_converter=stack.client.data_converter,
            search_attributes=SEARCH_ATTRIBUTES,
        )
        try:
            assert (await http.get("/readyz")).status_code == 200
            retried = await http.post("/webhooks/lever/acme", content=raw)
            assert retried.status_code == 202, retried.text
            assert retried.json()["status"] == "started"
            run = await env.client.get_workflow_handle(retried.json()["workflow_id"]).describe()
            assert run.workflow_type == "AssessmentWorkflow"
        finally:
            await env.shutdown()


async def test_a_signed_body_nested_deeper_than_the_ledger_can_follow_is_400(
    stack: Stack,
) -> None:
    """The token ledger canonicalises the body: nesting that json.loads still takes but a
    canonical dump cannot follow is a 400, never a 500."""
    from pylever.edge.signatures import sign_lever_webhook

    statuses = set()
    for depth in (500, *range(900, 1_000, 2), 3_000):
        body = sign_lever_webhook(ACME_TOKEN, "candidateHired", {"opportunityId": "opp-deep"})
        raw = json.dumps(body)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
        response = await post_webhook(stack, raw.encode())
        statuses.add(response.status_code)
        assert response.status_code in (200, 400), (depth, response.text)
        if response.status_code == 400:
            assert response.json()["error"]["code"] == "invalid_json"
    assert statuses == {200, 400}

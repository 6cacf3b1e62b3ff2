"""The Lever sandbox behaves like Lever's API v1 and webhooks (SPEC sections 3 and 7)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pylever.edge.signatures import sign_lever_webhook, verify_lever_webhook
from sandbox.devserver import free_port
from sandbox.lever import (
    DEFAULT_STAGES,
    PY_ASSESSMENT_STAGE_ID,
    TECHNICAL_SCREEN_STAGE_ID,
    LeverSandbox,
    decode_cursor,
    encode_cursor,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "lever-sandbox-test-key"
SIGNATURE_TOKEN = "stage-change-signature-token"
HOOK_URL = "http://receiver.test/hook"
FAST_RETRIES = (0.01,) * 5  # Lever's 1, 2, 4, 8, 16 s, shrunk

# Field names of a real opportunity (lever-samples/opportunity-stage-update-response.nango.json;
# the amp-labs sample has the same plus "opportunityLocation").
LEVER_OPPORTUNITY_FIELDS = {
    "id", "name", "contact", "headline", "stage", "confidentiality", "location", "phones",
    "emails", "links", "archived", "tags", "sources", "stageChanges", "origin", "sourcedBy",
    "owner", "followers", "applications", "createdAt", "updatedAt", "lastInteractionAt",
    "lastAdvancedAt", "snoozedUntil", "urls", "isAnonymized", "dataProtection",
}  # fmt: skip

# Lever's published example delivery (lever-samples/webhook-candidateStageChange.docs.json,
# from hire.lever.co/developer/documentation#webhooks), copied so the test does not
# depend on a file outside the repository.
DOCS_STAGE_CHANGE = {
    "triggeredAt": 1431454330072,
    "event": "candidateStageChange",
    "data": {
        "opportunityId": "3410c8b9-5c31-4bab-b7e9-9f710206d647",
        "candidateId": "daeaa038-cddb-4d69-9b8c-74b6c23be3f3",
        "contactId": "05c248f9-ccb1-435f-bab5-0ec608aec263",
        "toStageId": "7c2690d8-6308-4ed9-ae2a-cbfe7db26593",
        "fromStageId": "992f01a9-ee19-41d2-ae79-1040701b195c",
    },
    "signature": "28e3fbb90ce869c3695c4a9559ff43eae998389a48b42c509d1adbeea0897c16",
    "token": "be58f711f349c7780e4579cd7c63341ac6f881e4dccc3154",
}


def independent_signature(key: str, token: str, triggered_at: int) -> str:
    """Lever's documented algorithm, written here without pylever."""
    message = (token + str(triggered_at)).encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


class Receiver:
    """A webhook endpoint that records raw bodies and answers scripted statuses (then 200)."""

    def __init__(self, statuses: Sequence[int] = ()) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        self.received.append((await request.body(), dict(request.headers)))
        status = self.statuses.pop(0) if self.statuses else 200
        return JSONResponse({"ok": status < 300}, status_code=status)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw, _ in self.received]


@contextlib.asynccontextmanager
async def make_sandbox(
    receiver: Receiver | None = None, **kwargs: Any
) -> AsyncIterator[LeverSandbox]:
    options: dict[str, Any] = {"seed": 7, "retry_delays": FAST_RETRIES}
    if receiver is not None:
        options.update(
            webhook_url=HOOK_URL, delivery_transport=httpx.ASGITransport(app=receiver.app)
        )
    options.update(kwargs)
    sandbox = LeverSandbox(api_key=API_KEY, signature_token=SIGNATURE_TOKEN, **options)
    try:
        yield sandbox
    finally:
        await sandbox.aclose()


def api_client(sandbox: LeverSandbox, auth: Any = (API_KEY, "")) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox.app), base_url="http://lever.test", auth=auth
    )


@contextlib.asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port inside this event loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):
            if server.started:
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def lever(receiver: Receiver) -> AsyncIterator[LeverSandbox]:
    async with make_sandbox(receiver) as sandbox:
        yield sandbox


@pytest.fixture
async def client(lever: LeverSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(lever) as c:
        yield c


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body.setdefault("name", "Ada Lovelace")
    body.setdefault("emails", ["ada@example.com"])
    response = await client.post("/_sandbox/candidates", json=body)
    assert response.status_code == 201, response.text
    return response.json()


# --- auth, envelope, errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [None, ("wrong-key", ""), (API_KEY, "not-empty"), httpx.BasicAuth("", API_KEY)],
    ids=["missing", "wrong-key", "password-set", "key-as-password"],
)
async def test_unauthorized_answers_lever_error_body(lever: LeverSandbox, auth: Any) -> None:
    async with api_client(lever, auth=auth) as c:
        response = await c.get("/v1/stages")
    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == "Unauthorized"
    assert API_KEY not in body["message"]


async def test_bearer_is_not_basic(lever: LeverSandbox) -> None:
    async with api_client(lever, auth=None) as c:
        response = await c.get("/v1/stages", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 401


async def test_stages_envelope_and_defaults(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/stages")
    assert response.status_code == 200
    body = response.json()
    assert body == {"data": DEFAULT_STAGES, "hasNext": False}
    names = {s["text"]: s["id"] for s in body["data"]}
    assert names["Py Assessment"] == PY_ASSESSMENT_STAGE_ID
    assert names["Technical Screen"] == TECHNICAL_SCREEN_STAGE_ID
    assert names["New lead"] == "lead-new" and names["Offer"] == "offer"


async def test_stages_paginate(client: httpx.AsyncClient) -> None:
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 4}
    pages = 0
    while True:
        body = (await client.get("/v1/stages", params=params)).json()
        seen += body["data"]
        pages += 1
        if not body["hasNext"]:
            assert "next" not in body
            break
        params = {"limit": 4, "offset": body["next"]}
    assert pages == 3
    assert seen == DEFAULT_STAGES


async def test_custom_stages(receiver: Receiver) -> None:
    stages = [{"id": "lead-new", "text": "New lead"}, {"id": "s-2", "text": "Screen"}]
    async with make_sandbox(receiver, stages=stages) as sandbox, api_client(sandbox) as c:
        assert (await c.get("/v1/stages")).json()["data"] == stages


async def test_opportunity_looks_like_lever(client: httpx.AsyncClient) -> None:
    created = await create(client, tags=["Python Basics"], stage="Phone screen")
    response = await client.get(f"/v1/opportunities/{created['id']}")
    assert response.status_code == 200
    opp = response.json()["data"]
    assert opp == created
    assert set(opp) == LEVER_OPPORTUNITY_FIELDS
    assert opp["archived"] is None
    assert opp["emails"] == ["ada@example.com"] and opp["tags"] == ["Python Basics"]
    assert opp["stage"] == "b7c29827-5a7b-454e-9b2d-1a18dcbebfd3"
    assert opp["stageChanges"] == [
        {
            "toStageId": opp["stage"],
            "toStageIndex": 5,
            "updatedAt": opp["createdAt"],
            "userId": opp["owner"],
        }
    ]
    assert isinstance(opp["createdAt"], int) and opp["createdAt"] > 1_700_000_000_000  # ms epoch
    assert opp["urls"]["show"].endswith(f"/candidates/{opp['id']}")
    assert opp["contact"] != opp["id"]


async def test_unknown_opportunity_and_endpoint_are_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/opportunities/nope")
    assert response.status_code == 404
    assert response.json()["code"] == "NotFound"
    response = await client.post("/v1/opportunities/nope/addTags", json={"tags": ["x"]})
    assert response.status_code == 404
    response = await client.get("/v1/postings")
    assert response.status_code == 404 and response.json()["code"] == "NotFound"


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"tags": "Py - Invited"}', b'{"tags": [1]}', b"{}"],
)
async def test_bad_bodies_are_400(client: httpx.AsyncClient, content: bytes) -> None:
    opp = await create(client)
    response = await client.post(
        f"/v1/opportunities/{opp['id']}/addTags",
        content=content,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "BadRequest"


# --- pagination ---------------------------------------------------------------------------


async def test_opportunities_paginate_with_opaque_next(client: httpx.AsyncClient) -> None:
    created = [await create(client, name=f"Candidate {i}") for i in range(5)]
    ids: list[str] = []
    tokens: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        response = await client.get("/v1/opportunities", params=params)
        assert response.status_code == 200
        body = response.json()
        ids += [o["id"] for o in body["data"]]
        if not body["hasNext"]:
            break
        tokens.append(body["next"])
        params = {"limit": 2, "offset": body["next"]}  # passed back unchanged
    assert len(tokens) == 2
    # Shaped like Lever's: a percent-encoded JSON array ("%5B1%2C1750233409740%2C%22...%22%5D").
    assert all(t.startswith("%5B") and t.endswith("%5D") for t in tokens)
    assert isinstance(json.loads(unquote(tokens[0])), list)
    assert sorted(ids) == sorted(o["id"] for o in created)
    by_id = {o["id"]: o for o in created}
    keys = [(by_id[i]["createdAt"], i) for i in ids]
    assert keys == sorted(keys, reverse=True)  # newest first


async def _all_ids(client: httpx.AsyncClient, params: list[tuple[str, str]]) -> list[str]:
    ids: list[str] = []
    offset: str | None = None
    while True:
        query = [*params, ("limit", "2"), *([("offset", offset)] if offset else [])]
        response = await client.get("/v1/opportunities", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [o["id"] for o in body["data"]]
        if not body["hasNext"]:
            return ids
        offset = body["next"]


async def test_list_filters_stage_tag_archived_and_advanced_at(
    lever: LeverSandbox, client: httpx.AsyncClient
) -> None:
    day = 86_400_000
    now = 1_800_000_000_000
    waiting = await create(client, id="waiting", stage="Py Assessment", advanced_at=now - day)
    old = await create(client, id="old", stage="Py Assessment", advanced_at=now - 10 * day)
    tagged = await create(
        client, id="tagged", stage="Py Assessment", tags=["Py - Resend"], advanced_at=now
    )
    await create(client, id="elsewhere", stage="lead-new", tags=["py - resend"])
    archived = await create(client, id="gone", stage="Py Assessment", advanced_at=now)
    lever.opportunities["gone"]["archived"] = {"reason": "r", "archivedAt": now}
    assert waiting["lastAdvancedAt"] == now - day
    assert waiting["stageChanges"][-1]["updatedAt"] == now - day

    in_stage = [("stage_id", PY_ASSESSMENT_STAGE_ID)]
    assert sorted(await _all_ids(client, in_stage)) == ["gone", "old", "tagged", "waiting"]
    active = [*in_stage, ("archived", "false")]
    assert sorted(await _all_ids(client, active)) == ["old", "tagged", "waiting"]
    assert await _all_ids(client, [*in_stage, ("archived", "true")]) == [archived["id"]]
    recent = [*active, ("advanced_at_start", str(now - 3 * day))]
    assert sorted(await _all_ids(client, recent)) == ["tagged", "waiting"]
    window = [*recent, ("advanced_at_end", str(now - day))]
    assert await _all_ids(client, window) == ["waiting"]  # both bounds inclusive
    # tags: exact and case-sensitive, repeatable (any of them); stage ids repeatable too
    assert await _all_ids(client, [("tag", "Py - Resend")]) == [tagged["id"]]
    both = [("tag", "Py - Resend"), ("tag", "py - resend")]
    assert sorted(await _all_ids(client, both)) == ["elsewhere", "tagged"]
    stages = [("stage_id", PY_ASSESSMENT_STAGE_ID), ("stage_id", "lead-new")]
    assert len(await _all_ids(client, [*stages, ("archived", "false")])) == 4
    assert old["id"] not in await _all_ids(client, recent)


@pytest.mark.parametrize(
    "query",
    [{"archived": "yes"}, {"advanced_at_start": "yesterday"}, {"advanced_at_end": "-5"}],
)
async def test_list_filters_refuse_bad_values(client: httpx.AsyncClient, query: dict) -> None:
    response = await client.get("/v1/opportunities", params=query)
    assert response.status_code == 400
    assert response.json()["code"] == "BadRequest"


async def test_control_create_takes_an_entry_time(client: httpx.AsyncClient) -> None:
    bad = await client.post("/_sandbox/candidates", json={"name": "X", "advanced_at": "now"})
    assert bad.status_code == 400


async def test_next_token_is_decoded_robustly(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await create(client, name=f"C{i}")
    first = (await client.get("/v1/opportunities", params={"limit": 1})).json()
    token = first["next"]
    expected = (await client.get("/v1/opportunities", params={"limit": 1, "offset": token})).json()
    # A client that percent-decoded the token, or put it raw into the query string.
    decoded = (
        await client.get("/v1/opportunities", params={"limit": 1, "offset": unquote(token)})
    ).json()
    raw = (await client.get(f"/v1/opportunities?limit=1&offset={token}")).json()
    assert decoded == expected == raw
    assert expected["data"][0]["id"] != first["data"][0]["id"]
    for bad in ["garbage", "%5Bnope", encode_cursor([9, "x"]), encode_cursor([0, 1])]:
        response = await client.get("/v1/opportunities", params={"offset": bad})
        assert response.status_code == 400, bad
        assert response.json()["code"] == "BadRequest"
    assert (await client.get("/v1/opportunities", params={"limit": "x"})).status_code == 400


def test_cursor_round_trip() -> None:
    parts = [1, 1750233409740, "48dd4e94-fea0-4f9a-be5f-95b1853cbbbe"]
    token = encode_cursor(parts)
    assert token == "%5B1%2C1750233409740%2C%2248dd4e94-fea0-4f9a-be5f-95b1853cbbbe%22%5D"
    assert decode_cursor(token) == decode_cursor(unquote(token)) == parts
    assert decode_cursor(token.replace("%", "%25")) == parts


async def test_pagination_survives_deletion(lever: LeverSandbox, client: httpx.AsyncClient) -> None:
    created = [await create(client, name=f"C{i}") for i in range(4)]
    first = (await client.get("/v1/opportunities", params={"limit": 2})).json()
    await client.delete(f"/_sandbox/candidates/{first['data'][-1]['id']}")
    rest = await client.get("/v1/opportunities", params={"limit": 2, "offset": first["next"]})
    ids = [o["id"] for o in first["data"]] + [o["id"] for o in rest.json()["data"]]
    assert sorted(ids) == sorted(o["id"] for o in created)


# --- writes ------------------------------------------------------------------------------


async def test_add_tags_is_idempotent_and_ordered(
    lever: LeverSandbox, client: httpx.AsyncClient
) -> None:
    opp = await create(client, tags=["Python Basics"])
    url = f"/v1/opportunities/{opp['id']}"
    r1 = await client.post(f"{url}/addTags", json={"tags": ["Py - Invited", "x"]})
    r2 = await client.post(f"{url}/addTags", json={"tags": ["x", "Py - Invited", "y", "y"]})
    assert r1.status_code == r2.status_code == 200
    assert r2.json()["data"]["tags"] == ["Python Basics", "Py - Invited", "x", "y"]
    assert r1.json()["data"]["updatedAt"] >= opp["updatedAt"]

    removed = await client.post(f"{url}/removeTags", json={"tags": ["x", "never-there"]})
    assert removed.status_code == 200
    assert removed.json()["data"]["tags"] == ["Python Basics", "Py - Invited", "y"]

    assert lever.count_api_writes(opp["id"], "addTags", "Py - Invited") == 2
    assert lever.count_api_writes(opp["id"], "addTags", "y") == 1
    assert lever.count_api_writes(opp["id"], "removeTags") == 1
    writes = (await client.get(f"/_sandbox/candidates/{opp['id']}/writes")).json()
    assert [(w["op"], w["changed"]) for w in writes] == [
        ("addTags", ["Py - Invited", "x"]),
        ("addTags", ["y"]),
        ("removeTags", ["x"]),
    ]
    assert all(isinstance(w["at"], int) for w in writes)


async def test_add_links_does_not_duplicate(client: httpx.AsyncClient) -> None:
    opp = await create(client)
    url = f"/v1/opportunities/{opp['id']}/addLinks"
    await client.post(url, json={"links": ["https://py.example/reports/inv_1"]})
    response = await client.post(url, json={"links": ["https://py.example/reports/inv_1"]})
    assert response.json()["data"]["links"] == ["https://py.example/reports/inv_1"]


async def test_stage_move_appends_stage_change(
    lever: LeverSandbox, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    opp = await create(client)
    response = await client.put(
        f"/v1/opportunities/{opp['id']}/stage",
        json={"stage": "d09b0083-b7d4-4f86-8d90-d1532e53a3bb"},
    )
    assert response.status_code == 200
    moved = response.json()["data"]
    assert moved["stage"] == "d09b0083-b7d4-4f86-8d90-d1532e53a3bb"
    assert len(moved["stageChanges"]) == 2
    change = moved["stageChanges"][-1]
    assert set(change) == {"toStageId", "toStageIndex", "updatedAt", "userId"}
    assert change["toStageId"] == moved["stage"] and change["toStageIndex"] == 8
    assert moved["lastAdvancedAt"] == change["updatedAt"] == moved["updatedAt"]

    # Like Lever, an API stage change fires candidateStageChange too (in the background).
    await lever.wait_idle()
    [delivery] = receiver.bodies()
    assert delivery["event"] == "candidateStageChange"
    assert delivery["data"]["fromStageId"] == "lead-new"
    assert delivery["data"]["toStageId"] == moved["stage"]

    for bad in [{"stage": "On-site interview"}, {"stage": "no-such-stage"}, {"stage": 3}, {}]:
        response = await client.put(f"/v1/opportunities/{opp['id']}/stage", json=bad)
        assert response.status_code == 400, bad
        assert response.json()["code"] == "BadRequest"
    assert lever.count_api_writes(opp["id"], "stage") == 1


# --- rate limit and faults --------------------------------------------------------------


async def test_rate_limit_answers_429_without_retry_after(
    lever: LeverSandbox, client: httpx.AsyncClient
) -> None:
    responses = [await client.get("/v1/stages") for _ in range(25)]
    limited = [r for r in responses if r.status_code == 429]
    assert 1 <= len(limited) <= 5  # burst 20 at 10/s (exact counts: the frozen-clock test)
    assert all(r.status_code in (200, 429) for r in responses)
    for r in limited:
        assert "retry-after" not in r.headers
        body = r.json()
        assert set(body) == {"code", "message"} and body["code"] == "TooManyRequests"

    stats = (await client.get("/_sandbox/stats")).json()
    assert stats["rate_limited"] == len(limited) == lever.stats.rate_limited
    assert stats["requests"]["total"] == 25
    assert stats["requests"]["by_status"] == {"200": 25 - len(limited), "429": len(limited)}
    assert stats["requests"]["by_endpoint"] == {"GET /stages": 25}

    # The bucket is per key: another (wrong) key is not limited, it is refused.
    async with api_client(lever, auth=("other-key", "")) as other:
        assert (await other.get("/v1/stages")).status_code == 401
    # Control endpoints have no rate limit.
    assert (await client.get("/_sandbox/stats")).status_code == 200


async def test_rate_limit_is_a_token_bucket_per_key(receiver: Receiver) -> None:
    now = [1000.0]
    async with make_sandbox(receiver, clock=lambda: now[0]) as sandbox, api_client(sandbox) as c:
        statuses = [(await c.get("/v1/stages")).status_code for _ in range(25)]
        assert statuses == [200] * 20 + [429] * 5  # burst 20, and the clock stands still
        now[0] += 0.25  # 10 requests/second: 2.5 tokens
        statuses = [(await c.get("/v1/stages")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert sandbox.stats.rate_limited == 6


async def test_rate_limit_comes_before_auth_and_faults(receiver: Receiver) -> None:
    async with make_sandbox(receiver, rate=0.001, burst=1, error_rate=1.0) as sandbox:
        async with api_client(sandbox) as c:
            assert (await c.get("/v1/stages")).status_code == 503
            assert (await c.get("/v1/stages")).status_code == 429
        assert sandbox.stats.faults_injected == 1 and sandbox.stats.rate_limited == 1


async def test_error_rate_one_answers_503_without_writing(receiver: Receiver) -> None:
    async with make_sandbox(receiver, error_rate=1.0) as sandbox, api_client(sandbox) as c:
        opp = await create(c)
        response = await c.post(f"/v1/opportunities/{opp['id']}/addTags", json={"tags": ["t"]})
        assert response.status_code == 503
        assert response.json()["code"] == "ServiceUnavailable"
        assert sandbox.opportunity(opp["id"])["tags"] == []
        assert sandbox.api_writes(opp["id"]) == []
        stats = (await c.get("/_sandbox/stats")).json()
        assert stats["faults_injected"] == 1
        assert stats["requests"]["by_endpoint"] == {"POST /opportunities/{id}/addTags": 1}

        faults = await c.post("/_sandbox/faults", json={"error_rate": 0})
        assert faults.json()["error_rate"] == 0
        response = await c.post(f"/v1/opportunities/{opp['id']}/addTags", json={"tags": ["t"]})
        assert response.status_code == 200
        assert (await c.post("/_sandbox/faults", json={"error_rate": 2})).status_code == 400


async def test_fault_injection_is_seeded(receiver: Receiver) -> None:
    async def statuses() -> list[int]:
        async with make_sandbox(receiver, error_rate=0.5, seed=42, burst=100) as s:
            async with api_client(s) as c:
                return [(await c.get("/v1/stages")).status_code for _ in range(30)]

    first, second = await statuses(), await statuses()
    assert first == second
    assert {200, 503} == set(first)


async def test_refused_key_answers_401_like_a_wrong_key_until_the_time_is_up(
    receiver: Receiver,
) -> None:
    now = [1000.0]
    async with make_sandbox(receiver, clock=lambda: now[0]) as sandbox, api_client(sandbox) as c:
        opp = await create(c)
        async with api_client(sandbox, auth=("wrong-key", "")) as wrong:
            wrong_body = (await wrong.get("/v1/stages")).json()
        sandbox.refuse_key_for(10)
        assert sandbox.key_refused_for == 10
        for call in (
            c.get("/v1/stages"),
            c.get(f"/v1/opportunities/{opp['id']}"),
            c.post(f"/v1/opportunities/{opp['id']}/addTags", json={"tags": ["t"]}),
        ):
            response = await call
            assert response.status_code == 401
            assert response.json() == wrong_body  # the same body as a wrong key
        assert sandbox.opportunity(opp["id"])["tags"] == []  # nothing written
        assert sandbox.stats.key_refusals == 3
        now[0] += 9.9
        assert (await c.get("/v1/stages")).status_code == 401
        now[0] += 0.2
        assert sandbox.key_refused_for == 0
        assert (await c.get("/v1/stages")).status_code == 200
        stats = (await c.get("/_sandbox/stats")).json()
        assert stats["key_refusals"] == 4
        assert stats["requests"]["by_status"]["401"] == 5  # the wrong key's call too
        assert (await c.post("/_sandbox/reset-stats")).json()["key_refusals"] == 0


async def test_refuse_key_through_the_control_endpoint(receiver: Receiver) -> None:
    now = [1000.0]
    async with make_sandbox(receiver, clock=lambda: now[0]) as sandbox, api_client(sandbox) as c:
        faults = (await c.post("/_sandbox/faults", json={"refuse_key_for": 10})).json()
        assert faults["refuse_key_for"] == 10
        assert (await c.get("/v1/stages")).status_code == 401
        now[0] += 4
        assert (await c.post("/_sandbox/faults", json={})).json()["refuse_key_for"] == 6
        # The rate limit still comes first, as it does for a wrong key.
        sandbox.burst = 1
        sandbox._buckets.clear()
        statuses = [(await c.get("/v1/stages")).status_code for _ in range(2)]
        assert statuses == [401, 429]
        sandbox.burst = 20
        sandbox._buckets.clear()
        stopped = (await c.post("/_sandbox/faults", json={"refuse_key_for": 0})).json()
        assert stopped["refuse_key_for"] == 0
        assert (await c.get("/v1/stages")).status_code == 200
        assert sandbox.stats.key_refusals == 2
        for bad in (-1, "10", True, None):
            response = await c.post("/_sandbox/faults", json={"refuse_key_for": bad})
            assert response.status_code == 400, bad
            assert "refuse_key_for" in response.json()["message"]


async def test_reset_stats(client: httpx.AsyncClient) -> None:
    await client.get("/v1/stages")
    reset = (await client.post("/_sandbox/reset-stats")).json()
    assert reset["requests"]["total"] == 0 and reset["webhooks"]["sent_by_event"] == {}


# --- webhooks -------------------------------------------------------------------------------


async def test_stage_change_webhook_is_signed(
    lever: LeverSandbox, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    opp = await create(client, id="2087af84-f146-4535-9368-2309e33e049f")
    response = await client.post(
        f"/_sandbox/candidates/{opp['id']}/stage", json={"stage": "Py Assessment"}
    )
    assert response.status_code == 200
    result = response.json()
    assert result["opportunity"]["stage"] == PY_ASSESSMENT_STAGE_ID
    assert result["opportunity"]["stageChanges"][-1]["toStageId"] == PY_ASSESSMENT_STAGE_ID
    assert result["webhook"]["status"] == 200
    assert result["webhook"]["body"] == {"ok": True}

    [(raw, headers)] = receiver.received
    sent = json.loads(raw)
    assert sent == result["webhook"]["delivery"]
    assert headers["content-type"] == "application/json"
    assert set(sent) == {"triggeredAt", "event", "data", "token", "signature"}
    assert sent["event"] == "candidateStageChange"
    assert sent["data"] == {
        "opportunityId": opp["id"],
        "candidateId": opp["id"],
        "contactId": opp["contact"],
        "toStageId": PY_ASSESSMENT_STAGE_ID,
        "fromStageId": "lead-new",
    }
    assert isinstance(sent["triggeredAt"], int) and sent["triggeredAt"] > 1_700_000_000_000
    assert len(sent["token"]) == 48

    # An HMAC computed here, independently of pylever, and pylever's verifier.
    assert sent["signature"] == independent_signature(
        SIGNATURE_TOKEN, sent["token"], sent["triggeredAt"]
    )
    assert verify_lever_webhook(sent, [SIGNATURE_TOKEN])
    assert verify_lever_webhook(sent, ["other-token", SIGNATURE_TOKEN])
    assert not verify_lever_webhook(sent, ["other-token"])
    assert not verify_lever_webhook(
        {**sent, "triggeredAt": sent["triggeredAt"] + 1}, [SIGNATURE_TOKEN]
    )

    stats = lever.stats.to_json()["webhooks"]
    assert stats["sent_by_event"] == {"candidateStageChange": 1}
    assert stats["delivered_by_event"] == {"candidateStageChange": 1}
    assert stats["attempts_by_status"] == {"200": 1}
    assert lever.api_writes(opp["id"]) == []  # UI moves are not API writes


async def test_archive_and_unarchive_webhooks(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    opp = await create(client)
    url = f"/_sandbox/candidates/{opp['id']}/archive"
    archived = (await client.post(url, json={"archived": True})).json()
    state = archived["opportunity"]["archived"]
    assert set(state) == {"reason", "archivedAt"} and isinstance(state["archivedAt"], int)
    restored = (await client.post(url, json={"archived": False})).json()
    assert restored["opportunity"]["archived"] is None

    first, second = receiver.bodies()
    ids = {"opportunityId": opp["id"], "candidateId": opp["id"], "contactId": opp["contact"]}
    assert first["event"] == second["event"] == "candidateArchiveChange"
    assert first["data"] == {**ids, "fromArchived": None, "toArchived": state}
    assert second["data"] == {**ids, "fromArchived": state, "toArchived": None}
    assert all(verify_lever_webhook(b, [SIGNATURE_TOKEN]) for b in (first, second))
    assert (await client.post(url, json={"archived": "yes"})).status_code == 400


async def test_delete_webhook(client: httpx.AsyncClient, receiver: Receiver) -> None:
    opp = await create(client)
    response = await client.delete(f"/_sandbox/candidates/{opp['id']}")
    assert response.status_code == 200
    assert response.json()["webhook"]["status"] == 200
    [sent] = receiver.bodies()
    assert sent["event"] == "candidateDeleted"
    assert set(sent["data"]) == {"opportunityId", "candidateId", "contactId", "deletedBy"}
    assert sent["data"]["opportunityId"] == opp["id"]
    assert sent["data"]["contactId"] == opp["contact"]
    assert (await client.get(f"/v1/opportunities/{opp['id']}")).status_code == 404
    assert (await client.get(f"/_sandbox/candidates/{opp['id']}")).status_code == 404


async def test_verify_connection_delivery(client: httpx.AsyncClient, receiver: Receiver) -> None:
    result = (await client.post("/_sandbox/webhooks/verify")).json()
    assert result["webhook"]["status"] == 200
    sent = receiver.bodies()[0]
    assert sent == result["webhook"]["delivery"]
    assert sent["data"] == {} and sent["event"] == "candidateStageChange"
    assert sent["signature"] == independent_signature(
        SIGNATURE_TOKEN, sent["token"], sent["triggeredAt"]
    )
    other = (
        await client.post("/_sandbox/webhooks/verify", json={"event": "candidateHired"})
    ).json()
    assert other["webhook"]["delivery"]["event"] == "candidateHired"


async def test_failed_delivery_is_retried_with_the_same_body() -> None:
    receiver = Receiver(statuses=[500, 503])
    async with make_sandbox(receiver) as lever, api_client(lever) as c:
        opp = await create(c)
        result = (
            await c.post(f"/_sandbox/candidates/{opp['id']}/stage", json={"stage": "offer"})
        ).json()
        assert result["webhook"]["status"] == 500
        await lever.wait_idle()
        raws = [raw for raw, _ in receiver.received]
        assert len(raws) == 3 and len(set(raws)) == 1
        stats = (await c.get("/_sandbox/stats")).json()["webhooks"]
        assert stats["attempts_by_status"] == {"500": 1, "503": 1, "200": 1}
        assert stats["retries"] == 2
        assert stats["delivered_by_event"] == {"candidateStageChange": 1}
        [delivery] = (await c.get("/_sandbox/webhooks/deliveries")).json()
        assert delivery["delivered"] and [a["status"] for a in delivery["attempts"]] == [
            500,
            503,
            200,
        ]


async def test_at_most_five_retries() -> None:
    receiver = Receiver(statuses=[500] * 10)
    async with make_sandbox(receiver) as lever, api_client(lever) as c:
        await c.post("/_sandbox/webhooks/verify")
        await lever.wait_idle()
        assert len(receiver.received) == 6
        assert lever.stats.webhooks.retries == 5
        assert lever.stats.webhooks.delivered_by_event == {}


async def test_rerun_sends_the_same_body(client: httpx.AsyncClient, receiver: Receiver) -> None:
    await client.post("/_sandbox/webhooks/verify")
    rerun = await client.post("/_sandbox/webhooks/deliveries/1/rerun")
    assert rerun.status_code == 200
    first, second = (raw for raw, _ in receiver.received)
    assert first == second
    assert (await client.post("/_sandbox/webhooks/deliveries/99/rerun")).status_code == 404


async def test_unreachable_webhook_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    async with (
        make_sandbox(webhook_url=url, retry_delays=(0.01, 0.01)) as lever,
        api_client(lever) as c,
    ):
        result = (await c.post("/_sandbox/webhooks/verify")).json()
        assert result["webhook"]["status"] is None
        assert isinstance(result["webhook"]["body"], str)
        await lever.wait_idle()
        assert lever.stats.webhooks.attempts_by_status == {"unreachable": 3}


async def test_no_webhook_url_means_no_delivery() -> None:
    async with make_sandbox() as lever, api_client(lever) as c:
        opp = await create(c)
        result = (
            await c.post(f"/_sandbox/candidates/{opp['id']}/stage", json={"stage": "offer"})
        ).json()
        assert result["webhook"] is None
        assert result["opportunity"]["stage"] == "offer"


async def test_delivery_over_real_http() -> None:
    receiver = Receiver()
    async with serve_app(receiver.app) as base, make_sandbox(webhook_url=f"{base}/hook") as lever:
        async with api_client(lever) as c:
            opp = await create(c)
            url = f"/_sandbox/candidates/{opp['id']}/stage"
            result = (await c.post(url, json={"stage": TECHNICAL_SCREEN_STAGE_ID})).json()
    assert result["webhook"]["status"] == 200
    [(raw, headers)] = receiver.received
    assert json.loads(raw) == result["webhook"]["delivery"]
    assert headers["user-agent"] == "Lever-Webhooks"
    assert verify_lever_webhook(json.loads(raw), [SIGNATURE_TOKEN])


# --- Lever's documented example ---------------------------------------------------------
#
# What we found: the example delivery in Lever's documentation (signature 28e3fbb9...) does
# NOT verify under any key we know. Lever never published the signing token behind it; we
# tried the empty string, the token itself, "SIGNATURE_TOKEN" (the variable name in the
# docs' JavaScript sample) and a few other obvious placeholders, with HMAC-SHA256 and
# HMAC-SHA1 over token+triggeredAt and triggeredAt+token, and plain SHA-256: no match.
# (The docs' "test request" signature is not even hex: it contains 'm'.) So the example
# cannot check a key; it can only check the ALGORITHM: hex(HMAC-SHA256(key=signature
# token, msg=token + str(triggeredAt))), which is what the docs' own JavaScript computes.

KNOWN_KEYS = ["", "SIGNATURE_TOKEN", "signature_token", DOCS_STAGE_CHANGE["token"], SIGNATURE_TOKEN]


def test_docs_example_does_not_verify_with_any_known_key() -> None:
    for key in KNOWN_KEYS:
        assert not verify_lever_webhook(DOCS_STAGE_CHANGE, [key]), key
    assert not verify_lever_webhook(DOCS_STAGE_CHANGE, KNOWN_KEYS)


def test_signing_reproduces_the_documented_algorithm_on_the_docs_example() -> None:
    token, triggered_at = DOCS_STAGE_CHANGE["token"], DOCS_STAGE_CHANGE["triggeredAt"]
    test_key = "py-lever-test-signature-token"
    signed = sign_lever_webhook(
        test_key,
        "candidateStageChange",
        DOCS_STAGE_CHANGE["data"],
        triggered_at=triggered_at,
        token=token,
    )
    assert signed == {**DOCS_STAGE_CHANGE, "signature": signed["signature"]}
    assert signed["signature"] == independent_signature(test_key, token, triggered_at)
    assert verify_lever_webhook(signed, [test_key])
    assert not verify_lever_webhook(signed, ["wrong-key"])
    # The docs' body re-signed with the test key verifies; with its own signature it does not.
    assert not verify_lever_webhook(DOCS_STAGE_CHANGE, [test_key])


# --- control endpoints -------------------------------------------------------------------


async def test_control_candidates(client: httpx.AsyncClient) -> None:
    opp = await create(client, id="fixed-id", tags=["a", "a", "b"], stage="py assessment")
    assert opp["id"] == "fixed-id" and opp["tags"] == ["a", "b"]
    assert opp["stage"] == PY_ASSESSMENT_STAGE_ID  # names match case-insensitively too
    assert (
        await client.post("/_sandbox/candidates", json={"name": "X", "id": "fixed-id"})
    ).status_code == 409
    assert (
        await client.post("/_sandbox/candidates", json={"name": "X", "stage": "Nope"})
    ).status_code == 400
    assert (await client.post("/_sandbox/candidates", json={"emails": []})).status_code == 400
    assert (await client.get("/_sandbox/candidates/fixed-id")).json() == opp

    tagged = await client.post(
        "/_sandbox/candidates/fixed-id/tags", json={"add": ["c", "a"], "remove": ["b"]}
    )
    assert tagged.json()["tags"] == ["a", "c"]
    listed = (await client.get("/_sandbox/candidates")).json()
    assert [o["id"] for o in listed] == ["fixed-id"]
    assert (
        await client.post("/_sandbox/candidates/missing/stage", json={"stage": "offer"})
    ).status_code == 404


async def test_lifespan_closes_delivery_client(receiver: Receiver) -> None:
    async with make_sandbox(receiver) as lever:
        async with lever.app.router.lifespan_context(lever.app):
            await lever.send_verify()
            assert lever._deliverer._client is not None
        assert lever._deliverer._client is None

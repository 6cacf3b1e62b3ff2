"""The Py sandbox behaves like the Py platform API v1 and its callbacks (SPEC sections 3 and 5)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pylever.edge.signatures import PySignatureError, verify_py_signature
from sandbox.py import DEFAULT_TESTS, PySandbox, build_callback

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "py-sandbox-test-key"
SECRET = "py-callback-secret"
CALLBACK_URL = "http://pylever.test/callbacks/py"
INVITATION_FIELDS = {
    "id", "test_id", "status", "reference", "candidate", "test_url", "score", "report_url",
    "created_at", "completed_at",
}  # fmt: skip


def independent_check(header: str, raw_body: bytes, secret: str) -> bool:
    """SPEC section 3, written here without pylever: v1 = HMAC-SHA256(secret, f"{t}.{raw_body}")."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    message = f"{parts['t']}.".encode() + raw_body
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


class Receiver:
    """The service's callback endpoint: records raw bodies, answers scripted statuses (then 202)."""

    def __init__(self, statuses: Sequence[int] = ()) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.app = Starlette(routes=[Route("/callbacks/py", self._callback, methods=["POST"])])

    async def _callback(self, request: Request) -> Response:
        self.received.append((await request.body(), dict(request.headers)))
        status = self.statuses.pop(0) if self.statuses else 202
        return JSONResponse({"status": "signalled" if status < 300 else "no"}, status_code=status)


@contextlib.asynccontextmanager
async def make_sandbox(receiver: Receiver, **kwargs: Any) -> AsyncIterator[PySandbox]:
    options: dict[str, Any] = {
        "seed": 3,
        "retry_delays": (0.01, 0.01, 0.01),
        "delivery_transport": httpx.ASGITransport(app=receiver.app),
        "base_url": "http://py.test",
    }
    options.update(kwargs)
    sandbox = PySandbox(api_key=API_KEY, callback_secret=SECRET, **options)
    try:
        yield sandbox
    finally:
        await sandbox.aclose()


def api_client(sandbox: PySandbox, key: str | None = API_KEY) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox.app), base_url="http://py.test", headers=headers
    )


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def py(receiver: Receiver) -> AsyncIterator[PySandbox]:
    async with make_sandbox(receiver) as sandbox:
        yield sandbox


@pytest.fixture
async def client(py: PySandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(py) as c:
        yield c


def invitation_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "test_id": "tst_python_basics",
        "candidate": {"name": "Ada Lovelace", "email": "ada@example.com"},
        "reference": "acme:opp-1:stage-1:tst_python_basics",
        "callback_url": CALLBACK_URL,
    }
    body.update(overrides)
    return body


async def invite(client: httpx.AsyncClient, key: str = "key-1", **overrides: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/invitations", json=invitation_body(**overrides), headers={"Idempotency-Key": key}
    )
    assert response.status_code == 201, response.text
    return response.json()


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None
    return parsed


# --- auth and tests -----------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "wrong"])
async def test_unauthorized(py: PySandbox, key: str | None) -> None:
    async with api_client(py, key) as c:
        response = await c.get("/v1/tests")
    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == "unauthorized"
    assert API_KEY not in response.text


async def test_basic_auth_is_refused(py: PySandbox) -> None:
    async with api_client(py, None) as c:
        assert (await c.get("/v1/tests", auth=(API_KEY, ""))).status_code == 401


async def test_tests_are_paged(client: httpx.AsyncClient) -> None:
    first = (await client.get("/v1/tests")).json()
    assert first["data"] == DEFAULT_TESTS[:2]
    assert isinstance(first["next_cursor"], str)
    second = (await client.get("/v1/tests", params={"cursor": first["next_cursor"]})).json()
    assert second == {"data": DEFAULT_TESTS[2:], "next_cursor": None}
    bad = await client.get("/v1/tests", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_cursor"


# --- invitations -------------------------------------------------------------------------------


async def test_invitation_shape(client: httpx.AsyncClient) -> None:
    inv = await invite(client)
    assert set(inv) == INVITATION_FIELDS
    assert inv["id"].startswith("inv_")
    assert inv["status"] == "invited"
    assert inv["test_id"] == "tst_python_basics"
    assert inv["candidate"] == {"name": "Ada Lovelace", "email": "ada@example.com"}
    assert inv["reference"] == "acme:opp-1:stage-1:tst_python_basics"
    assert inv["test_url"] == f"http://py.test/take/{inv['id']}"
    assert inv["score"] is None and inv["report_url"] is None and inv["completed_at"] is None
    parse_time(inv["created_at"])
    fetched = await client.get(f"/v1/invitations/{inv['id']}")
    assert fetched.status_code == 200 and fetched.json() == inv
    missing = await client.get("/v1/invitations/inv_nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert (await client.get(inv["test_url"])).status_code == 200


async def test_idempotency(py: PySandbox, client: httpx.AsyncClient) -> None:
    first = await client.post(
        "/v1/invitations", json=invitation_body(), headers={"Idempotency-Key": "k"}
    )
    # The same body with its keys in another order is the same body.
    reordered = dict(reversed(list(invitation_body().items())))
    again = await client.post("/v1/invitations", json=reordered, headers={"Idempotency-Key": "k"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json()

    other = invitation_body(test_id="tst_sql")
    conflict = await client.post("/v1/invitations", json=other, headers={"Idempotency-Key": "k"})
    assert conflict.status_code == 409
    assert set(conflict.json()["error"]) == {"code", "message"}

    second = await client.post("/v1/invitations", json=other, headers={"Idempotency-Key": "k2"})
    assert second.status_code == 201 and second.json()["id"] != first.json()["id"]

    missing = await client.post("/v1/invitations", json=invitation_body())
    assert missing.status_code == 400

    stats = (await client.get("/_sandbox/stats")).json()
    assert stats["invitations_created"] == 2
    assert stats["idempotent_replays"] == 1
    assert stats["idempotency_conflicts"] == 1
    assert stats["requests"]["by_endpoint"] == {"POST /invitations": 5}
    assert stats["requests"]["by_status"] == {"201": 2, "200": 1, "409": 1, "400": 1}
    assert len(py.invitations) == 2


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (invitation_body(test_id="tst_unknown"), 422, "unknown_test"),
        (invitation_body(candidate={"name": "Ada", "email": "not-an-email"}), 422, "invalid_email"),
        (invitation_body(candidate={"name": "Ada", "email": ""}), 422, "invalid_email"),
        (invitation_body(candidate={"email": "ada@example.com"}), 422, "validation_error"),
        (invitation_body(reference=""), 422, "validation_error"),
        (invitation_body(callback_url="ftp://x"), 422, "validation_error"),
        ({"test_id": "tst_sql"}, 422, "validation_error"),
    ],
)
async def test_invalid_invitations(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, code: str
) -> None:
    response = await client.post("/v1/invitations", json=body, headers={"Idempotency-Key": "x"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    # A refused body does not consume the key.
    assert (await invite(client, key="x"))["status"] == "invited"


async def test_body_not_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/invitations", content=b"{oops", headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"


async def test_reminders_and_cancel(py: PySandbox, client: httpx.AsyncClient) -> None:
    inv = await invite(client)
    for _ in range(2):
        response = await client.post(f"/v1/invitations/{inv['id']}/reminders")
        assert response.status_code == 202
    cancelled = await client.post(f"/v1/invitations/{inv['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = await client.post(f"/v1/invitations/{inv['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    late = await client.post(f"/v1/invitations/{inv['id']}/reminders")
    assert late.status_code == 409
    [state] = (await client.get("/_sandbox/invitations")).json()
    assert state["reminders"] == 2 and state["cancelled"] is True
    assert state["id"] == inv["id"] and state["status"] == "cancelled"
    assert state["reference"] == inv["reference"]
    assert state["callback_url"] == CALLBACK_URL
    stats = py.stats
    assert stats.reminders == 2 and stats.cancels == 1


async def test_cancel_completed_is_409(client: httpx.AsyncClient) -> None:
    inv = await invite(client)
    await client.post(f"/_sandbox/invitations/{inv['id']}/complete", json={"score": 90})
    response = await client.post(f"/v1/invitations/{inv['id']}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert (await client.post(f"/v1/invitations/{inv['id']}/reminders")).status_code == 409
    assert (await client.get(f"/v1/invitations/{inv['id']}")).json()["status"] == "completed"


# --- faults ----------------------------------------------------------------------------------


async def test_rate_limit_next(py: PySandbox, client: httpx.AsyncClient) -> None:
    faults = await client.post("/_sandbox/faults", json={"rate_limit_next": 2})
    assert faults.json()["rate_limit_next"] == 2
    limited = [await client.get("/v1/tests") for _ in range(2)]
    for response in limited:
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "rate_limited"
    assert (await client.get("/v1/tests")).status_code == 200
    assert py.stats.rate_limited == 2


async def test_error_rate_one_answers_500(receiver: Receiver) -> None:
    async with make_sandbox(receiver, error_rate=1.0) as sandbox, api_client(sandbox) as c:
        response = await c.post(
            "/v1/invitations", json=invitation_body(), headers={"Idempotency-Key": "k"}
        )
        assert response.status_code == 500
        assert response.json() == {
            "error": {"code": "internal", "message": response.json()["error"]["message"]}
        }
        assert sandbox.invitations == {}
        assert sandbox.stats.faults_injected == 1
        await c.post("/_sandbox/faults", json={"error_rate": 0})
        assert (await c.get("/v1/tests")).status_code == 200


async def test_lost_response_then_idempotent_retry(
    py: PySandbox, client: httpx.AsyncClient
) -> None:
    await client.post("/_sandbox/faults", json={"lose_response_next": 1})
    lost = await client.post(
        "/v1/invitations", json=invitation_body(), headers={"Idempotency-Key": "k"}
    )
    assert lost.status_code == 500
    assert len(py.invitations) == 1  # the work was done
    retry = await client.post(
        "/v1/invitations", json=invitation_body(), headers={"Idempotency-Key": "k"}
    )
    assert retry.status_code == 200
    assert retry.json()["id"] in py.invitations
    assert py.stats.lost_responses == 1 and py.stats.invitations_created == 1


# --- callbacks ---------------------------------------------------------------------------------


async def test_start_sends_signed_callback(
    py: PySandbox, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    inv = await invite(client)
    response = await client.post(f"/_sandbox/invitations/{inv['id']}/start")
    assert response.status_code == 200
    result = response.json()
    assert result["invitation"]["status"] == "started"
    assert result["callback"] == {"status": 202, "body": {"status": "signalled"}}

    [(raw, headers)] = receiver.received
    assert headers["content-type"] == "application/json"
    header = headers["py-signature"]
    assert header.startswith("t=") and ",v1=" in header
    assert abs(int(header.split(",")[0][2:]) - time.time()) < 60
    assert independent_check(header, raw, SECRET)
    verify_py_signature(header, raw, SECRET)
    with pytest.raises(PySignatureError):
        verify_py_signature(header, raw, "wrong-secret")
    with pytest.raises(PySignatureError):
        verify_py_signature(header, raw + b" ", SECRET)
    assert json.loads(raw) == {"event": "invitation.started", "invitation": result["invitation"]}


async def test_complete_sends_result(client: httpx.AsyncClient, receiver: Receiver) -> None:
    inv = await invite(client)
    result = (
        await client.post(f"/_sandbox/invitations/{inv['id']}/complete", json={"score": 87.5})
    ).json()
    done = result["invitation"]
    assert done["status"] == "completed" and done["score"] == 87.5
    assert done["report_url"] == f"https://py.test/reports/{inv['id']}"  # Py's links are https
    assert parse_time(done["completed_at"]) >= parse_time(done["created_at"])
    assert (await client.get(f"/v1/invitations/{inv['id']}")).json() == done
    [(raw, headers)] = receiver.received
    assert json.loads(raw) == {"event": "invitation.completed", "invitation": done}
    assert independent_check(headers["py-signature"], raw, SECRET)
    assert (await client.get(done["report_url"])).status_code == 200

    custom = await invite(client, key="k2")
    url = f"/_sandbox/invitations/{custom['id']}/complete"
    result = (
        await client.post(url, json={"score": 10, "report_url": "https://r.example/1"})
    ).json()
    assert result["invitation"]["report_url"] == "https://r.example/1"
    assert (await client.post(url, json={"score": 10})).status_code == 409
    for bad in [{}, {"score": "90"}, {"score": 101}, {"score": True}]:
        other = await invite(client, key=f"bad-{bad}")
        response = await client.post(f"/_sandbox/invitations/{other['id']}/complete", json=bad)
        assert response.status_code == 400, bad


@pytest.mark.parametrize(
    ("omit", "body"),
    [
        (["report_url"], {"score": 70}),
        (["score"], {}),
        (["score", "report_url"], {"score": 70, "report_url": "https://r.example/1"}),
    ],
)
async def test_complete_can_break_the_contract(
    client: httpx.AsyncClient, receiver: Receiver, omit: list[str], body: dict[str, Any]
) -> None:
    """Py promises a score and a report_url with every completed invitation; tests can break it."""
    inv = await invite(client, key=f"breach-{'-'.join(omit)}")
    url = f"/_sandbox/invitations/{inv['id']}/complete"
    result = (await client.post(url, json={**body, "omit": omit})).json()
    done = result["invitation"]
    assert done["status"] == "completed" and done["completed_at"]
    assert done["created_at"] == inv["created_at"]
    for name in ("score", "report_url"):
        assert (done[name] is None) == (name in omit), name
    assert (await client.get(f"/v1/invitations/{inv['id']}")).json() == done
    [(raw, _)] = receiver.received
    assert json.loads(raw) == {"event": "invitation.completed", "invitation": done}


async def test_complete_refuses_unknown_omissions(client: httpx.AsyncClient) -> None:
    inv = await invite(client, key="breach-bad")
    url = f"/_sandbox/invitations/{inv['id']}/complete"
    for omit in (["id"], "score", [1], ["status"]):
        response = await client.post(url, json={"score": 50, "omit": omit})
        assert response.status_code == 400, omit
    assert (await client.get(f"/v1/invitations/{inv['id']}")).json()["status"] == "invited"


async def test_lost_callback_mode_sends_nothing(
    py: PySandbox, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    inv = await invite(client)
    result = (
        await client.post(
            f"/_sandbox/invitations/{inv['id']}/complete", json={"score": 55, "callback": False}
        )
    ).json()
    assert result["callback"] is None
    await py.wait_idle()
    assert receiver.received == []
    assert py.stats.callbacks.sent_by_event == {}
    # The result is still there for whoever asks (the reminder-time status check).
    fetched = (await client.get(f"/v1/invitations/{inv['id']}")).json()
    assert fetched["status"] == "completed" and fetched["score"] == 55
    # A late (or duplicate) callback can be sent on demand.
    resent = (await client.post(f"/_sandbox/invitations/{inv['id']}/resend")).json()
    assert resent["callback"]["status"] == 202
    assert json.loads(receiver.received[0][0])["event"] == "invitation.completed"


async def test_expire_sends_callback(client: httpx.AsyncClient, receiver: Receiver) -> None:
    inv = await invite(client)
    result = (await client.post(f"/_sandbox/invitations/{inv['id']}/expire")).json()
    assert result["invitation"]["status"] == "expired"
    assert result["invitation"]["completed_at"] is None
    assert json.loads(receiver.received[0][0])["event"] == "invitation.expired"
    assert (await client.post(f"/_sandbox/invitations/{inv['id']}/start")).status_code == 409
    assert (
        await client.post(f"/_sandbox/invitations/{inv['id']}/complete", json={"score": 1})
    ).status_code == 409
    assert (await client.post("/_sandbox/invitations/inv_nope/start")).status_code == 404


async def test_failed_callbacks_are_retried() -> None:
    receiver = Receiver(statuses=[503, 500])
    async with make_sandbox(receiver) as py, api_client(py) as c:
        inv = await invite(c)
        result = (await c.post(f"/_sandbox/invitations/{inv['id']}/start")).json()
        assert result["callback"]["status"] == 503
        await py.wait_idle()
        raws = {raw for raw, _ in receiver.received}
        assert len(receiver.received) == 3 and len(raws) == 1
        stats = (await c.get("/_sandbox/stats")).json()["callbacks"]
        assert stats["attempts_by_status"] == {"503": 1, "500": 1, "202": 1}
        assert stats["sent_by_event"] == {"invitation.started": 1}
        assert stats["delivered_by_event"] == {"invitation.started": 1}
        assert stats["retries"] == 2


async def test_unreachable_callback_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with make_sandbox(Receiver(), delivery_transport=None) as py, api_client(py) as c:
        inv = await invite(c, callback_url=f"http://127.0.0.1:{port}/callbacks/py")
        result = (await c.post(f"/_sandbox/invitations/{inv['id']}/start")).json()
        assert result["callback"]["status"] is None
        await py.wait_idle()
        assert py.stats.callbacks.attempts_by_status == {"unreachable": 4}


def test_build_callback_can_forge_and_replay() -> None:
    invitation = {"id": "inv_1", "status": "completed", "score": 120}
    raw, headers = build_callback(
        SECRET, "invitation.completed", invitation, timestamp=1_700_000_000
    )
    assert json.loads(raw) == {"event": "invitation.completed", "invitation": invitation}
    assert headers["Content-Type"] == "application/json"
    assert headers["Py-Signature"].startswith("t=1700000000,v1=")
    assert independent_check(headers["Py-Signature"], raw, SECRET)
    verify_py_signature(headers["Py-Signature"], raw, SECRET, now=1_700_000_100)
    with pytest.raises(PySignatureError, match="stale"):
        verify_py_signature(headers["Py-Signature"], raw, SECRET, now=1_700_000_000 + 301)


async def test_seeded_ids_are_reproducible(receiver: Receiver) -> None:
    ids = []
    for _ in range(2):
        async with make_sandbox(receiver, seed=11) as sandbox, api_client(sandbox) as c:
            ids.append((await invite(c))["id"])
    assert ids[0] == ids[1]

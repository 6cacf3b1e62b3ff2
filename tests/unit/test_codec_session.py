"""Operators' browser session for the codec endpoint (the Temporal Web UI cannot send the admin token).

``GET /codec/login`` form -> ``POST /codec/login`` with the admin token -> an HttpOnly,
SameSite=Lax, HMAC-signed, expiring cookie that ``/codec/decode`` and ``/codec/encode``
accept instead of the bearer token; ``POST /codec/logout`` clears and revokes it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from http.cookies import SimpleCookie

import httpx
import pytest
from google.protobuf import json_format
from starlette.applications import Starlette
from temporalio.api.common.v1 import Payload

from pylever.edge.codec_server import SESSION_COOKIE, CodecSessions, codec_routes
from pylever.temporal.codec import AesGcmCodec

ADMIN_TOKEN = "session-admin-token-4f1d9c"
UI_ORIGIN = "http://127.0.0.1:8233"
KEY = bytes(range(32))
TTL = timedelta(hours=8)
EMAIL = "grace.hopper@example.com"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def json_payload(obj: object) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(obj).encode())


def as_json(payloads: list[Payload]) -> dict:
    return {"payloads": [json_format.MessageToDict(p) for p in payloads]}


def set_cookie(response: httpx.Response) -> SimpleCookie:
    headers = response.headers.get_list("set-cookie")
    assert len(headers) == 1, headers
    cookie = SimpleCookie()
    cookie.load(headers[0])
    assert SESSION_COOKIE in cookie
    return cookie


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def codec() -> AesGcmCodec:
    return AesGcmCodec([KEY])


def make_app(codec: AesGcmCodec, clock: Clock, token: str = ADMIN_TOKEN) -> Starlette:
    return Starlette(
        routes=codec_routes(
            codec, admin_token=token, cors_origins=[UI_ORIGIN], session_ttl=TTL, clock=clock
        )
    )


@pytest.fixture
async def http(codec: AesGcmCodec, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(codec, clock))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        yield client


async def login(http: httpx.AsyncClient, token: str = ADMIN_TOKEN) -> httpx.Response:
    return await http.post("/codec/login", data={"token": token})


async def decode(
    http: httpx.AsyncClient, payloads: list[Payload], **headers: str
) -> httpx.Response:
    return await http.post(
        "/codec/decode",
        content=json.dumps(as_json(payloads)),
        headers={"Content-Type": "application/json", "X-Namespace": "default", **headers},
    )


# --- the login page ------------------------------------------------------------------


async def test_login_page_is_a_form_that_cannot_be_framed_or_cached(http):
    response = await http.get("/codec/login")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<form method="post" action="login">' in page
    assert 'type="password"' in page and 'name="token"' in page
    # how to point the UI at us, with the endpoint this API serves
    assert "http://127.0.0.1:8000/codec" in page
    assert "Include cross-origin credentials" in page
    assert "Use my browser setting and ignore Cluster-level setting" in page
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "form-action 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    # "no-referrer" would make Chrome send "Origin: null" with the form POST, which the
    # login refuses (found in a real browser)
    assert response.headers["referrer-policy"] == "same-origin"
    assert "set-cookie" not in response.headers
    assert ADMIN_TOKEN not in page


@pytest.mark.parametrize(
    "body",
    [
        {"token": "wrong-token"},
        {"token": ""},
        {"token": ADMIN_TOKEN + "x"},
        {"token": ADMIN_TOKEN[:-1]},
        {"other": ADMIN_TOKEN},
    ],
)
async def test_login_with_a_wrong_token_is_401_and_sets_nothing(http, body):
    response = await http.post("/codec/login", data=body)
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert "not the admin token" in response.text
    assert ADMIN_TOKEN not in response.text
    assert not http.cookies


@pytest.mark.parametrize(
    "content",
    [b'{"token": "nope"}', b'{"token": 5}', b"[]", b"not json", b"[" * 4000 + b"]" * 4000],
)
async def test_json_login_with_a_wrong_token_is_a_401_error_object(http, content):
    response = await http.post(
        "/codec/login", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "unauthorized", "message": "wrong admin token"}}
    assert "set-cookie" not in response.headers


async def test_login_sets_an_httponly_samesite_cookie_scoped_to_the_codec(http, clock):
    response = await login(http)
    assert response.status_code == 303
    assert response.headers["location"] == "login"
    cookie = set_cookie(response)
    morsel = cookie[SESSION_COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "lax"
    assert morsel["path"] == "/codec"
    assert int(morsel["max-age"]) == int(TTL.total_seconds())
    assert not morsel["secure"]  # plain http here (127.0.0.1 in make run)
    value = morsel.value
    assert ADMIN_TOKEN not in value
    assert value.startswith("v1.")
    assert int(value.split(".")[1]) == int(clock.now + TTL.total_seconds())
    # the login page now says so, and offers to sign out
    page = await http.get("/codec/login")
    assert "Signed in" in page.text and 'action="logout"' in page.text


async def test_login_over_https_sets_a_secure_cookie(codec, clock):
    transport = httpx.ASGITransport(app=make_app(codec, clock))
    async with httpx.AsyncClient(transport=transport, base_url="https://lever.py.example") as http:
        response = await http.post("/codec/login", data={"token": ADMIN_TOKEN})
    assert response.status_code == 303
    assert set_cookie(response)[SESSION_COOKIE]["secure"] is True


async def test_json_login_answers_json(http):
    response = await http.post("/codec/login", json={"token": ADMIN_TOKEN})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "signed_in" and body["expires_at"]
    assert set_cookie(response)[SESSION_COOKIE]["httponly"] is True


async def test_login_from_a_foreign_origin_is_refused(http):
    response = await http.post(
        "/codec/login", data={"token": ADMIN_TOKEN}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert "set-cookie" not in response.headers
    # nor from an opaque origin (sandboxed frames, no-referrer pages)
    response = await http.post(
        "/codec/login", data={"token": ADMIN_TOKEN}, headers={"Origin": "null"}
    )
    assert response.status_code == 403
    # from the API's own page it works
    response = await http.post(
        "/codec/login", data={"token": ADMIN_TOKEN}, headers={"Origin": "http://127.0.0.1:8000"}
    )
    assert response.status_code == 303


# --- decoding with the cookie ------------------------------------------------------------


async def test_decode_and_encode_work_with_the_cookie_alone(http, codec):
    secret = [json_payload({"name": "Grace Hopper", "email": EMAIL})]
    encrypted = await codec.encode(secret)
    assert (await decode(http, encrypted)).status_code == 401  # not signed in yet

    await login(http)
    response = await decode(http, encrypted)  # no Authorization header at all
    assert response.status_code == 200, response.text
    assert [json_format.ParseDict(p, Payload()) for p in response.json()["payloads"]] == secret

    encoded = await http.post(
        "/codec/encode", json=as_json(secret), headers={"X-Namespace": "default"}
    )
    assert encoded.status_code == 200
    assert EMAIL not in encoded.text


async def test_the_bearer_token_still_works_without_a_cookie(http, codec):
    encrypted = await codec.encode([json_payload({"email": EMAIL})])
    response = await decode(http, encrypted, Authorization=f"Bearer {ADMIN_TOKEN}")
    assert response.status_code == 200


def tampered(value: str) -> list[str]:
    version, expires, nonce, mac = value.split(".")
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    later = str(int(expires) + 3600)
    return [
        f"{version}.{expires}.{nonce}.{flipped}",  # MAC changed
        f"{version}.{later}.{nonce}.{mac}",  # expiry extended
        f"{version}.{expires}.{nonce}x.{mac}",  # nonce changed
        f"v2.{expires}.{nonce}.{mac}",  # version changed
        f"{version}.{expires}.{nonce}",  # MAC missing
        f"{value}.extra",
        "",
        "garbage",
        ADMIN_TOKEN,
        "v1." + "9" * 40 + ".x." + mac,
        value.upper(),
    ]


async def test_a_tampered_cookie_is_rejected(http, codec):
    cookie = set_cookie(await login(http))[SESSION_COOKIE].value
    encrypted = await codec.encode([json_payload({"email": EMAIL})])
    http.cookies.clear()
    for bad in tampered(cookie):
        response = await decode(http, encrypted, Cookie=f"{SESSION_COOKIE}={bad}")
        assert response.status_code == 401, bad
        assert response.json()["error"]["code"] == "unauthorized"
        assert EMAIL not in response.text
    # the genuine value, to show the requests above were otherwise fine
    response = await decode(http, encrypted, Cookie=f"{SESSION_COOKIE}={cookie}")
    assert response.status_code == 200


async def test_an_expired_cookie_is_rejected(http, codec, clock):
    await login(http)
    encrypted = await codec.encode([json_payload({"email": EMAIL})])
    clock.now += TTL.total_seconds() - 1
    assert (await decode(http, encrypted)).status_code == 200
    clock.now += 1
    assert (await decode(http, encrypted)).status_code == 401
    page = await http.get("/codec/login")
    assert "Signed in" not in page.text and 'name="token"' in page.text


async def test_a_cookie_signed_for_another_admin_token_is_rejected(codec, clock):
    other = CodecSessions("a-different-admin-token", TTL, clock)
    value, _ = other.issue()
    encrypted = await codec.encode([json_payload({"email": EMAIL})])
    transport = httpx.ASGITransport(app=make_app(codec, clock))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
        response = await decode(http, encrypted, Cookie=f"{SESSION_COOKIE}={value}")
    assert response.status_code == 401
    # rotating the admin token ends every session
    mine, _ = CodecSessions(ADMIN_TOKEN, TTL, clock).issue()
    assert CodecSessions(ADMIN_TOKEN, TTL, clock).expiry(mine) is not None
    assert CodecSessions(ADMIN_TOKEN + "-rotated", TTL, clock).expiry(mine) is None


async def test_cookie_requests_must_be_json_from_an_allowed_origin(http, codec):
    await login(http)
    encrypted = await codec.encode([json_payload({"email": EMAIL})])
    body = json.dumps(as_json(encrypted))
    # a cross-site form or no-cors fetch cannot send application/json without a preflight
    plain = await http.post("/codec/decode", content=body, headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    assert EMAIL not in plain.text
    foreign = await decode(http, encrypted, Origin="https://evil.example")
    assert foreign.status_code == 403
    assert EMAIL not in foreign.text
    ui = await decode(http, encrypted, Origin=UI_ORIGIN)
    assert ui.status_code == 200
    assert ui.headers["access-control-allow-origin"] == UI_ORIGIN
    assert ui.headers["access-control-allow-credentials"] == "true"


async def test_cors_preflight_with_credentials_from_the_ui_origin(http):
    response = await http.options(
        "/codec/decode",
        headers={
            "Origin": UI_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-namespace",
        },
    )
    assert response.status_code == 200
    # with credentials the origin must be echoed, never "*"
    assert response.headers["access-control-allow-origin"] == UI_ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"content-type", "x-namespace"} <= allowed
    refused = await http.options(
        "/codec/decode",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


async def test_logout_clears_the_cookie(http, codec):
    await login(http)
    encrypted = await codec.encode([json_payload({"email": EMAIL})])
    assert (await decode(http, encrypted)).status_code == 200
    response = await http.post("/codec/logout")
    assert response.status_code == 303
    cleared = set_cookie(response)[SESSION_COOKIE]
    assert cleared.value == "" and int(cleared["max-age"]) == 0
    assert cleared["path"] == "/codec" and cleared["httponly"] is True
    assert SESSION_COOKIE not in http.cookies
    assert (await decode(http, encrypted)).status_code == 401
    # JSON clients get JSON
    await login(http)
    response = await http.post("/codec/logout", headers={"Accept": "application/json"})
    assert response.json() == {"status": "signed_out"}
    assert (await decode(http, encrypted)).status_code == 401


async def test_logout_revokes_the_cookie_even_where_a_copy_survives(http, codec, clock):
    """Issue 11: logging out cleared the browser's cookie, but a copy of it kept working."""
    value = set_cookie(await login(http))[SESSION_COOKIE].value
    encrypted = await codec.encode([json_payload({"email": EMAIL})])
    copied = {"Cookie": f"{SESSION_COOKIE}={value}"}
    assert (await decode(http, encrypted, **copied)).status_code == 200
    assert (await http.post("/codec/logout")).status_code == 303
    http.cookies.clear()
    refused = await decode(http, encrypted, **copied)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    assert EMAIL not in refused.text
    page = await http.get("/codec/login", headers=copied)
    assert "Signed in" not in page.text and 'name="token"' in page.text
    clock.now += TTL.total_seconds() - 1
    assert (await decode(http, encrypted, **copied)).status_code == 401  # until it expires
    # signing in again gives a new session
    await login(http)
    assert (await decode(http, encrypted)).status_code == 200


def test_revocation_is_kept_until_expiry_bounded_and_per_instance(clock, monkeypatch):
    import pylever.edge.codec_server as codec_server

    sessions = CodecSessions(ADMIN_TOKEN, TTL, clock)
    first, _ = sessions.issue()
    second, _ = sessions.issue()
    assert sessions.revoke(first)
    assert sessions.expiry(first) is None and sessions.expiry(second) is not None
    # another process (another instance) does not know of it: revocation is per process
    assert CodecSessions(ADMIN_TOKEN, TTL, clock).expiry(first) is not None
    # nothing is remembered for values this key did not sign, or that have expired
    for bad in [*tampered(second), None]:
        assert not sessions.revoke(bad)
    assert sessions.revoked == 1
    clock.now += TTL.total_seconds()  # first has expired: pruned at the next revocation
    third, _ = sessions.issue()
    assert sessions.revoke(third)
    assert sessions.revoked == 1
    # bounded: past MAX_REVOKED the value closest to its expiry is forgotten
    monkeypatch.setattr(codec_server, "MAX_REVOKED", 3)
    values = []
    for _ in range(5):
        clock.now += 1
        value, _ = sessions.issue()
        values.append(value)
        assert sessions.revoke(value)
    assert sessions.revoked == 3
    assert [sessions.expiry(v) is None for v in values] == [False, False, True, True, True]


async def test_logout_from_a_foreign_origin_is_refused(http):
    await login(http)
    response = await http.post("/codec/logout", headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert "set-cookie" not in response.headers


async def test_oversized_login_body_is_413(http):
    response = await http.post("/codec/login", data={"token": "x" * 20_000})
    assert response.status_code == 413
    assert "set-cookie" not in response.headers


def test_sessions_need_a_token_and_a_lifetime():
    with pytest.raises(ValueError):
        CodecSessions("")
    with pytest.raises(ValueError):
        CodecSessions(ADMIN_TOKEN, timedelta(0))

"""``make run``'s first look: the codec endpoint trusts the Web UI on this machine.

With ``PYLEVER_CODEC_TRUST_LOCAL_UI=1`` (set by ``make run``, never in production)
``/codec/decode`` and ``/codec/encode`` answer without the admin token a request whose
TCP peer is loopback and whose ``Origin`` is a configured UI origin, as the dev server's
Web UI sends it (browser fetch, JSON, ``X-Namespace``, no credentials). Everything else
keeps the admin-token / session gate.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from starlette.applications import Starlette
from temporalio.api.common.v1 import Payload

from pylever.config.environment import Settings
from pylever.config.file import load_config
from pylever.edge.app import create_app
from pylever.edge.codec_server import codec_routes
from pylever.temporal.codec import AesGcmCodec
from sandbox.stack import DEMO_ENV, ui_env

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "local-ui-admin-token-8c2e71"
UI_PORT = 8233
UI_ORIGIN = f"http://127.0.0.1:{UI_PORT}"
UI_ORIGIN_LOCALHOST = f"http://localhost:{UI_PORT}"
UI_ORIGINS = (UI_ORIGIN, UI_ORIGIN_LOCALHOST)
API = "http://127.0.0.1:8000"
KEY = bytes(range(32))
CANDIDATE = {"name": "Grace Hopper", "email": "grace.hopper@example.com", "test": "Python"}
TRUST = "PYLEVER_CODEC_TRUST_LOCAL_UI"


def json_payload(obj: object) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(obj).encode())


def as_json(payloads: Sequence[Payload]) -> dict:
    return {"payloads": [json_format.MessageToDict(p) for p in payloads]}


def from_json(body: dict) -> list[Payload]:
    return [json_format.ParseDict(p, Payload()) for p in body["payloads"]]


@pytest.fixture
def codec() -> AesGcmCodec:
    return AesGcmCodec([KEY])


@pytest.fixture
async def encrypted(codec: AesGcmCodec) -> list[Payload]:
    return await codec.encode([json_payload(CANDIDATE)])


def codec_app(codec: AesGcmCodec, *, trust: bool, origins: Sequence[str] = UI_ORIGINS) -> Starlette:
    return Starlette(
        routes=codec_routes(
            codec, admin_token=ADMIN_TOKEN, cors_origins=list(origins), trust_local_ui=trust
        )
    )


def client_at(app: Starlette, host: str) -> httpx.AsyncClient:
    """A client whose TCP peer address (``request.client.host``) is ``host``."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(host, 51234)), base_url=API
    )


def ui_headers(origin: str | None = UI_ORIGIN, **extra: str) -> dict[str, str]:
    """What the Temporal Web UI's fetch sends (no Authorization, no cookie)."""
    headers = {"Content-Type": "application/json", "X-Namespace": "default", **extra}
    if origin is not None:
        headers["Origin"] = origin
    return headers


async def ui_decode(
    app: Starlette,
    payloads: Sequence[Payload],
    *,
    host: str = "127.0.0.1",
    origin: str | None = UI_ORIGIN,
    **extra: str,
) -> httpx.Response:
    async with client_at(app, host) as http:
        return await http.post(
            "/codec/decode",
            content=json.dumps(as_json(payloads)),
            headers=ui_headers(origin, **extra),
        )


def assert_gate(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert "grace" not in response.text.lower()


# --- trusted: the UI in a browser on this machine --------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
@pytest.mark.parametrize("origin", UI_ORIGINS)
async def test_local_ui_decodes_without_a_token(codec, encrypted, host, origin):
    response = await ui_decode(codec_app(codec, trust=True), encrypted, host=host, origin=origin)
    assert response.status_code == 200, response.text
    [clear] = from_json(response.json())
    assert json.loads(clear.data) == CANDIDATE
    # the browser lets the UI read it: CORS names the UI's origin
    assert response.headers["access-control-allow-origin"] == origin


async def test_local_ui_encodes_without_a_token(codec):
    async with client_at(codec_app(codec, trust=True), "127.0.0.1") as http:
        response = await http.post(
            "/codec/encode",
            content=json.dumps(as_json([json_payload(CANDIDATE)])),
            headers=ui_headers(),
        )
    assert response.status_code == 200, response.text
    [sealed] = from_json(response.json())
    assert b"grace" not in sealed.data.lower()
    [clear] = await codec.decode([sealed])
    assert json.loads(clear.data) == CANDIDATE


async def test_the_ui_preflight_is_answered_for_its_origin(codec):
    """The UI's fetch sends JSON and X-Namespace: the browser asks first (no credentials)."""
    async with client_at(codec_app(codec, trust=True), "127.0.0.1") as http:
        response = await http.options(
            "/codec/decode",
            headers={
                "Origin": UI_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace",
            },
        )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed and "x-namespace" in allowed


async def test_local_ui_requests_must_be_json(codec, encrypted):
    response = await ui_decode(
        codec_app(codec, trust=True), encrypted, **{"Content-Type": "text/plain"}
    )
    assert response.status_code == 415


# --- everything else keeps the gate ------------------------------------------------


async def test_setting_off_keeps_the_gate(codec, encrypted):
    assert_gate(await ui_decode(codec_app(codec, trust=False), encrypted))


@pytest.mark.parametrize(
    "host",
    ["192.168.1.20", "10.0.0.5", "203.0.113.7", "2001:db8::1", "::ffff:10.0.0.5", "testclient"],
)
async def test_a_client_off_this_machine_keeps_the_gate(codec, encrypted, host):
    assert_gate(await ui_decode(codec_app(codec, trust=True), encrypted, host=host))


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://127.0.0.1:3000",  # another local web app
        API,  # the API's own origin is not the UI
        "null",
        "http://127.0.0.1:8233.evil.example",
        None,  # curl and other non-browsers
    ],
)
async def test_loopback_with_another_origin_keeps_the_gate(codec, encrypted, origin):
    response = await ui_decode(codec_app(codec, trust=True), encrypted, origin=origin)
    assert_gate(response)
    assert "access-control-allow-origin" not in response.headers


async def test_a_foreign_origin_gets_no_preflight(codec):
    async with client_at(codec_app(codec, trust=True), "127.0.0.1") as http:
        response = await http.options(
            "/codec/decode",
            headers={
                "Origin": "http://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace",
            },
        )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    "header",
    [
        {"X-Forwarded-For": "203.0.113.7"},
        {"X-Forwarded-For": "127.0.0.1"},
        {"Forwarded": "for=203.0.113.7"},
        {"X-Real-IP": "203.0.113.7"},
    ],
)
async def test_a_proxied_request_keeps_the_gate(codec, encrypted, header):
    """A reverse proxy on the same host makes every client loopback: not trusted."""
    assert_gate(await ui_decode(codec_app(codec, trust=True), encrypted, **header))


async def test_the_bearer_token_still_works_and_a_wrong_one_is_refused(codec, encrypted):
    app = codec_app(codec, trust=True)
    body = json.dumps(as_json(encrypted))
    async with client_at(app, "203.0.113.7") as http:
        right = await http.post(
            "/codec/decode",
            content=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        )
        wrong = await http.post(
            "/codec/decode",
            content=body,
            headers=ui_headers(Authorization="Bearer not-the-token"),
        )
    assert right.status_code == 200
    assert json.loads(from_json(right.json())[0].data) == CANDIDATE
    assert_gate(wrong)


async def test_trust_does_not_sign_anyone_in(codec):
    """The login page still asks for the token; no cookie comes from being local."""
    async with client_at(codec_app(codec, trust=True), "127.0.0.1") as http:
        page = await http.get("/codec/login", headers={"Origin": UI_ORIGIN})
        login = await http.post(
            "/codec/login", json={"token": "wrong"}, headers={"Origin": UI_ORIGIN}
        )
    assert 'type="password"' in page.text
    assert login.status_code == 401
    assert "set-cookie" not in login.headers


# --- the warning -------------------------------------------------------------------


def test_trust_is_logged_once_as_a_warning(codec, caplog):
    caplog.set_level(logging.INFO, logger="pylever.edge.codec_server")
    codec_app(codec, trust=False)
    assert not caplog.records
    codec_app(codec, trust=True)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "trusts the local Web UI" in record.getMessage()
    assert ADMIN_TOKEN not in record.getMessage()


# --- the setting: make run turns it on, production never -----------------------------


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", " 1 "])
def test_setting_turns_on_only_when_explicitly_on(value):
    assert Settings.from_env({TRUST: value}).codec_trust_local_ui


@pytest.mark.parametrize("value", [None, "", "0", "false", "no", "off", "enable", "ture"])
def test_setting_is_off_by_default_and_when_misspelt(value):
    env = {} if value is None else {TRUST: value}
    assert not Settings.from_env(env).codec_trust_local_ui
    assert not Settings().codec_trust_local_ui


def test_make_run_turns_it_on_for_its_ui_origins():
    env: dict[str, str] = {}
    ui_env(env, UI_PORT)
    settings = Settings.from_env(env)
    assert settings.codec_trust_local_ui
    assert set(settings.ui_origins) == set(UI_ORIGINS)


def test_make_run_leaves_an_operators_choice_alone():
    env = {TRUST: "0"}
    ui_env(env, UI_PORT)
    assert not Settings.from_env(env).codec_trust_local_ui


@pytest.mark.parametrize("name", ["docker-compose.yml", ".env.example"])
def test_production_files_never_set_it(name):
    path = ROOT / name
    if not path.exists():
        pytest.skip(f"no {name}")
    assert TRUST not in path.read_text()


# --- the API as it starts: production defaults keep the gate ---------------------------


@pytest.fixture
def demo_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in DEMO_ENV.items():
        monkeypatch.setenv(name, value)
    return {
        **DEMO_ENV,
        "PYLEVER_ADMIN_TOKEN": ADMIN_TOKEN,
        "PYLEVER_PAYLOAD_KEYS": base64.b64encode(KEY).decode(),
        "TEMPORAL_ADDRESS": "127.0.0.1:9",  # nothing here reaches Temporal
    }


@pytest.fixture
async def api_decode(
    demo_env: dict[str, str],
) -> AsyncIterator:
    config = load_config(ROOT / "config" / "demo.toml")

    async def decode(env: dict[str, str], payloads: Sequence[Payload]) -> httpx.Response:
        app = create_app(config, Settings.from_env({**demo_env, **env}))
        return await ui_decode(app, payloads)

    yield decode


async def test_api_with_production_defaults_keeps_the_gate(api_decode, encrypted):
    assert_gate(await api_decode({}, encrypted))
    assert_gate(await api_decode({"PYLEVER_UI_ORIGINS": UI_ORIGIN}, encrypted))


async def test_api_as_make_run_starts_it_decodes_for_the_local_ui(api_decode, encrypted):
    env: dict[str, str] = {}
    ui_env(env, UI_PORT)
    response = await api_decode(env, encrypted)
    assert response.status_code == 200, response.text
    assert json.loads(from_json(response.json())[0].data) == CANDIDATE

"""Wrong admin tokens are throttled per client address (pylever.throttle).

Issue 11: ``/codec/login`` took 2,000 wrong tokens at 565/s, and the status endpoint's
bearer check likewise. Now a client has a budget of 10 wrong tokens refilling one per
6 s, shared by every admin-token check; past it, 429 ``too_many_attempts`` with
``Retry-After``, even for the right token, until the budget refills.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from prometheus_client import REGISTRY
from temporalio.api.common.v1 import Payload

from api import create_app
from pylever.settings import Settings
from pylever.throttle import AdminThrottle, client_key
from tests.integration_stack import free_port, stack_config
from tests.process_stack import PYTHON, ManagedProcess

ADMIN_TOKEN = "throttle-admin-token-8c2e51"
PAYLOAD_KEY = bytes(range(32))
STATUS = "GET /accounts/{account_id}/candidates/{opportunity_id}"
LOGIN = "POST /codec/login"
DEMO_CONFIG = (Path(__file__).resolve().parent.parent / "config" / "demo.toml").read_text()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusals(endpoint: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "pylever_admin_auth_refusals_total", {"endpoint": endpoint, "outcome": outcome}
    )
    return value or 0.0


# --- the throttle itself -------------------------------------------------------------------


def test_ten_wrong_tokens_then_refused_until_one_refills() -> None:
    clock = Clock()
    throttle = AdminThrottle(clock=clock)
    for _ in range(10):
        assert throttle.retry_after("10.0.0.1", LOGIN) is None
        throttle.failed("10.0.0.1", LOGIN)
    assert throttle.retry_after("10.0.0.1", LOGIN) == 6
    assert throttle.retry_after("10.0.0.2", LOGIN) is None  # per client
    clock.now += 4.5
    assert throttle.retry_after("10.0.0.1", LOGIN) == 2  # 1.5 s left, rounded up
    clock.now += 1.5
    assert throttle.retry_after("10.0.0.1", LOGIN) is None  # one guess refilled
    throttle.failed("10.0.0.1", LOGIN)
    assert throttle.retry_after("10.0.0.1", LOGIN) == 6
    clock.now += 60
    for _ in range(10):  # refilled to the full budget, never more
        assert throttle.retry_after("10.0.0.1", LOGIN) is None
        throttle.failed("10.0.0.1", LOGIN)
    assert throttle.retry_after("10.0.0.1", LOGIN) == 6


def test_an_ipv6_client_is_one_client_per_64_and_mapped_ipv4_is_ipv4() -> None:
    """Otherwise one host with a /64 gets a fresh allowance from each of its addresses."""
    assert (
        client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == ("2001:db8:1:2::/64")
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("unknown") == "unknown"


def test_memory_is_bounded_oldest_client_forgotten_first() -> None:
    clock = Clock()
    throttle = AdminThrottle(budget=1, max_clients=3, clock=clock)
    for client in ("a", "b", "c"):
        throttle.failed(client, LOGIN)
        clock.now += 0.1
    throttle.failed("a", LOGIN)  # a is now the newest
    throttle.failed("d", LOGIN)
    assert len(throttle) == 3
    assert throttle.retry_after("b", LOGIN) is None  # forgotten: a full budget again
    assert throttle.retry_after("a", LOGIN) is not None
    assert throttle.retry_after("c", LOGIN) is not None
    assert throttle.retry_after("d", LOGIN) is not None
    for n in range(1000):
        throttle.failed(f"10.1.{n // 256}.{n % 256}", LOGIN)
    assert len(throttle) == 3


def test_one_warning_per_client_per_minute_and_metrics(caplog) -> None:
    clock = Clock()
    throttle = AdminThrottle(budget=2, clock=clock)
    bad, throttled = refusals(LOGIN, "bad_token"), refusals(LOGIN, "throttled")
    with caplog.at_level(logging.WARNING, logger="pylever.throttle"):
        throttle.failed("10.0.0.9", LOGIN)
        throttle.failed("10.0.0.9", LOGIN)  # the budget is spent: the first line
        for _ in range(50):
            assert throttle.retry_after("10.0.0.9", LOGIN) is not None
        clock.now += 61
        throttle.failed("10.0.0.9", LOGIN)  # refilled (to the budget, 2): 1 left
        throttle.failed("10.0.0.9", LOGIN)  # spent again, a minute on: the second line
        for _ in range(5):
            assert throttle.retry_after("10.0.0.9", LOGIN) is not None  # no further line
    lines = [r for r in caplog.records if r.name == "pylever.throttle"]
    assert [r.getMessage() for r in lines] == ["admin token guesses throttled"] * 2
    assert all(r.levelno == logging.WARNING for r in lines)
    assert lines[0].client == "10.0.0.9" and lines[0].endpoint == LOGIN  # type: ignore[attr-defined]
    assert lines[0].retry_after == 6 and lines[0].refused == 0  # type: ignore[attr-defined]
    assert lines[1].refused == 50  # type: ignore[attr-defined]
    assert refusals(LOGIN, "bad_token") == bad + 4
    assert refusals(LOGIN, "throttled") == throttled + 55


def test_settings_are_checked() -> None:
    for bad in ({"budget": 0}, {"refill_seconds": 0}, {"max_clients": 0}):
        with pytest.raises(ValueError):
            AdminThrottle(**bad)  # type: ignore[arg-type]


# --- the API (ASGI) -------------------------------------------------------------------------


def _settings(**overrides: object) -> Settings:
    return Settings(
        temporal_address=f"127.0.0.1:{free_port()}",  # closed: nothing here reaches Temporal
        admin_token=ADMIN_TOKEN,
        payload_keys=base64.b64encode(PAYLOAD_KEY).decode(),
        **overrides,  # type: ignore[arg-type]
    )


def _config():  # type: ignore[no-untyped-def]
    closed = f"http://127.0.0.1:{free_port()}"
    return stack_config("http://127.0.0.1:8000", closed, closed, closed)


@contextlib.asynccontextmanager
async def api(*hosts: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One app; a client per address (``request.client.host``)."""
    app = create_app(_config(), _settings())
    async with app.router.lifespan_context(app), contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app, client=(host, 40000)),
                    base_url="http://api",
                )
            )
            for host in hosts or ("203.0.113.7",)
        ]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "too_many_attempts"
    assert set(response.json()["error"]) == {"code", "message"}
    assert 1 <= int(response.headers["retry-after"]) <= 6
    assert ADMIN_TOKEN not in response.text


async def test_status_endpoint_throttles_wrong_bearer_tokens() -> None:
    bad, throttled = refusals(STATUS, "bad_token"), refusals(STATUS, "throttled")
    async with api() as [http]:
        # the right token works (404: an unknown account, checked before Temporal)
        ok = await http.get("/accounts/nope/candidates/opp", headers=bearer(ADMIN_TOKEN))
        assert ok.status_code == 404
        # no token, or another scheme, is no guess: 401 forever, nothing spent
        for headers in ({}, {"Authorization": ADMIN_TOKEN}, {"Authorization": "Basic eA=="}) * 5:
            response = await http.get("/accounts/acme/candidates/opp", headers=headers)
            assert response.status_code == 401
        for n in range(10):
            response = await http.get("/accounts/acme/candidates/opp", headers=bearer(f"guess{n}"))
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
        assert_throttled(
            await http.get("/accounts/acme/candidates/opp", headers=bearer("guess-again"))
        )
        # the right token is refused too: the guesser cannot tell
        assert_throttled(
            await http.get("/accounts/nope/candidates/opp", headers=bearer(ADMIN_TOKEN))
        )
        # one budget for every admin-token check: the codec endpoints and the login too
        assert_throttled(
            await http.post("/codec/decode", json={"payloads": []}, headers=bearer(ADMIN_TOKEN))
        )
        assert_throttled(await http.post("/codec/login", json={"token": ADMIN_TOKEN}))
        page = await http.post("/codec/login", data={"token": ADMIN_TOKEN})
        assert page.status_code == 429 and "try again in" in page.text
        assert "set-cookie" not in page.headers and 1 <= int(page.headers["retry-after"]) <= 6
    assert refusals(STATUS, "bad_token") == bad + 10
    assert refusals(STATUS, "throttled") == throttled + 2


async def test_codec_login_and_bearer_throttle_and_right_tokens_spend_nothing() -> None:
    async with api("203.0.113.7", "198.51.100.4") as [http, other]:
        for _ in range(30):  # right tokens never spend the budget
            assert (await http.post("/codec/login", json={"token": ADMIN_TOKEN})).status_code == 200
            ok = await http.post(
                "/codec/encode", json={"payloads": []}, headers=bearer(ADMIN_TOKEN)
            )
            assert ok.status_code == 200
        http.cookies.clear()
        for n in range(5):
            assert (await http.post("/codec/login", data={"token": f"g{n}"})).status_code == 401
        for n in range(5):
            response = await http.post(
                "/codec/encode", json={"payloads": []}, headers=bearer(f"g{n}")
            )
            assert response.status_code == 401
        assert_throttled(await http.post("/codec/login", json={"token": ADMIN_TOKEN}))
        assert_throttled(
            await http.post("/codec/encode", json={"payloads": []}, headers=bearer(ADMIN_TOKEN))
        )
        assert (await http.post("/codec/decode", json={"payloads": []})).status_code == 401
        # another address is not affected
        assert (await other.post("/codec/login", json={"token": ADMIN_TOKEN})).status_code == 200


async def test_a_session_cookie_is_no_guess_and_keeps_working_while_throttled() -> None:
    async with api() as [http]:
        assert (await http.post("/codec/login", json={"token": ADMIN_TOKEN})).status_code == 200
        for n in range(10):
            response = await http.get("/accounts/acme/candidates/o", headers=bearer(f"g{n}"))
            assert response.status_code == 401
        # the browser session still decodes (a wrong bearer next to it is not looked at)
        for headers in ({}, bearer("the UI's own OIDC token")):
            response = await http.post("/codec/decode", json={"payloads": []}, headers=headers)
            assert response.status_code == 200, response.text


# --- the real server --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def uvicorn_api(tmp_path: Path) -> AsyncIterator[tuple[str, ManagedProcess]]:
    """``python -m uvicorn api:app`` as deployed; Temporal's address is a closed port."""
    port = free_port()
    config = tmp_path / "pylever.toml"
    config.write_text(DEMO_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYLEVER_", "TEMPORAL_"))}
    env.update({
        "PYTHONUNBUFFERED": "1",
        "PYLEVER_CONFIG": str(config),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "PYLEVER_ADMIN_TOKEN": ADMIN_TOKEN,
        "PYLEVER_PAYLOAD_KEYS": base64.b64encode(PAYLOAD_KEY).decode(),
        "PY_API_KEY": "py-key", "PY_CALLBACK_SECRET": "py-callback-secret",
        "ACME_LEVER_API_KEY": "lever-key", "ACME_LEVER_STAGE_TOKEN": "stage-token",
        "ACME_LEVER_ARCHIVE_TOKEN": "archive-token",
    })  # fmt: skip
    proc = ManagedProcess(
        "api",
        [PYTHON, "-m", "uvicorn", "api:app", "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "api.log",
    )
    proc.spawn()
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            deadline = time.monotonic() + 30
            while True:
                assert proc.running, proc.log_tail()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, proc.log_tail()
                await asyncio.sleep(0.1)
        yield url, proc
    finally:
        await proc.stop(grace=5)


async def test_guessing_the_running_api_is_throttled(tmp_path: Path) -> None:
    async with (
        uvicorn_api(tmp_path) as (url, proc),
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        answers = await asyncio.gather(
            *(http.post("/codec/login", data={"token": f"guess-{n}"}) for n in range(40))
        )
        codes = sorted(r.status_code for r in answers)
        assert codes == [401] * 10 + [429] * 30, codes
        status = await http.get("/accounts/acme/candidates/opp", headers=bearer(ADMIN_TOKEN))
        assert_throttled(status)
        assert_throttled(await http.post("/codec/login", json={"token": ADMIN_TOKEN}))
        # uvicorn's defaults (--proxy-headers, --forwarded-allow-ips 127.0.0.1): the
        # address a trusted local proxy forwards is the client, with a budget of its own
        forwarded = await http.post(
            "/codec/login", json={"token": ADMIN_TOKEN}, headers={"X-Forwarded-For": "192.0.2.5"}
        )
        assert forwarded.status_code == 200
        await asyncio.sleep(0.5)
        log = proc.log_since_start()
        warnings = [
            json.loads(line) for line in log.splitlines()
            if line.startswith("{") and "admin token guesses throttled" in line
        ]  # fmt: skip
        assert len(warnings) == 1, log[-3000:]
        assert warnings[0]["level"] == "warning" and warnings[0]["client"] == "127.0.0.1"
        assert warnings[0]["endpoint"] == "POST /codec/login"
        assert ADMIN_TOKEN not in log and "guess-" not in log


async def test_a_large_encode_does_not_stall_the_running_api(tmp_path: Path) -> None:
    """Issue 11: an authenticated 16 MiB encode held every other request for 7.6 s."""
    payload = json_format.MessageToDict(
        Payload(metadata={"encoding": b"json/plain"}, data=b"x" * 60)
    )
    body = json.dumps({"payloads": [payload] * 29_900}).encode()
    assert 3.5 * 2**20 < len(body) <= 4 * 2**20
    async with (
        uvicorn_api(tmp_path) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        too_big = await http.post(
            "/codec/encode", content=b" " * (4 * 2**20 + 1), headers=bearer(ADMIN_TOKEN)
        )
        assert too_big.status_code == 413
        assert too_big.json()["error"]["code"] == "payload_too_large"

        encode = asyncio.create_task(
            http.post("/codec/encode", content=body, headers=bearer(ADMIN_TOKEN))
        )
        latencies: list[float] = []
        while not encode.done():
            started = time.perf_counter()
            assert (await http.get("/healthz")).status_code == 200
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)
        response = await encode
        assert response.status_code == 200
        assert len(response.json()["payloads"]) == 29_900
        assert len(latencies) >= 5, latencies
        assert max(latencies) < 0.25, sorted(latencies)[-5:]

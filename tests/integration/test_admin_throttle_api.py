"""The admin-token throttle (tests/unit/test_admin_throttle.py) on the API app
(``api.create_app`` over ASGI; Temporal's address is a closed port)."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator

import httpx

from pylever.config.environment import Settings
from pylever.edge.app import create_app
from sandbox.devserver import free_port
from tests.support.integration_stack import stack_config
from tests.unit.test_admin_throttle import (
    ADMIN_TOKEN,
    PAYLOAD_KEY,
    STATUS,
    refusals,
)

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

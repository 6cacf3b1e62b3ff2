"""The real Lever and Py clients against the sandboxes (in-process ASGI), as production uses them.

The unit tests (test_lever_client.py, test_py_client.py) pin the wire details with
fakes; these prove the two sides agree: auth, envelopes, paging, rate limits, faults,
idempotency.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from pylever.clients.lever import LeverClient
from pylever.clients.py import PyClient
from pylever.contracts.errors import AuthError, ConflictError, NotFoundError, RetryableApiError
from sandbox.lever import LeverSandbox
from sandbox.py import PySandbox

LEVER_KEY = "lever-key-on-sandbox"
PY_KEY = "py-key-on-sandbox"
BASE = "http://lever.sandbox/v1"


def lever_sandbox(**kw) -> LeverSandbox:  # type: ignore[no-untyped-def]
    return LeverSandbox(api_key=LEVER_KEY, signature_token="t", **kw)


def lever_client(sandbox: LeverSandbox, key: str = LEVER_KEY, **kw) -> LeverClient:  # type: ignore[no-untyped-def]
    return LeverClient(BASE, key, transport=httpx.ASGITransport(app=sandbox.app), **kw)


class Sleeps:
    """Records the client's backoff sleeps; ``real`` also waits them out."""

    def __init__(self, real: bool = False) -> None:
        self.calls: list[float] = []
        self.real = real

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.real:
            await asyncio.sleep(seconds)


async def test_wrong_lever_key_is_a_permanent_auth_error() -> None:
    sandbox = lever_sandbox()
    async with lever_client(sandbox, key="not-the-key", rate=0) as client:
        with pytest.raises(AuthError) as caught:
            await client.list_stages()
    assert "not-the-key" not in str(caught.value)
    assert sandbox.stats.to_json()["requests"]["total"] == 1  # not retried


async def test_paging_across_pages_returns_every_opportunity_once() -> None:
    sandbox = lever_sandbox()
    ids = {sandbox.create_candidate(name=f"c{i}")["id"] for i in range(230)}
    async with lever_client(sandbox, rate=0) as client:
        seen = [opp.id async for opp in client.iter_opportunities(limit=100)]
    assert sorted(seen) == sorted(ids)
    assert sandbox.stats.to_json()["requests"]["by_endpoint"]["GET /opportunities"] == 3


async def test_429_then_success_and_404_is_permanent() -> None:
    sandbox = lever_sandbox(rate=2, burst=1)
    opp = sandbox.create_candidate(name="Ada", emails=["ada@example.com"])["id"]
    sleeps = Sleeps(real=True)
    async with lever_client(sandbox, rate=0, sleep=sleeps) as client:
        await client.get_opportunity(opp)  # takes the only token
        got = await client.get_opportunity(opp)  # 429 at first: retried with backoff
        assert got.primary_email == "ada@example.com"
        assert sandbox.stats.to_json()["rate_limited"] >= 1 and sleeps.calls
        with pytest.raises(NotFoundError):
            before = sandbox.stats.to_json()["requests"]["total"]
            await client.get_opportunity("no-such-opportunity")
    # the 404 was asked once (429s on the way aside): not retried as a 404
    statuses = sandbox.stats.to_json()["requests"]["by_status"]
    assert statuses.get("404", statuses.get(404)) == 1
    assert sandbox.stats.to_json()["requests"]["total"] > before


async def test_503s_are_retried_until_success() -> None:
    sandbox = lever_sandbox(error_rate=0.5, seed=7, rate=1000, burst=1000)
    sleeps = Sleeps()
    async with lever_client(sandbox, rate=0, sleep=sleeps, max_attempts=10) as client:
        for _ in range(10):
            assert await client.list_stages()
    assert sandbox.stats.to_json()["faults_injected"] > 0
    assert len(sleeps.calls) == sandbox.stats.to_json()["faults_injected"]


async def test_503s_past_max_attempts_raise_a_retryable_error() -> None:
    sandbox = lever_sandbox(error_rate=1.0, rate=1000, burst=1000)
    async with lever_client(sandbox, rate=0, sleep=Sleeps(), max_attempts=3) as client:
        with pytest.raises(RetryableApiError):
            await client.list_stages()
    assert sandbox.stats.to_json()["requests"]["total"] == 3


async def test_the_token_bucket_keeps_a_burst_of_100_under_the_sandbox_limit() -> None:
    sandbox = lever_sandbox()  # Lever's 10/s with bursts of 20
    opp = sandbox.create_candidate(name="Burst")["id"]
    started = time.monotonic()
    async with lever_client(sandbox, key=LEVER_KEY, rate=10, burst=20, max_attempts=1) as client:
        await asyncio.gather(*(client.get_opportunity(opp) for _ in range(100)))
    elapsed = time.monotonic() - started
    assert sandbox.stats.to_json()["rate_limited"] == 0
    assert elapsed >= 7.5  # 20 at once, then 80 at 10/s


# --- Py --------------------------------------------------------------------------------------


def py_client(sandbox: PySandbox, **kw) -> PyClient:  # type: ignore[no-untyped-def]
    return PyClient(
        "http://py.sandbox", PY_KEY, transport=httpx.ASGITransport(app=sandbox.app), **kw
    )


async def test_py_idempotent_create_and_conflicting_reuse() -> None:
    sandbox = PySandbox(api_key=PY_KEY, callback_secret="s")
    async with py_client(sandbox) as client:
        tests = await client.tests_by_name()
        args = dict(
            test_id=tests["Python Basics"].id,
            name="Ada",
            email="ada@example.com",
            reference="assessment:acme:o:s:t",
            callback_url="http://cb/callbacks/py",
            idempotency_key="key-1",
        )
        first = await client.create_invitation(**args)
        again = await client.create_invitation(**args)
        assert again.id == first.id and len(sandbox.invitations) == 1
        with pytest.raises(ConflictError):
            await client.create_invitation(**{**args, "email": "other@example.com"})
        await sandbox.complete(first.id, 70, callback=False)
        with pytest.raises(ConflictError):
            await client.cancel(first.id)
        assert (await client.get_invitation(first.id)).score == 70


async def test_py_retry_after_is_honoured() -> None:
    sandbox = PySandbox(api_key=PY_KEY, callback_secret="s")
    sandbox.rate_limit_next = 2
    sleeps = Sleeps()
    async with py_client(sandbox, sleep=sleeps) as client:
        assert len(await client.list_tests()) == 3
    assert sleeps.calls[:2] == [1.0, 1.0]  # the sandbox's Retry-After: 1

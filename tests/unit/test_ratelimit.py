"""The token bucket: unit behaviour on a fake clock, and end to end against a strict fake Lever."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from pylever.clients.lever import LeverClient
from pylever.clients.ratelimit import TokenBucket, bucket_for, bucket_key
from pylever.contracts.errors import RateLimitedError

BASE = "https://lever.test/v1"


class FakeClock:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would


def fake_bucket(rate: float, burst: int) -> tuple[TokenBucket, FakeClock]:
    clock = FakeClock()
    return TokenBucket(rate, burst, clock=clock, sleep=clock.sleep), clock


# --- unit --------------------------------------------------------------------------


async def test_burst_is_free_then_one_token_per_interval() -> None:
    bucket, clock = fake_bucket(rate=10, burst=5)
    for _ in range(5):
        await bucket.acquire()
    assert clock.sleeps == []
    await bucket.acquire()
    await bucket.acquire()
    assert clock.sleeps == pytest.approx([0.1, 0.1])


async def test_tokens_refill_with_time_up_to_the_burst() -> None:
    bucket, clock = fake_bucket(rate=10, burst=3)
    for _ in range(3):
        await bucket.acquire()
    clock.now += 0.2  # two tokens back
    await bucket.acquire()
    await bucket.acquire()
    assert clock.sleeps == []
    clock.now += 3600  # an hour idle still stores only `burst`
    for _ in range(3):
        await bucket.acquire()
    assert clock.sleeps == []
    await bucket.acquire()
    assert clock.sleeps == pytest.approx([0.1])


async def test_concurrent_callers_queue_in_order_at_the_rate() -> None:
    bucket, clock = fake_bucket(rate=10, burst=2)
    start = clock.now
    done: list[tuple[int, float]] = []

    async def call(i: int) -> None:
        await bucket.acquire()
        done.append((i, clock.now - start))

    await asyncio.gather(*[call(i) for i in range(12)])
    assert [i for i, _ in done] == list(range(12))  # FIFO: nobody overtakes
    times = [t for _, t in done]
    assert times[:2] == [0.0, 0.0]
    assert times[2:] == pytest.approx([0.1 * n for n in range(1, 11)])


async def test_real_clock_spacing() -> None:
    bucket = TokenBucket(rate=50, burst=1)
    started = time.monotonic()
    await asyncio.gather(*[bucket.acquire() for _ in range(6)])
    elapsed = time.monotonic() - started
    assert 0.095 <= elapsed < 0.5  # five waits of 20 ms


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (10, 0)])
def test_invalid_settings(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_bucket_for_shares_one_bucket_per_key() -> None:
    key = bucket_key(BASE, f"k-{uuid.uuid4().hex}")
    other = bucket_key(BASE, f"k-{uuid.uuid4().hex}")
    first = bucket_for(key, 10, 20)
    assert bucket_for(key, 10, 20) is first
    assert bucket_for(other, 10, 20) is not first
    again = bucket_for(key, 5, 10)  # the latest settings apply to the shared bucket
    assert again is first and (first.rate, first.burst) == (5.0, 10)


def test_bucket_key_hides_the_api_key() -> None:
    secret = "lever-secret-key-value"
    key = bucket_key(BASE, secret)
    assert secret not in key
    assert key == bucket_key(BASE + "/", secret)
    assert key != bucket_key("https://other.test/v1", secret)
    assert key != bucket_key(BASE, secret + "x")
    assert secret not in repr(bucket_for(key, 10, 20))


# --- through LeverClient ----------------------------------------------------------------


OPPORTUNITY = {"data": {"id": "o1", "stageChanges": []}}


async def test_clients_with_the_same_key_share_the_bucket() -> None:
    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=OPPORTUNITY)

    async def three_calls(key_a: str, key_b: str) -> float:
        a = LeverClient(BASE, key_a, rate=20, burst=1, transport=httpx.MockTransport(ok))
        b = LeverClient(BASE, key_b, rate=20, burst=1, transport=httpx.MockTransport(ok))
        async with a, b:
            started = time.monotonic()
            await a.get_opportunity("o1")
            await b.get_opportunity("o1")
            await a.get_opportunity("o1")
            return time.monotonic() - started

    key = f"shared-{uuid.uuid4().hex}"
    assert await three_calls(key, key) >= 0.095  # two waits of 50 ms
    # different keys: each client has its own bucket, so only one wait (a's second call)
    elapsed = await three_calls(f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}")
    assert 0.045 <= elapsed < 0.095


class StrictLever:
    """A fake Lever that enforces its own strict bucket (10/s, burst 20) and answers 429 above it."""

    def __init__(self, rate: float = 10.0, burst: int = 20) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()
        self.ok = 0
        self.limited = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0 - 1e-9:  # strict, but not tripped by float rounding
            self.tokens -= 1.0
            self.ok += 1
            return httpx.Response(200, json=OPPORTUNITY)
        self.limited += 1
        return httpx.Response(429, json={"code": "TooManyRequests", "message": "slow down"})


async def warm_up() -> None:
    # The first request through httpx pays one-off import/initialisation costs; pay them
    # here so they do not delay the first limited request (which starts both buckets).
    client = LeverClient(BASE, f"warm-{uuid.uuid4().hex}", rate=0, transport=_ok_transport())
    async with client:
        await client.get_opportunity("o1")


def _ok_transport() -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(200, json=OPPORTUNITY))


async def hundred_calls(client: LeverClient) -> list[Any]:
    return await asyncio.gather(
        *[client.get_opportunity("o1") for _ in range(100)], return_exceptions=True
    )


async def test_100_concurrent_calls_stay_under_a_strict_server_limit() -> None:
    await warm_up()
    server = StrictLever()
    client = LeverClient(
        BASE,
        f"bucket-{uuid.uuid4().hex}",
        rate=10,
        burst=20,
        transport=httpx.MockTransport(server.handle),
    )
    async with client:
        started = time.monotonic()
        results = await hundred_calls(client)
        elapsed = time.monotonic() - started
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert server.limited == 0
    assert server.ok == 100
    assert elapsed >= 7.9  # 20 at once, then 80 at 10/s


async def test_the_same_calls_without_the_client_bucket_are_rate_limited() -> None:
    server = StrictLever()
    client = LeverClient(
        BASE,
        f"nobucket-{uuid.uuid4().hex}",
        rate=0,
        max_attempts=1,
        transport=httpx.MockTransport(server.handle),
    )
    async with client:
        results = await hundred_calls(client)
    limited = [r for r in results if isinstance(r, RateLimitedError)]
    assert server.limited > 50
    assert len(limited) == server.limited
    assert server.ok + server.limited == 100

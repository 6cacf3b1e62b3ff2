"""An async token bucket, shared per API key within the process.

Lever allows about 10 requests/second per key with bursts of 20. Every client
built for the same (base URL, key) in this process takes its tokens from the
same bucket (``bucket_for``), so the process as a whole stays under the limit.
The registry is keyed by a hash (``bucket_key``), never by the raw key.

The bucket is for asyncio code: it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; one token per request.

    ``acquire()`` waits until a token is free. Waiters queue on an
    ``asyncio.Lock`` (FIFO), so concurrent callers are served in arrival order
    and a late caller cannot overtake one that is already waiting.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        _check(rate, burst)
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate}, burst={self.burst})"

    def configure(self, rate: float, burst: int) -> None:
        """Change the rate and burst; tokens already stored stay (capped to the new burst)."""
        _check(rate, burst)
        self._refill()
        self.rate = float(rate)
        self.burst = int(burst)
        self._tokens = min(self._tokens, float(self.burst))

    async def acquire(self) -> None:
        async with self._get_lock():
            self._refill()
            if self._tokens < 1.0:
                await self._sleep((1.0 - self._tokens) / self.rate)
                self._refill()
            # After the sleep the balance may be a hair under 1 (timer granularity):
            # the debt is carried over, so the long-run rate stays exact.
            self._tokens -= 1.0

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._updated = now

    def _get_lock(self) -> asyncio.Lock:
        # An asyncio.Lock belongs to one event loop; a process-wide bucket may
        # outlive a loop (e.g. successive asyncio.run calls in a CLI).
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock


def _check(rate: float, burst: int) -> None:
    if not rate > 0:
        raise ValueError("rate must be > 0 requests per second")
    if burst < 1:
        raise ValueError("burst must be >= 1")


def bucket_key(base_url: str, api_key: str) -> str:
    """A registry key for (base URL, API key) that does not reveal the key."""
    digest = hashlib.sha256(f"{base_url.rstrip('/')}\n{api_key}".encode()).hexdigest()
    return f"sha256:{digest}"


_buckets: dict[str, TokenBucket] = {}


def bucket_for(key: str, rate: float, burst: int) -> TokenBucket:
    """The process-wide bucket for ``key`` (use ``bucket_key``; never pass a raw API key).

    The first call creates it; later calls return the same bucket, reconfigured
    if they ask for another rate or burst (the latest settings apply).
    """
    bucket = _buckets.get(key)
    if bucket is None:
        bucket = _buckets[key] = TokenBucket(rate, burst)
    elif bucket.rate != float(rate) or bucket.burst != int(burst):
        bucket.configure(rate, burst)
    return bucket

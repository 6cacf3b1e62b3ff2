"""Which body each genuine Lever delivery came with: a token is bound to its first body.

Lever's webhook signature covers only ``token`` + ``triggeredAt``, not ``data``:
whoever captures one genuine delivery can re-send it with another event or
another candidate's ``opportunityId`` and pass the signature check. Lever's own
retries and an admin's "Rerun" repeat the same body; so a signed ``token`` +
``triggeredAt`` seen before with a different body is a forgery. ``DeliveryLedger``
remembers, per signed pair (across accounts: two accounts may share a token), a
digest of the first body (canonical JSON: key order and whitespace do not
matter).

It is per process and bounded (``capacity`` tokens, each kept ``ttl``): with
several API replicas a forgery can reach a replica that has not seen the token
yet. The forged body still achieves nothing on its own: a stage change is acted
on only if the re-read opportunity really entered the stage, and a withdrawal
only once Lever confirms it (``workflows.withdraw``). The ledger stops the
replays from costing executions and Lever reads.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

DEFAULT_CAPACITY = 100_000  # signed pairs; about 350 bytes each (35 MB when full)
DEFAULT_TTL_SECONDS = 7 * 86_400.0  # longer than Lever retries; admins re-run within days


def body_digest(body: Mapping[str, Any]) -> bytes:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).digest()


class DeliveryLedger:
    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or ttl_seconds <= 0:
            raise ValueError("capacity and ttl must be positive")
        self._capacity = capacity
        self._ttl = ttl_seconds
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str], tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, body: Mapping[str, Any]) -> bool:
        """True for a delivery's first body and for the same body again; False for another.

        Call it only for deliveries whose signature checked out (the ledger holds
        genuine deliveries only, so a flood of made-up tokens cannot evict them).
        Raises ``RecursionError`` for a body nested too deeply to canonicalise.
        """
        now = self._clock()
        key = (str(body.get("token")), str(body.get("triggeredAt")))
        digest = body_digest(body)
        seen = self._seen.get(key)
        if seen is not None and seen[1] > now:
            return seen[0] == digest
        self._seen[key] = (digest, now + self._ttl)
        self._seen.move_to_end(key)
        self._evict(now)
        return True

    def _evict(self, now: float) -> None:
        while self._seen:
            key, (_, expires) = next(iter(self._seen.items()))
            if expires > now and len(self._seen) <= self._capacity:
                return
            del self._seen[key]

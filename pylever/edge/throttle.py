"""Throttling of admin-token guesses, per client address, in this process.

Every place that checks the admin token (``POST /codec/login``, the bearer token of
``POST /codec/decode`` and ``/codec/encode``, the bearer token of
``GET /accounts/{account_id}/candidates/{opportunity_id}``) shares one
:class:`AdminThrottle`. Each client address has a budget of :data:`BUDGET` wrong
tokens that refills by one every :data:`REFILL_SECONDS` (a token bucket). A wrong
token spends one; a right one spends nothing. With the budget spent, every attempt
of that client is answered 429 with ``Retry-After`` *before* its token is compared,
so a right token is refused too until the budget refills: otherwise a guesser would
keep guessing and only read the answers. Sustained, a client gets one guess per
:data:`REFILL_SECONDS` (14,400 a day), against a token of 32 random characters.

What counts as an attempt: a token presented. A request with no ``Authorization``
header (or one of another scheme) and a session cookie (HMAC-signed, not guessable)
are not guesses and spend nothing; they get their usual 401.

The client is ``request.client.host``: the peer address, or the address uvicorn
takes from ``X-Forwarded-For`` when the peer is one of ``--forwarded-allow-ips``
(uvicorn's default trusts 127.0.0.1 and ::1 only, with ``--proxy-headers`` on by
default). Behind a reverse proxy that uvicorn does not trust, every client is the
proxy and shares one budget (a guesser then locks the operator out too); trust the
proxy's address with ``--forwarded-allow-ips`` (never ``*`` on a port clients reach
directly: they would choose their own address).

Memory is bounded: at most :data:`MAX_CLIENTS` addresses are tracked, the one whose
last wrong token is oldest is forgotten first, and a forgotten client starts again
with a full budget. The state is per process: with several API replicas each has its
own budget per client.

Refusals are counted in ``pylever_admin_auth_refusals_total{endpoint,outcome}``
(``outcome`` is ``bad_token`` or ``throttled``); a throttled client is logged at
WARNING at most once a minute (``admin token guesses throttled``, with the client
address, the endpoint, ``retry_after`` and how many attempts were refused since the
previous line); never a token.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from pylever.ops.logs import log_event
from pylever.ops.metrics import ADMIN_AUTH_REFUSALS

__all__ = [
    "BUDGET",
    "MAX_CLIENTS",
    "REFILL_SECONDS",
    "WARN_EVERY_SECONDS",
    "AdminThrottle",
    "client_address",
]

BUDGET = 10
REFILL_SECONDS = 6.0
MAX_CLIENTS = 10_000
WARN_EVERY_SECONDS = 60.0

log = logging.getLogger("pylever.edge.throttle")


def client_address(request: Request) -> str:
    """The address the throttle keys on (see the module's notes on proxies).

    An IPv6 client is keyed by its /64: one host usually holds a whole /64, and
    would otherwise get a fresh allowance from each of its addresses.
    """
    host = request.client.host if request.client else "unknown"
    return client_key(host)


def client_key(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return host


@dataclass
class _Client:
    tokens: float  # what is left of the budget at ``updated``
    updated: float
    warned: float | None = None  # when the last WARNING line for this client was written
    refused: int = 0  # throttled attempts since that line


class AdminThrottle:
    """A token bucket of wrong admin tokens per client address (see the module doc)."""

    def __init__(
        self,
        *,
        budget: int = BUDGET,
        refill_seconds: float = REFILL_SECONDS,
        max_clients: int = MAX_CLIENTS,
        warn_every: float = WARN_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget < 1 or refill_seconds <= 0 or max_clients < 1:
            raise ValueError("budget and max_clients must be at least 1, refill_seconds positive")
        self.budget = budget
        self.refill_seconds = refill_seconds
        self.max_clients = max_clients
        self.warn_every = warn_every
        self._clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def _refilled(self, client: str, now: float) -> _Client | None:
        state = self._clients.get(client)
        if state is None:
            return None
        state.tokens = min(
            float(self.budget), state.tokens + (now - state.updated) / self.refill_seconds
        )
        state.updated = now
        return state

    def retry_after(self, client: str, endpoint: str) -> int | None:
        """None when ``client`` may present a token now; else the seconds until it may
        (at least 1), and the refusal is counted and, at most once a minute, logged."""
        now = self._clock()
        state = self._refilled(client, now)
        if state is None or state.tokens >= 1:
            return None
        wait = max(1, math.ceil((1 - state.tokens) * self.refill_seconds))
        ADMIN_AUTH_REFUSALS.labels(endpoint=endpoint, outcome="throttled").inc()
        state.refused += 1
        self._warn(client, state, endpoint, wait, now)
        return wait

    def failed(self, client: str, endpoint: str) -> None:
        """A wrong token from ``client``: counted, and one of its budget spent."""
        ADMIN_AUTH_REFUSALS.labels(endpoint=endpoint, outcome="bad_token").inc()
        now = self._clock()
        state = self._refilled(client, now)
        if state is None:
            state = self._clients[client] = _Client(tokens=float(self.budget), updated=now)
        self._clients.move_to_end(client)
        state.tokens = max(0.0, state.tokens - 1)
        if state.tokens < 1:
            wait = max(1, math.ceil((1 - state.tokens) * self.refill_seconds))
            self._warn(client, state, endpoint, wait, now)
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)

    def _warn(self, client: str, state: _Client, endpoint: str, wait: int, now: float) -> None:
        if state.warned is not None and now - state.warned < self.warn_every:
            return
        log_event(
            log,
            "admin token guesses throttled",
            logging.WARNING,
            client=client,
            endpoint=endpoint,
            retry_after=wait,
            refused=state.refused,
        )
        state.warned = now
        state.refused = 0

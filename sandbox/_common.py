"""Pieces shared by the Lever and Py sandboxes.

- ``read_json_object``: a request body that must be a JSON object.
- ``RequestStats`` / ``DeliveryStats``: the counters behind ``GET /_sandbox/stats``.
- ``Deliverer``: outgoing signed POSTs (Lever webhooks, Py callbacks). The first
  attempt is awaited so a control endpoint can report it; a non-2xx or
  unreachable first attempt is retried with the same bytes in the background.
- ``serve``: run an app with uvicorn (the sandboxes' ``__main__``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

JSON = dict[str, Any]
DELIVERY_TIMEOUT_SECONDS = 10.0
DELIVERY_LOG_SIZE = 1000


class BadBody(Exception):
    """The request body is not what the endpoint accepts (the message says why)."""


def now_ms() -> int:
    return int(time.time() * 1000)


async def read_json_object(request: Request, *, empty_ok: bool = False) -> JSON:
    raw = await request.body()
    if empty_ok and not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:  # includes UnicodeDecodeError
        raise BadBody("body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise BadBody("body must be a JSON object")
    return value


def str_list(body: Mapping[str, Any], key: str, *, required: bool = False) -> list[str]:
    """``body[key]`` as a list of strings (``[]`` when absent and not required)."""
    if key not in body:
        if required:
            raise BadBody(f"'{key}' is required")
        return []
    value = body[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadBody(f"'{key}' must be a list of strings")
    return list(value)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class RequestStats:
    """Counts of the real-API requests (``/v1``)."""

    total: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_endpoint: Counter[str] = field(default_factory=Counter)

    def count(self, endpoint: str, status: int) -> None:
        self.total += 1
        self.by_status[str(status)] += 1
        self.by_endpoint[endpoint] += 1

    def reset(self) -> None:
        self.total = 0
        self.by_status.clear()
        self.by_endpoint.clear()

    def to_json(self) -> JSON:
        return {
            "total": self.total,
            "by_status": dict(self.by_status),
            "by_endpoint": dict(self.by_endpoint),
        }


@dataclass
class DeliveryStats:
    """Counts of outgoing deliveries: per event, and per HTTP attempt outcome."""

    sent_by_event: Counter[str] = field(default_factory=Counter)  # one per delivery
    delivered_by_event: Counter[str] = field(default_factory=Counter)  # got a 2xx eventually
    attempts_by_status: Counter[str] = field(default_factory=Counter)  # "200", "500", "unreachable"
    retries: int = 0

    def reset(self) -> None:
        for counter in (self.sent_by_event, self.delivered_by_event, self.attempts_by_status):
            counter.clear()
        self.retries = 0

    def to_json(self) -> JSON:
        return {
            "sent_by_event": dict(self.sent_by_event),
            "delivered_by_event": dict(self.delivered_by_event),
            "attempts_by_status": dict(self.attempts_by_status),
            "retries": self.retries,
        }


def _is_2xx(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


@dataclass
class Attempt:
    at: int  # epoch ms
    status: int | None  # None: no HTTP answer (connection refused, timeout, ...)
    error: str | None = None


@dataclass
class Delivery:
    id: int
    event: str
    url: str
    body: bytes
    headers: dict[str, str]
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return any(_is_2xx(a.status) for a in self.attempts)

    def to_json(self) -> JSON:
        try:
            body: Any = json.loads(self.body)
        except ValueError:
            body = self.body.decode(errors="replace")
        return {
            "id": self.id,
            "event": self.event,
            "url": self.url,
            "body": body,
            "delivered": self.delivered,
            "attempts": [{"at": a.at, "status": a.status, "error": a.error} for a in self.attempts],
        }


@dataclass
class FirstAttempt:
    """What a control endpoint reports about a delivery: its first attempt."""

    delivery: Delivery
    status: int | None
    body: Any  # the receiver's answer, parsed as JSON when it is JSON; an error text if unreachable


class Deliverer:
    """POSTs bodies to receivers, retrying failed deliveries in the background.

    The ``httpx.AsyncClient`` is created on first use (with ``transport`` when given,
    so tests can deliver straight into an ASGI app) and closed by ``aclose``.
    """

    def __init__(
        self,
        *,
        stats: DeliveryStats,
        retry_delays: Sequence[float],
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DELIVERY_TIMEOUT_SECONDS,
    ) -> None:
        self.stats = stats
        self.retry_delays = tuple(retry_delays)
        self.log: list[Delivery] = []
        self._transport = transport
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_id = 1

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(transport=self._transport, timeout=self._timeout)
        return self._client

    def find(self, delivery_id: int) -> Delivery | None:
        return next((d for d in self.log if d.id == delivery_id), None)

    async def deliver(
        self, event: str, url: str, body: bytes, headers: Mapping[str, str]
    ) -> FirstAttempt:
        """Send now and return the first attempt; retry in the background if it failed."""
        delivery = Delivery(self._next_id, event, url, body, dict(headers))
        self._next_id += 1
        self.log.append(delivery)
        del self.log[:-DELIVERY_LOG_SIZE]
        self.stats.sent_by_event[event] += 1
        status, answer = await self._attempt(delivery)
        if not _is_2xx(status) and self.retry_delays:
            self._spawn(self._retry(delivery))
        return FirstAttempt(delivery, status, answer)

    def deliver_soon(self, event: str, url: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Deliver from a background task (retries included) without waiting."""
        self._spawn(self.deliver(event, url, body, headers))

    async def wait_idle(self) -> None:
        """Wait until no delivery or retry is pending (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, delivery: Delivery) -> tuple[int | None, Any]:
        answer: Any
        try:
            response = await self._http().post(
                delivery.url, content=delivery.body, headers=delivery.headers
            )
        except Exception as exc:  # unreachable, timeout, bad URL: Lever and Py just retry
            attempt = Attempt(now_ms(), None, f"{type(exc).__name__}: {exc}")
            answer = attempt.error
        else:
            attempt = Attempt(now_ms(), response.status_code)
            try:
                answer = response.json()
            except ValueError:
                answer = response.text
        was_delivered = delivery.delivered
        delivery.attempts.append(attempt)
        key = "unreachable" if attempt.status is None else str(attempt.status)
        self.stats.attempts_by_status[key] += 1
        if not was_delivered and delivery.delivered:
            self.stats.delivered_by_event[delivery.event] += 1
        return attempt.status, answer

    async def _retry(self, delivery: Delivery) -> None:
        for delay in self.retry_delays:
            await asyncio.sleep(delay)
            self.stats.retries += 1
            status, _ = await self._attempt(delivery)
            if _is_2xx(status):
                return


def first_attempt_json(result: FirstAttempt | None, *, include_delivery: bool) -> JSON | None:
    if result is None:
        return None
    out: JSON = {"status": result.status, "body": result.body}
    if include_delivery:
        out["delivery"] = json.loads(result.delivery.body)
    return out


def serve(app: Any, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")


# --- routes ---------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]
RouteTable = Sequence[tuple[str, str, Handler]]


def sandbox_routes(
    api: RouteTable,
    control: RouteTable,
    *,
    wrap_api: Callable[[str | None, Handler], Handler],
    wrap_control: Callable[[Handler], Handler],
    unknown: Handler,
) -> list[Route]:
    """The real API under ``/v1`` (each endpoint counted by its template, unknown paths
    answered by ``unknown``), and the control endpoints under ``/_sandbox``."""
    routes = [
        Route("/v1" + path, wrap_api(f"{method} {path}", handler), methods=[method])
        for method, path, handler in api
    ]
    routes.append(
        Route(
            "/v1/{rest:path}",
            wrap_api(None, unknown),
            methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        )
    )
    routes += [
        Route("/_sandbox" + path, wrap_control(handler), methods=[method])
        for method, path, handler in control
    ]
    return routes


def counted(
    stats: RequestStats,
    endpoint: str | None,
    respond: Callable[[Request, Handler], Awaitable[Response]],
    handler: Handler,
) -> Handler:
    """An API handler that counts its answers by endpoint template and status."""

    async def run(request: Request) -> Response:
        response = await respond(request, handler)
        stats.count(endpoint or f"{request.method} (unknown)", response.status_code)
        return response

    return run

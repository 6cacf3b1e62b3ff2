"""Request bodies at the ASGI edge: a time limit, a quiet disconnect, and no racing 413s.

``BodyLimits`` wraps the whole API (every route, the codec endpoints included) and needs
no server flag, so plain ``python -m uvicorn api:app`` gets it:

- **Body timeout.** A request body must arrive in full within ``body_timeout`` seconds
  (10 by default, ``PYLEVER_BODY_TIMEOUT``) of the request's headers. A handler still
  waiting for it then gets ``408 {"error": {"code": "timeout", ...}}`` with
  ``Connection: close``, and the log gets one line ``request body timed out``.
- **Disconnects.** A client that goes away mid-body (Starlette's ``ClientDisconnect``)
  is one INFO line ``client disconnected``, not an ERROR with a traceback and a 500.
- **Early answers.** A handler that answers before reading the whole body (a 413, a 401
  on a declared length, a 404) would otherwise close on unread data, and the client's
  TCP stack may turn that into a reset that destroys the answer. The rest of the body is
  read and dropped first (at most ``drain_limit`` bytes, 16 MiB, within the same time
  limit); when that is not possible the answer carries ``Connection: close``.

Counted in ``pylever_http_aborted_total{reason}`` (``body_timeout``, ``client_disconnect``,
``header_timeout``; the last from ``pylever.edge.http_server``).

Header timeouts cannot be done here (an incomplete request never reaches the app): see
``pylever.edge.http_server``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter
from starlette.requests import ClientDisconnect

from pylever.ops.logs import log_event

__all__ = [
    "BODY_TIMEOUT",
    "DRAIN_LIMIT",
    "HTTP_ABORTED",
    "BodyLimits",
    "BodyTimeout",
    "body_timeout_from_env",
    "seconds_from_env",
]

log = logging.getLogger("pylever.clients.http")

BODY_TIMEOUT = 10.0
DRAIN_LIMIT = 16 * 1024 * 1024

HTTP_ABORTED = Counter(
    "pylever_http_aborted_total",
    "Requests the HTTP edge cut short: body_timeout, client_disconnect, header_timeout.",
    ["reason"],
)

_CLOSE = (b"connection", b"close")


class BodyTimeout(Exception):
    """Raised from ``receive`` when the request body is late."""


def body_timeout_from_env(environ: Mapping[str, str] | None = None) -> float:
    """``PYLEVER_BODY_TIMEOUT`` (seconds, > 0) or the default."""
    return seconds_from_env(
        os.environ if environ is None else environ, "PYLEVER_BODY_TIMEOUT", BODY_TIMEOUT
    )


def seconds_from_env(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not 0 < value <= 3600:
        raise ValueError(f"{name} must be between 0 and 3600 seconds, not {raw!r}")
    return value


def _path(scope: Mapping[str, Any]) -> str:
    path = str(scope.get("path", ""))[:128]
    return path if path.isprintable() else repr(path)


class _Body:
    __slots__ = ("complete", "disconnected", "read", "received", "timed_out")

    def __init__(self) -> None:
        self.complete = False
        self.disconnected = False
        self.read = False  # the app asked for the body
        self.timed_out = False
        self.received = 0


class BodyLimits:
    """ASGI middleware: see the module docstring."""

    def __init__(
        self, app: Any, body_timeout: float = BODY_TIMEOUT, drain_limit: int = DRAIN_LIMIT
    ) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.drain_limit = drain_limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        body = _Body()
        started = False

        async def next_message() -> Any:
            async with asyncio.timeout_at(deadline):
                message = await receive()
            if message["type"] == "http.request":
                body.received += len(message.get("body", b""))
                body.complete = not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                body.disconnected = True
            return message

        async def limited_receive() -> Any:
            if body.complete or body.disconnected:
                return await receive()  # e.g. waiting for a disconnect while streaming
            body.read = True
            try:
                return await next_message()
            except TimeoutError:
                body.timed_out = True
                raise BodyTimeout from None

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not (body.complete or body.disconnected) and not await self._drain(
                    scope, body, next_message
                ):
                    headers = [
                        h for h in message.get("headers", []) if h[0].lower() != b"connection"
                    ]
                    message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTimeout:
            HTTP_ABORTED.labels(reason="body_timeout").inc()
            log_event(
                log,
                "request body timed out",
                logging.WARNING,
                method=scope.get("method"),
                path=_path(scope),
                received=body.received,
                timeout=self.body_timeout,
            )
            if not started:
                await _send_json(
                    guarded_send,
                    408,
                    "timeout",
                    f"request body not received within {self.body_timeout:g} s",
                )
        except ClientDisconnect:
            HTTP_ABORTED.labels(reason="client_disconnect").inc()
            log_event(
                log,
                "client disconnected",
                method=scope.get("method"),
                path=_path(scope),
                received=body.received,
            )

    async def _drain(self, scope: Any, body: _Body, next_message: Any) -> bool:
        """Read and drop the rest of the body; True when all of it was read."""
        if body.timed_out:
            return False
        headers = dict(scope.get("headers") or [])
        if not body.read and headers.get(b"expect", b"").lower() == b"100-continue":
            return False  # the client waits for our word before sending: it gets a close
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.drain_limit:
            return False
        try:
            while not (body.complete or body.disconnected):
                if body.received > self.drain_limit:
                    return False
                await next_message()
        except TimeoutError:
            return False
        return body.complete


async def _send_json(send: Any, status: int, code: str, message: str) -> None:
    payload = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()), _CLOSE],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": payload})

"""uvicorn's h11 protocol with a header timeout, for slow or stalled clients.

uvicorn has no limit on how long a client may take to send a request's line and
headers: an incomplete request never reaches the app, so only the server can time it
out. Select this protocol with uvicorn's ``--http`` option (or its ``UVICORN_HTTP``
environment variable, which the Docker image sets)::

    python -m uvicorn api:app --host 0.0.0.0 --port 8000 --http pylever.edge.http_server:TimedH11Protocol

The request line and headers must be complete within ``PYLEVER_HEADER_TIMEOUT`` seconds
(10 by default) of the connection opening, or of the end of the previous response on a
kept-alive connection. Bytes arriving do not restart the clock (a client sending one byte
a second gains nothing). On expiry a client that had sent part of a request gets
``408 {"error": {"code": "timeout", ...}}`` and the connection is closed; an idle one is
just closed. Each is one INFO line ``request headers timed out`` and counts in
``pylever_http_aborted_total{reason="header_timeout"}``.

Request bodies are limited in the app (``pylever.edge.http_limits``), so that part works with
any server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from pylever.edge.http_limits import HTTP_ABORTED, seconds_from_env
from pylever.ops.logs import log_event

__all__ = ["HEADER_TIMEOUT", "TimedH11Protocol", "UVICORN_HTTP"]

log = logging.getLogger("pylever.clients.http")

HEADER_TIMEOUT = 10.0
UVICORN_HTTP = "pylever.edge.http_server:TimedH11Protocol"

_BODY = json.dumps(
    {"error": {"code": "timeout", "message": "request headers not received in time"}}
).encode()
_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


class TimedH11Protocol(H11Protocol):
    """``H11Protocol`` plus a header timeout (see the module docstring)."""

    # Read when uvicorn imports the class at start-up: a bad value stops it there.
    header_timeout: float = seconds_from_env(os.environ, "PYLEVER_HEADER_TIMEOUT", HEADER_TIMEOUT)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _waiting_for_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE

    def _watch_headers(self) -> None:
        """Arm the timer when a new request is awaited; stop it once its headers are in."""
        if self.transport is None or self.transport.is_closing():
            self._stop_header_timer()
        elif not self._waiting_for_headers():
            self._stop_header_timer()
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._waiting_for_headers():
            return
        partial = bool(self.conn.trailing_data[0])
        if partial:
            self.transport.write(_408)
        self._unset_keepalive_if_required()
        self.transport.close()
        HTTP_ABORTED.labels(reason="header_timeout").inc()
        log_event(log, "request headers timed out", partial=partial, timeout=self.header_timeout)

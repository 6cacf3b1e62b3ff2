"""Async client of the Py platform API v1 (SPEC section 5): tests and invitations."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from pylever.clients.http import ApiClient, ApiTransport, BearerAuth, Sleep
from pylever.contracts.errors import ApiError
from pylever.ops.logs import log_event

SERVICE = "Py"
TESTS_TTL = 300.0  # seconds a catalogue read serves every lookup
TESTS_REFRESH_INTERVAL = 60.0  # at most one catalogue read per this many seconds

__all__ = [
    "TESTS_REFRESH_INTERVAL",
    "TESTS_TTL",
    "Candidate",
    "Invitation",
    "InvitationStatus",
    "PyClient",
    "PyTest",
]

log = logging.getLogger("pylever.clients.py")

InvitationStatus = Literal["invited", "started", "completed", "expired", "cancelled"]


class _PyModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PyTest(_PyModel):
    id: str
    name: str


class Candidate(_PyModel):
    # Candidate data: kept out of reprs (and so out of logs and error messages).
    name: str = Field(default="", repr=False)
    email: str = Field(default="", repr=False)


class Invitation(_PyModel):
    id: str
    test_id: str
    status: InvitationStatus
    reference: str = ""
    candidate: Candidate = Field(default_factory=Candidate)
    test_url: str | None = None
    score: float | None = None
    report_url: str | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None


class _TestPage(_PyModel):
    data: list[PyTest]
    next_cursor: str | None = None


class PyClient(ApiClient):
    """``async with PyClient(base_url, api_key) as py: ...`` (Bearer auth, paths under /v1)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_attempts: int = 5,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        tests_ttl: float = TESTS_TTL,
        tests_refresh_interval: float = TESTS_REFRESH_INTERVAL,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not api_key:
            raise ValueError("PyClient needs an API key")
        if not 0 <= tests_refresh_interval <= tests_ttl:
            raise ValueError("PyClient needs 0 <= tests_refresh_interval <= tests_ttl")
        self._http = ApiTransport(
            service=SERVICE,
            base_url=base_url,
            auth=BearerAuth(api_key),
            secrets=(api_key,),
            max_attempts=max_attempts,
            timeout=timeout,
            transport=transport,
            sleep=sleep,
        )
        self._tests_ttl = tests_ttl
        self._tests_refresh_interval = tests_refresh_interval
        self._clock = clock
        self._tests: dict[str, PyTest] | None = None
        self._tests_at = -math.inf  # when the cached catalogue's read started
        self._tests_tried_at = -math.inf  # when the last read started, whatever its outcome
        self._tests_read: asyncio.Task[dict[str, PyTest]] | None = None  # the read in flight
        self.tests_reads = 0  # catalogue reads started by this client (each may be many pages)

    # --- tests ---------------------------------------------------------------

    async def list_tests(self) -> list[PyTest]:
        tests: list[PyTest] = []
        cursor: str | None = None
        while True:
            body = await self._http.request("GET", "/v1/tests", params={"cursor": cursor})
            page = self._http.parse(_TestPage, body, endpoint="GET /v1/tests")
            tests.extend(page.data)
            if not page.next_cursor:
                return tests
            cursor = page.next_cursor

    async def tests_by_name(self, *, refresh: bool = False) -> dict[str, PyTest]:
        """Tests by exact (case-sensitive) name, from a cached catalogue.

        The catalogue is read again once it is ``tests_ttl`` seconds old, or on
        ``refresh=True`` (a name was not found: a test created at Py since), but
        never sooner than ``tests_refresh_interval`` seconds after the previous
        read started, whatever its outcome: at most one read per interval however
        many callers ask. Until then the cached catalogue answers, so a test
        created at Py is found within one interval. Concurrent callers share the
        read in flight: those that need it (no catalogue yet, an expired one, or
        ``refresh``) wait for it, the others get the cached catalogue at once. A
        read that fails leaves the cached catalogue in place and answers with it
        (the next read waits for the interval); without one the error is raised.
        """
        now = self._clock()
        if self._tests_read is None and (self._tests is None or self._tests_due(now, refresh)):
            self._tests_tried_at = now
            self.tests_reads += 1
            self._tests_read = asyncio.ensure_future(self._read_tests(now))
            self._tests_read.add_done_callback(_retrieve)
        read = self._tests_read
        if read is None or not (refresh or now - self._tests_at >= self._tests_ttl):
            assert self._tests is not None  # without a catalogue, a read is in flight
            return dict(self._tests)
        try:
            return dict(await asyncio.shield(read))
        except ApiError:
            if self._tests is None:
                raise
            return dict(self._tests)

    def _tests_due(self, now: float, refresh: bool) -> bool:
        if now - self._tests_tried_at < self._tests_refresh_interval:
            return False
        return refresh or now - self._tests_at >= self._tests_ttl

    async def _read_tests(self, started: float) -> dict[str, PyTest]:
        try:
            by_name: dict[str, PyTest] = {}
            for test in await self.list_tests():
                by_name.setdefault(test.name, test)  # a duplicate name: the first wins
        except ApiError as exc:
            if self._tests is not None:
                log_event(
                    log, "Py test catalogue read failed; the cached catalogue still answers",
                    logging.WARNING, error=str(exc),
                    retry_in_s=self._tests_refresh_interval,
                )  # fmt: skip
            raise
        finally:
            self._tests_read = None
        self._tests, self._tests_at = by_name, started
        return by_name

    # --- invitations ---------------------------------------------------------

    async def create_invitation(
        self,
        *,
        test_id: str,
        name: str,
        email: str,
        reference: str,
        callback_url: str,
        idempotency_key: str,
    ) -> Invitation:
        """201 (created) or 200 (the same key again) both return the invitation.

        The same key with another body is a ``ConflictError``. Retries reuse the
        key, so a retried create never makes a second invitation.
        """
        body = await self._http.request(
            "POST",
            "/v1/invitations",
            json={
                "test_id": test_id,
                "candidate": {"name": name, "email": email},
                "reference": reference,
                "callback_url": callback_url,
            },
            headers={"Idempotency-Key": idempotency_key},
        )
        return self._invitation(body, "POST /v1/invitations")

    async def get_invitation(self, invitation_id: str) -> Invitation:
        body = await self._http.request(
            "GET", _invitation_path(invitation_id), template="/v1/invitations/{id}"
        )
        return self._invitation(body, "GET /v1/invitations/{id}")

    async def remind(self, invitation_id: str) -> None:
        await self._http.request(
            "POST",
            _invitation_path(invitation_id, "/reminders"),
            template="/v1/invitations/{id}/reminders",
        )

    async def cancel(self, invitation_id: str) -> Invitation:
        """Cancel; a completed invitation answers 409 (``ConflictError``)."""
        body = await self._http.request(
            "POST",
            _invitation_path(invitation_id, "/cancel"),
            template="/v1/invitations/{id}/cancel",
        )
        return self._invitation(body, "POST /v1/invitations/{id}/cancel")

    def _invitation(self, body: Any, endpoint: str) -> Invitation:
        # The invitation itself, or tolerantly one wrapped in {"data": ...}.
        if isinstance(body, dict) and "id" not in body and isinstance(body.get("data"), dict):
            body = body["data"]
        return self._http.parse(Invitation, body, endpoint=endpoint)


def _retrieve(task: asyncio.Task[dict[str, PyTest]]) -> None:
    """Mark a finished read's failure as seen: its callers may all have been cancelled."""
    if not task.cancelled():
        task.exception()


def _invitation_path(invitation_id: str, suffix: str = "") -> str:
    return f"/v1/invitations/{quote(invitation_id, safe='')}{suffix}"

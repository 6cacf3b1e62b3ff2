"""Async client of the Py platform API v1 (SPEC section 5): tests and invitations."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from pylever.http import ApiClient, ApiTransport, BearerAuth, Sleep

SERVICE = "Py"

__all__ = ["Candidate", "Invitation", "InvitationStatus", "PyClient", "PyTest"]

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
        tests_ttl: float = 300.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not api_key:
            raise ValueError("PyClient needs an API key")
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
        self._tests: dict[str, PyTest] | None = None
        self._tests_at = 0.0
        self._tests_lock = asyncio.Lock()

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
        """Tests by exact (case-sensitive) name, cached for ``tests_ttl`` seconds."""
        async with self._tests_lock:
            expired = time.monotonic() - self._tests_at >= self._tests_ttl
            if self._tests is None or refresh or expired:
                by_name: dict[str, PyTest] = {}
                for test in await self.list_tests():
                    by_name.setdefault(test.name, test)  # a duplicate name: the first wins
                self._tests = by_name
                self._tests_at = time.monotonic()
            return dict(self._tests)

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


def _invitation_path(invitation_id: str, suffix: str = "") -> str:
    return f"/v1/invitations/{quote(invitation_id, safe='')}{suffix}"

"""PyClient against a small fake Py platform (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from pylever.clients.py import Invitation, PyClient
from pylever.contracts.errors import (
    AuthError,
    ConflictError,
    NotFoundError,
    PermanentApiError,
    RateLimitedError,
    RetryableApiError,
)

KEY = "py_live_0123456789abcdef0123456789"
BASE = "https://py.test"
CALLBACK = "https://lever.py.example/callbacks/py"


def error(status: int, code: str, message: str, **kwargs: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, **kwargs)


class FakePy:
    """Just enough of Py v1: a paged test catalogue and idempotent invitations."""

    def __init__(self) -> None:
        self.tests = [
            {"id": "tst_1", "name": "Python Basics"},
            {"id": "tst_2", "name": "python basics"},
            {"id": "tst_3", "name": "SQL"},
            {"id": "tst_4", "name": "Go"},
            {"id": "tst_5", "name": "Rust"},
        ]
        self.page_size = 2
        self.invitations: dict[str, dict[str, Any]] = {}
        self.idempotency: dict[str, tuple[Any, str]] = {}
        self.requests: list[httpx.Request] = []
        self.fail_next: list[httpx.Response] = []
        self.lose_next_create_answer = False

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def calls(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if (r.method, r.url.path) == (method, path))

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return error(401, "unauthorized", "invalid API key")
        if self.fail_next:
            return self.fail_next.pop(0)
        parts = request.url.path.strip("/").split("/")
        if parts[0] != "v1":
            return error(404, "not_found", "no such route")
        route = (request.method, *parts[1:])
        if route == ("GET", "tests"):
            cursor = request.url.params.get("cursor")
            start = int(cursor.removeprefix("c")) if cursor else 0
            end = start + self.page_size
            next_cursor = f"c{end}" if end < len(self.tests) else None
            return httpx.Response(
                200, json={"data": self.tests[start:end], "next_cursor": next_cursor}
            )
        if route == ("POST", "invitations"):
            return self.create(request)
        if len(route) >= 3 and route[1] == "invitations":
            invitation = self.invitations.get(route[2])
            if invitation is None:
                return error(404, "not_found", "invitation not found")
            action = (request.method, *route[3:])
            if action == ("GET",):
                return httpx.Response(200, json=invitation)
            if action == ("POST", "reminders"):
                return httpx.Response(202)
            if action == ("POST", "cancel"):
                if invitation["status"] == "completed":
                    return error(409, "invitation_completed", "invitation is already completed")
                invitation["status"] = "cancelled"
                return httpx.Response(200, json=invitation)
        return error(404, "not_found", "no such route")

    def create(self, request: httpx.Request) -> httpx.Response:
        key = request.headers.get("Idempotency-Key")
        if not key:
            return error(400, "missing_idempotency_key", "Idempotency-Key is required")
        body = json.loads(request.content)
        if key in self.idempotency:
            seen_body, invitation_id = self.idempotency[key]
            if seen_body != body:
                return error(409, "idempotency_conflict", "key reused with another body")
            return httpx.Response(200, json=self.invitations[invitation_id])
        invitation_id = f"inv_{len(self.invitations) + 1}"
        self.invitations[invitation_id] = {
            "id": invitation_id,
            "test_id": body["test_id"],
            "status": "invited",
            "reference": body["reference"],
            "candidate": body["candidate"],
            "test_url": f"https://py.test/t/{invitation_id}",
            "score": None,
            "report_url": None,
            "created_at": "2025-06-18T10:00:00Z",
            "completed_at": None,
        }
        self.idempotency[key] = (body, invitation_id)
        if self.lose_next_create_answer:  # created, but the answer never arrives
            self.lose_next_create_answer = False
            raise httpx.ReadTimeout("timed out")
        return httpx.Response(201, json=self.invitations[invitation_id])

    def complete(self, invitation_id: str, score: float) -> None:
        self.invitations[invitation_id].update(
            status="completed",
            score=score,
            report_url=f"https://py.test/r/{invitation_id}",
            completed_at="2025-06-19T12:30:00+00:00",
        )


class NoSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def client(fake: FakePy, **kwargs: Any) -> PyClient:
    kwargs.setdefault("sleep", NoSleep())
    return PyClient(BASE, kwargs.pop("api_key", KEY), transport=fake.transport(), **kwargs)


async def invite(py: PyClient, key: str = "wf-1", **overrides: Any) -> Invitation:
    args: dict[str, Any] = {
        "test_id": "tst_1",
        "name": "Jane Doe",
        "email": "jane@example.com",
        "reference": "wf-1",
        "callback_url": CALLBACK,
        "idempotency_key": key,
    }
    args.update(overrides)
    return await py.create_invitation(**args)


# --- auth --------------------------------------------------------------------------


async def test_bearer_auth_header() -> None:
    fake = FakePy()
    async with client(fake) as py:
        await py.list_tests()
    assert {r.headers["Authorization"] for r in fake.requests} == {f"Bearer {KEY}"}


async def test_401_is_auth_error_sent_once_without_the_key() -> None:
    fake = FakePy()
    fake.fail_next = [error(401, "unauthorized", f"invalid API key {KEY}")]
    async with client(fake) as py:
        with pytest.raises(AuthError) as info:
            await py.get_invitation("inv_1")
    assert len(fake.requests) == 1
    assert str(info.value).startswith("Py GET /v1/invitations/{id} -> 401 unauthorized:")
    assert KEY not in str(info.value)
    assert KEY not in repr(py)


# --- tests catalogue -----------------------------------------------------------------


async def test_list_tests_follows_cursors() -> None:
    fake = FakePy()
    async with client(fake) as py:
        tests = await py.list_tests()
    assert [t.id for t in tests] == ["tst_1", "tst_2", "tst_3", "tst_4", "tst_5"]
    assert [r.url.query for r in fake.requests] == [b"", b"cursor=c2", b"cursor=c4"]
    assert {r.url.path for r in fake.requests} == {"/v1/tests"}


class Clock:
    """An injectable monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_tests_by_name_is_exact_and_cached() -> None:
    fake, clock = FakePy(), Clock()
    async with client(fake, clock=clock) as py:
        by_name = await py.tests_by_name()
        assert by_name["Python Basics"].id == "tst_1"
        assert by_name["python basics"].id == "tst_2"
        assert "PYTHON BASICS" not in by_name
        fake.tests.append({"id": "tst_6", "name": "Java"})
        assert "Java" not in await py.tests_by_name()  # cached: no request
        assert fake.calls("GET", "/v1/tests") == 3  # one read, three pages
        clock.now += 60
        assert (await py.tests_by_name(refresh=True))["Java"].id == "tst_6"
        assert fake.calls("GET", "/v1/tests") == 6
        assert py.tests_reads == 2


async def test_forced_refreshes_are_limited_to_one_a_minute() -> None:
    fake, clock = FakePy(), Clock()
    async with client(fake, clock=clock) as py:
        await py.tests_by_name()
        fake.tests.append({"id": "tst_6", "name": "Java"})
        for _ in range(59):  # tags that are no test's name: each asks for a refresh
            clock.now += 1
            assert "Java" not in await py.tests_by_name(refresh=True)
        assert py.tests_reads == 1
        clock.now = 1060.0  # a minute after the first read: the new test is found
        assert (await py.tests_by_name(refresh=True))["Java"].id == "tst_6"
        assert py.tests_reads == 2
        clock.now += 30
        await py.tests_by_name(refresh=True)
        assert py.tests_reads == 2
    assert fake.calls("GET", "/v1/tests") == 6


async def test_concurrent_refreshes_share_one_read() -> None:
    fake, clock = FakePy(), Clock()
    async with client(fake, clock=clock) as py:
        first = await asyncio.gather(*(py.tests_by_name(refresh=True) for _ in range(20)))
        assert all(r["SQL"].id == "tst_3" for r in first)
        assert (py.tests_reads, fake.calls("GET", "/v1/tests")) == (1, 3)
        fake.tests.append({"id": "tst_6", "name": "Java"})
        clock.now += 61
        again = await asyncio.gather(*(py.tests_by_name(refresh=True) for _ in range(20)))
        assert all(r["Java"].id == "tst_6" for r in again)  # all waited for the one read
        assert (py.tests_reads, fake.calls("GET", "/v1/tests")) == (2, 6)


async def test_tests_cache_expires_after_ttl() -> None:
    fake, clock = FakePy(), Clock()
    async with client(fake, clock=clock, tests_ttl=300) as py:
        await py.tests_by_name()
        fake.tests.append({"id": "tst_6", "name": "Java"})
        clock.now += 299
        assert "Java" not in await py.tests_by_name()
        clock.now += 1
        assert (await py.tests_by_name())["Java"].id == "tst_6"
        assert py.tests_reads == 2


async def test_a_failed_read_keeps_the_cached_catalogue_and_waits_the_interval() -> None:
    fake, clock = FakePy(), Clock()
    async with client(fake, clock=clock, max_attempts=1) as py:
        await py.tests_by_name()
        clock.now += 60
        fake.fail_next = [error(500, "internal", "try again")]
        assert (await py.tests_by_name(refresh=True))["SQL"].id == "tst_3"  # the cached one
        assert fake.calls("GET", "/v1/tests") == 4
        clock.now += 30  # the failed read counts: no new read within the interval
        assert (await py.tests_by_name(refresh=True))["SQL"].id == "tst_3"
        assert fake.calls("GET", "/v1/tests") == 4
        clock.now += 30
        fake.tests.append({"id": "tst_6", "name": "Java"})
        assert (await py.tests_by_name(refresh=True))["Java"].id == "tst_6"


async def test_without_a_catalogue_a_failed_read_raises_and_the_next_call_reads() -> None:
    fake, clock = FakePy(), Clock()
    async with client(fake, clock=clock, max_attempts=1) as py:
        fake.fail_next = [error(500, "internal", "try again")]
        with pytest.raises(RetryableApiError) as info:
            await py.tests_by_name()
        assert "500" in str(info.value)
        assert (await py.tests_by_name())["SQL"].id == "tst_3"  # no interval to wait for
        assert py.tests_reads == 2


def test_the_refresh_interval_must_fit_the_ttl() -> None:
    with pytest.raises(ValueError):
        PyClient(BASE, KEY, tests_ttl=30, tests_refresh_interval=60)


# --- invitations ---------------------------------------------------------------------


async def test_create_invitation_sends_the_contract_body_and_key() -> None:
    fake = FakePy()
    async with client(fake) as py:
        invitation = await invite(py)
    request = fake.requests[0]
    assert (request.method, request.url.path) == ("POST", "/v1/invitations")
    assert request.headers["Idempotency-Key"] == "wf-1"
    assert json.loads(request.content) == {
        "test_id": "tst_1",
        "candidate": {"name": "Jane Doe", "email": "jane@example.com"},
        "reference": "wf-1",
        "callback_url": CALLBACK,
    }
    assert invitation.id == "inv_1"
    assert invitation.status == "invited"
    assert invitation.candidate.email == "jane@example.com"
    assert invitation.test_url == "https://py.test/t/inv_1"
    assert invitation.created_at == datetime(2025, 6, 18, 10, tzinfo=UTC)
    assert invitation.score is None and invitation.completed_at is None


async def test_same_idempotency_key_twice_gives_the_same_invitation() -> None:
    fake = FakePy()
    async with client(fake) as py:
        first = await invite(py)
        second = await invite(py)
    assert first.id == second.id == "inv_1"
    assert len(fake.invitations) == 1


async def test_reusing_a_key_with_another_body_is_a_conflict_not_retried() -> None:
    fake = FakePy()
    async with client(fake) as py:
        await invite(py)
        with pytest.raises(ConflictError) as info:
            await invite(py, test_id="tst_3")
    assert info.value.code == "idempotency_conflict"
    assert fake.calls("POST", "/v1/invitations") == 2
    assert len(fake.invitations) == 1


async def test_a_retried_create_whose_answer_was_lost_makes_one_invitation() -> None:
    fake = FakePy()
    fake.lose_next_create_answer = True
    sleeps = NoSleep()
    async with client(fake, sleep=sleeps) as py:
        invitation = await invite(py)
    assert invitation.id == "inv_1"
    assert len(fake.invitations) == 1
    creates = [r for r in fake.requests if r.url.path == "/v1/invitations"]
    assert [r.headers["Idempotency-Key"] for r in creates] == ["wf-1", "wf-1"]
    assert len(sleeps.calls) == 1


async def test_429_on_create_honours_retry_after() -> None:
    fake = FakePy()
    fake.fail_next = [error(429, "rate_limited", "slow down", headers={"Retry-After": "3"})]
    sleeps = NoSleep()
    async with client(fake, sleep=sleeps) as py:
        assert (await invite(py)).id == "inv_1"
    assert sleeps.calls == [3.0]


async def test_429_with_max_attempts_one_carries_retry_after() -> None:
    fake = FakePy()
    fake.fail_next = [error(429, "rate_limited", "slow down", headers={"Retry-After": "4"})]
    async with client(fake, max_attempts=1) as py:
        with pytest.raises(RateLimitedError) as info:
            await invite(py)
    assert info.value.retry_after == 4.0
    assert len(fake.requests) == 1


async def test_get_remind_and_cancel() -> None:
    fake = FakePy()
    async with client(fake) as py:
        created = await invite(py)
        assert (await py.get_invitation(created.id)).status == "invited"
        assert await py.remind(created.id) is None
        cancelled = await py.cancel(created.id)
        assert cancelled.status == "cancelled"
        assert (await py.get_invitation(created.id)).status == "cancelled"
    paths = [(r.method, r.url.path) for r in fake.requests[1:]]
    assert paths == [
        ("GET", "/v1/invitations/inv_1"),
        ("POST", "/v1/invitations/inv_1/reminders"),
        ("POST", "/v1/invitations/inv_1/cancel"),
        ("GET", "/v1/invitations/inv_1"),
    ]


async def test_completed_invitation_result_fields() -> None:
    fake = FakePy()
    async with client(fake) as py:
        created = await invite(py)
        fake.complete(created.id, 87.5)
        done = await py.get_invitation(created.id)
    assert done.status == "completed"
    assert done.score == 87.5
    assert done.report_url == "https://py.test/r/inv_1"
    assert done.completed_at == datetime(2025, 6, 19, 12, 30, tzinfo=UTC)


async def test_cancelling_a_completed_invitation_is_a_conflict() -> None:
    fake = FakePy()
    async with client(fake) as py:
        created = await invite(py)
        fake.complete(created.id, 90)
        with pytest.raises(ConflictError) as info:
            await py.cancel(created.id)
    assert str(info.value) == (
        "Py POST /v1/invitations/{id}/cancel -> 409 invitation_completed: "
        "invitation is already completed"
    )
    assert fake.calls("POST", "/v1/invitations/inv_1/cancel") == 1


async def test_unknown_invitation_is_not_found() -> None:
    fake = FakePy()
    async with client(fake) as py:
        with pytest.raises(NotFoundError):
            await py.remind("inv_404")
    assert len(fake.requests) == 1


async def test_an_invitation_wrapped_in_a_data_envelope_is_accepted() -> None:
    fake = FakePy()
    body = {"data": {"id": "inv_9", "test_id": "tst_1", "status": "started", "reference": "wf-9"}}
    fake.fail_next = [httpx.Response(200, json=body)]
    async with client(fake) as py:
        invitation = await py.get_invitation("inv_9")
    assert (invitation.id, invitation.status) == ("inv_9", "started")


async def test_malformed_invitation_is_permanent_and_leaks_no_candidate_data() -> None:
    fake = FakePy()
    body = {
        "id": "inv_1",
        "test_id": "tst_1",
        "status": "archived",
        "candidate": {"name": "Jane Doe", "email": "jane@example.com"},
    }
    fake.fail_next = [httpx.Response(200, json=body)]
    async with client(fake) as py:
        with pytest.raises(PermanentApiError) as info:
            await py.get_invitation("inv_1")
    message = str(info.value)
    assert message.startswith("Py GET /v1/invitations/{id} -> unexpected Invitation: status:")
    assert "jane@example.com" not in message and "Jane Doe" not in message


def test_invitation_repr_hides_the_candidate() -> None:
    invitation = Invitation.model_validate(
        {
            "id": "inv_1",
            "test_id": "tst_1",
            "status": "invited",
            "reference": "wf-1",
            "candidate": {"name": "Jane Doe", "email": "jane@example.com"},
            "extra_field": "ignored",
        }
    )
    assert invitation.candidate.email == "jane@example.com"
    for text in (repr(invitation), str(invitation), repr(invitation.candidate)):
        assert "jane@example.com" not in text
        assert "Jane Doe" not in text
    assert "inv_1" in repr(invitation)
    assert not hasattr(invitation, "extra_field")


def test_api_key_is_required() -> None:
    with pytest.raises(ValueError):
        PyClient(BASE, "")

"""Py activities against the Py sandbox: records are validated where they enter the workflow.

A completed invitation must carry a finite score in 0..100 and a report_url
(Py's contract). One that does not fails the activity for good with a
``PyContractError`` naming the invitation and what is missing, never the
candidate.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.py import PyActivities
from pylever.clients.py import Invitation, PyClient
from pylever.contracts.records import CreateInvitation, FindTests
from sandbox.py import PySandbox

PY_KEY = "py-activities-key"
CANDIDATE = {"candidate_name": "Grace Hopper", "candidate_email": "grace@example.com"}


@pytest.fixture
async def py() -> AsyncIterator[PySandbox]:
    sandbox = PySandbox(api_key=PY_KEY, callback_secret="s", seed=3)
    try:
        yield sandbox
    finally:
        await sandbox.aclose()


@pytest.fixture
async def activities(py: PySandbox) -> AsyncIterator[PyActivities]:
    async with PyClient(
        "http://py.sandbox", PY_KEY, transport=httpx.ASGITransport(app=py.app), max_attempts=1
    ) as client:
        yield PyActivities(client, "http://callbacks.test/py")


async def invite(activities: PyActivities, reference: str = "inv-wf-1") -> Any:
    return await activities.create_invitation(
        CreateInvitation(reference=reference, test_id="tst_python_basics", **CANDIDATE)
    )


def assert_contract_error(exc: ApplicationError, invitation_id: str, missing: str) -> None:
    assert exc.type == "PyContractError"
    assert exc.non_retryable
    assert exc.message.startswith(f"Py contract error: invitation {invitation_id} is completed")
    assert missing in exc.message
    for value in CANDIDATE.values():
        assert value not in str(exc)
        assert value not in repr(exc.details)


async def test_created_at_comes_from_py(py: PySandbox, activities: PyActivities) -> None:
    record = await invite(activities)
    sent = py.invitation(record.id)
    assert record.status == "invited" and record.score is None and record.report_url is None
    assert record.created_at == datetime.fromisoformat(sent["created_at"].replace("Z", "+00:00"))
    fetched = await activities.get_invitation(record.id)
    assert fetched.created_at == record.created_at


async def test_a_completed_invitation_keeps_its_result(
    py: PySandbox, activities: PyActivities
) -> None:
    record = await invite(activities)
    await py.complete(record.id, 87.5, callback=False)
    done = await activities.get_invitation(record.id)
    assert done.status == "completed" and done.score == 87.5
    assert done.report_url == py.invitation(record.id)["report_url"]
    assert done.completed_at is not None and done.created_at == record.created_at
    # Cancelling a completed invitation brings it back as it is (409, then GET).
    assert await activities.cancel(record.id) == done


@pytest.mark.parametrize(
    ("omit", "missing"),
    [
        (["report_url"], "is completed without a report_url"),
        (["score"], "is completed without a score"),
        (["score", "report_url"], "without a score and without a report_url"),
    ],
)
async def test_a_completed_invitation_that_breaks_the_contract_is_final(
    py: PySandbox, activities: PyActivities, omit: list[str], missing: str
) -> None:
    record = await invite(activities, reference=f"inv-{'-'.join(omit)}")
    await py.complete(record.id, 90, callback=False, omit=omit)
    with pytest.raises(ApplicationError) as caught:
        await activities.get_invitation(record.id)
    assert_contract_error(caught.value, record.id, missing)
    # The cancel path reads the invitation too, and refuses it the same way.
    with pytest.raises(ApplicationError) as caught:
        await activities.cancel(record.id)
    assert_contract_error(caught.value, record.id, missing)


class StubPy:
    """Answers ``get_invitation`` with whatever invitation the test gives."""

    def __init__(self, invitation: Invitation) -> None:
        self.invitation = invitation

    async def get_invitation(self, invitation_id: str) -> Invitation:
        return self.invitation


def invitation(**fields: Any) -> Invitation:
    base: dict[str, Any] = {
        "id": "inv_123",
        "test_id": "tst_1",
        "status": "completed",
        "candidate": {"name": CANDIDATE["candidate_name"], "email": CANDIDATE["candidate_email"]},
        "score": 50.0,
        "report_url": "https://py.test/r/inv_123",
        "created_at": "2026-11-30T10:00:00Z",
        "completed_at": "2026-11-30T11:00:00Z",
    }
    return Invitation.model_validate({**base, **fields})


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"score": 100.5}, "with a score outside 0..100"),
        ({"score": -1}, "with a score outside 0..100"),
        ({"score": math.nan}, "with a score outside 0..100"),
        ({"score": math.inf}, "with a score outside 0..100"),
        ({"report_url": ""}, "without a report_url"),
        ({"report_url": "javascript:alert(1)"}, "with a report_url that is not an https URL"),
        ({"report_url": "https://py.test/r/1\n"}, "with a report_url that is not an https URL"),
        # the same rule as the callback (api.validate_callback): https, <= 2,048, no user info
        ({"report_url": "http://py.test/r/1"}, "with a report_url that is not an https URL"),
        ({"report_url": "https://u:p@py.test/r/1"}, "with a report_url that carries user info"),
        ({"report_url": "https://py.test/" + "r" * 2033}, "longer than 2048 characters"),
        ({"score": None, "report_url": None}, "without a score and without a report_url"),
    ],
)
async def test_out_of_contract_scores_and_urls(fields: dict[str, Any], missing: str) -> None:
    activities = PyActivities(StubPy(invitation(**fields)), "http://cb")  # type: ignore[arg-type]
    with pytest.raises(ApplicationError) as caught:
        await activities.get_invitation("inv_123")
    assert_contract_error(caught.value, "inv_123", missing)
    assert "100.5" not in caught.value.message  # the score itself is the candidate's


@pytest.mark.parametrize("score", [0, 100, 42.25])
async def test_scores_at_the_bounds_are_in_contract(score: float) -> None:
    activities = PyActivities(StubPy(invitation(score=score)), "http://cb")  # type: ignore[arg-type]
    record = await activities.get_invitation("inv_123")
    assert record.score == score and record.created_at is not None


async def test_a_report_url_of_2048_characters_is_in_contract() -> None:
    url = "https://py.test/" + "r" * 2032
    assert len(url) == 2048
    activities = PyActivities(StubPy(invitation(report_url=url)), "http://cb")  # type: ignore[arg-type]
    assert (await activities.get_invitation("inv_123")).report_url == url


@pytest.mark.parametrize("status", ["invited", "started", "expired", "cancelled"])
async def test_unfinished_invitations_need_no_result(status: str) -> None:
    stub = StubPy(invitation(status=status, score=None, report_url=None, completed_at=None))
    record = await PyActivities(stub, "http://cb").get_invitation("inv_123")  # type: ignore[arg-type]
    assert record.status == status and record.score is None


# --- the test catalogue: read at most once a minute per process ------------------------


class CatalogueReads(httpx.AsyncBaseTransport):
    """The sandbox over ASGI, counting full catalogue reads (a first page: no cursor)."""

    def __init__(self, py: PySandbox) -> None:
        self._inner = httpx.ASGITransport(app=py.app)
        self.reads = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/tests" and "cursor" not in request.url.params:
            self.reads += 1
        return await self._inner.handle_async_request(request)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


async def test_ordinary_tags_cost_one_catalogue_read_and_new_tests_are_found_in_a_minute(
    py: PySandbox,
) -> None:
    reads, clock = CatalogueReads(py), Clock()
    async with PyClient("http://py.sandbox", PY_KEY, transport=reads, clock=clock) as client:
        activities = PyActivities(client, "http://callbacks.test/py")
        tags = ("Referral", "Berlin", "Senior", "Python Basics")
        # 30 candidates a second apart, each with tags that are no test's name
        for i in range(30):
            found = await activities.find_tests(FindTests(names=(*tags, f"Source {i}")))
            assert found == {"Python Basics": "tst_python_basics"}
            clock.now += 1
        assert reads.reads == 1  # before: 31 (a forced refresh per candidate)

        # ... concurrently too: one read in flight, shared
        clock.now += 60
        await asyncio.gather(*(activities.find_tests(FindTests(names=tags)) for _ in range(30)))
        assert reads.reads == 2

        # A test created at Py is found once the minute since the last read has passed.
        py.tests.append({"id": "tst_rust", "name": "Rust"})
        clock.now += 30
        assert "Rust" not in await activities.find_tests(FindTests(names=("Rust",)))
        clock.now += 30
        assert await activities.find_tests(FindTests(names=("Rust",))) == {"Rust": "tst_rust"}
        assert reads.reads == 3

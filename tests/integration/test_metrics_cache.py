"""Cheap metrics (issue 12, item 6): ``GET /metrics`` makes no visibility query per scrape.

``pylever_assessments`` is counted from Temporal visibility at most once per 30 s, in the
background: a burst of scrapes costs one count, and a scrape never waits for Temporal once
there are values to serve. ``PYLEVER_METRICS_REQUIRE_ADMIN`` puts the endpoint (it names
every account) behind the admin token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from pylever.config.environment import Settings
from pylever.edge.app import create_app
from pylever.ops.metrics import ASSESSMENT_STATUSES, AssessmentGauge
from sandbox.devserver import free_port
from tests.support.integration_stack import stack_config

ADMIN_TOKEN = "metrics-admin-token-4f1d7a"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Visibility:
    """A stand-in Temporal client: counts ``count_workflows`` calls; may be held back."""

    def __init__(self, count: int = 7) -> None:
        self.calls = 0
        self.count = count
        self.gate: asyncio.Event | None = None

    async def count_workflows(self, query: str, **_: Any) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return SimpleNamespace(count=self.count)


def gauge_value(status: str) -> float | None:
    return REGISTRY.get_sample_value("pylever_assessments", {"status": status})


# --- the gauge ------------------------------------------------------------------------------


async def test_a_burst_of_scrapes_counts_once_per_30_seconds() -> None:
    visibility, clock = Visibility(count=3), Clock()
    gauge = AssessmentGauge(visibility, clock=clock)  # type: ignore[arg-type]
    await asyncio.gather(*(gauge.scraped() for _ in range(200)))
    assert gauge.counts == 1
    assert visibility.calls == len(ASSESSMENT_STATUSES)  # one count: a query per status
    assert gauge_value("completed") == 3
    for _ in range(29):  # 20 scrapes a second for 29 s
        clock.now += 1
        for _ in range(20):
            await gauge.scraped()
    assert gauge.counts == 1
    clock.now += 1
    await gauge.scraped()
    await asyncio.sleep(0)  # the count runs in the background
    await asyncio.sleep(0)
    assert gauge.counts == 2
    assert visibility.calls == 2 * len(ASSESSMENT_STATUSES)
    await gauge.aclose()


async def test_scrapes_serve_the_last_values_while_a_count_runs() -> None:
    visibility, clock = Visibility(count=5), Clock()
    gauge = AssessmentGauge(visibility, clock=clock)  # type: ignore[arg-type]
    await gauge.scraped()
    assert gauge_value("invited") == 5
    visibility.gate, visibility.count = asyncio.Event(), 6  # Temporal is slow now
    clock.now += 30
    for _ in range(50):  # none waits for the slow count, and only one count starts
        await asyncio.wait_for(gauge.scraped(), 0.5)
        clock.now += 0.1
    assert gauge.counts == 2
    assert gauge_value("invited") == 5
    visibility.gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert gauge_value("invited") == 6
    await gauge.aclose()


async def test_the_first_scrape_waits_a_bounded_time_for_the_first_count() -> None:
    visibility = Visibility()
    visibility.gate = asyncio.Event()  # Temporal does not answer
    gauge = AssessmentGauge(visibility, first_wait=0.05)  # type: ignore[arg-type]
    await asyncio.wait_for(gauge.scraped(), 1)  # gave up waiting after 0.05 s
    assert gauge.counts == 1
    await gauge.aclose()  # the count in flight is cancelled


# --- GET /metrics -----------------------------------------------------------------------------


def _settings(**overrides: Any) -> Settings:
    return Settings(
        temporal_address=f"127.0.0.1:{free_port()}",
        admin_token=ADMIN_TOKEN,
        payload_keys=base64.b64encode(bytes(range(32))).decode(),
        **overrides,
    )


@contextlib.asynccontextmanager
async def api(settings: Settings, visibility: Visibility) -> AsyncIterator[httpx.AsyncClient]:
    closed = f"http://127.0.0.1:{free_port()}"
    app = create_app(
        stack_config("http://127.0.0.1:8000", closed, closed, closed),
        settings,
        client=visibility,  # type: ignore[arg-type]
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("10.9.8.7", 40000)),
            base_url="http://api",
        ) as http,
    ):
        yield http


async def test_twenty_scrapes_a_second_make_one_visibility_count() -> None:
    visibility = Visibility()
    async with api(_settings(), visibility) as http:
        answers = await asyncio.gather(*(http.get("/metrics") for _ in range(20)))
        assert {a.status_code for a in answers} == {200}
        assert "pylever_assessments" in answers[0].text
    assert visibility.calls == len(ASSESSMENT_STATUSES)  # before: 20 x 8


async def test_metrics_are_open_by_default() -> None:
    async with api(_settings(), Visibility()) as http:
        assert (await http.get("/metrics")).status_code == 200


async def test_metrics_can_require_the_admin_token() -> None:
    visibility = Visibility()
    async with api(_settings(metrics_require_admin=True), visibility) as http:
        assert (await http.get("/metrics")).status_code == 401
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "unauthorized"
        assert visibility.calls == 0  # refused before any work
        right = await http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert right.status_code == 200
        assert "pylever_webhooks_total" in right.text or "pylever_assessments" in right.text
    refused = REGISTRY.get_sample_value(
        "pylever_admin_auth_refusals_total", {"endpoint": "GET /metrics", "outcome": "bad_token"}
    )
    assert refused is not None and refused >= 1


async def test_wrong_tokens_for_metrics_are_throttled() -> None:
    async with api(_settings(metrics_require_admin=True), Visibility()) as http:
        bad = {"Authorization": "Bearer nope"}
        codes = [(await http.get("/metrics", headers=bad)).status_code for _ in range(11)]
        assert codes == [401] * 10 + [429]


def test_requiring_the_admin_token_needs_one() -> None:
    with pytest.raises(ValueError, match="PYLEVER_ADMIN_TOKEN"):
        create_app(
            stack_config("http://127.0.0.1:8000", *(["http://127.0.0.1:9"] * 3)),
            Settings(admin_token=None, metrics_require_admin=True),
        )


@pytest.mark.parametrize(
    ("value", "on"),
    [(None, False), ("", False), ("0", False), ("false", False), ("Off", False),
     ("1", True), ("true", True), ("yes", True), ("ture", True)],  # a typo fails closed
)  # fmt: skip
def test_the_setting_from_the_environment(value: str | None, on: bool) -> None:
    env = {} if value is None else {"PYLEVER_METRICS_REQUIRE_ADMIN": value}
    assert Settings.from_env(env).metrics_require_admin is on

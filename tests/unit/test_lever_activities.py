"""Lever activities against the Lever sandbox while it refuses an account's API key.

The refusal fails each activity as before (an ``AuthError`` failure the retry
policy keeps retrying), and the worker shows it: a warning at most once a minute
per account, ``pylever_lever_auth_refusals_total{account}`` per refused call and
``pylever_lever_key_refused{account}`` at 1 until Lever accepts the key again.
"""

from __future__ import annotations

import logging
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client import REGISTRY
from temporalio.exceptions import ApplicationError

from activities.lever import LeverActivities
from pylever.clients.lever import LeverClient
from pylever.contracts.records import LinkWrite, ReadCandidate, StageMove, TagWrite
from pylever.ops.worker_metrics import start_metrics_server
from sandbox.devserver import free_port
from sandbox.lever import LeverSandbox

LEVER_KEY = "lever-activities-key-5c1e"
OTHER_KEY = "lever-activities-other-key-77a0"
BASE = "http://lever.sandbox/v1"
LOGGER = "pylever.activities.lever"


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    acme: str  # account ids, fresh per test: the metrics live in the process's registry
    globex: str
    lever: LeverSandbox
    other: LeverSandbox
    clock: Clock
    activities: LeverActivities
    opp: str

    def refusals(self, account: str) -> float:
        value = REGISTRY.get_sample_value("pylever_lever_auth_refusals_total", {"account": account})
        return value or 0.0

    def refused(self, account: str) -> float | None:
        return REGISTRY.get_sample_value("pylever_lever_key_refused", {"account": account})


@pytest.fixture
async def world() -> AsyncIterator[World]:
    suffix = uuid.uuid4().hex[:8]
    acme, globex = f"acme-{suffix}", f"globex-{suffix}"
    lever = LeverSandbox(api_key=LEVER_KEY, signature_token="t", burst=1000)
    other = LeverSandbox(api_key=OTHER_KEY, signature_token="t", burst=1000)
    opp = lever.create_candidate(name="Ada Lovelace", emails=["ada@example.com"])["id"]
    clients = {
        acme: LeverClient(
            BASE, LEVER_KEY, transport=httpx.ASGITransport(app=lever.app), max_attempts=1, rate=0
        ),
        globex: LeverClient(
            BASE, OTHER_KEY, transport=httpx.ASGITransport(app=other.app), max_attempts=1, rate=0
        ),
    }
    clock = Clock()
    try:
        yield World(acme, globex, lever, other, clock, LeverActivities(clients, clock=clock), opp)
    finally:
        for client in clients.values():
            await client.aclose()
        await lever.aclose()
        await other.aclose()


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


async def refused_call(world: World, account: str, opp: str | None = None) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await world.activities.add_tags(
            TagWrite(account_id=account, opportunity_id=opp or world.opp, tags=("Py - Passed",))
        )
    return caught.value


async def test_a_refused_key_fails_the_activity_unchanged(world: World) -> None:
    world.lever.refuse_key_for(600)
    error = await refused_call(world, world.acme)
    assert error.type == "AuthError"
    assert not error.non_retryable  # the workflow's retry policy decides (retried for days)
    assert error.message == "Lever POST /opportunities/{id}/addTags -> 401 Unauthorized"
    assert world.lever.opportunity(world.opp)["tags"] == []
    assert world.lever.stats.key_refusals == 1


async def test_every_lever_activity_counts_a_refusal(world: World) -> None:
    world.lever.refuse_key_for(600)
    calls = [
        world.activities.read_candidate(
            ReadCandidate(account_id=world.acme, opportunity_id=world.opp, stage_id="s")
        ),
        world.activities.add_tags(
            TagWrite(account_id=world.acme, opportunity_id=world.opp, tags=("t",))
        ),
        world.activities.remove_tags(
            TagWrite(account_id=world.acme, opportunity_id=world.opp, tags=("t",))
        ),
        world.activities.add_links(
            LinkWrite(account_id=world.acme, opportunity_id=world.opp, links=("https://x.test",))
        ),
        world.activities.move_to_stage(
            StageMove(account_id=world.acme, opportunity_id=world.opp, stage="Py Assessment")
        ),
    ]
    for call in calls:
        with pytest.raises(ApplicationError) as caught:
            await call
        assert caught.value.type == "AuthError"
    assert world.refusals(world.acme) == 5
    assert world.refused(world.acme) == 1


async def test_warning_at_most_once_a_minute_per_account(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    world.lever.refuse_key_for(3600)
    world.other.refuse_key_for(3600)
    for _ in range(3):
        await refused_call(world, world.acme)
    [first] = warnings(caplog)
    assert first.getMessage() == (
        f"Lever refuses account '{world.acme}''s API key (401): put a valid key in "
        "lever_api_key and reload (SIGHUP) the worker; Lever writes are retried until it works"
    )
    assert first.account == world.acme and first.status == 401  # type: ignore[attr-defined]

    # Another account has its own minute.
    await refused_call(world, world.globex, opp="any-opportunity")
    assert [r.account for r in warnings(caplog)] == [world.acme, world.globex]  # type: ignore[attr-defined]

    world.clock.now += 59.9
    await refused_call(world, world.acme)
    assert len(warnings(caplog)) == 2
    world.clock.now += 0.2
    await refused_call(world, world.acme)
    await refused_call(world, world.acme)
    assert [r.account for r in warnings(caplog)] == [world.acme, world.globex, world.acme]  # type: ignore[attr-defined]

    for record in warnings(caplog):  # no key, no candidate data
        text = record.getMessage() + repr(vars(record))
        for secret in (LEVER_KEY, OTHER_KEY, "Ada Lovelace", "ada@example.com", world.opp):
            assert secret not in text
    assert world.refusals(world.acme) == 6 and world.refusals(world.globex) == 1


async def test_gauge_goes_back_to_zero_when_lever_accepts_the_key(world: World) -> None:
    assert world.refused(world.acme) == 0 and world.refusals(world.acme) == 0  # from the start
    world.lever.refuse_key_for(600)
    await refused_call(world, world.acme)
    assert world.refused(world.acme) == 1
    assert world.refused(world.globex) == 0  # per account
    world.lever.refuse_key_for(0)  # the customer's new key works
    await world.activities.add_tags(
        TagWrite(account_id=world.acme, opportunity_id=world.opp, tags=("Py - Passed",))
    )
    assert world.refused(world.acme) == 0
    assert world.lever.opportunity(world.opp)["tags"] == ["Py - Passed"]
    assert world.refusals(world.acme) == 1  # a counter: it stays

    # A 404 is Lever's answer on the merits: the key was accepted too.
    world.lever.refuse_key_for(600)
    await refused_call(world, world.acme)
    world.lever.refuse_key_for(0)
    error = await refused_call(world, world.acme, opp="gone-opportunity")
    assert error.type == "NotFoundError"
    assert world.refused(world.acme) == 0


async def test_the_worker_metrics_endpoint_shows_the_refusal(world: World) -> None:
    world.lever.refuse_key_for(600)
    await refused_call(world, world.acme)
    server = start_metrics_server("127.0.0.1", free_port())
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: ASYNC210 (a local thread)
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert f'pylever_lever_auth_refusals_total{{account="{world.acme}"}} 1.0' in text
    assert f'pylever_lever_key_refused{{account="{world.acme}"}} 1.0' in text
    assert f'pylever_lever_key_refused{{account="{world.globex}"}} 0.0' in text

"""The tenancy tests (tests/workflows/test_tenancy.py) that take real time on a dev server:
the server holding two accounts to their own rates on the shared Lever queue (about 10 s
of measured calls), and the drain of an old per-account queue (visibility, a poller
stopping; about 4 s). Here, not in tests/workflows, to keep ``make test-fast`` under a
minute.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import Priority
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from pylever.contracts.records import TagWrite
    from pylever.temporal.legacy_queues import LegacyQueueDrain, cutover
    from pylever.temporal.lever_limits import apply_lever_limits
    from sandbox.devserver import FAIRNESS_ARGS, partition_args, start_dev_server
    from tests.workflows.test_tenancy import account, new_queue
    from workflows.decisions import legacy_lever_task_queue, lever_task_queue


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await start_dev_server(
        extra_args=[*partition_args(1), *FAIRNESS_ARGS], data_converter=pydantic_data_converter
    )
    try:
        yield environment
    finally:
        await environment.shutdown()


# --- limits: the server holds each account to its rate ----------------------------------


@activity.defn(name="lever.add_tags")
async def timed_add_tags(req: TagWrite) -> float:
    return time.monotonic()


@workflow.defn(name="TenancyBurst")
class BurstWorkflow:
    @workflow.run
    async def run(self, lever_queue: str, calls: dict[str, int]) -> dict[str, list[float]]:
        keys = [a for a, n in calls.items() for _ in range(n)]
        times = await asyncio.gather(
            *(
                workflow.execute_activity(
                    "lever.add_tags",
                    TagWrite(account_id=a, opportunity_id=f"o{i}", tags=("t",)),
                    task_queue=lever_queue,
                    priority=Priority(fairness_key=a),
                    start_to_close_timeout=timedelta(seconds=60),
                )
                for i, a in enumerate(keys)
            )
        )
        by_account: dict[str, list[float]] = {a: [] for a in calls}
        for account_id, moment in zip(keys, times, strict=True):
            by_account[account_id].append(moment)
        return by_account


async def test_the_server_holds_each_account_to_its_own_rate_on_the_shared_queue(env):
    """Two accounts share one queue and one worker: each is held to its own limit (the
    default for one, its weight for the other), and neither waits for the other's backlog."""
    base = new_queue()
    lever_queue = lever_task_queue(base)
    await apply_lever_limits(env.client, lever_queue, [account("busy", 3.0), account("calm")])
    async with (
        Worker(env.client, task_queue=base, workflows=[BurstWorkflow]),
        Worker(env.client, task_queue=lever_queue, activities=[timed_add_tags]),
    ):
        result = await env.client.execute_workflow(
            BurstWorkflow.run,
            args=[lever_queue, {"busy": 30, "calm": 40}],
            id=f"burst-{uuid.uuid4().hex[:6]}",
            task_queue=base,
        )
    busy, calm = sorted(result["busy"]), sorted(result["calm"])
    busy_span, calm_span = busy[-1] - busy[0], calm[-1] - calm[0]
    # busy: 30 calls at 3/s after a short burst, several seconds. calm: 40 at the default
    # 9/s, limited too (unlimited, they take well under a second), and done first.
    assert busy_span >= 5.0, (busy_span, calm_span)
    assert calm_span >= 1.5, (busy_span, calm_span)
    assert calm[-1] < busy[-1], (busy_span, calm_span)


# --- the drain of the old per-account queues ----------------------------------------------


@workflow.defn(name="AssessmentWorkflow")
class OldShapeAssessment:
    """As the code before the shared queue: a Lever call on the account's own queue."""

    @workflow.run
    async def run(self, base_queue: str, account_id: str) -> str:
        return await workflow.execute_activity(
            "lever.add_tags",
            TagWrite(account_id=account_id, opportunity_id="opp-old", tags=("Py - Invited",)),
            task_queue=legacy_lever_task_queue(base_queue, account_id),
            start_to_close_timeout=timedelta(seconds=10),
        )


@activity.defn(name="lever.add_tags")
async def drained_add_tags(req: TagWrite) -> str:
    return f"{activity.info().task_queue}:{req.account_id}"


async def test_old_queue_work_is_drained_then_its_poller_stops(env):
    client: Client = env.client
    base = new_queue()
    made: list[tuple[str, float]] = []

    def make_worker(queue: str, rate: float) -> Worker:
        made.append((queue, rate))
        return Worker(client, task_queue=queue, activities=[drained_add_tags])

    async with Worker(client, task_queue=base, workflows=[OldShapeAssessment]):
        # Started "before the deploy": its Lever call waits on acme's own queue.
        old = await client.start_workflow(
            OldShapeAssessment.run, args=[base, "acme"],
            id=f"assessment:acme:{uuid.uuid4().hex[:6]}:stage", task_queue=base,
        )  # fmt: skip
        await asyncio.sleep(1.5)  # visibility catches up
        drain = LegacyQueueDrain(client, base, make_worker, {"acme": 7.0}.get, check_every=1.0)
        finished = asyncio.create_task(drain.run())
        assert await asyncio.wait_for(old.result(), 30) == f"{base}-lever-acme:acme"
        await asyncio.wait_for(finished, 30)  # nothing old left: the drain ends
    assert made == [(legacy_lever_task_queue(base, "acme"), 7.0)]
    assert drain.draining == []
    # The marker keeps the moment: a later worker start reads the same one.
    first = await cutover(client, base)
    await asyncio.sleep(1.1)
    assert await cutover(client, base) == first

"""Proves the dev-server harness (sandbox/devserver.py) against the real `temporal` binary.

Also pins down how the experimental per-workflow time skipping behaves
(docs/testing-temporal.md): automatic skipping, fast_forward, activities,
retries, child workflows, the skip budget.
"""

import asyncio
import socket
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    import pytest
    import pytest_asyncio
    from temporalio.api.enums.v1 import EventType
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.service import RPCError, RPCStatusCode
    from temporalio.testing import TimeSkipper, TimeSkippingConfig, WorkflowEnvironment
    from temporalio.worker import Worker

    from sandbox.devserver import (
        LEVER_ACCOUNT,
        PY_SCORE,
        PY_STATUS,
        SEARCH_ATTRIBUTES,
        TEMPORAL_BIN,
        DevServerProcess,
        free_port,
        start_dev_server,
        start_time_skipping,
        wait_for_visibility,
    )

DAY = 86_400.0
# Measured: a skipped-to timer fires ~20 ms (virtual) after its deadline with the
# harness's FAST_TIMER_ARGS, ~1 s without; virtual time also flows with real time
# (activities, worker latency). 60 s is a wide margin that still tells 2 d from 5 d.
TOLERANCE = 60.0
# The start time a workflow reads and the instant the server stops a fast-forward at are
# stamped apart: the target can land a fraction of a millisecond before start + duration
# (seen once: 259199.99958 s for 3 d).
CLOCK_EPSILON = 0.01


def assert_about(actual: float, expected: float, what: str) -> None:
    assert expected - CLOCK_EPSILON <= actual <= expected + TOLERANCE, (
        f"{what}: {actual}s is not within [{expected}, {expected + TOLERANCE}]"
    )


# ------------------------------------------------------------------ workflows


@workflow.defn
class LifecycleWorkflow:
    """An invitation's clock: reminders at `reminder_days`, expiry at `expire_days`."""

    def __init__(self) -> None:
        self.done = False
        self.reminders: list[float] = []
        self.start: datetime | None = None

    @workflow.run
    async def run(self, reminder_days: list[float], expire_days: float) -> dict[str, Any]:
        start = self.start = workflow.now()

        async def remind(days: float) -> None:
            await workflow.sleep(timedelta(days=days))
            self.reminders.append((workflow.now() - start).total_seconds())

        tasks = [asyncio.create_task(remind(d)) for d in reminder_days]
        try:
            await workflow.wait_condition(lambda: self.done, timeout=timedelta(days=expire_days))
            outcome = "completed"
        except TimeoutError:
            outcome = "expired"
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "start": start.isoformat(),
            "reminders": self.reminders,
            "outcome": outcome,
            "end": (workflow.now() - start).total_seconds(),
        }

    @workflow.signal
    def finish(self) -> None:
        self.done = True

    @workflow.query
    def reminders_sent(self) -> list[float]:
        return self.reminders


@workflow.defn
class ParentWorkflow:
    """Optionally sleeps `pre_days`, then runs a LifecycleWorkflow child (2 d, 5 d, 7 d)."""

    @workflow.run
    async def run(self, pre_days: float) -> dict[str, Any]:
        start = workflow.now()
        if pre_days:
            await workflow.sleep(timedelta(days=pre_days))
        child = await workflow.execute_child_workflow(
            LifecycleWorkflow.run,
            args=[[2, 5], 7],
            id=f"{workflow.info().workflow_id}-child",
        )
        return {
            "start": start.isoformat(),
            "child": child,
            "end": (workflow.now() - start).total_seconds(),
        }


@workflow.defn
class TaggedWorkflow:
    """Upserts Lever/Py search attributes, then waits for `finish`."""

    def __init__(self) -> None:
        self.done = False

    @workflow.run
    async def run(self, status: str, score: float | None) -> str:
        updates = [PY_STATUS.value_set(status)]
        if score is not None:
            updates.append(PY_SCORE.value_set(score))
        workflow.upsert_search_attributes(updates)
        await workflow.wait_condition(lambda: self.done)
        return status

    @workflow.signal
    def finish(self) -> None:
        self.done = True


@activity.defn
async def sleepy_activity(seconds: float) -> None:
    await asyncio.sleep(seconds)


@activity.defn
async def rate_limited_activity() -> dict[str, Any]:
    info = activity.info()
    if info.attempt == 1:
        raise ApplicationError("429 from Lever", next_retry_delay=timedelta(hours=1))
    return {
        "attempt": info.attempt,
        "scheduled": info.current_attempt_scheduled_time.isoformat(),
        "wall_clock": datetime.now(UTC).isoformat(),
    }


@workflow.defn
class ActivityWorkflow:
    """A 2 s (real) activity racing a 1 d timer, then a 2 d sleep and a retried 429."""

    @workflow.run
    async def run(self) -> dict[str, Any]:
        start = workflow.now()
        marks: dict[str, float] = {}

        def mark(name: str) -> None:
            marks[name] = (workflow.now() - start).total_seconds()

        async def day_timer() -> None:
            await workflow.sleep(timedelta(days=1))
            mark("timer_1d")

        timer = asyncio.create_task(day_timer())
        mark("activity_start")
        await workflow.execute_activity(
            sleepy_activity, 2.0, start_to_close_timeout=timedelta(seconds=30)
        )
        mark("activity_end")
        await timer
        await workflow.sleep(timedelta(days=2))
        mark("after_2d")
        retried = await workflow.execute_activity(
            rate_limited_activity,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        mark("retried_done")
        return {"marks": marks, "retried": retried}


WORKFLOWS = [LifecycleWorkflow, ParentWorkflow, TaggedWorkflow, ActivityWorkflow]
ACTIVITIES = [sleepy_activity, rate_limited_activity]


# ------------------------------------------------------------------- fixtures


@pytest_asyncio.fixture(scope="module")
async def dev_env():
    async with await start_dev_server() as env:
        yield env


@pytest_asyncio.fixture(scope="module")
async def ts_env():
    # The app's converter is pydantic-based; prove the harness passes one through.
    async with await start_time_skipping(data_converter=pydantic_data_converter) as env:
        assert env.client.data_converter is pydantic_data_converter
        yield env


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def worker(client: Client, task_queue: str) -> Worker:
    return Worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=ACTIVITIES)


async def wait_started(handle: WorkflowHandle[Any, Any], within: float = 10.0) -> None:
    """Until the workflow exists (for child workflows started by a parent)."""
    deadline = time.monotonic() + within
    while True:
        try:
            await handle.describe()
            return
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def timer_events(handle: WorkflowHandle[Any, Any]) -> dict[str, int]:
    counts = {"started": 0, "fired": 0, "canceled": 0}
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            counts["started"] += 1
        elif event.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            counts["fired"] += 1
        elif event.event_type == EventType.EVENT_TYPE_TIMER_CANCELED:
            counts["canceled"] += 1
    return counts


# ---------------------------------------------------------------- (a) dev server


def test_temporal_bin_is_the_venv_binary_and_free_port_binds() -> None:
    assert TEMPORAL_BIN == str(Path(sys.executable).parent / "temporal")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


async def test_dev_server_search_attributes_and_visibility(dev_env: WorkflowEnvironment) -> None:
    client = dev_env.client
    resp = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    registered = {name: int(t) for name, t in resp.custom_attributes.items()}
    for key in SEARCH_ATTRIBUTES:
        assert registered.get(key.name) == int(key.indexed_value_type), key.name

    task_queue = new_id("tq")
    invited, started = new_id("invited"), new_id("started")
    acme = TypedSearchAttributes([SearchAttributePair(LEVER_ACCOUNT, "acme")])
    async with worker(client, task_queue):
        h_invited = await client.start_workflow(
            TaggedWorkflow.run, args=["invited", 87.5], id=invited,
            task_queue=task_queue, search_attributes=acme,
        )  # fmt: skip
        h_started = await client.start_workflow(
            TaggedWorkflow.run, args=["started", None], id=started,
            task_queue=task_queue, search_attributes=acme,
        )  # fmt: skip
        found = await wait_for_visibility(
            client, 'LeverAccount="acme" AND PyStatus="invited"', expected_ids={invited}
        )
        assert found[0].typed_search_attributes.get(PY_SCORE) == 87.5
        await wait_for_visibility(
            client, 'LeverAccount="acme" AND PyScore >= 80', expected_ids={invited}
        )
        await wait_for_visibility(client, 'LeverAccount="acme"', expected_ids={invited, started})
        desc = await h_invited.describe()
        assert desc.typed_search_attributes.get(PY_STATUS) == "invited"
        assert desc.typed_search_attributes.get(LEVER_ACCOUNT) == "acme"
        for handle in (h_invited, h_started):
            await handle.signal(TaggedWorkflow.finish)
        assert await h_invited.result() == "invited"
        assert await h_started.result() == "started"


async def test_time_skipping_needs_the_dynamic_config_flag(dev_env: WorkflowEnvironment) -> None:
    """A plain dev server rejects starts that carry a time-skipping config."""
    skipper = TimeSkipper(dev_env.client)
    with pytest.raises(RPCError) as err:
        await skipper.client.start_workflow(
            LifecycleWorkflow.run, args=[[2], 7], id=new_id("noflag"), task_queue="unused"
        )
    assert err.value.status == RPCStatusCode.UNIMPLEMENTED
    assert "Time-Skipping feature is not enabled" in err.value.message


# ----------------------------------------------------------- (b) time skipping


async def test_reminders_and_expiry_skip_automatically(ts_env: WorkflowEnvironment) -> None:
    """Default config: no fast_forward call; 2 d, 5 d, 7 d pass in a few real seconds."""
    task_queue = new_id("tq")
    async with worker(ts_env.client, task_queue):
        t0 = time.monotonic()
        result = await ts_env.client.execute_workflow(
            LifecycleWorkflow.run, args=[[2, 5], 7], id=new_id("auto"), task_queue=task_queue
        )
        real = time.monotonic() - t0
    assert result["outcome"] == "expired"
    assert len(result["reminders"]) == 2
    assert_about(result["reminders"][0], 2 * DAY, "reminder 1")
    assert_about(result["reminders"][1], 5 * DAY, "reminder 2")
    assert_about(result["end"], 7 * DAY, "expiry")
    # FAST_TIMER_ARGS: a skip lands ~20 ms past the deadline (about 1 s without them).
    overshoot = [result["reminders"][0] - 2 * DAY, result["reminders"][1] - 5 * DAY,
                 result["end"] - 7 * DAY]  # fmt: skip
    assert max(overshoot) < 0.8, overshoot
    assert real < 15, f"took {real:.1f}s real"
    print(f"auto 2d/5d/7d: real {real:.2f}s, offsets past deadline "
          f"{[round(r - d * DAY, 3) for r, d in zip(result['reminders'], (2, 5), strict=True)]}, "
          f"{round(result['end'] - 7 * DAY, 3)}")  # fmt: skip


async def test_clocks_are_per_workflow(ts_env: WorkflowEnvironment) -> None:
    """A workflow started with skipping disabled stays on the wall clock while another skips."""
    task_queue = new_id("tq")
    async with worker(ts_env.client, task_queue):
        with ts_env.with_time_skipping_disabled():
            manual = await ts_env.client.start_workflow(
                LifecycleWorkflow.run, args=[[2, 5], 7], id=new_id("manual"), task_queue=task_queue
            )
        auto = await ts_env.client.execute_workflow(
            LifecycleWorkflow.run, args=[[2, 5], 7], id=new_id("auto"), task_queue=task_queue
        )
        assert auto["outcome"] == "expired"
        assert await ts_env.get_time_skipping_info(manual) is None
        assert await manual.query(LifecycleWorkflow.reminders_sent) == []
        drift = (await ts_env.get_current_time(manual)) - datetime.now(UTC)
        assert abs(drift.total_seconds()) < 5

        # Unbounded fast-forward: enable skipping and wait for the workflow to close.
        t0 = time.monotonic()
        assert await ts_env.fast_forward(manual, None) is False
        result = await manual.result()
        assert time.monotonic() - t0 < 10
    assert result["outcome"] == "expired"
    assert_about(result["end"], 7 * DAY, "expiry after fast_forward(None)")


# ------------------------------------------------- (c) signal after a fast-forward


async def test_signal_after_fast_forward_to_3_days(ts_env: WorkflowEnvironment) -> None:
    task_queue = new_id("tq")
    async with worker(ts_env.client, task_queue):
        with ts_env.with_time_skipping_disabled():
            handle = await ts_env.client.start_workflow(
                LifecycleWorkflow.run, args=[[2, 5], 7], id=new_id("ff"), task_queue=task_queue
            )
        t0 = time.monotonic()
        assert await ts_env.fast_forward(handle, timedelta(days=3)) is True
        ff_real = time.monotonic() - t0

        sent = await handle.query(LifecycleWorkflow.reminders_sent)
        assert len(sent) == 1
        assert_about(sent[0], 2 * DAY, "reminder 1")
        info = await ts_env.get_time_skipping_info(handle)
        assert info is not None
        assert not info.effective_config.enabled  # auto-disabled at the target
        virtual_now = await ts_env.get_current_time(handle)

        await handle.signal(LifecycleWorkflow.finish)
        result = await handle.result()
    assert result["outcome"] == "completed"
    assert result["reminders"] == sent  # no reminder at 5 d
    assert_about(result["end"], 3 * DAY, "signal handled")
    assert result["end"] < 5 * DAY
    ff_target = virtual_now - datetime.fromisoformat(result["start"])
    assert abs(ff_target.total_seconds() - 3 * DAY) < 5  # the clock stopped at start + 3 d
    assert await timer_events(handle) == {"started": 3, "fired": 1, "canceled": 2}
    assert ff_real < 10
    print(f"fast_forward 3d: {ff_real:.2f}s real, signal at +{result['end'] - 3 * DAY:.3f}s")


async def test_skip_budget_disables_skipping_silently(ts_env: WorkflowEnvironment) -> None:
    """`max_session_skip_count` (server default 200) ends automatic skipping without an error."""
    skipper = TimeSkipper(ts_env.client, config=TimeSkippingConfig(max_session_skip_count=2))
    task_queue = new_id("tq")
    async with worker(ts_env.client, task_queue):
        handle = await skipper.client.start_workflow(
            LifecycleWorkflow.run, args=[[1, 2, 3], 4], id=new_id("budget"), task_queue=task_queue
        )
        deadline = time.monotonic() + 15
        while True:
            info = await skipper.get_time_skipping_info(handle)
            assert info is not None
            if not info.effective_config.enabled:
                break
            assert time.monotonic() < deadline, "skipping never auto-disabled"
            await asyncio.sleep(0.2)
        assert info.effective_config.max_session_skip_count == 2
        await asyncio.sleep(1.5)  # nothing moves any more
        assert len(await handle.query(LifecycleWorkflow.reminders_sent)) == 2
        await skipper.fast_forward(handle, None)  # a new session resumes skipping
        result = await handle.result()
    assert result["outcome"] == "expired"
    assert_about(result["end"], 4 * DAY, "expiry")

    # The server fills in its default budget when the config leaves it at 0.
    async with worker(ts_env.client, task_queue):
        short = await ts_env.client.start_workflow(
            LifecycleWorkflow.run, args=[[], 0.001], id=new_id("dflt"), task_queue=task_queue
        )
        await short.result()
    info = await ts_env.get_time_skipping_info(short)
    assert info is not None and info.effective_config.max_session_skip_count == 200


# ------------------------------------------------------------ (d) activities


async def test_activities_under_time_skipping(ts_env: WorkflowEnvironment) -> None:
    task_queue = new_id("tq")
    async with worker(ts_env.client, task_queue):
        t0 = time.monotonic()
        result = await ts_env.client.execute_workflow(
            ActivityWorkflow.run, id=new_id("act"), task_queue=task_queue
        )
        real = time.monotonic() - t0
    marks = result["marks"]
    # No skipping while an activity is in flight: 2 s real is 2 s virtual ...
    assert 2.0 <= marks["activity_end"] - marks["activity_start"] < 6
    # ... and the 1 d timer that raced it fired only after the activity ended.
    assert marks["timer_1d"] > marks["activity_end"]
    assert_about(marks["timer_1d"], DAY, "1 d timer")
    assert_about(marks["after_2d"], 3 * DAY, "2 d sleep after it")
    # Retry backoff is skipped too (next_retry_delay=1 h).
    retried = result["retried"]
    assert retried["attempt"] == 2
    assert_about(marks["retried_done"], 3 * DAY + 3600, "retried activity")
    # Activity code sees virtual time in activity.info(), real time in datetime.now().
    lag = datetime.fromisoformat(retried["scheduled"]) - datetime.fromisoformat(
        retried["wall_clock"]
    )
    assert lag > timedelta(days=3)
    assert real < 15, f"took {real:.1f}s real"
    print(f"activities: real {real:.2f}s, marks {marks}")


# ------------------------------------------------------------ child workflows


async def test_child_inherits_automatic_skipping_but_parent_clock_stays(
    ts_env: WorkflowEnvironment,
) -> None:
    task_queue = new_id("tq")
    async with worker(ts_env.client, task_queue):
        parent_id = new_id("parent")
        t0 = time.monotonic()
        result = await ts_env.client.execute_workflow(
            ParentWorkflow.run, 0, id=parent_id, task_queue=task_queue
        )
        real = time.monotonic() - t0
        child_info = await ts_env.get_time_skipping_info(
            ts_env.client.get_workflow_handle(f"{parent_id}-child")
        )
    child = result["child"]
    assert child["outcome"] == "expired"
    assert_about(child["reminders"][0], 2 * DAY, "child reminder 1")
    assert_about(child["reminders"][1], 5 * DAY, "child reminder 2")
    assert_about(child["end"], 7 * DAY, "child expiry")
    child_start = datetime.fromisoformat(child["start"]) - datetime.fromisoformat(result["start"])
    assert child_start < timedelta(seconds=5)
    # The parent waited for a 7-day child, yet its own clock moved only seconds.
    assert result["end"] < 60
    assert child_info is not None and child_info.effective_config.enabled
    assert real < 15
    print(f"child auto: real {real:.2f}s, parent end +{result['end']:.3f}s")


async def test_fast_forward_a_child_directly(ts_env: WorkflowEnvironment) -> None:
    """Parent and child started without skipping: fast_forward the child's handle.

    fast_forward on the parent neither reaches a running child nor completes: a
    workflow with no pending timer has nothing to skip to.
    """
    task_queue = new_id("tq")
    async with worker(ts_env.client, task_queue):
        with ts_env.with_time_skipping_disabled():
            parent = await ts_env.client.start_workflow(
                ParentWorkflow.run, 0, id=new_id("parent"), task_queue=task_queue
            )
        child = ts_env.client.get_workflow_handle(f"{parent.id}-child")
        await wait_started(child)
        assert await ts_env.get_time_skipping_info(child) is None  # nothing inherited

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ts_env.fast_forward(parent, timedelta(days=3)), 2)
        assert await ts_env.get_time_skipping_info(child) is None  # not propagated
        assert await child.query(LifecycleWorkflow.reminders_sent) == []

        assert await ts_env.fast_forward(child, timedelta(days=3)) is True
        sent = await child.query(LifecycleWorkflow.reminders_sent)
        assert len(sent) == 1
        assert_about(sent[0], 2 * DAY, "child reminder 1")
        await child.signal(LifecycleWorkflow.finish)
        result = await parent.result()
    assert result["child"]["outcome"] == "completed"
    assert_about(result["child"]["end"], 3 * DAY, "child signalled")
    assert result["end"] < 60  # parent clock untouched


async def test_child_started_during_parent_fast_forward_runs_unbounded(
    ts_env: WorkflowEnvironment,
) -> None:
    """A bounded fast_forward on the parent is inherited by a child as *unbounded* skipping."""
    task_queue = new_id("tq")
    async with worker(ts_env.client, task_queue):
        with ts_env.with_time_skipping_disabled():
            parent = await ts_env.client.start_workflow(
                ParentWorkflow.run, 1, id=new_id("parent"), task_queue=task_queue
            )
        t0 = time.monotonic()
        # The parent's clock never reaches 3 d (it waits on the child, no timer), the
        # child skips to its 7 d expiry, the parent completes: fast_forward says False.
        assert await ts_env.fast_forward(parent, timedelta(days=3)) is False
        real = time.monotonic() - t0
        result = await parent.result()
        child_info = await ts_env.get_time_skipping_info(
            ts_env.client.get_workflow_handle(f"{parent.id}-child")
        )
    child = result["child"]
    child_start = datetime.fromisoformat(child["start"]) - datetime.fromisoformat(result["start"])
    assert_about(child_start.total_seconds(), DAY, "child start (inherits virtual time)")
    assert child["outcome"] == "expired"  # 7 d after its start: way past the 3 d asked for
    assert_about(child["end"], 7 * DAY, "child expiry")
    assert_about(result["end"], DAY, "parent end")
    assert child_info is not None
    assert child_info.effective_config.enabled
    assert not child_info.effective_config.HasField("fast_forward_config")
    assert real < 15
    print(f"child during parent ff: real {real:.2f}s")


# ------------------------------------------------- (e) server as a subprocess


async def test_subprocess_server_keeps_data_across_restart_and_crash(tmp_path) -> None:
    server = DevServerProcess(tmp_path / "temporal.db")
    task_queue = new_id("tq")
    wf_id = new_id("durable")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    await server.start()
    timings["start"] = time.monotonic() - t0
    try:
        client = await server.connect()
        async with worker(client, task_queue):
            handle = await client.start_workflow(
                TaggedWorkflow.run, args=["invited", None], id=wf_id, task_queue=task_queue,
                search_attributes=TypedSearchAttributes([SearchAttributePair(LEVER_ACCOUNT, "acme")]),
            )  # fmt: skip
            await wait_for_visibility(client, f'WorkflowId="{wf_id}" AND PyStatus="invited"')

        t0 = time.monotonic()
        assert await server.stop() == 0
        timings["stop"] = time.monotonic() - t0
        assert not server.running
        t0 = time.monotonic()
        await server.start()
        timings["restart"] = time.monotonic() - t0

        client = await server.connect()
        desc = await client.get_workflow_handle(wf_id).describe()
        assert desc.status == WorkflowExecutionStatus.RUNNING
        assert desc.run_id == handle.result_run_id
        assert desc.typed_search_attributes.get(PY_STATUS) == "invited"
        async with worker(client, task_queue):
            await client.get_workflow_handle(wf_id).signal(TaggedWorkflow.finish)
            assert await client.get_workflow_handle(wf_id).result() == "invited"

        assert await server.kill() == -9  # crash
        await server.start()
        client = await server.connect()
        desc = await client.get_workflow_handle(wf_id).describe()
        assert desc.status == WorkflowExecutionStatus.COMPLETED
    finally:
        await server.stop()
    assert (tmp_path / "temporal.db").exists()
    print(f"subprocess server: {timings}")

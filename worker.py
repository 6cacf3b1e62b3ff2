"""The Temporal worker: every workflow and activity of py-lever.

- main task queue (``PYLEVER_TASK_QUEUE``): the workflows, Py and Temporal activities;
- one task queue per Lever account (``<queue>-lever-<account>``) for its Lever
  activities, rate-limited by the Temporal server for all workers together, so
  the account stays under Lever's limit however many worker processes run.

Run: ``python worker.py`` with ``PYLEVER_CONFIG`` and ``PYLEVER_PAYLOAD_KEYS`` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities.lever import LeverActivities
from activities.py import PyActivities
from activities.temporal_ops import TemporalActivities
from pylever import search_attributes as sa
from pylever.checks import log_check_problems
from pylever.codec import codec_from_env, data_converter
from pylever.config import AppConfig, load_config_or_exit
from pylever.lever_client import LeverClient
from pylever.logs import configure_logging, log_event
from pylever.py_client import PyClient
from pylever.settings import Settings
from pylever.worker_metrics import serve_worker_metrics
from workflows.assessment import AssessmentWorkflow, InvitationWorkflow
from workflows.decisions import lever_task_queue
from workflows.withdraw import WithdrawCandidateWorkflow

log = logging.getLogger("pylever.worker")

WORKFLOWS = [AssessmentWorkflow, InvitationWorkflow, WithdrawCandidateWorkflow]
GRACEFUL_SHUTDOWN = timedelta(seconds=45)


async def register_search_attributes(client: Client) -> list[str]:
    """Add the custom search attributes of SPEC section 6 that the namespace lacks."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    known = set(existing.custom_attributes) | set(existing.system_attributes)
    missing: dict[str, IndexedValueType.ValueType] = {}
    for key in sa.ALL:
        if key.name not in known:
            # The SDK's enum shares its numbers with the proto's IndexedValueType.
            missing[key.name] = IndexedValueType.ValueType(key.indexed_value_type.value)
    if missing:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
            )
        except RPCError as exc:
            if exc.status != RPCStatusCode.ALREADY_EXISTS:  # another worker was first
                raise
    return sorted(missing)


@contextlib.asynccontextmanager
async def external_clients(
    config: AppConfig, *, lever_rps: float | None = None
) -> AsyncIterator[tuple[dict[str, LeverClient], PyClient]]:
    """Clients for activities: one attempt each, Temporal retries."""
    levers = {
        a.id: LeverClient(
            a.lever_api_url,
            a.lever_api_key.get_secret_value(),
            max_attempts=1,
            rate=lever_rps if lever_rps is not None else 10.0,
        )
        for a in config.accounts
    }
    py = PyClient(config.py.api_url, config.py.api_key.get_secret_value(), max_attempts=1)
    try:
        yield levers, py
    finally:
        for lever in levers.values():
            await lever.aclose()
        await py.aclose()


def build_workers(
    client: Client,
    config: AppConfig,
    task_queue: str,
    levers: Mapping[str, LeverClient],
    py: PyClient,
    **worker_options: object,
) -> list[Worker]:
    """The main worker and one rate-limited Lever worker per account."""
    lever_activities = LeverActivities(levers)
    py_activities = PyActivities(py, config.callback_url)
    temporal_activities = TemporalActivities(client)
    options: dict = {"graceful_shutdown_timeout": GRACEFUL_SHUTDOWN, **worker_options}
    workers = [
        Worker(
            client,
            task_queue=task_queue,
            workflows=WORKFLOWS,
            activities=[
                py_activities.find_tests,
                py_activities.create_invitation,
                py_activities.get_invitation,
                py_activities.remind,
                py_activities.cancel,
                temporal_activities.running_assessments,
                temporal_activities.previous_invitations,
                temporal_activities.wait_closed,
                temporal_activities.delete_executions,
                temporal_activities.delete_candidate_executions,
            ],
            **options,
        )
    ]
    for account in config.accounts:
        workers.append(
            Worker(
                client,
                task_queue=lever_task_queue(task_queue, account.id),
                activities=[
                    lever_activities.read_candidate,
                    lever_activities.opportunity_state,
                    lever_activities.add_tags,
                    lever_activities.remove_tags,
                    lever_activities.add_links,
                    lever_activities.move_to_stage,
                ],
                # Enforced by the server across every worker polling this queue.
                max_task_queue_activities_per_second=account.lever_requests_per_second,
                **options,
            )
        )
    return workers


async def connect(settings: Settings, converter: object, runtime: Runtime | None) -> Client:
    """Connect, waiting up to a minute for Temporal (it may be starting beside us)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            return await Client.connect(
                settings.temporal_address,
                namespace=settings.temporal_namespace,
                data_converter=converter,  # type: ignore[arg-type]
                runtime=runtime,
            )
        except Exception as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log_event(log, "waiting for Temporal", logging.WARNING, error=type(exc).__name__)
            await asyncio.sleep(1)


def _runtime() -> Runtime | None:
    """With ``PYLEVER_WORKER_METRICS_ADDRESS``: one /metrics for py-lever's and the SDK's metrics."""
    try:
        exporter = serve_worker_metrics(os.environ)
    except OSError as exc:  # the port is taken, or the address is not ours
        raise ValueError(f"PYLEVER_WORKER_METRICS_ADDRESS: cannot serve metrics: {exc}") from None
    if exporter is None:
        return None
    log_event(log, "serving metrics", address=f"{exporter.address[0]}:{exporter.address[1]}")
    return exporter.runtime


async def main() -> int:
    configure_logging()
    settings = Settings.from_env()
    try:
        config = load_config_or_exit(settings.config_path, "worker")
        codec = codec_from_env({"PYLEVER_PAYLOAD_KEYS": settings.payload_keys or ""})
        runtime = _runtime()
    except SystemExit as exc:
        return int(exc.code or 2)
    except ValueError as exc:  # PYLEVER_PAYLOAD_KEYS, PYLEVER_WORKER_METRICS_ADDRESS
        print(f"py-lever worker: configuration error: {exc}", file=sys.stderr)
        return 2

    client = await connect(settings, data_converter(codec), runtime)
    added = await register_search_attributes(client)
    if added:
        log_event(log, "registered search attributes", names=added)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with external_clients(config) as (levers, py):
        workers = build_workers(client, config, settings.task_queue, levers, py)
        async with contextlib.AsyncExitStack() as stack:
            for worker in workers:
                await stack.enter_async_context(worker)
            log_event(
                log, "worker started",
                task_queue=settings.task_queue, accounts=[a.id for a in config.accounts],
            )
            # Config vs. Lever and Py (as `cli.py check`): problems are warnings, not fatal.
            checks = asyncio.create_task(log_check_problems(config, log))
            await stop.wait()
            checks.cancel()
            log_event(log, "worker stopping")
    return 0


def _exit(code: int) -> None:
    """Exit without interpreter teardown once everything is shut down.

    The SDK's Rust threads can outlive ``asyncio.run`` and touch the GIL while
    CPython finalizes: "Fatal Python error: PyGILState_Release ... finalizing",
    SIGABRT, after a clean graceful shutdown (temporalio/sdk-python#300; seen in
    about one SIGTERM in ten here). ``os._exit`` keeps the exit code honest.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(asyncio.run(main()))

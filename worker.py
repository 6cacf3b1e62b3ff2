"""The Temporal worker: every workflow and activity of py-lever.

- main task queue (``PYLEVER_TASK_QUEUE``): the workflows, Py and Temporal activities;
- one shared Lever task queue (``<queue>-lever``) for every account's Lever
  activities, each keyed by its account; the server limits each account's rate
  there for all workers together (``pylever.lever_limits``), so an account stays
  under Lever's limit however many worker processes run, and serves the accounts
  in turn, so one account's backlog does not delay another's.

The worker's cost does not grow with the number of accounts: two task-queue
workers in all, and a Lever client made only for an account that has work
(``pylever.lever_accounts``). ``SIGHUP`` re-reads the configuration
(``pylever.reload``): new accounts are served at once, changed ones get new
clients and limits, removed ones have their running assessments withdrawn.

Run: ``python worker.py`` with ``PYLEVER_CONFIG`` and ``PYLEVER_PAYLOAD_KEYS`` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities.lever import LeverActivities, LeverClients
from activities.py import PyActivities
from activities.temporal_ops import TemporalActivities
from pylever import search_attributes as sa
from pylever.checks import log_check_problems
from pylever.codec import codec_from_env, data_converter
from pylever.config import AppConfig, load_config_or_exit
from pylever.gateway import Gateway
from pylever.legacy_queues import LegacyQueueDrain
from pylever.lever_accounts import LeverAccounts, activity_client
from pylever.lever_limits import apply_lever_limits, lever_limits
from pylever.logs import configure_logging, log_event
from pylever.py_client import PyClient
from pylever.reload import AccountChanges, ConfigReloader
from pylever.settings import Settings
from pylever.worker_metrics import serve_worker_metrics
from workflows.assessment import AssessmentWorkflow, InvitationWorkflow
from workflows.decisions import lever_task_queue
from workflows.queue_migration import LeverQueueMigrationWorkflow
from workflows.remove_account import RemoveAccountWorkflow
from workflows.withdraw import WithdrawCandidateWorkflow

log = logging.getLogger("pylever.worker")

WORKFLOWS = [AssessmentWorkflow, InvitationWorkflow, WithdrawCandidateWorkflow, RemoveAccountWorkflow]
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
) -> AsyncIterator[tuple[LeverAccounts, PyClient]]:
    """Clients for activities: one attempt each, Temporal retries. Lever clients are
    made per account on first use."""
    rate = 10.0 if lever_rps is None else lever_rps
    levers = LeverAccounts(config.accounts, lambda a: activity_client(a, rate=rate))
    py = _py_client(config)
    try:
        yield levers, py
    finally:
        await levers.aclose()
        await py.aclose()


def _py_client(config: AppConfig) -> PyClient:
    return PyClient(config.py.api_url, config.py.api_key.get_secret_value(), max_attempts=1)


def lever_worker(
    client: Client, task_queue: str, activities: LeverActivities, **options: Any
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        activities=[
            activities.read_candidate,
            activities.opportunity_state,
            activities.add_tags,
            activities.remove_tags,
            activities.add_links,
            activities.move_to_stage,
        ],
        **options,
    )


class Workers:
    """The process's two workers (main, Lever) and the activity objects a reload updates.

    The Lever worker has no rate of its own: each account's limit is the shared
    queue's fairness-key limit (``pylever.lever_limits``)."""

    def __init__(
        self,
        client: Client,
        config: AppConfig,
        task_queue: str,
        levers: LeverClients,
        py: PyClient,
        *,
        on_unknown_account: Callable[[], Awaitable[object]] | None = None,
        **worker_options: Any,
    ) -> None:
        self.lever = LeverActivities(levers, on_unknown=on_unknown_account)
        self.py = PyActivities(py, config.callback_url)
        temporal = TemporalActivities(client)
        self.options: dict[str, Any] = {"graceful_shutdown_timeout": GRACEFUL_SHUTDOWN,
                                        **worker_options}  # fmt: skip
        self.workers = [
            Worker(
                client,
                task_queue=task_queue,
                workflows=[*WORKFLOWS, LeverQueueMigrationWorkflow],
                activities=[
                    self.py.find_tests,
                    self.py.create_invitation,
                    self.py.get_invitation,
                    self.py.remind,
                    self.py.cancel,
                    temporal.running_assessments,
                    temporal.account_assessments,
                    temporal.previous_invitations,
                    temporal.wait_closed,
                    temporal.delete_executions,
                    temporal.delete_candidate_executions,
                ],
                **self.options,
            ),
            lever_worker(client, lever_task_queue(task_queue), self.lever, **self.options),
        ]


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


UNKNOWN_ACCOUNT_REREAD = 10.0  # seconds: an unknown account re-reads the file at most this often


class WorkerProcess:
    """What ``main`` runs: the workers, and what a reload changes."""

    def __init__(self, client: Client, settings: Settings, config: AppConfig) -> None:
        self.client = client
        self.settings = settings
        self.lever_queue = lever_task_queue(settings.task_queue)
        self.levers = LeverAccounts(config.accounts)
        self.reloader = ConfigReloader(settings.config_path or "", "worker", config, self.apply)
        self._reread_lock = asyncio.Lock()
        self._reread_at = float("-inf")
        self.workers = Workers(
            client, config, settings.task_queue, self.levers, _py_client(config),
            on_unknown_account=self.reread_for_unknown_account,
        )  # fmt: skip

    async def apply(self, old: AppConfig, new: AppConfig, changes: AccountChanges) -> None:
        """A reloaded configuration: limits first, then clients, then withdrawals."""
        await apply_lever_limits(self.client, self.lever_queue, new.accounts)
        self.levers.update(new.accounts)
        self.workers.lever.watch(changes.added)
        if new.py != old.py or new.callback_url != old.callback_url:
            retired = self.workers.py.use(_py_client(new), new.callback_url)
            asyncio.get_running_loop().call_later(
                60, lambda: asyncio.ensure_future(retired.aclose())
            )
        gateway = Gateway(self.client, self.settings.task_queue)
        for account_id in changes.removed:
            await gateway.remove_account(account_id)

    async def reread_for_unknown_account(self) -> None:
        """An activity names an account this process does not know: the file may (a
        reload that has not reached this process yet). At most every 10 s."""
        async with self._reread_lock:
            now = asyncio.get_running_loop().time()
            if now - self._reread_at < UNKNOWN_ACCOUNT_REREAD:
                return
            self._reread_at = now
            await self.reloader.reload()

    def legacy_worker(self, task_queue: str, rate: float) -> Worker:
        return lever_worker(
            self.client, task_queue, self.workers.lever,
            # The old per-account queue is limited by the server as it was before.
            max_task_queue_activities_per_second=rate, **self.workers.options,
        )  # fmt: skip

    def rate_of(self, account_id: str) -> float | None:
        account = self.reloader.current.account(account_id)
        return None if account is None else account.lever_requests_per_second

    async def run(self, stop: asyncio.Event) -> None:
        config = self.reloader.current
        # Before polling: without its limit the shared queue would let Lever calls run freely.
        await apply_lever_limits(self.client, self.lever_queue, config.accounts)
        drain = LegacyQueueDrain(
            self.client, self.settings.task_queue, self.legacy_worker, self.rate_of
        )
        async with contextlib.AsyncExitStack() as stack:
            for worker in self.workers.workers:
                await stack.enter_async_context(worker)
            stack.push_async_callback(self.levers.aclose)
            self.reloader.install()
            stack.push_async_callback(self.reloader.aclose)
            draining = asyncio.create_task(_log_failure(drain.run(), "old Lever queues"))
            limits = lever_limits(config.accounts)
            log_event(
                log, "worker started",
                task_queue=self.settings.task_queue, lever_task_queue=self.lever_queue,
                accounts=len(config.accounts), lever_rps_default=limits.default_rps,
                accounts_with_own_rate=len(limits.weights),
            )  # fmt: skip
            # Config vs. Lever and Py (as `cli.py check`): problems are warnings, not fatal.
            checks = asyncio.create_task(log_check_problems(config, log))
            await stop.wait()
            for task in (checks, draining):
                task.cancel()
            log_event(log, "worker stopping")


async def _log_failure(work: Awaitable[None], what: str) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log_event(log, f"{what}: {type(exc).__name__}: {exc}", logging.ERROR)


async def main() -> int:
    configure_logging()
    # SIGHUP's default action ends the process: ignore it until the reloader takes it
    # over (connecting to Temporal may take a minute), and again once it lets go.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
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
    process = WorkerProcess(client, settings, config)
    try:
        await process.run(stop)
    finally:
        await process.workers.py.client.aclose()
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

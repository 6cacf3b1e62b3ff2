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
import functools
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
from pylever.config import Account, AppConfig, ConfigError, load_config, load_config_or_exit
from pylever.gateway import Gateway
from pylever.legacy_queues import LegacyQueueDrain
from pylever.lever_accounts import LeverAccounts, activity_client
from pylever.lever_limits import apply_lever_limits, lever_limits
from pylever.logs import configure_logging, log_event
from pylever.py_client import PyClient
from pylever.reload import AccountChanges, ConfigReloader
from pylever.settings import Settings
from pylever.unconfigured import warn_about_unconfigured
from pylever.worker_metrics import serve_worker_metrics
from workflows.assessment import AssessmentWorkflow
from workflows.decisions import lever_task_queue
from workflows.invitation import InvitationWorkflow
from workflows.queue_migration import LeverQueueMigrationWorkflow
from workflows.remove_account import RemoveAccountWorkflow
from workflows.withdraw import WithdrawCandidateWorkflow

log = logging.getLogger("pylever.worker")

WORKFLOWS = [
    AssessmentWorkflow,
    InvitationWorkflow,
    WithdrawCandidateWorkflow,
    RemoveAccountWorkflow,
]
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
    levers = LeverAccounts(config.accounts, lambda a: activity_client(a, rate=lever_rps))
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
        removed_account: Callable[[str], bool] | None = None,
        **worker_options: Any,
    ) -> None:
        self.lever = LeverActivities(levers, on_unknown=on_unknown_account, removed=removed_account)
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
REMOVED_ACCOUNT_GRACE = 300.0  # seconds a removed account's Lever calls still run (see apply)
PY_CLIENT_GRACE = 60.0  # seconds a replaced Py client stays open for the calls using it


class WorkerProcess:
    """What ``main`` runs: the workers, and what a reload changes."""

    def __init__(
        self, client: Client, settings: Settings, config: AppConfig, loaded_mtime: float | None
    ) -> None:
        self.client = client
        self._loaded_mtime = loaded_mtime  # of the file ``config`` was read from
        self.settings = settings
        self.lever_queue = lever_task_queue(settings.task_queue)
        self.levers = LeverAccounts(config.accounts)
        self.reloader = ConfigReloader(settings.config_path or "", "worker", config, self.apply)
        self._reread_lock = asyncio.Lock()
        self._reread_at = float("-inf")
        self._leaving: dict[str, Account] = {}  # removed accounts within their grace
        self._deferred: set[asyncio.Task[None]] = set()
        self.workers = Workers(
            client, config, settings.task_queue, self.levers, _py_client(config),
            on_unknown_account=self.reread_for_unknown_account,
            removed_account=self._leaving.__contains__,
        )  # fmt: skip

    async def apply(self, old: AppConfig, new: AppConfig, changes: AccountChanges) -> None:
        """A reloaded configuration: limits, clients, then the removed accounts' withdrawals.

        A removed account keeps its Lever client for ``REMOVED_ACCOUNT_GRACE`` for the
        calls of its running assessments, which get the withdrawal meanwhile and end
        ``cancelled`` (account removed); a new assessment's first read is refused, so a
        removed customer's candidates get no new invitation."""
        await apply_lever_limits(self.client, self.lever_queue, new.accounts)
        for account_id in changes.removed:
            leaving = old.account(account_id)
            if leaving is not None:
                self._leaving[account_id] = leaving
        for account_id in changes.added:
            self._leaving.pop(account_id, None)  # back before its grace ran out
        self.levers.update(self._lever_accounts(new))
        self.workers.lever.watch(changes.added)
        if new.py != old.py or new.callback_url != old.callback_url:
            retired = self.workers.py.use(_py_client(new), new.callback_url)
            self._later(PY_CLIENT_GRACE, retired.aclose)
        gateway = Gateway(self.client, self.settings.task_queue)
        for account_id in changes.added:  # back after a removal: stop withdrawing its new ones
            if await gateway.stop_account_removal(account_id):
                log_event(log, "account back: its withdrawal stopped", account=account_id)
        for account_id in changes.removed:
            await gateway.remove_account(account_id)
            self._later(REMOVED_ACCOUNT_GRACE, functools.partial(self._forget, account_id))

    def _lever_accounts(self, config: AppConfig) -> list[Account]:
        configured = {a.id for a in config.accounts}
        return [*config.accounts, *(a for a in self._leaving.values() if a.id not in configured)]

    async def _forget(self, account_id: str) -> None:
        self._leaving.pop(account_id, None)
        self.levers.update(self._lever_accounts(self.reloader.current))

    async def _startup_checks(self, config: AppConfig) -> None:
        await _log_failure(
            warn_about_unconfigured(
                self.client, self.settings.task_queue, (a.id for a in config.accounts)
            ),
            "looking for assessments of unconfigured accounts",
        )
        await log_check_problems(config, log)

    async def _cancel_deferred(self) -> None:
        for task in list(self._deferred):
            task.cancel()
        await asyncio.gather(*self._deferred, return_exceptions=True)

    def _later(self, delay: float, work: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            await work()

        task = asyncio.create_task(_log_failure(run(), "deferred clean-up"))
        self._deferred.add(task)
        task.add_done_callback(self._deferred.discard)

    async def reread_for_unknown_account(self) -> None:
        """An activity names an account this process does not know: the file may already
        name it (a reload that has not reached this process yet). Only additions are
        taken this way (at most every 10 s); changes and removals wait for SIGHUP, so a
        file caught half-edited never withdraws anyone."""
        async with self._reread_lock:
            now = asyncio.get_running_loop().time()
            if now - self._reread_at < UNKNOWN_ACCOUNT_REREAD:
                return
            self._reread_at = now
            try:
                on_file = load_config(self.reloader.path)
            except ConfigError:
                return  # the SIGHUP that follows the edit reports it
            known = set(self.levers)
            added = [a for a in on_file.accounts if a.id not in known]
            if not added:
                return
            accounts = [*self._lever_accounts(self.reloader.current), *added]
            await apply_lever_limits(self.client, self.lever_queue, accounts)
            self.levers.update(accounts)
            self.workers.lever.watch(a.id for a in added)
            log_event(
                log, "accounts served before SIGHUP (named by an activity, found in the file)",
                accounts=[a.id for a in added],
            )  # fmt: skip

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
            # Closed last (the stack unwinds in reverse): after the workers' graceful
            # shutdown has let the activities in flight finish with their clients.
            stack.push_async_callback(self.levers.aclose)
            stack.push_async_callback(self._cancel_deferred)
            for worker in self.workers.workers:
                await stack.enter_async_context(worker)
            self.reloader.install()
            stack.push_async_callback(self.reloader.aclose)
            if _mtime(self.reloader.path) != self._loaded_mtime:
                await self.reloader.reload()  # edited (and SIGHUP ignored) while starting
            draining = asyncio.create_task(drain.run())
            limits = lever_limits(config.accounts)
            log_event(
                log, "worker started",
                task_queue=self.settings.task_queue, lever_task_queue=self.lever_queue,
                accounts=len(config.accounts), lever_rps_default=limits.default_rps,
                accounts_with_own_rate=len(limits.weights),
            )  # fmt: skip
            # Config vs. Lever and Py (as `cli.py check`), and assessments of accounts the
            # file no longer names: problems are warnings, not fatal.
            checks = asyncio.create_task(self._startup_checks(config))
            await stop.wait()
            for task in (checks, draining):
                task.cancel()
            await asyncio.gather(checks, draining, return_exceptions=True)
            log_event(log, "worker stopping")


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


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
    loaded_mtime = _mtime(settings.config_path or "")
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
    process = WorkerProcess(client, settings, config, loaded_mtime)
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

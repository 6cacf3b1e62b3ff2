"""One worker process: its workers, its configuration, and what a reload changes.

``SIGHUP`` re-reads the configuration (``pylever.config.reload``): new accounts are
served at once, changed ones get new clients and limits, removed ones have their
running assessments withdrawn; every account's sweep Schedule is written at start and
after each reload (``pylever.temporal.schedules``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterable

from temporalio.client import Client
from temporalio.worker import Worker

from pylever.clients.lever_accounts import LeverAccounts
from pylever.config.environment import Settings
from pylever.config.file import Account, AppConfig, ConfigError, load_config
from pylever.config.reload import AccountChanges, ConfigReloader
from pylever.ops.checks import log_check_problems
from pylever.ops.logs import log_event
from pylever.temporal.gateway import Gateway
from pylever.temporal.legacy_queues import LegacyQueueDrain
from pylever.temporal.lever_limits import apply_lever_limits, lever_limits
from pylever.temporal.schedules import (
    apply_command_schedules,
    apply_sweep_schedules,
    unconfigured_schedules,
)
from pylever.temporal.unconfigured import warn_about_unconfigured
from pylever.temporal.workers import Workers, lever_worker, py_client_for
from workflows.decisions import lever_task_queue

log = logging.getLogger("pylever.worker")
UNKNOWN_ACCOUNT_REREAD = 10.0  # seconds: an unknown account re-reads the file at most this often
REMOVED_ACCOUNT_GRACE = 300.0  # seconds a removed account's Lever calls still run (see apply)
SCHEDULES_TIMEOUT = 120.0  # seconds: writing every account's sweep schedule, at most
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
        self._schedules_lock = asyncio.Lock()
        self.workers = Workers(
            client, config, settings.task_queue, self.levers, py_client_for(config),
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
        self.workers.sweep.use(new)
        self.workers.commands.use(new)
        if new.py != old.py or new.callback_url != old.callback_url:
            retired = self.workers.py.use(py_client_for(new), new.callback_url)
            self._later(PY_CLIENT_GRACE, retired.aclose)
        gateway = Gateway(self.client, self.settings.task_queue)
        for account_id in changes.added:  # back after a removal: stop withdrawing its new ones
            if await gateway.stop_account_removal(account_id):
                log_event(log, "account back: its withdrawal stopped", account=account_id)
        for account_id in changes.removed:
            await gateway.remove_account(account_id)
            self._later(REMOVED_ACCOUNT_GRACE, functools.partial(self._forget, account_id))
        await self._write_schedules(new, removed=changes.removed)

    async def _write_schedules(
        self, config: AppConfig | None = None, removed: Iterable[str] = ()
    ) -> None:
        """The sweep and command watch schedules of ``config`` (default: the configuration
        in force, read once the lock is held). One writer at a time: the start-up's and a
        reload's never interleave, and the later one writes the newer file."""
        async with self._schedules_lock:
            current = config or self.reloader.current
            removed = tuple(removed)

            async def both() -> None:
                queue = self.settings.task_queue
                await apply_sweep_schedules(self.client, queue, current, removed)
                await apply_command_schedules(self.client, queue, current, removed)

            await _log_failure(asyncio.wait_for(both(), SCHEDULES_TIMEOUT), "writing the schedules")

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

    async def _schedules(self) -> None:
        """Every configured account's sweep schedule; a schedule of an account the file no
        longer names is reported, not dropped (another worker may run a newer file):
        ``cli.py remove-account`` drops it."""
        await self._write_schedules()
        for kind in ("sweep", "commands"):
            gone = await unconfigured_schedules(
                self.client, self.settings.task_queue, self.reloader.current, kind
            )
            if gone:
                log_event(
                    log, f"{kind} schedules of accounts not in the configuration (cli.py "
                    "remove-account ACCOUNT --yes drops them)", logging.WARNING, accounts=gone,
                )  # fmt: skip

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
            if file_mtime(self.reloader.path) != self._loaded_mtime:
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
            schedules = asyncio.create_task(
                _log_failure(self._schedules(), "writing the sweep schedules")
            )
            await stop.wait()
            for task in (checks, draining, schedules):
                task.cancel()
            await asyncio.gather(checks, draining, schedules, return_exceptions=True)
            log_event(log, "worker stopping")


def file_mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


async def _log_failure(work: Awaitable[object], what: str) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log_event(log, f"{what}: {type(exc).__name__}: {exc}", logging.ERROR)

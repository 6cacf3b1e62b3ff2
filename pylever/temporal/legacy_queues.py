"""Drain the per-account Lever queues of executions that started before the shared queue.

A Lever activity scheduled on an account's own queue (the layout before
``decisions.lever_task_queue`` became one shared queue) stays there for every
retry, for up to ``expire_after`` + 7 days. So the worker keeps a Lever worker on
the old queue of each account that still has an execution started before the
move, and stops it when that account has none left. Which executions are old is
read from visibility against the start time of the
``LeverQueueMigrationWorkflow`` marker (``workflows/queue_migration.py``), which
the first worker of this version starts; executions started within an hour after
it count as old too, since older workers may still run during a rolling deploy.
A deployment that never had the old layout finds nothing and polls no old queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.worker import Worker

from pylever.contracts import search_attributes as sa
from pylever.ops.logs import log_event
from workflows.decisions import legacy_lever_task_queue
from workflows.queue_migration import LeverQueueMigrationWorkflow, marker_workflow_id

log = logging.getLogger("pylever.temporal.legacy_queues")

ROLLING_DEPLOY = timedelta(hours=1)
CHECK_EVERY = 600.0  # seconds between two visibility checks while old executions remain
RETRY_FIRST = 5.0  # seconds before asking again when Temporal did not answer (doubling)
OUR_TYPES = ("AssessmentWorkflow", "InvitationWorkflow", "WithdrawCandidateWorkflow")

WorkerFactory = Callable[[str, float], Worker]  # (task queue, rate) -> a Lever worker


async def cutover(client: Client, task_queue: str) -> datetime:
    """When the shared queue arrived here: the marker's start time (started if missing)."""
    try:
        await client.start_workflow(
            LeverQueueMigrationWorkflow.run,
            id=marker_workflow_id(task_queue),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary="py-lever moved Lever calls to one shared task queue at this start time",
        )
    except WorkflowAlreadyStartedError:
        pass  # closed (an operator ended it): its start time still tells
    return (await client.get_workflow_handle(marker_workflow_id(task_queue)).describe()).start_time


def old_executions_query(task_queue: str, cutover_at: datetime) -> str:
    until = (cutover_at + ROLLING_DEPLOY).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    types = ", ".join(f"'{t}'" for t in OUR_TYPES)
    return (
        f"TaskQueue = {sa.quote(task_queue)} AND ExecutionStatus = 'Running' "
        f"AND StartTime < '{until}' AND WorkflowType IN ({types})"
    )


def account_of(workflow_id: str) -> str | None:
    """``assessment:<account>:...`` and ``withdraw:<account>:...`` name their account."""
    parts = workflow_id.split(":")
    if len(parts) >= 3 and parts[0] in ("assessment", "withdraw"):
        return parts[1]
    return None


async def accounts_with_old_executions(
    client: Client, task_queue: str, cutover_at: datetime
) -> set[str]:
    found: set[str] = set()
    async for execution in client.list_workflows(old_executions_query(task_queue, cutover_at)):
        account = account_of(execution.id)
        if account:
            found.add(account)
    return found


class LegacyQueueDrain:
    """Runs one Lever worker per old queue that may still hold work; see the module doc."""

    def __init__(
        self,
        client: Client,
        task_queue: str,
        make_worker: WorkerFactory,
        rate_of: Callable[[str], float | None],
        *,
        check_every: float = CHECK_EVERY,
    ) -> None:
        self._client = client
        self._task_queue = task_queue
        self._make_worker = make_worker
        self._rate_of = rate_of  # None: the account is no longer configured
        self._check_every = check_every
        self._running: dict[str, tuple[Worker, asyncio.Task[None]]] = {}

    @property
    def draining(self) -> list[str]:
        return sorted(self._running)

    async def run(self) -> None:
        """Check, adjust, repeat while old executions remain; then return. Temporal
        failing to answer is retried (with back-off) without stopping the pollers."""
        backoff = RETRY_FIRST
        try:
            cutover_at: datetime | None = None
            while True:
                try:
                    if cutover_at is None:
                        cutover_at = await cutover(self._client, self._task_queue)
                    accounts = await accounts_with_old_executions(
                        self._client, self._task_queue, cutover_at
                    )
                except Exception as exc:  # Temporal unavailable: keep what runs, ask again
                    log_event(
                        log, "cannot read which old Lever queues to drain; asking again",
                        logging.WARNING, error=f"{type(exc).__name__}: {exc}", retry_in=backoff,
                    )  # fmt: skip
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._check_every)
                    continue
                backoff = RETRY_FIRST
                await self._adjust(accounts)
                if not accounts:
                    return
                await asyncio.sleep(self._check_every)
        finally:
            await self._adjust(set())

    async def _adjust(self, accounts: set[str]) -> None:
        for account_id in sorted(set(self._running) - accounts):
            worker, task = self._running.pop(account_id)
            await worker.shutdown()
            with contextlib.suppress(Exception):
                await task
            log_event(log, "old Lever queue drained", account=account_id)
        for account_id in sorted(accounts - set(self._running)):
            rate = self._rate_of(account_id)
            if rate is None:
                continue  # not configured: its calls fail with UnknownAccount wherever they run
            queue = legacy_lever_task_queue(self._task_queue, account_id)
            worker = self._make_worker(queue, rate)
            self._running[account_id] = (worker, asyncio.create_task(worker.run()))
            log_event(log, "polling the old Lever queue", account=account_id, task_queue=queue)


__all__ = ["LegacyQueueDrain", "account_of", "cutover", "old_executions_query"]

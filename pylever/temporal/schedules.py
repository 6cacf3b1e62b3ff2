"""Each account's sweep as a Temporal Schedule (``workflows/sweep.py``).

One schedule per account, ``<queue>-sweep-<account>``, visible on the Web UI's
Schedules page: every ``sweep_every`` it starts ``SweepWorkflow`` for the account. The
worker writes them at start and on every reload (``apply_sweep_schedules``): a new
account gets one, a changed interval is updated, an account with ``sweep_every = "off"``
or no longer configured has none. Writing is idempotent, so several workers starting
together agree; only differences reach the server.

A sweep still running when the next one is due is not doubled (overlap ``SKIP``), and
after an outage one sweep catches up, not every missed one (catch-up window = the
interval, at least a minute).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from pylever.config.file import AppConfig
from pylever.contracts.sweep import SweepInput
from pylever.ops.logs import log_event
from workflows.calls import background_priority
from workflows.sweep import SweepWorkflow

log = logging.getLogger("pylever.temporal.schedules")


def schedule_id(task_queue: str, account_id: str) -> str:
    return f"{task_queue}-sweep-{account_id}"


def _prefix(task_queue: str) -> str:
    return f"{task_queue}-sweep-"


def sweep_schedule(task_queue: str, account_id: str, every: timedelta) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SweepWorkflow.run,
            SweepInput(account_id=account_id),
            id=schedule_id(task_queue, account_id),  # the server appends the scheduled time
            task_queue=task_queue,
            priority=background_priority(account_id),
            static_summary=f"sweep of account {account_id}",
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=max(every, timedelta(minutes=1))
        ),
    )


@dataclass
class ScheduleChanges:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def _interval(description: ScheduleDescription) -> timedelta | None:
    intervals = description.schedule.spec.intervals
    return intervals[0].every if len(intervals) == 1 else None


def _up_to_date(description: ScheduleDescription, task_queue: str, every: timedelta) -> bool:
    action = description.schedule.action
    return (
        _interval(description) == every
        and isinstance(action, ScheduleActionStartWorkflow)
        and action.workflow == "SweepWorkflow"
        and action.task_queue == task_queue
        and description.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
    )


async def apply_sweep_schedules(
    client: Client, task_queue: str, config: AppConfig, removed: Iterable[str] = ()
) -> ScheduleChanges:
    """Make the server's sweep schedules match ``config``; ``removed``: accounts to drop
    (at start, every schedule of this queue whose account is not configured is dropped)."""
    changes = ScheduleChanges()
    wanted = {a.id: config.sweep(a).every for a in config.accounts}
    for account_id, every in wanted.items():
        sid = schedule_id(task_queue, account_id)
        if every is None:
            if await _delete(client, sid):
                changes.deleted.append(account_id)
            continue
        schedule = sweep_schedule(task_queue, account_id, every)
        try:
            await client.create_schedule(sid, schedule)
            changes.created.append(account_id)
            continue
        except ScheduleAlreadyRunningError:
            pass  # it exists (an earlier start, or another worker just now): compare
        description = await client.get_schedule_handle(sid).describe()
        if _up_to_date(description, task_queue, every):
            continue

        def replace(_: ScheduleUpdateInput, new: Schedule = schedule) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=new)

        await client.get_schedule_handle(sid).update(replace)
        changes.updated.append(account_id)
    for account_id in dict.fromkeys(removed):
        if account_id not in wanted and await _delete(client, schedule_id(task_queue, account_id)):
            changes.deleted.append(account_id)
    if changes.created or changes.updated or changes.deleted:
        log_event(log, "sweep schedules written", created=changes.created,
                  updated=changes.updated, deleted=changes.deleted)  # fmt: skip
    return changes


async def unconfigured_schedules(client: Client, task_queue: str, config: AppConfig) -> list[str]:
    """Accounts of this queue that have a sweep schedule but no longer a configuration."""
    prefix = _prefix(task_queue)
    configured = {a.id for a in config.accounts}
    found: list[str] = []
    async for listed in await client.list_schedules():
        if listed.id.startswith(prefix) and listed.id[len(prefix) :] not in configured:
            found.append(listed.id[len(prefix) :])
    return found


async def _delete(client: Client, sid: str) -> bool:
    try:
        await client.get_schedule_handle(sid).delete()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True

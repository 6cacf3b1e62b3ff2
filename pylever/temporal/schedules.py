"""Each account's sweep and command watch as Temporal Schedules.

Two schedules per account, written the same way:

- ``<queue>-sweep-<account>`` starts ``SweepWorkflow`` (``workflows/sweep.py``) every
  ``sweep_every`` (overlap ``SKIP``);
- ``<queue>-commands-<account>`` starts ``CommandWatchWorkflow`` (``workflows/commands.py``)
  every ten minutes, or every ``commands_every`` if longer; each run looks for command
  tags every ``commands_every`` for that long, and the next one is buffered behind it
  (overlap ``BUFFER_ONE``), so the looks go on without a gap. A new one is triggered at
  once (an interval schedule first fires at the next multiple of its interval).

The sweep's, in detail:

One schedule per account, ``<queue>-sweep-<account>``, visible on the Web UI's
Schedules page: every ``sweep_every`` it starts ``SweepWorkflow`` for the account. The
worker writes them at start and after every reload (``apply_sweep_schedules``): a new
account gets one, a changed interval is updated (and so is a schedule whose input was
encrypted with a payload key no longer in use), an account with ``sweep_every = "off"``
or removed by a reload loses its own. Writing is idempotent and only differences reach
the server. A schedule of an account the file does not name is not dropped at start
(during a rolling deploy a worker may run an older file): it is reported, and
``cli.py remove-account`` drops it.

A sweep still running when the next one is due is not doubled (overlap ``SKIP``); one
that cannot finish ends after ``SWEEP_TIMEOUT``; after an outage one sweep catches up,
not every missed one (catch-up window = the interval, at least a minute).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

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

from pylever.config.file import Account, AppConfig
from pylever.contracts.commands import WATCH_WINDOW_SECONDS, CommandWatchInput
from pylever.contracts.sweep import SweepInput
from pylever.ops.logs import log_event
from pylever.temporal.codec import KEY_ID_METADATA
from workflows.commands import CommandWatchWorkflow
from workflows.decisions import background_priority
from workflows.sweep import SweepWorkflow

log = logging.getLogger("pylever.temporal.schedules")


SWEEP_TIMEOUT = timedelta(hours=2)
# A watch run stuck (Lever failing for hours) ends this long after its window, and the
# buffered next run takes over.
WATCH_OVERRUN = timedelta(hours=1)


def schedule_id(task_queue: str, account_id: str, kind: str = "sweep") -> str:
    return f"{task_queue}-{kind}-{account_id}"


def _prefix(task_queue: str, kind: str = "sweep") -> str:
    return f"{task_queue}-{kind}-"


@dataclass(frozen=True)
class _Kind:
    """One kind of per-account schedule: its id part, workflow, overlap and how it is made."""

    name: str
    workflow: str
    overlap: ScheduleOverlapPolicy
    interval: Any  # (AppConfig, Account) -> timedelta | None (None: no schedule)
    make: Any  # (task_queue, account_id, interval) -> Schedule
    timeout: Any  # (interval) -> timedelta
    trigger_new: bool = False


def sweep_schedule(task_queue: str, account_id: str, every: timedelta) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SweepWorkflow.run,
            SweepInput(account_id=account_id),
            id=schedule_id(task_queue, account_id),  # the server appends the scheduled time
            task_queue=task_queue,
            priority=background_priority(account_id),
            static_summary=f"sweep of account {account_id}",
            # A sweep that cannot finish must not hold back the next ones (SKIP overlap).
            execution_timeout=SWEEP_TIMEOUT,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=max(every, timedelta(minutes=1))
        ),
    )


def watch_interval(config: AppConfig, account: Account) -> timedelta:
    """How often a command watch run starts: ten minutes, or ``commands_every`` if longer."""
    return max(timedelta(seconds=WATCH_WINDOW_SECONDS), config.commands(account).every)


def command_schedule(task_queue: str, account_id: str, interval: timedelta) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            CommandWatchWorkflow.run,
            CommandWatchInput(account_id=account_id, window_seconds=int(interval.total_seconds())),
            id=schedule_id(task_queue, account_id, "commands"),
            task_queue=task_queue,
            priority=background_priority(account_id),
            static_summary=f"command tags of account {account_id}",
            execution_timeout=interval + WATCH_OVERRUN,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)]),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.BUFFER_ONE,
            catchup_window=max(interval, timedelta(minutes=1)),
        ),
    )


SWEEPS = _Kind(
    name="sweep",
    workflow="SweepWorkflow",
    overlap=ScheduleOverlapPolicy.SKIP,
    interval=lambda config, account: config.sweep(account).every,
    make=sweep_schedule,
    timeout=lambda interval: SWEEP_TIMEOUT,
)
COMMAND_WATCHES = _Kind(
    name="commands",
    workflow="CommandWatchWorkflow",
    overlap=ScheduleOverlapPolicy.BUFFER_ONE,
    interval=watch_interval,
    make=command_schedule,
    timeout=lambda interval: interval + WATCH_OVERRUN,
    trigger_new=True,
)
KINDS = (SWEEPS, COMMAND_WATCHES)


@dataclass
class ScheduleChanges:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def _interval(description: ScheduleDescription) -> timedelta | None:
    intervals = description.schedule.spec.intervals
    return intervals[0].every if len(intervals) == 1 else None


def _key_id(payload: Any) -> bytes | None:
    metadata = getattr(payload, "metadata", None)
    return None if metadata is None else metadata.get(KEY_ID_METADATA)


def _up_to_date(
    kind: _Kind,
    description: ScheduleDescription,
    task_queue: str,
    every: timedelta,
    key_id: bytes | None,
) -> bool:
    """Same interval, workflow, queue and policy, and its input encrypted with the payload
    key in use: after a rotation the old key is dropped, and a schedule still carrying an
    input only the old key opens would start sweeps no worker can read."""
    action = description.schedule.action
    return (
        _interval(description) == every
        and isinstance(action, ScheduleActionStartWorkflow)
        and action.workflow == kind.workflow
        and action.task_queue == task_queue
        and action.execution_timeout == kind.timeout(every)
        and description.schedule.policy.overlap == kind.overlap
        and len(action.args) == 1
        and _key_id(action.args[0]) == key_id
    )


async def _current_key_id(client: Client) -> bytes | None:
    """The key id the client's codec encrypts with now (None: no codec)."""
    [payload] = await client.data_converter.encode([SweepInput(account_id="-")])
    return _key_id(payload)


async def apply_sweep_schedules(
    client: Client, task_queue: str, config: AppConfig, removed: Iterable[str] = ()
) -> ScheduleChanges:
    """Make the server's sweep schedules match ``config``; ``removed``: accounts whose
    schedule goes (a reload's removals, ``cli.py remove-account``). A schedule of an account
    this file does not name is otherwise left alone: during a rolling deploy another worker
    may already run a newer file (``unconfigured_schedules`` lists them for a warning)."""
    return await _apply(SWEEPS, client, task_queue, config, removed)


async def apply_command_schedules(
    client: Client, task_queue: str, config: AppConfig, removed: Iterable[str] = ()
) -> ScheduleChanges:
    """The same for the command watches (every configured account has one)."""
    return await _apply(COMMAND_WATCHES, client, task_queue, config, removed)


async def _apply(
    kind: _Kind, client: Client, task_queue: str, config: AppConfig, removed: Iterable[str]
) -> ScheduleChanges:
    changes = ScheduleChanges()
    wanted = {a.id: kind.interval(config, a) for a in config.accounts}
    key_id = await _current_key_id(client)
    for account_id, every in wanted.items():
        sid = schedule_id(task_queue, account_id, kind.name)
        if every is None:
            if await _delete(client, sid):
                changes.deleted.append(account_id)
            continue
        schedule = kind.make(task_queue, account_id, every)
        try:
            handle = await client.create_schedule(sid, schedule)
            changes.created.append(account_id)
            if kind.trigger_new:
                try:  # now, not at the next multiple of the interval
                    await handle.trigger()
                except RPCError as exc:  # it runs at its next interval; the others still go
                    log_event(log, f"{kind.name} schedule not triggered", logging.WARNING,
                              account=account_id, error=exc.message)  # fmt: skip
            continue
        except ScheduleAlreadyRunningError:
            pass  # it exists (an earlier start, or another worker just now): compare
        description = await client.get_schedule_handle(sid).describe()
        if _up_to_date(kind, description, task_queue, every, key_id):
            continue

        def replace(_: ScheduleUpdateInput, new: Schedule = schedule) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=new)

        await client.get_schedule_handle(sid).update(replace)
        changes.updated.append(account_id)
    for account_id in dict.fromkeys(removed):
        if account_id not in wanted and await _delete(
            client, schedule_id(task_queue, account_id, kind.name)
        ):
            changes.deleted.append(account_id)
    if changes.created or changes.updated or changes.deleted:
        # Not ``created=``: a LogRecord attribute (logging raises KeyError for it, and the
        # schedules written after this one were never written).
        log_event(log, f"{kind.name} schedules written", created_for=changes.created,
                  updated_for=changes.updated, deleted_for=changes.deleted)  # fmt: skip
    return changes


async def unconfigured_schedules(
    client: Client, task_queue: str, config: AppConfig, kind: str = "sweep"
) -> list[str]:
    """Accounts of this queue that have a ``kind`` schedule but no longer a configuration."""
    prefix = _prefix(task_queue, kind)
    configured = {a.id for a in config.accounts}
    found: list[str] = []
    async for listed in await client.list_schedules():
        if listed.id.startswith(prefix) and listed.id[len(prefix) :] not in configured:
            found.append(listed.id[len(prefix) :])
    return found


async def drop_sweep_schedule(client: Client, task_queue: str, account_id: str) -> bool:
    """Delete the account's sweep schedule (``cli.py remove-account``); False: it had none."""
    return await _delete(client, schedule_id(task_queue, account_id))


async def drop_command_schedule(client: Client, task_queue: str, account_id: str) -> bool:
    """Delete the account's command watch schedule (``cli.py remove-account``)."""
    return await _delete(client, schedule_id(task_queue, account_id, "commands"))


async def _delete(client: Client, sid: str) -> bool:
    try:
        await client.get_schedule_handle(sid).delete()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True

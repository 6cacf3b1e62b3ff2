"""Each account's sweep as a Temporal Schedule (``workflows/sweep.py``).

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

from pylever.config.file import AppConfig
from pylever.contracts.sweep import SweepInput
from pylever.ops.logs import log_event
from pylever.temporal.codec import KEY_ID_METADATA
from workflows.decisions import background_priority
from workflows.sweep import SweepWorkflow

log = logging.getLogger("pylever.temporal.schedules")


SWEEP_TIMEOUT = timedelta(hours=2)


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
            # A sweep that cannot finish must not hold back the next ones (SKIP overlap).
            execution_timeout=SWEEP_TIMEOUT,
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


def _key_id(payload: Any) -> bytes | None:
    metadata = getattr(payload, "metadata", None)
    return None if metadata is None else metadata.get(KEY_ID_METADATA)


def _up_to_date(
    description: ScheduleDescription, task_queue: str, every: timedelta, key_id: bytes | None
) -> bool:
    """Same interval, workflow, queue and policy, and its input encrypted with the payload
    key in use: after a rotation the old key is dropped, and a schedule still carrying an
    input only the old key opens would start sweeps no worker can read."""
    action = description.schedule.action
    return (
        _interval(description) == every
        and isinstance(action, ScheduleActionStartWorkflow)
        and action.workflow == "SweepWorkflow"
        and action.task_queue == task_queue
        and action.execution_timeout == SWEEP_TIMEOUT
        and description.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
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
    changes = ScheduleChanges()
    wanted = {a.id: config.sweep(a).every for a in config.accounts}
    key_id = await _current_key_id(client)
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
        if _up_to_date(description, task_queue, every, key_id):
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


async def drop_sweep_schedule(client: Client, task_queue: str, account_id: str) -> bool:
    """Delete the account's sweep schedule (``cli.py remove-account``); False: it had none."""
    return await _delete(client, schedule_id(task_queue, account_id))


async def _delete(client: Client, sid: str) -> bool:
    try:
        await client.get_schedule_handle(sid).delete()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True

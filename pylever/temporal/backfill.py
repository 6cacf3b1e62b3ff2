"""``cli.py backfill``: run one account's sweep on demand and follow it.

The backfill is ``SweepWorkflow`` (``workflows/sweep.py``) started by an operator, on
the workers, so its Lever calls go through the account's rate limit like everything
else, behind webhook-driven work. The command waits for it, asking its ``progress``
query; an interrupted command leaves the workflow running (its id is printed first).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from temporalio.client import Client, WorkflowHandle

from pylever.contracts.sweep import SweepInput, SweepMode, SweepResult
from workflows.decisions import background_priority
from workflows.sweep import SweepWorkflow

PROGRESS_INTERVAL = 0.5  # seconds between two progress queries

Progress = dict[str, Any]


def backfill_workflow_id(task_queue: str, account_id: str, mode: SweepMode) -> str:
    return f"{task_queue}-{'dry-run' if mode is SweepMode.DRY_RUN else 'backfill'}-{account_id}-{uuid.uuid4().hex[:8]}"


async def start_backfill(
    client: Client,
    task_queue: str,
    account_id: str,
    mode: SweepMode,
    *,
    stage: str | None = None,
    since: datetime | None = None,
) -> WorkflowHandle[Any, SweepResult]:
    return await client.start_workflow(
        SweepWorkflow.run,
        SweepInput(account_id=account_id, mode=mode, stage=stage, since=since),
        id=backfill_workflow_id(task_queue, account_id, mode),
        task_queue=task_queue,
        priority=background_priority(account_id),
        static_summary=f"{mode.value} of account {account_id}",
    )


async def follow(
    handle: WorkflowHandle[Any, SweepResult],
    on_progress: Callable[[Progress], Awaitable[None] | None],
    *,
    interval: float = PROGRESS_INTERVAL,
) -> SweepResult:
    """Wait for the result, calling ``on_progress`` with each new progress."""
    result = asyncio.ensure_future(handle.result())
    last: Progress | None = None
    try:
        while not result.done():
            await asyncio.wait([result], timeout=interval)
            if result.done():
                break
            try:
                progress: Progress = await handle.query("progress")
            except Exception:
                continue  # not yet picked up by a worker: ask again
            if progress != last:
                last = progress
                await _show(on_progress, progress)
        final = await result
        done = _progress_of(final)
        if done != last:
            await _show(on_progress, done)
        return final
    finally:
        if not result.done():
            result.cancel()


async def _show(
    on_progress: Callable[[Progress], Awaitable[None] | None], progress: Progress
) -> None:
    shown = on_progress(progress)
    if shown is not None:
        await shown


def _progress_of(result: SweepResult) -> Progress:
    """The ``progress`` query's answer for a finished sweep."""
    return {
        "stages": len(result.stages),
        "stages_done": len(result.stages),
        "listed": result.listed,
        "assessed": result.assessed,
        "started": result.started,
        "no_test": result.no_test,
        "finished": True,
    }

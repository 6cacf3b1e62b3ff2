"""No candidate left behind (issue 14) with the deployment as real processes.

One ``ProcessStack`` whose account sweeps every 2 s (``sweep_every = "2s"``):

1. The worker writes the account's Schedule at start; a candidate added straight into
   the trigger stage (Lever sends no webhook for that) is invited by the next sweep,
   and the worker logs the warning about Lever's webhook settings.
2. ``cli.py backfill`` for candidates who entered before the sweep's 3-day lookback:
   the dry run lists them and sends nothing, ``--yes`` invites them, a second run sends
   nothing new.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pylever.temporal.schedules import schedule_id
from sandbox.process_stack import ACCOUNT, TRIGGER_STAGE, ProcessStack
from tests.support.process_stacks import process_stack
from workflows.decisions import TAG_INVITED

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WARNING = "reached a trigger stage without a webhook — check Lever's webhook settings"


async def backfill(stack: ProcessStack, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "cli.py"), "backfill", ACCOUNT, *args,
        cwd=ROOT, env=stack.app_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_sweep_and_backfill_on_real_processes(tmp_path: Path) -> None:
    async with process_stack(tmp_path / "stack", workers=1, sweep_every="2s") as stack:
        client = await stack.client()
        handle = client.get_schedule_handle(schedule_id(stack.options.task_queue, ACCOUNT))
        description = await stack.eventually(handle.describe, timeout=30)
        assert description.schedule.spec.intervals[0].every == timedelta(seconds=2)

        # 1. A webhook that never came: recovered by the next sweep.
        lost = await stack.create_candidate("Lost Ada", "ada@example.com", stage=TRIGGER_STAGE)
        assert await stack.webhook_deliveries() == []
        await stack.wait_invitations(lost, timeout=60)
        assert TAG_INVITED in await stack.wait_tag(lost, TAG_INVITED)
        worker_log = stack.workers[0].log_since_start()
        assert WARNING in worker_log, worker_log[-2000:]
        await asyncio.sleep(5)  # two more sweeps: nothing new
        assert len(await stack.invitations(lost)) == 1

        # 2. Waiting since before the lookback: only a backfill reaches them.
        entered = int((time.time() - 5 * 86_400) * 1000)
        waiting = [
            await stack.create_candidate(
                f"Waiting {i}", f"waiting{i}@example.com", stage=TRIGGER_STAGE, advanced_at=entered
            )
            for i in range(3)
        ]
        since = (datetime.now(UTC) - timedelta(days=6)).strftime("%Y-%m-%d")
        code, out, err = await backfill(stack, "--since", since, "--dry-run")
        assert code == 0, err
        rows = [line for line in out.splitlines() if line.startswith("Waiting ")]
        assert len(rows) == 3 and all(r.endswith("would be invited") for r in rows), out
        assert "Waiting 0" in out and "Python Basics" in out
        for opp in waiting:
            assert await stack.invitations(opp) == []

        code, out, err = await backfill(stack, "--since", since, "--yes")
        assert code == 0, err
        assert "3 invited" in out, out
        for opp in waiting:
            await stack.wait_tag(opp, TAG_INVITED)

        code, out, err = await backfill(stack, "--since", since, "--yes")
        assert code == 0, err
        assert "0 invited" in out and "already assessed" in out, out
        for opp in [lost, *waiting]:
            assert len(await stack.invitations(opp)) == 1

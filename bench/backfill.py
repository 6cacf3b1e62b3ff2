"""6. Backfill: candidates already waiting in a trigger stage, invited by ``cli.py backfill``.

N candidates are added straight into the trigger stage (Lever sends no webhook for
that), as when a customer turns the integration on. The backfill (``SweepWorkflow`` in
``backfill`` mode, started as the command starts it) lists them with Lever's filters,
chooses each one's test and starts their assessments through the webhook's start; two
worker processes share the shared Lever queue, the account keeps the default budget
(``lever_requests_per_second`` = 9, enforced by the Temporal server), and the Lever
sandbox allows 10 requests/s per key with bursts of 20 (429 above that).

- The time from the start of the backfill until every candidate carries
  ``Py - Invited``, against the ideal (the Lever calls made ÷ 10/s):
  ``backfill_vs_rate_limit_ratio`` (target <= 1.15) and the 429 count (target 0).
- A second run of the same backfill: nothing new is started (its seconds and calls).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import LEVER_LIMIT, BenchStack, Sizes, bounded_gather, log, wait_until
from pylever.contracts.sweep import SweepMode
from pylever.temporal.backfill import start_backfill
from sandbox.process_stack import ACCOUNT, TRIGGER_STAGE
from workflows.decisions import TAG_INVITED

ADD_TAGS = "POST /opportunities/{id}/addTags"


async def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    n = sizes.backfill_candidates
    log(f"backfill: starting the stack (2 workers), {n} waiting candidates")
    async with BenchStack(workdir / "backfill", workers=2) as stack:
        entered = int((time.time() - 3600) * 1000)  # an hour ago, no webhook
        opps = await bounded_gather(
            range(n), 20,
            lambda i: stack.create_candidate(
                f"Waiting {i}", f"waiting{i}@example.com", stage=TRIGGER_STAGE, advanced_at=entered
            ),
        )  # fmt: skip
        client = await stack.client()
        since = datetime.now(UTC) - timedelta(days=1)
        await stack.lever_reset_stats()

        started = time.monotonic()
        handle = await start_backfill(
            client, stack.options.task_queue, ACCOUNT, SweepMode.BACKFILL, since=since
        )

        async def all_invited() -> dict[str, Any] | None:
            stats = await stack.lever_stats()
            tagged = stats["requests"]["by_endpoint"].get(ADD_TAGS, 0)
            return stats if tagged >= n else None

        stats = await wait_until(all_invited, 60 + n / 2, interval=0.25, what=f"{n} invited")
        elapsed = time.monotonic() - started
        result = await handle.result()
        tags = {c["id"]: c["tags"] for c in await stack.candidates()}
        missing = [o for o in opps if TAG_INVITED not in tags[o]]
        if missing or result.started != n:
            raise RuntimeError(f"backfill: {len(missing)} not invited, result {result.started}")
        calls = stats["requests"]["total"]
        ideal = calls / LEVER_LIMIT
        log(f"backfill: {n} invited in {elapsed:.1f}s (ideal {ideal:.1f}s)")

        # Again: every candidate is assessed already, nothing new is sent.
        await stack.lever_reset_stats()
        invitations_before = len(await stack.all_invitations())
        t0 = time.monotonic()
        again = await start_backfill(
            client, stack.options.task_queue, ACCOUNT, SweepMode.BACKFILL, since=since
        )
        second = await again.result()
        rerun_seconds = time.monotonic() - t0
        rerun_stats = await stack.lever_stats()
        new_invitations = len(await stack.all_invitations()) - invitations_before
        return {
            "candidates": n,
            "workers": len(stack.workers),
            "lever_rate_limit": f"{stack.options.lever_rate:g}/s burst {stack.options.lever_burst}",
            "elapsed_seconds": round(elapsed, 2),
            "lever_calls": calls,
            "lever_calls_by_endpoint": stats["requests"]["by_endpoint"],
            "ideal_seconds": round(ideal, 2),
            "backfill_vs_rate_limit_ratio": round(elapsed / ideal, 3),
            "rate_limited_429": stats["rate_limited"],
            "lever_calls_per_candidate": round(calls / n, 3),
            "rerun_started": second.started,
            "rerun_assessed": second.assessed,
            "rerun_new_invitations": new_invitations,
            "rerun_seconds": round(rerun_seconds, 2),
            "rerun_lever_calls": rerun_stats["requests"]["total"],
        }


def flat(result: Mapping[str, Any]) -> dict[str, Any]:
    """The key=value figures of this scenario (``bench/run.py``)."""
    return {
        "backfill_candidates": result["candidates"],
        "backfill_seconds": result["elapsed_seconds"],
        "backfill_ideal_seconds": result["ideal_seconds"],
        "backfill_vs_rate_limit_ratio": result["backfill_vs_rate_limit_ratio"],
        "backfill_lever_429s": result["rate_limited_429"],
        "backfill_lever_calls_per_candidate": result["lever_calls_per_candidate"],
        "backfill_rerun_new_invitations": result["rerun_new_invitations"],
        "backfill_rerun_seconds": result["rerun_seconds"],
    }


def table(result: Mapping[str, Any]) -> list[str]:
    return [
        f"Backfill: {result['candidates']} waiting candidates (Lever {result['lever_rate_limit']} "
        f"per key, {result['workers']} workers)",
        f"  all invited after {result['elapsed_seconds']} s; ideal {result['ideal_seconds']} s "
        f"({result['lever_calls']} calls / 10/s); ratio {result['backfill_vs_rate_limit_ratio']}; "
        f"429s {result['rate_limited_429']}; {result['lever_calls_per_candidate']} calls each",
        f"  run again: {result['rerun_started']} started, {result['rerun_assessed']} already "
        f"assessed, {result['rerun_new_invitations']} new invitations, "
        f"{result['rerun_seconds']} s, {result['rerun_lever_calls']} Lever calls",
    ]

"""3. Waiting at scale: thousands of assessments waiting for Py's results.

Set-up, faster than Lever's limit (said in the results): the Lever sandbox's
limit is raised to ``RATE``/s (burst ``RATE``) for this phase, and the worker
runs as ``python -m bench.fast_worker`` — ``worker.py`` unchanged except that
the account's Lever task-queue rate and its in-process Lever bucket are
``RATE``/s instead of the config's 9/s (which the config caps at 10). One
worker process, Temporal's default sticky cache (``max_cached_workflows`` =
1000 workflows; a waiting assessment is two: the parent and its invitation child).

Measured on that worker process:

- resident memory (VmRSS) at start, after a small warm-up, after each tenth of
  the N assessments has been moved at once and is waiting, and once all are
  waiting and the process is idle; the growth per waiting assessment beyond
  the cache is the least-squares slope over the points with at least twice
  the cache's worth of waiting workflows (a quick run, which has one such
  point, fits from 1.2 times and flags the figure as taken while settling);
- CPU while idle (utime + stime over ``idle_seconds``) with N waiting;
- the time to apply K results: K invitations are completed at the Py sandbox
  (each sends a signed callback to the API, which signals the workflow), until
  every one of those candidates has its verdict tag and report link in Lever.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BenchStack,
    ProcProbe,
    Sizes,
    bounded_gather,
    log,
    mib,
    wait_until,
)
from workflows.decisions import TAG_INVITED

RATE = 1000  # Lever requests/s allowed during this phase (sandbox and worker)
WARMUP = 20
ADD_TAGS = "POST /opportunities/{id}/addTags"
ADD_LINKS = "POST /opportunities/{id}/addLinks"
VERDICT_TAGS = ("Py - Pass", "Py - Fail", "Py - Needs Review")
# max_cached_workflows of temporalio.worker.Worker when not set (worker.py does not set it).
SDK_DEFAULT_CACHE = 1000


def _score(i: int) -> float:
    return (92.0, 15.0, 85.0, 60.0)[i % 4]


async def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    n = sizes.waiting
    log(f"waiting: starting the stack (fast worker, Lever at {RATE}/s), {n} assessments")
    async with BenchStack(
        workdir / "waiting",
        worker_module="bench.fast_worker",
        workers=1,
        lever_rate=float(RATE),
        lever_burst=RATE,
        worker_env={"PYLEVER_BENCH_LEVER_RPS": str(RATE)},
    ) as stack:
        worker = ProcProbe(stack.workers[0].pid or 0)
        temporal = ProcProbe(stack.temporal.pid or 0)
        rss_start = worker.rss_kib()
        temporal_rss_start = temporal.rss_kib()

        async def create(i: int) -> str:
            return await stack.create_candidate(f"Waiting {i}", f"waiting{i}@example.com")

        opps = await bounded_gather(range(n + WARMUP), 20, create)
        warm, opps = opps[:WARMUP], opps[WARMUP:]

        async def tagged_at_least(count: int) -> int | None:
            stats = await stack.lever_stats()
            done = stats["requests"]["by_endpoint"].get(ADD_TAGS, 0)
            return done if done >= count else None

        # Warm-up: the first workflows import the workflow sandbox's modules.
        await bounded_gather(warm, 20, stack.move)
        await wait_until(lambda: tagged_at_least(WARMUP), 120, what="warm-up invited")
        await wait_quiet(worker)
        rss_warm = worker.rss_kib()

        # N assessments into their waiting state, in ten batches: each batch is moved at
        # once, and RSS is read when all of it is waiting (nothing in flight).
        series: list[dict[str, Any]] = []
        batches = [opps[i * n // 10 : (i + 1) * n // 10] for i in range(10)]
        started = time.monotonic()
        cpu0 = worker.cpu_seconds()
        moves: list[dict[str, Any]] = []
        waiting = 0
        for batch in batches:
            moves += await bounded_gather(batch, 20, stack.move)
            waiting += len(batch)
            await wait_until(
                lambda target=WARMUP + waiting: tagged_at_least(target), 120 + len(batch),
                interval=0.25,
                what=f"{waiting} invited",
            )  # fmt: skip
            await wait_quiet(worker, below_percent=20.0, within=10)
            series.append({
                "waiting": waiting,
                "seconds": round(time.monotonic() - started, 1),
                "worker_rss_mib": mib(worker.rss_kib()),
            })  # fmt: skip
            log(f"waiting: {series[-1]}")
        create_seconds = time.monotonic() - started
        create_cpu = worker.cpu_seconds() - cpu0
        bad_moves = [m for m in moves if m.get("status") != 202]
        await wait_quiet(worker)
        rss_all = worker.rss_kib()
        log(f"waiting: {n} invited in {create_seconds:.1f}s; idle measurement")

        # Everyone invited exactly once and waiting.
        tags = {c["id"]: c["tags"] for c in await stack.candidates()}
        missing = [o for o in opps if TAG_INVITED not in tags[o]]
        if missing or bad_moves:
            raise RuntimeError(
                f"waiting: {len(missing)} not invited, {len(bad_moves)} moves failed"
            )

        idle = await worker.cpu_percent(sizes.idle_seconds)
        rss_idle = worker.rss_kib()
        temporal_idle = await temporal.cpu_percent(5.0)

        # Apply K results.
        k = min(sizes.results_to_apply, n)
        invitations = await stack.invitations_by_opportunity()
        doubled = [o for o in opps if len(invitations.get(o, [])) != 1]
        if doubled:
            raise RuntimeError(f"waiting: {len(doubled)} candidates without exactly one invitation")
        chosen = opps[:k]
        await stack.lever_reset_stats()
        log(f"waiting: applying {k} results")
        t0 = time.monotonic()
        cpu1 = worker.cpu_seconds()
        completions = bounded_gather(
            list(enumerate(chosen)), 20,
            lambda item: stack.complete(invitations[item[1]][0]["id"], _score(item[0])),
        )  # fmt: skip
        completer = asyncio.create_task(completions)

        async def all_applied() -> dict[str, Any] | None:
            stats = await stack.lever_stats()
            return stats if stats["requests"]["by_endpoint"].get(ADD_LINKS, 0) >= k else None

        stats = await wait_until(all_applied, 120 + k / 2, interval=0.25, what=f"{k} verdicts")
        apply_seconds = time.monotonic() - t0
        apply_cpu = worker.cpu_seconds() - cpu1
        callbacks = await completer
        callback_statuses: dict[str, int] = {}
        for c in callbacks:
            status = str((c.get("callback") or {}).get("status"))
            callback_statuses[status] = callback_statuses.get(status, 0) + 1
        final = {c["id"]: c["tags"] for c in await stack.candidates()}
        wrong = [o for o in chosen if sum(t in VERDICT_TAGS for t in final[o]) != 1]
        if wrong:
            raise RuntimeError(f"waiting: {len(wrong)} candidates without exactly one verdict")
        await wait_quiet(worker)
        rss_after_apply = worker.rss_kib()
        rss_peak = worker.hwm_kib()
        temporal_rss_end = temporal.rss_kib()

    # Beyond the cache: from twice the cache's worth of waiting workflows (two per
    # assessment) on; RSS still settles while the first evictions start (1-2x the cache).
    # A quick run has one such point only: it falls back to 1.2x and says it is settling.
    beyond = [p for p in series if 2 * p["waiting"] >= 2 * SDK_DEFAULT_CACHE]
    settling = len(beyond) < 3
    if settling:
        beyond = [p for p in series if 2 * p["waiting"] >= 1.2 * SDK_DEFAULT_CACHE]
    slope_kib = _slope([p["waiting"] for p in beyond], [1024 * p["worker_rss_mib"] for p in beyond])
    inside = [p for p in series if 2 * p["waiting"] <= SDK_DEFAULT_CACHE]
    inside_kib = _slope(
        [WARMUP, *(p["waiting"] for p in inside)],
        [rss_warm, *(1024 * p["worker_rss_mib"] for p in inside)],
    )
    return {
        "assessments_waiting": n,
        "workflows_waiting": 2 * n,
        "setup": (
            f"Lever sandbox and the worker's Lever queue raised to {RATE}/s for this phase "
            "(bench.fast_worker); one worker, default sticky cache"
        ),
        "max_cached_workflows": SDK_DEFAULT_CACHE,
        "create_seconds": round(create_seconds, 1),
        "create_per_second": round(n / create_seconds, 1),
        "worker_cpu_ms_per_assessment_created": round(1000 * create_cpu / n, 2),
        "worker_rss_mib": {
            "at_start": mib(rss_start),
            f"after_{WARMUP}_warmup": mib(rss_warm),
            "all_waiting": mib(rss_all),
            "after_idle": mib(rss_idle),
            "after_applying_results": mib(rss_after_apply),
            "peak": mib(rss_peak),
        },
        "rss_series": series,
        "rss_growth_kib_per_assessment_beyond_cache": round(slope_kib, 2),
        "rss_growth_fit_points": [p["waiting"] for p in beyond],
        "rss_growth_fit_settling": settling,
        "rss_growth_kib_per_assessment_inside_cache": round(inside_kib, 1),
        "worker_idle": idle,
        "temporal_idle": temporal_idle,
        "temporal_rss_mib": {"at_start": mib(temporal_rss_start), "at_end": mib(temporal_rss_end)},
        "results_applied": k,
        "apply_seconds": round(apply_seconds, 1),
        "apply_per_second": round(k / apply_seconds, 1),
        "apply_lever_calls": stats["requests"]["total"],
        "apply_lever_calls_by_endpoint": stats["requests"]["by_endpoint"],
        "apply_rate_limited_429": stats["rate_limited"],
        "worker_cpu_ms_per_result": round(1000 * apply_cpu / k, 2),
        "callback_statuses": callback_statuses,
    }


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


async def wait_quiet(probe: ProcProbe, *, below_percent: float = 5.0, within: float = 60) -> None:
    """Until the process uses less than ``below_percent`` of a core over a second."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if (await probe.cpu_percent(1.0))["cpu_percent"] < below_percent:
            return

"""``make bench``: py-lever's benchmarks, each on its own freshly started stack.

    make bench                  # full: 1000 webhooks per level, 500 bulk, 5000 waiting,
                                #   an idle worker with 1/100/1000 accounts, neighbours 500 + 20,
                                #   500 backfilled, 200 resent
    BENCH_QUICK=1 make bench    # quick: 300 webhooks per level, 100 bulk, 1000 waiting,
                                #   1/100/300 accounts, neighbours 150 + 10, 100 backfilled,
                                #   50 resent
    BENCH_ONLY=ingest,bulk make bench   # a subset (ingest, bulk, waiting, accounts, neighbours,
                                        #   backfill, commands)
    BENCH_ONLY=accounts,neighbours BENCH_QUICK=1 make bench   # the two multi-account ones

Scenarios: ``ingest`` (webhook vs raw start), ``bulk`` (bulk invite under Lever's
limit), ``waiting`` (thousands waiting), ``accounts`` (idle worker memory and CPU
by configured accounts, bench/accounts.py), ``neighbours`` (one account's bulk
move vs another account's candidates, bench/neighbours.py), ``backfill`` (candidates
already waiting, invited by ``cli.py backfill``, bench/backfill.py), ``commands``
(a recruiter's ``Py - Resend`` on many waiting candidates at once, and the idle
command watch's Lever calls, bench/commands.py).

Prints progress on stderr, then ``key=value`` lines and a table on stdout, and
writes every figure to ``bench/results/<mode>-<time>.json`` (and
``bench/results/latest-<mode>.json``). Method and figures: docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import compileall
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import accounts, backfill, bulk, commands, ingest, neighbours, waiting
from bench.common import RESULTS_DIR, ROOT, Sizes, loadavg, log, machine_info, write_json

SCENARIOS = {
    "ingest": ingest.run,
    "bulk": bulk.run,
    "waiting": waiting.run,
    "accounts": accounts.run,
    "neighbours": neighbours.run,
    "backfill": backfill.run,
    "commands": commands.run,
}

# Targets (benchmarks, not tests): what each figure is held against.
TARGETS = {
    "webhook_vs_raw_start_ratio": (">=", 0.7),
    "webhook_p99_ms_c50": ("<", 100.0),
    "bulk_vs_rate_limit_ratio": ("<=", 1.25),
    "lever_429s": ("==", 0),
    "invite_lever_calls_per_candidate": ("<=", 2),
    "lifecycle_lever_calls_per_candidate": ("<=", 5),
    "worker_rss_growth_kib_per_assessment_beyond_cache": ("<=", 5.0),
    "accounts_rss_ratio": ("<=", 1.25),
    "accounts_idle_cpu_pct": ("<", 2.0),
    "neighbour_p95_s": ("<=", 3.0),
    "neighbours_bulk_vs_rate_limit_ratio": ("<=", 1.15),
    "neighbours_lever_429s": ("==", 0),
    "backfill_vs_rate_limit_ratio": ("<=", 1.15),
    "backfill_lever_429s": ("==", 0),
    "commands_vs_rate_limit_ratio": ("<=", 1.3),
    "commands_lever_429s": ("==", 0),
    "commands_duplicate_reminders": ("==", 0),
    "commands_not_reminded": ("==", 0),
    # commands_every = 1s: one list call a second, within 10 %
    "commands_idle_list_calls_per_minute": ("~", 60.0),
}


def _prepare_processes() -> None:
    """Fresh bytecode for the code every process imports.

    The workflow sandbox re-imports the workflow modules for every workflow it
    creates; with a stale ``.pyc`` and ``PYTHONDONTWRITEBYTECODE`` set (as in this
    shared tree, edited while it runs) each import compiles the source again,
    which costs the worker more than the workflow itself. A deployment installs
    with pip (which compiles), so the benchmark measures with valid bytecode too.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    for name in ("workflows", "activities", "pylever", "sandbox"):
        compileall.compile_dir(str(ROOT / name), quiet=1)
    for name in ("api.py", "worker.py"):
        compileall.compile_file(str(ROOT / name), quiet=1)


def _flat(results: dict[str, Any]) -> dict[str, Any]:
    """The key=value figures."""
    out: dict[str, Any] = {}
    ing = results.get("ingest")
    if ing:
        out["webhook_vs_raw_start_ratio"] = ing["webhook_vs_raw_start_ratio"]
        for level in ing["levels"]:
            c = level["concurrency"]
            for side in ("webhook", "raw_start"):
                s = level[side]
                out[f"{side}_throughput_c{c}"] = s["throughput_per_s"]
                for q in ("p50", "p95", "p99"):
                    out[f"{side}_{q}_ms_c{c}"] = s[f"{q}_ms"]
        api_only = ing["api_only_not_a_trigger"]
        top = ing["top_concurrency"]
        out[f"api_only_throughput_c{top}"] = api_only["throughput_per_s"]
        out[f"api_only_p99_ms_c{top}"] = api_only["p99_ms"]
        busy = ing["with_worker_running"]
        c = busy["concurrency"]
        out[f"worker_running_webhook_vs_raw_start_ratio_c{c}"] = busy["throughput_ratio"]
        out[f"worker_running_webhook_p99_ms_c{c}"] = busy["webhook"]["p99_ms"]
        out[f"worker_running_raw_start_p99_ms_c{c}"] = busy["raw_start"]["p99_ms"]
    b = results.get("bulk")
    if b:
        inv, life = b["invite"], b["lifecycle"]
        out["bulk_candidates"] = inv["candidates"]
        out["bulk_vs_rate_limit_ratio"] = inv["bulk_vs_rate_limit_ratio"]
        out["bulk_seconds"] = inv["elapsed_seconds"]
        out["bulk_ideal_seconds"] = inv["ideal_seconds"]
        out["bulk_lever_calls"] = inv["lever_calls"]
        out["bulk_429s"] = inv["rate_limited_429"]
        out["lifecycle_429s"] = life["rate_limited_429"]
        out["lever_429s"] = inv["rate_limited_429"] + life["rate_limited_429"]
        out["invite_lever_calls_per_candidate"] = inv["per_candidate_calls"]
        out["invite_lever_calls_per_candidate_amortised"] = inv["lever_calls_per_candidate"]
        out["lifecycle_sample"] = life["sample"]
        out["verdict_lever_calls_per_candidate"] = life["verdict_calls_per_candidate"]
        out["lifecycle_lever_calls_per_candidate"] = life["lifecycle_calls_per_candidate_max"]
        out["lifecycle_lever_calls_per_candidate_amortised"] = life["lifecycle_calls_per_candidate"]
    w = results.get("waiting")
    if w:
        rss = w["worker_rss_mib"]
        out["waiting_assessments"] = w["assessments_waiting"]
        out["waiting_create_per_second"] = w["create_per_second"]
        for key, value in rss.items():
            out[f"worker_rss_mib_{key}"] = value
        out["worker_rss_growth_kib_per_assessment_beyond_cache"] = w[
            "rss_growth_kib_per_assessment_beyond_cache"
        ]
        out["worker_rss_growth_kib_per_assessment_inside_cache"] = w[
            "rss_growth_kib_per_assessment_inside_cache"
        ]
        out["worker_rss_growth_fit_settling"] = w["rss_growth_fit_settling"]
        out["worker_idle_cpu_percent"] = w["worker_idle"]["cpu_percent"]
        out["temporal_idle_cpu_percent"] = w["temporal_idle"]["cpu_percent"]
        out["results_applied"] = w["results_applied"]
        out["apply_results_seconds"] = w["apply_seconds"]
        out["apply_results_per_second"] = w["apply_per_second"]
        out["apply_results_429s"] = w["apply_rate_limited_429"]
    if results.get("accounts"):
        out.update(accounts.flat(results["accounts"]))
    if results.get("neighbours"):
        out.update(neighbours.flat(results["neighbours"]))
    if results.get("backfill"):
        out.update(backfill.flat(results["backfill"]))
    if results.get("commands"):
        out.update(commands.flat(results["commands"]))
    return out


def _verdicts(flat: dict[str, Any]) -> dict[str, str]:
    ops = {
        ">=": lambda a, b: a >= b,
        "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b,
        "==": lambda a, b: a == b,
        "~": lambda a, b: abs(a - b) <= 0.1 * b,  # about: within 10 %
    }
    verdicts = {}
    for key, (op, bound) in TARGETS.items():
        if key in flat:
            verdicts[key] = "met" if ops[op](flat[key], bound) else "missed"
    if flat.get("worker_rss_growth_fit_settling"):
        verdicts["worker_rss_growth_kib_per_assessment_beyond_cache"] = "inconclusive"
    return verdicts


def _table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    ing = results.get("ingest")
    if ing:
        lines.append("Webhook ingest (202) vs raw client.start_workflow, worker stopped")
        lines.append(
            f"{'conc':>5} {'side':<10} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'api cpu ms/req':>14} {'temporal cpu ms/req':>19}"
        )
        rows = [*ing["levels"], ing["with_worker_running"]]
        for level in rows:
            for side in ("webhook", "raw_start"):
                s = level[side]
                tag = f"{level['concurrency']}" + ("*" if level["worker"] == "running" else "")
                lines.append(
                    f"{tag:>5} {side:<10} {s['throughput_per_s']:>8} {s['p50_ms']:>8} "
                    f"{s['p95_ms']:>8} {s['p99_ms']:>8} {s['api_cpu_ms_per_request']:>14} "
                    f"{s['temporal_cpu_ms_per_request']:>19}"
                )
            lines.append(f"{'':>5} {'ratio':<10} {level['throughput_ratio']:>8}")
        lines.append("  * worker running (follow-up work competing for the two cores)")
        a = ing["api_only_not_a_trigger"]
        lines.append(
            f"  API alone (signed webhook, not a trigger stage: no Temporal call), "
            f"concurrency {ing['top_concurrency']}: {a['throughput_per_s']} req/s, "
            f"p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms, {a['api_cpu_ms_per_request']} ms API CPU/req"
        )
        lines.append("")
    b = results.get("bulk")
    if b:
        inv, life = b["invite"], b["lifecycle"]
        lines.append(
            f"Bulk invite: {inv['candidates']} candidates, Lever {inv['lever_rate_limit']}, "
            f"account budget {inv['account_lever_requests_per_second']:g}/s, "
            f"{inv['workers']} workers"
        )
        lines.append(
            f"  all 'Py - Invited' after {inv['elapsed_seconds']} s; ideal {inv['ideal_seconds']} s "
            f"({inv['lever_calls']} calls / 10/s); ratio {inv['bulk_vs_rate_limit_ratio']}; "
            f"429s {inv['rate_limited_429']}; peak {inv['peak_calls_per_second_1s']} calls in 1 s"
        )
        lines.append(f"  calls by endpoint: {inv['lever_calls_by_endpoint']}")
        lines.append(
            f"  Lever calls per candidate: invite {inv['per_candidate_calls']} "
            f"(+ shared GET /stages: {inv['lever_calls_per_candidate']} amortised); "
            f"verdict {life['verdict_calls_per_candidate']}; whole lifecycle "
            f"{life['lifecycle_calls_per_candidate_max']} (sample {life['sample']}: "
            f"{life['verdicts']})"
        )
        lines.append("")
    w = results.get("waiting")
    if w:
        rss = w["worker_rss_mib"]
        lines.append(
            f"Waiting at scale: {w['assessments_waiting']} assessments "
            f"({w['workflows_waiting']} workflows), sticky cache {w['max_cached_workflows']}"
        )
        lines.append(f"  set-up: {w['setup']}")
        lines.append(
            f"  created at {w['create_per_second']}/s "
            f"({w['worker_cpu_ms_per_assessment_created']} ms worker CPU each)"
        )
        lines.append("  worker RSS MiB: " + ", ".join(f"{k} {v}" for k, v in rss.items()))
        lines.append(
            "  RSS by waiting: "
            + ", ".join(f"{s['waiting']}:{s['worker_rss_mib']}" for s in w["rss_series"])
        )
        lines.append(
            f"  growth per waiting assessment: {w['rss_growth_kib_per_assessment_inside_cache']} KiB "
            f"while the cache fills, {w['rss_growth_kib_per_assessment_beyond_cache']} KiB beyond "
            f"it (fit over {w['rss_growth_fit_points']}"
            + (", still settling: see a full run)" if w["rss_growth_fit_settling"] else ")")
        )
        lines.append(
            f"  idle CPU over {w['worker_idle']['seconds']} s: worker "
            f"{w['worker_idle']['cpu_percent']}% of a core, Temporal "
            f"{w['temporal_idle']['cpu_percent']}%"
        )
        lines.append(
            f"  {w['results_applied']} results applied in {w['apply_seconds']} s "
            f"({w['apply_per_second']}/s, {w['worker_cpu_ms_per_result']} ms worker CPU each; "
            f"429s {w['apply_rate_limited_429']})"
        )
    if results.get("accounts"):
        lines += ["", *accounts.table(results["accounts"])]
    if results.get("neighbours"):
        lines += ["", *neighbours.table(results["neighbours"])]
    if results.get("backfill"):
        lines += ["", *backfill.table(results["backfill"])]
    if results.get("commands"):
        lines += ["", *commands.table(results["commands"])]
    return "\n".join(lines)


async def main() -> int:
    sizes = Sizes.from_env()
    mode = "quick" if sizes.quick else "full"
    only = [s.strip() for s in os.environ.get("BENCH_ONLY", "").split(",") if s.strip()]
    chosen = [name for name in SCENARIOS if not only or name in only]
    _prepare_processes()
    machine = machine_info()
    log(f"{mode} run of {', '.join(chosen)}; load average {machine['loadavg_at_start']}")
    workdir = Path(tempfile.mkdtemp(prefix="pylever-bench-"))
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    durations: dict[str, float] = {}
    started = time.monotonic()
    for name in chosen:
        t0 = time.monotonic()
        try:
            results[name] = await SCENARIOS[name](sizes, workdir)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} failed (logs kept in {workdir}):\n{traceback.format_exc()}")
        durations[name] = round(time.monotonic() - t0, 1)
    total = round(time.monotonic() - started, 1)

    flat = _flat(results)
    verdicts = _verdicts(flat)
    report = {
        "mode": mode,
        "sizes": sizes.to_json(),
        "machine": {**machine, "loadavg_at_end": loadavg()},
        "seconds": {"total": total, **durations},
        "figures": flat,
        "targets": {
            k: {"target": f"{op} {bound}", "verdict": verdicts.get(k)}
            for k, (op, bound) in TARGETS.items()
        },
        "results": results,
        "errors": errors,
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS_DIR / f"{mode}-{stamp}.json"
    write_json(path, report)
    write_json(RESULTS_DIR / f"latest-{mode}.json", report)

    print(f"mode={mode}")
    print(f"loadavg_start={' '.join(str(x) for x in machine['loadavg_at_start'])}")
    print(f"loadavg_end={' '.join(str(x) for x in loadavg())}")
    for key, value in flat.items():
        print(f"{key}={value}")
    for key, verdict in verdicts.items():
        print(f"target_{key}={verdict}")
    print(f"seconds_total={total}")
    print(f"results_file={path.relative_to(ROOT)}")
    print()
    print(_table(results))
    for name, error in errors.items():
        print(f"error_{name}={error}")
    if not errors:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""7. Recruiter commands (issue 15): ``Py - Resend`` added to N waiting candidates at once.

N candidates are invited through the webhook path (moved into the trigger stage at
once, as in bench/bulk.py) and wait for their test. The stack looks for command tags
every second (``commands_every = "1s"``); two worker processes share the shared Lever
queue, the account keeps the default budget (``lever_requests_per_second`` = 9,
enforced by the Temporal server), and the Lever sandbox allows 10 requests/s per key
with bursts of 20 (429 above that).

- Idle: with nobody tagged, the Lever list calls the account's ``CommandWatchWorkflow``
  makes per minute (one ``GET /opportunities`` per look: about 60 at 1 s), and that it
  makes no other call.
- Resend: a recruiter adds ``Py - Resend`` to all N (the Lever sandbox's control
  endpoint, as Lever's UI: no webhook). Measured from the first tag added until no
  candidate carries it and Py shows one reminder for each: the seconds, against the
  ideal (the Lever calls made ÷ 10/s, ``commands_vs_rate_limit_ratio``), the 429s, the
  Lever calls by endpoint and per candidate, and, a few looks later, every candidate's
  reminders at Py (exactly one each: ``commands_duplicate_reminders`` = 0).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.common import (
    LEVER_LIMIT,
    BenchStack,
    Sizes,
    bounded_gather,
    log,
    peak_rate,
    wait_until,
)
from pylever.contracts.commands import CommandKind
from sandbox.process_stack import ACCOUNT, ProcessStack
from workflows.decisions import TAG_INVITED

ADD_TAGS = "POST /opportunities/{id}/addTags"
LIST = "GET /opportunities"
READ = "GET /opportunities/{id}"
REMOVE_TAGS = "POST /opportunities/{id}/removeTags"
RESEND = CommandKind.RESEND.value
COMMANDS_EVERY = "1s"
SETTLE_SECONDS = 5.0  # looks after the last tag went, to catch a second application


async def _command_runs(stack: ProcessStack) -> dict[str, int]:
    """``CandidateCommandsWorkflow`` runs in Temporal's visibility: all, and still running."""
    client = await stack.client()
    every = "WorkflowType = 'CandidateCommandsWorkflow'"
    base = f"{every} AND LeverAccount = '{ACCOUNT}'"
    try:
        runs = (await client.count_workflows(every)).count
        running = (await client.count_workflows(f"{every} AND ExecutionStatus = 'Running'")).count
        applied = (await client.count_workflows(base)).count
    except Exception as exc:  # visibility is a report here, not a gate
        log(f"commands: cannot count the command runs: {exc}")
        return {}
    # Runs without the search attribute found no command (a listing older than a removal).
    return {"runs": runs, "running": running, "with_commands": applied}


async def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    n = sizes.commands_candidates
    log(f"commands: starting the stack (2 workers, commands_every {COMMANDS_EVERY}), {n} waiting")
    async with BenchStack(workdir / "commands", workers=2, commands_every=COMMANDS_EVERY) as stack:
        opps = await bounded_gather(
            range(n), 20, lambda i: stack.create_candidate(f"Resend {i}", f"resend{i}@example.com")
        )
        await stack.lever_reset_stats()
        t0 = time.monotonic()
        await bounded_gather(opps, 50, stack.move)

        async def all_invited() -> bool:
            stats = await stack.lever_stats()
            return stats["requests"]["by_endpoint"].get(ADD_TAGS, 0) >= n

        await wait_until(all_invited, 60 + n / 2, interval=0.25, what=f"{n} invited")
        tags = {c["id"]: c["tags"] for c in await stack.candidates()}
        not_invited = [o for o in opps if TAG_INVITED not in tags[o]]
        if not_invited:
            raise RuntimeError(f"commands: {len(not_invited)} candidates without {TAG_INVITED!r}")
        log(f"commands: {n} invited and waiting after {time.monotonic() - t0:.1f}s")

        # --- idle: nobody tagged, the watch's looks alone -------------------------------
        await asyncio.sleep(2)  # the invitations' last calls drain
        await stack.lever_reset_stats()
        i0 = time.monotonic()
        await asyncio.sleep(sizes.commands_idle_seconds)
        idle_stats = await stack.lever_stats()
        idle_seconds = time.monotonic() - i0
        idle_by_endpoint = idle_stats["requests"]["by_endpoint"]
        idle_list = idle_by_endpoint.get(LIST, 0)
        idle = {
            "seconds": round(idle_seconds, 2),
            "list_calls": idle_list,
            "list_calls_per_minute": round(idle_list * 60 / idle_seconds, 1),
            "other_calls": idle_stats["requests"]["total"] - idle_list,
            "lever_calls_by_endpoint": idle_by_endpoint,
        }
        log(f"commands: idle, {idle['list_calls_per_minute']} list calls a minute")

        # --- the recruiter adds Py - Resend to all N at once ------------------------------
        by_opp = await stack.invitations_by_opportunity()
        invitation_of = {}
        for opp in opps:
            [inv] = by_opp[opp]
            if inv["reminders"]:
                raise RuntimeError(f"commands: {opp} reminded before the tag ({inv['reminders']})")
            invitation_of[opp] = inv["id"]
        reminders_before = (await stack.py_stats())["reminders"]
        await stack.lever_reset_stats()
        samples: list[tuple[float, int]] = []
        reminded_at: float | None = None

        started = time.monotonic()
        await bounded_gather(opps, 50, lambda o: stack.recruiter_tags(o, add=[RESEND]))
        tagged_seconds = time.monotonic() - started

        async def all_done() -> dict[str, Any] | None:
            nonlocal reminded_at
            stats = await stack.lever_stats()
            now = time.monotonic() - started
            samples.append((now, stats["requests"]["total"]))
            reminders = (await stack.py_stats())["reminders"] - reminders_before
            if reminders >= n and reminded_at is None:
                reminded_at = now
            if reminders < n:
                return None
            still = [c["id"] for c in await stack.candidates() if RESEND in c["tags"]]
            return None if still else stats

        stats = await wait_until(all_done, 60 + n, interval=0.25, what=f"{n} resends")
        elapsed = time.monotonic() - started
        by_endpoint = stats["requests"]["by_endpoint"]
        calls = stats["requests"]["total"]
        ideal = calls / LEVER_LIMIT
        log(f"commands: {n} resent and untagged in {elapsed:.1f}s (ideal {ideal:.1f}s)")

        # --- exactly once: a few more looks, then every invitation's reminders -----------
        await asyncio.sleep(SETTLE_SECONDS)
        after = await stack.lever_stats()
        invitations = {i["id"]: i for i in await stack.all_invitations()}
        counts = [invitations[invitation_of[o]]["reminders"] for o in opps]
        runs = await _command_runs(stack)
        reads, removes = by_endpoint.get(READ, 0), by_endpoint.get(REMOVE_TAGS, 0)
        return {
            "candidates": n,
            "workers": len(stack.workers),
            "commands_every": COMMANDS_EVERY,
            "lever_rate_limit": f"{stack.options.lever_rate:g}/s burst {stack.options.lever_burst}",
            "idle": idle,
            "tags_added_seconds": round(tagged_seconds, 2),
            "reminded_seconds": round(reminded_at or elapsed, 2),
            "elapsed_seconds": round(elapsed, 2),
            "lever_calls": calls,
            "lever_calls_by_endpoint": by_endpoint,
            "lever_calls_by_status": stats["requests"]["by_status"],
            "ideal_seconds": round(ideal, 2),
            "commands_vs_rate_limit_ratio": round(elapsed / ideal, 3),
            "budget_floor_ratio": round(LEVER_LIMIT / 9.0, 3),
            "rate_limited_429": stats["rate_limited"],
            "list_calls": by_endpoint.get(LIST, 0),
            "reads": reads,
            "removes": removes,
            "own_calls_per_candidate": round((reads + removes) / n, 3),
            "lever_calls_per_candidate": round(calls / n, 3),
            "mean_calls_per_second": round(calls / elapsed, 2),
            "peak_calls_per_second_1s": round(peak_rate(samples), 1),
            "settle_seconds": SETTLE_SECONDS,
            "settle_lever_calls_by_endpoint": {
                k: v - by_endpoint.get(k, 0)
                for k, v in after["requests"]["by_endpoint"].items()
                if v != by_endpoint.get(k, 0)
            },
            "settle_rate_limited_429": after["rate_limited"] - stats["rate_limited"],
            "reminders_total": sum(counts),
            "candidates_reminded_once": sum(1 for c in counts if c == 1),
            "candidates_not_reminded": sum(1 for c in counts if c == 0),
            "duplicate_reminders": sum(c - 1 for c in counts if c > 1),
            "command_runs": runs,
        }


def flat(result: Mapping[str, Any]) -> dict[str, Any]:
    """The key=value figures of this scenario (``bench/run.py``)."""
    return {
        "commands_candidates": result["candidates"],
        "commands_seconds": result["elapsed_seconds"],
        "commands_ideal_seconds": result["ideal_seconds"],
        "commands_vs_rate_limit_ratio": result["commands_vs_rate_limit_ratio"],
        "commands_lever_429s": result["rate_limited_429"] + result["settle_rate_limited_429"],
        "commands_lever_calls": result["lever_calls"],
        "commands_list_calls": result["list_calls"],
        "commands_lever_calls_per_candidate": result["lever_calls_per_candidate"],
        "commands_own_lever_calls_per_candidate": result["own_calls_per_candidate"],
        "commands_duplicate_reminders": result["duplicate_reminders"],
        "commands_not_reminded": result["candidates_not_reminded"],
        "commands_idle_list_calls_per_minute": result["idle"]["list_calls_per_minute"],
        "commands_idle_other_lever_calls": result["idle"]["other_calls"],
    }


def table(result: Mapping[str, Any]) -> list[str]:
    idle, runs = result["idle"], result["command_runs"]
    return [
        f"Recruiter commands: 'Py - Resend' on {result['candidates']} waiting candidates "
        f"(commands_every {result['commands_every']}, Lever {result['lever_rate_limit']} per key, "
        f"{result['workers']} workers)",
        f"  idle: {idle['list_calls_per_minute']} list calls a minute "
        f"({idle['list_calls']} in {idle['seconds']} s), {idle['other_calls']} other Lever calls",
        f"  tags added in {result['tags_added_seconds']} s; all reminded after "
        f"{result['reminded_seconds']} s; all tags gone after {result['elapsed_seconds']} s",
        f"  ideal {result['ideal_seconds']} s ({result['lever_calls']} calls / 10/s); ratio "
        f"{result['commands_vs_rate_limit_ratio']}; 429s {result['rate_limited_429']}; peak "
        f"{result['peak_calls_per_second_1s']} calls in 1 s",
        f"  calls: {result['list_calls']} list, {result['reads']} reads, {result['removes']} "
        f"removeTags = {result['own_calls_per_candidate']} per candidate "
        f"({result['lever_calls_per_candidate']} with the list calls)",
        f"  exactly once ({result['settle_seconds']:g} s later): {result['candidates_reminded_once']} "
        f"reminded once, {result['candidates_not_reminded']} not reminded, "
        f"{result['duplicate_reminders']} duplicate reminders; command runs {runs}",
    ]

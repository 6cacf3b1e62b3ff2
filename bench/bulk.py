"""2. Bulk invite under Lever's limit, and Lever calls per candidate through the verdict.

N candidates of one account are moved into the trigger stage at once (the
Lever sandbox delivers each signed webhook to the API, as Lever does). The
Lever sandbox allows 10 requests/s per key with bursts of 20 and answers 429
above that; the account keeps the config's default budget
(``lever_requests_per_second`` = 9, enforced by the Temporal server on the
account's Lever task queue for every worker together). Two worker processes
share that queue.

- Invite: the time from the first move until every candidate carries
  ``Py - Invited``, against the ideal (the Lever calls made ÷ 10/s), the 429
  count and the Lever calls per candidate.
- Lifecycle: a sample of the invited candidates completes the test at Py
  (scores spread over pass, fail and needs-review; no stage move configured);
  the Lever calls until each has its verdict tag and report link, per candidate,
  and the whole pass/fail lifecycle per candidate (invite + verdict), checked
  against each candidate's own write log in the sandbox.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import (
    LEVER_LIMIT,
    BenchStack,
    Sizes,
    bounded_gather,
    log,
    peak_rate,
    stack_config,
    wait_until,
)
from sandbox.process_stack import ACCOUNT
from workflows.decisions import TAG_INVITED

VERDICT_TAGS = ("Py - Pass", "Py - Fail", "Py - Needs Review")
ADD_TAGS = "POST /opportunities/{id}/addTags"
ADD_LINKS = "POST /opportunities/{id}/addLinks"


def _score(i: int) -> float:
    """Pass, fail, pass, needs review, ... (thresholds: pass >= 80, fail <= 40)."""
    return (92.0, 15.0, 85.0, 60.0)[i % 4]


async def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    n = sizes.bulk_candidates
    log(f"bulk: starting the stack (2 workers), {n} candidates")
    async with BenchStack(workdir / "bulk", workers=2) as stack:
        account = stack_config(stack).account(ACCOUNT)
        assert account is not None
        opps = await bounded_gather(
            range(n), 20, lambda i: stack.create_candidate(f"Bulk {i}", f"bulk{i}@example.com")
        )
        await stack.lever_reset_stats()
        samples: list[tuple[float, int]] = []

        started = time.monotonic()
        moves = await bounded_gather(opps, 50, stack.move)
        moved = time.monotonic() - started
        statuses: dict[str, int] = {}
        for m in moves:
            statuses[str(m.get("status"))] = statuses.get(str(m.get("status")), 0) + 1

        async def all_invited() -> dict[str, Any] | None:
            stats = await stack.lever_stats()
            samples.append((time.monotonic() - started, stats["requests"]["total"]))
            tagged = stats["requests"]["by_endpoint"].get(ADD_TAGS, 0)
            return stats if tagged >= n else None

        stats = await wait_until(all_invited, 60 + n / 2, interval=0.25, what=f"{n} invited")
        elapsed = time.monotonic() - started
        tags = {c["id"]: c["tags"] for c in await stack.candidates()}
        not_invited = [o for o in opps if TAG_INVITED not in tags[o]]
        if not_invited:
            raise RuntimeError(f"bulk: {len(not_invited)} candidates without {TAG_INVITED!r}")
        invite_calls = stats["requests"]["total"]
        ideal = invite_calls / LEVER_LIMIT
        peak = peak_rate(samples)
        invite = {
            "candidates": n,
            "workers": len(stack.workers),
            "lever_rate_limit": f"{stack.options.lever_rate:g}/s burst {stack.options.lever_burst}",
            "account_lever_requests_per_second": account.lever_requests_per_second,
            "webhook_statuses": statuses,
            "moves_seconds": round(moved, 2),
            "elapsed_seconds": round(elapsed, 2),
            "lever_calls": invite_calls,
            "lever_calls_by_endpoint": stats["requests"]["by_endpoint"],
            "lever_calls_by_status": stats["requests"]["by_status"],
            "ideal_seconds": round(ideal, 2),
            "bulk_vs_rate_limit_ratio": round(elapsed / ideal, 3),
            "rate_limited_429": stats["rate_limited"],
            # Calls about one candidate; GET /stages is the API's cached stage list, shared.
            "per_candidate_calls": round(
                (invite_calls - stats["requests"]["by_endpoint"].get("GET /stages", 0)) / n, 3
            ),
            "lever_calls_per_candidate": round(invite_calls / n, 3),
            "mean_calls_per_second": round(invite_calls / elapsed, 2),
            "peak_calls_per_second_1s": round(peak, 1),
        }
        log(f"bulk: invited in {elapsed:.1f}s (ideal {ideal:.1f}s)")

        # --- lifecycle: complete a sample, count Lever calls through the verdict ----------
        sample = opps[: sizes.lifecycle_sample]
        grouped = await stack.invitations_by_opportunity()
        await stack.lever_reset_stats()
        t0 = time.monotonic()
        await bounded_gather(
            list(enumerate(sample)), 10,
            lambda item: stack.complete(grouped[item[1]][0]["id"], _score(item[0])),
        )  # fmt: skip

        async def all_verdicts() -> dict[str, Any] | None:
            stats = await stack.lever_stats()
            linked = stats["requests"]["by_endpoint"].get(ADD_LINKS, 0)
            return stats if linked >= len(sample) else None

        vstats = await wait_until(all_verdicts, 120, interval=0.25, what="sample verdicts")
        verdict_seconds = time.monotonic() - t0
        verdict_calls = vstats["requests"]["total"]
        final = {c["id"]: c for c in await stack.candidates()}
        verdicts: dict[str, int] = {}
        for opp in sample:
            found = [t for t in final[opp]["tags"] if t in VERDICT_TAGS]
            if len(found) != 1 or TAG_INVITED in final[opp]["tags"] or not final[opp]["links"]:
                raise RuntimeError(f"bulk: {opp} ended with tags {final[opp]['tags']}")
            verdicts[found[0]] = verdicts.get(found[0], 0) + 1
        # Per candidate, from the sandbox's own books: every write, plus the one read.
        writes_per_candidate = [len(await stack.writes(o)) for o in sample]
        lifecycle = {
            "sample": len(sample),
            "verdicts": verdicts,
            "verdict_seconds": round(verdict_seconds, 2),
            "lever_calls": verdict_calls,
            "lever_calls_by_endpoint": vstats["requests"]["by_endpoint"],
            "rate_limited_429": vstats["rate_limited"],
            "verdict_calls_per_candidate": round(verdict_calls / len(sample), 3),
            "lifecycle_calls_per_candidate": round(
                invite_calls / n + verdict_calls / len(sample), 3
            ),
            "writes_per_candidate_max": max(writes_per_candidate),
            "lifecycle_calls_per_candidate_max": 1 + max(writes_per_candidate),  # + the read
        }
    return {
        "invite": invite,
        "lifecycle": lifecycle,
        "bulk_vs_rate_limit_ratio": invite["bulk_vs_rate_limit_ratio"],
        "rate_limited_429": invite["rate_limited_429"] + lifecycle["rate_limited_429"],
        "invite_calls_per_candidate": invite["lever_calls_per_candidate"],
        "lifecycle_calls_per_candidate": lifecycle["lifecycle_calls_per_candidate"],
    }

"""5. Neighbours: one account's bulk move does not hold up another account's candidates.

Two accounts, A (``acme``) and B (``bravo``), each with its own Lever key,
webhook token and webhook URL, each at the config's default budget
(``lever_requests_per_second`` = 9), each served by its own Lever sandbox
process at 10 requests/s per key with bursts of 20 (429 above), as in
scenario 2 (``bench/bulk.py``); two worker processes, as there.

A moves N candidates (full 500, quick 150) into the trigger stage at once (50
concurrent moves; each move delivers the signed webhook to the API, as Lever
does). One second after A's first move, B starts moving M candidates (full 20,
quick 10), one a second.

- B: for each candidate, the seconds from its webhook answered 202 (the
  sandbox's move returns once the API answered; the wall clock is read right
  after) to its invitation existing at the Py sandbox (the invitation's
  ``created_at``, a millisecond wall-clock stamp taken on the same machine):
  ``neighbour_p95_s`` (target <= 3) and ``neighbour_max_s``. The JSON also has
  the time to B's ``Py - Invited`` tag (from B's Lever write log).
- A: the time from its first move until all N carry ``Py - Invited``, against
  the ideal = A's Lever calls ÷ 10/s, as ``bulk_vs_rate_limit_ratio`` in
  scenario 2: ``neighbours_bulk_vs_rate_limit_ratio`` (target <= 1.15).
- ``neighbours_lever_429s``: 429s of both Lever sandboxes (target 0).

Where B's time goes: from the Temporal histories of each B assessment and its
invitation child, up to the invitation's ``created_at``: the time workflow
tasks waited for a worker (schedule to start), the time Lever and Py
activities waited in their task queues, and the time they ran (the JSON has
it per candidate; the table the mean).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.accounts import ExtraAccount, ExtraAccountsStack
from bench.common import LEVER_LIMIT, Sizes, bounded_gather, log, percentile, wait_until
from sandbox.devserver import free_port
from sandbox.launcher import lever_sandbox_process
from sandbox.process_stack import TRIGGER_STAGE
from workflows.decisions import TAG_INVITED

ACCOUNT_B = "bravo"
ADD_TAGS = "POST /opportunities/{id}/addTags"
B_START_DELAY = 1.0  # seconds after A's first move
MOVE_CONCURRENCY = 50  # A's moves in flight, as in bench/bulk.py


class NeighboursStack(ExtraAccountsStack):
    """``acme`` on the stack's Lever sandbox, ``bravo`` on a second one of its own."""

    def __init__(self, workdir: Path, **options: Any) -> None:
        self.lever_b_port = free_port()
        self.lever_b_url = f"http://127.0.0.1:{self.lever_b_port}"
        super().__init__(workdir, **options)
        [b] = self.extras()
        o = self.options
        seed = o.seed + 1 if o.seed is not None else None  # other opportunity ids than A's
        self.lever_b = lever_sandbox_process(
            self.lever_b_port,
            webhook_url=f"{self.api_url}/webhooks/lever/{ACCOUNT_B}",
            api_key=b.key,
            signature_token=b.token,
            env=self._base_env(),
            name="lever-sandbox-b",
            log_path=self.workdir / "lever-sandbox-b.log",
            rate=o.lever_rate,
            burst=o.lever_burst,
            error_rate=o.lever_error_rate,
            seed=seed,
        )

    def extra_accounts(self) -> list[ExtraAccount]:
        return [
            ExtraAccount(
                id=ACCOUNT_B,
                lever_url=self.lever_b_url,
                key="bench-bravo-lever-key-0c9d",
                token="bench-bravo-stage-token-3e71",
            )
        ]

    async def start(self) -> None:
        # B's sandbox answers before the workers start (their start-up checks read it).
        self.lever_b.spawn()
        await self._wait_http(self.lever_b, f"{self.lever_b_url}/_sandbox/stats")
        await super().start()

    async def close(self) -> None:
        await super().close()
        await self.lever_b.stop(grace=5)

    def _kill_all_now(self) -> None:
        super()._kill_all_now()
        self.lever_b.kill_now()

    async def _lever_b(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, f"{self.lever_b_url}/_sandbox{path}", **kwargs)
        response.raise_for_status()
        return response.json()

    async def create_candidate_b(self, name: str, email: str) -> str:
        body = {"name": name, "emails": [email], "tags": []}
        return str((await self._lever_b("POST", "/candidates", json=body))["id"])

    async def move_b(self, opportunity_id: str) -> dict[str, Any]:
        result = await self._lever_b(
            "POST", f"/candidates/{opportunity_id}/stage", json={"stage": TRIGGER_STAGE}
        )
        return dict(result["webhook"] or {})

    async def lever_b_stats(self) -> dict[str, Any]:
        return dict(await self._lever_b("GET", "/stats"))

    async def lever_b_reset_stats(self) -> None:
        await self._lever_b("POST", "/reset-stats")

    async def writes_b(self, opportunity_id: str) -> list[dict[str, Any]]:
        return list(await self._lever_b("GET", f"/candidates/{opportunity_id}/writes"))


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _invitations_of(invitations: list[dict[str, Any]], account: str) -> dict[str, dict[str, Any]]:
    """The first invitation per opportunity of ``account`` (reference
    ``assessment:<account>:<opportunity>:<stage>:<test>``)."""
    found: dict[str, dict[str, Any]] = {}
    for inv in sorted(invitations, key=lambda i: i["created_at"]):
        parts = inv["reference"].split(":")
        if len(parts) > 2 and parts[1] == account:
            found.setdefault(parts[2], inv)
    return found


async def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    n, m = sizes.neighbours_bulk, sizes.neighbours_trickle
    log(f"neighbours: starting the stack (2 workers, 2 accounts), A {n} at once, B {m} at 1/s")
    async with NeighboursStack(workdir / "neighbours", workers=2) as stack:
        a_opps = await bounded_gather(
            range(n), 20, lambda i: stack.create_candidate(f"Bulk A {i}", f"a{i}@example.com")
        )
        b_opps = [await stack.create_candidate_b(f"Trickle B {i}", f"b{i}@example.com")
                  for i in range(m)]  # fmt: skip
        await stack.lever_reset_stats()
        await stack.lever_b_reset_stats()

        b_moves: list[dict[str, Any]] = []
        started = time.monotonic()

        async def trickle() -> None:
            for i, opp in enumerate(b_opps):
                await asyncio.sleep(max(0.0, started + B_START_DELAY + i - time.monotonic()))
                t0 = time.time()
                webhook = await stack.move_b(opp)
                t1 = time.time()
                b_moves.append({
                    "opportunity": opp, "moved_at": t0, "answered_at": t1,
                    "status": webhook.get("status"),
                    "since_a_started": round(time.monotonic() - started, 2),
                })  # fmt: skip

        trickling = asyncio.create_task(trickle())
        a_moves = await bounded_gather(a_opps, MOVE_CONCURRENCY, stack.move)
        a_moved = time.monotonic() - started

        async def a_all_invited() -> dict[str, Any] | None:
            stats = await stack.lever_stats()
            return stats if stats["requests"]["by_endpoint"].get(ADD_TAGS, 0) >= n else None

        a_stats = await wait_until(a_all_invited, 60 + n / 2, interval=0.25, what=f"A: {n} invited")
        a_elapsed = time.monotonic() - started
        await trickling

        async def b_all_invited() -> dict[str, Any] | None:
            found = _invitations_of(await stack.all_invitations(), ACCOUNT_B)
            return found if all(o in found for o in b_opps) else None

        b_invitations = await wait_until(b_all_invited, 120, interval=0.5, what=f"B: {m} invited")
        b_stats = await wait_until(
            lambda: _b_tagged(stack, m), 60, interval=0.5, what=f"B: {m} tagged"
        )

        a_tags = {c["id"]: c["tags"] for c in await stack.candidates()}
        a_missing = [o for o in a_opps if TAG_INVITED not in a_tags[o]]
        if a_missing:
            raise RuntimeError(f"neighbours: {len(a_missing)} of A without {TAG_INVITED!r}")
        a_statuses: dict[str, int] = {}
        for mv in a_moves:
            a_statuses[str(mv.get("status"))] = a_statuses.get(str(mv.get("status")), 0) + 1

        per_b: list[dict[str, Any]] = []
        for mv in b_moves:
            inv = b_invitations[mv["opportunity"]]
            writes = await stack.writes_b(mv["opportunity"])
            tagged = [w["at"] / 1000 for w in writes
                      if w["op"] == "addTags" and TAG_INVITED in w["values"]]  # fmt: skip
            per_b.append({
                **mv,
                "invitation_created_at": inv["created_at"],
                "invited_s": round(_epoch(inv["created_at"]) - mv["answered_at"], 3),
                "invited_from_move_s": round(_epoch(inv["created_at"]) - mv["moved_at"], 3),
                "tagged_s": round(tagged[0] - mv["answered_at"], 3) if tagged else None,
            })  # fmt: skip
        client = await stack.client()
        for entry in per_b:
            child = b_invitations[entry["opportunity"]]["reference"]
            entry["breakdown_s"] = await _where_time_went(
                client, [child.rsplit(":", 1)[0], child], _epoch(entry["invitation_created_at"])
            )
        bad_b = [p for p in per_b if p["status"] != 202]
        if bad_b:
            raise RuntimeError(f"neighbours: B's webhooks not all 202: {bad_b}")

    latencies = sorted(p["invited_s"] for p in per_b)
    tag_latencies = sorted(p["tagged_s"] for p in per_b if p["tagged_s"] is not None)
    a_calls = a_stats["requests"]["total"]
    ideal = a_calls / LEVER_LIMIT
    return {
        "a": {
            "account": "acme",
            "candidates": n,
            "webhook_statuses": a_statuses,
            "moves_seconds": round(a_moved, 2),
            "elapsed_seconds": round(a_elapsed, 2),
            "lever_calls": a_calls,
            "lever_calls_by_endpoint": a_stats["requests"]["by_endpoint"],
            "ideal_seconds": round(ideal, 2),
            "bulk_vs_rate_limit_ratio": round(a_elapsed / ideal, 3),
            "rate_limited_429": a_stats["rate_limited"],
        },
        "b": {
            "account": ACCOUNT_B,
            "candidates": m,
            "start_delay_seconds": B_START_DELAY,
            "lever_calls": b_stats["requests"]["total"],
            "rate_limited_429": b_stats["rate_limited"],
            "invited_p50_s": round(percentile(latencies, 50), 3),
            "invited_p95_s": round(percentile(latencies, 95), 3),
            "invited_max_s": round(latencies[-1], 3),
            "tagged_p95_s": round(percentile(tag_latencies, 95), 3) if tag_latencies else None,
            "tagged_max_s": round(tag_latencies[-1], 3) if tag_latencies else None,
            "breakdown_mean_s": {
                k: round(sum(p["breakdown_s"][k] for p in per_b) / len(per_b), 3)
                for k in per_b[0]["breakdown_s"]
            },
            "per_candidate": per_b,
        },
        "lever_rate_limit": f"{stack.options.lever_rate:g}/s burst {stack.options.lever_burst}",
        "workers": len(stack.workers),
        "rate_limited_429": a_stats["rate_limited"] + b_stats["rate_limited"],
    }


def _seconds(event: Any) -> float:
    return event.event_time.ToDatetime(tzinfo=UTC).timestamp()


async def _where_time_went(
    client: Client, workflow_ids: list[str], until: float
) -> dict[str, float]:
    """Seconds spent, summed over the histories, in each kind of wait and run before ``until``.

    A workflow task's wait is its schedule to start (a worker free to take it); an
    activity's wait is its schedule to start on its task queue (for Lever
    activities: the account's rate limit and whatever is queued ahead), its run
    start to completion (or ``until``).
    """
    out = {
        "workflow_task_wait": 0.0,
        "workflow_task_run": 0.0,
        "lever_activity_wait": 0.0,
        "lever_activity_run": 0.0,
        "py_activity_wait": 0.0,
        "py_activity_run": 0.0,
        "other_activity_wait": 0.0,  # activities.temporal_ops (main queue)
        "other_activity_run": 0.0,
    }
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        scheduled: dict[int, tuple[float, str]] = {}
        started: dict[int, tuple[float, str]] = {}
        for event in history.events:
            at = _seconds(event)
            if at > until:
                break
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                scheduled[event.event_id] = (at, "workflow_task")
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                name = event.activity_task_scheduled_event_attributes.activity_type.name
                prefix = name.split(".", 1)[0] if "." in name else ""
                what = f"{prefix}_activity" if prefix in ("lever", "py") else "other_activity"
                scheduled[event.event_id] = (at, what)
            elif kind in (
                EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
                EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED,
            ):
                attrs = (
                    event.workflow_task_started_event_attributes
                    if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
                    else event.activity_task_started_event_attributes
                )
                if attrs.scheduled_event_id in scheduled:
                    t0, what = scheduled.pop(attrs.scheduled_event_id)
                    out[f"{what}_wait"] += at - t0
                    started[event.event_id] = (at, what)
            elif kind in (
                EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
                EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
                EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
                EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
            ):
                field = {
                    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "workflow_task_completed",
                    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed",
                    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed",
                    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out",
                }[kind]
                started_id = getattr(event, f"{field}_event_attributes").started_event_id
                if started_id in started:
                    t0, what = started.pop(started_id)
                    out[f"{what}_run"] += at - t0
        # Still waiting or running at ``until``.
        for t0, what in scheduled.values():
            out[f"{what}_wait"] += until - t0
        for t0, what in started.values():
            out[f"{what}_run"] += until - t0
    return {k: round(v, 3) for k, v in out.items()}


async def _b_tagged(stack: NeighboursStack, m: int) -> dict[str, Any] | None:
    stats = await stack.lever_b_stats()
    return stats if stats["requests"]["by_endpoint"].get(ADD_TAGS, 0) >= m else None


def flat(result: Mapping[str, Any]) -> dict[str, Any]:
    """The key=value figures of this scenario (``bench/run.py``)."""
    a, b = result["a"], result["b"]
    return {
        "neighbour_candidates": b["candidates"],
        "neighbour_p50_s": b["invited_p50_s"],
        "neighbour_p95_s": b["invited_p95_s"],
        "neighbour_max_s": b["invited_max_s"],
        "neighbours_bulk_candidates": a["candidates"],
        "neighbours_bulk_seconds": a["elapsed_seconds"],
        "neighbours_bulk_ideal_seconds": a["ideal_seconds"],
        "neighbours_bulk_vs_rate_limit_ratio": a["bulk_vs_rate_limit_ratio"],
        "neighbours_lever_429s": result["rate_limited_429"],
    }


def table(result: Mapping[str, Any]) -> list[str]:
    a, b = result["a"], result["b"]
    return [
        f"Neighbours: A bulk-moves {a['candidates']}, B moves {b['candidates']} one a second "
        f"(Lever {result['lever_rate_limit']} per key, {result['workers']} workers)",
        f"  B webhook 202 -> invitation at Py: p50 {b['invited_p50_s']} s, "
        f"p95 {b['invited_p95_s']} s, max {b['invited_max_s']} s; -> 'Py - Invited' tag: "
        f"p95 {b['tagged_p95_s']} s, max {b['tagged_max_s']} s",
        "  B, seconds each: " + ", ".join(str(p["invited_s"]) for p in b["per_candidate"]),
        "  B, mean seconds before the invitation existed: "
        + ", ".join(f"{k} {v}" for k, v in b["breakdown_mean_s"].items()),
        f"  A all invited after {a['elapsed_seconds']} s; ideal {a['ideal_seconds']} s "
        f"({a['lever_calls']} calls / 10/s); ratio {a['bulk_vs_rate_limit_ratio']}; "
        f"429s A {a['rate_limited_429']}, B {b['rate_limited_429']}",
    ]

"""1. Webhook ingest: signed stage-change webhooks through the API vs. raw Temporal starts.

For each concurrency level the same number of requests goes

- through the API: ``POST /webhooks/lever/acme`` with a signed
  ``candidateStageChange`` into the trigger stage (each for a new opportunity,
  so each one really starts an ``AssessmentWorkflow``); latency is the time to
  the API's 202;
- straight to Temporal: ``client.start_workflow(AssessmentWorkflow.run, ...)``
  from a Python client with the deployment's data converter and the same
  options the API uses (id, reuse and conflict policies, search attributes,
  summary): the floor the API adds to.

The two sides run in A-B-B-A order (two halves each, pooled), after the dev
server has gone quiet: a start leaves work behind in the server (transfer and
visibility tasks) that would otherwise slow whichever side runs second.

Follow-up work: the headline runs are made with the worker stopped, so both
sides measure the start path alone on the two cores (in a deployment the
workers run elsewhere; here they would take CPU from the API and the dev server
in a way that depends on how fast they drain). One extra pair at the highest
concurrency, made first while the worker's backlog is only the warm-up's, runs
with the worker picking up every started workflow, to show that cost. The
opportunities do not exist in the Lever sandbox: a started workflow's first
Lever read (on the account's rate-limited queue, 9/s) answers 404 and it ends.

One more run at the highest concurrency sends signed webhooks for a stage that
is not a trigger (200 ``ignored``): the API's own path (body, signature, stage
match, log line, metrics) without Temporal, i.e. its ceiling on this machine.

Webhook bodies are signed before the clock starts (that is Lever's work), and
the load generator is a minimal keep-alive HTTP client (``KeepAliveClient``).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from bench.common import (
    BenchStack,
    KeepAliveClient,
    ProcProbe,
    Sizes,
    closed_loop,
    latency_summary,
    log,
    stack_config,
)
from pylever.clients.triggers import trigger_settings
from pylever.contracts import search_attributes as sa
from pylever.contracts.records import AssessmentInput, Status
from pylever.edge.signatures import sign_lever_webhook
from sandbox.process_stack import ACCOUNT, PY_ASSESSMENT_STAGE_ID, SECRETS
from workflows import decisions
from workflows.assessment import AssessmentWorkflow

RPC_TIMEOUT = timedelta(seconds=5)
NOT_A_TRIGGER_STAGE = "b7c29827-5a7b-454e-9b2d-1a18dcbebfd3"  # "Phone screen" in the sandbox


def _webhook_body(opportunity_id: str, stage_id: str = PY_ASSESSMENT_STAGE_ID) -> bytes:
    body = sign_lever_webhook(
        SECRETS["ACME_LEVER_STAGE_TOKEN"],
        "candidateStageChange",
        {
            "candidateId": opportunity_id,
            "opportunityId": opportunity_id,
            "toStageId": stage_id,
            "fromStageId": "lead-new",
        },
    )
    return json.dumps(body).encode()


class Ingest:
    def __init__(self, stack: BenchStack, client: Client) -> None:
        self.stack = stack
        self.client = client
        config = stack_config(stack)
        account = config.account(ACCOUNT)
        assert account is not None
        self.settings = trigger_settings(config, account, account.triggers[0])
        self.host, self.port = "127.0.0.1", stack.api_port
        self.path = f"/webhooks/lever/{ACCOUNT}"
        self.lanes: dict[int, KeepAliveClient] = {}
        self.api = ProcProbe(stack.api.pid or 0)
        self.temporal = ProcProbe(stack.temporal.pid or 0)
        self.runs = 0
        self.quiet_seconds = 0.0

    # --- one request each way ------------------------------------------------------

    async def _post(self, lane: int, request: bytes) -> int:
        client = self.lanes.get(lane)
        if client is None:
            client = self.lanes[lane] = KeepAliveClient(self.host, self.port)
        status, _ = await client.send(request)
        return status

    async def _raw_start(self, _lane: int, opportunity_id: str) -> int:
        await self.client.start_workflow(
            AssessmentWorkflow.run,
            AssessmentInput(
                account_id=ACCOUNT,
                opportunity_id=opportunity_id,
                stage_id=PY_ASSESSMENT_STAGE_ID,
                settings=self.settings,
            ),
            id=decisions.assessment_workflow_id(ACCOUNT, opportunity_id, PY_ASSESSMENT_STAGE_ID),
            task_queue=self.stack.options.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.LEVER_ACCOUNT, ACCOUNT),
                    SearchAttributePair(sa.LEVER_OPPORTUNITY_ID, opportunity_id),
                    SearchAttributePair(sa.LEVER_STAGE_ID, PY_ASSESSMENT_STAGE_ID),
                    SearchAttributePair(sa.PY_STATUS, Status.RESOLVING.value),
                ]
            ),
            static_summary=f"opportunity {opportunity_id} · stage {self.settings.stage}",
            rpc_timeout=RPC_TIMEOUT,
        )
        return 202

    # --- runs ------------------------------------------------------------------------

    async def quiet(self, below_percent: float = 10.0, within: float = 30.0) -> None:
        """Until the dev server has finished the work earlier starts left behind."""
        t0 = time.monotonic()
        deadline = t0 + within
        while time.monotonic() < deadline:
            if (await self.temporal.cpu_percent(0.5))["cpu_percent"] < below_percent:
                break
        self.quiet_seconds += time.monotonic() - t0

    async def run(self, kind: str, count: int, concurrency: int) -> dict[str, Any]:
        """One closed-loop run; returns latencies, wall time and CPU used per process."""
        self.runs += 1
        ids = [f"b{self.runs}-{kind}-c{concurrency}-{i}" for i in range(count)]
        expected = 202
        if kind == "raw":
            items: list[Any] = ids
            call = self._raw_start
        else:
            stage = PY_ASSESSMENT_STAGE_ID if kind == "webhook" else NOT_A_TRIGGER_STAGE
            expected = 202 if kind == "webhook" else 200
            items = [
                KeepAliveClient.request_bytes(
                    self.host, self.port, self.path, _webhook_body(o, stage)
                )
                for o in ids
            ]
            call = self._post
        api_cpu, tmp_cpu = self.api.cpu_seconds(), self.temporal.cpu_seconds()
        latencies, wall, statuses = await closed_loop(items, concurrency, call)
        api_cpu = self.api.cpu_seconds() - api_cpu
        tmp_cpu = self.temporal.cpu_seconds() - tmp_cpu
        await self.close()
        bad = [s for s in statuses if s != expected]
        if bad:
            raise RuntimeError(
                f"{kind} c={concurrency}: {len(bad)} answers not {expected}: {bad[:5]}"
            )
        return {"latencies": latencies, "wall": wall, "api_cpu": api_cpu, "temporal_cpu": tmp_cpu}

    async def pair(
        self, count: int, concurrency: int, *, quiet_below: float = 10.0, quiet_within: float = 30.0
    ) -> dict[str, Any]:
        """Webhooks and raw starts, A-B-B-A, ``count`` requests per side in all."""
        halves = {"webhook": [], "raw": []}
        first = count // 2
        for kind, size in (("webhook", first), ("raw", first),
                           ("raw", count - first), ("webhook", count - first)):  # fmt: skip
            await self.quiet(quiet_below, quiet_within)
            halves[kind].append(await self.run(kind, size, concurrency))
        out: dict[str, Any] = {}
        for kind, runs in halves.items():
            summary = latency_summary(
                [x for r in runs for x in r["latencies"]], sum(r["wall"] for r in runs)
            )
            summary["api_cpu_ms_per_request"] = (
                round(1000 * sum(r["api_cpu"] for r in runs) / count, 3)
                if kind == "webhook"
                else 0.0
            )
            summary["temporal_cpu_ms_per_request"] = round(
                1000 * sum(r["temporal_cpu"] for r in runs) / count, 3
            )
            out["webhook" if kind == "webhook" else "raw_start"] = summary
        out["concurrency"] = concurrency
        out["throughput_ratio"] = round(
            out["webhook"]["throughput_per_s"] / out["raw_start"]["throughput_per_s"], 3
        )
        return out

    async def close(self) -> None:
        for client in self.lanes.values():
            await client.close()
        self.lanes.clear()


async def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    log("ingest: starting the stack")
    async with BenchStack(workdir / "ingest", workers=1) as stack:
        bench = Ingest(stack, await stack.client())
        try:
            # Warm up both paths (stage cache, connections, the codec, the server's caches).
            await bench.run("webhook", sizes.ingest_warmup, 10)
            await bench.run("raw", sizes.ingest_warmup, 10)
            top = max(sizes.ingest_concurrency)

            # First with the worker running (while its backlog is only the warm-up's):
            # each start's first workflow task and the Lever trickle compete for the cores.
            log(f"ingest: concurrency {top}, worker running")
            with_worker = {
                "worker": "running",
                **await bench.pair(sizes.ingest_requests, top, quiet_below=25.0, quiet_within=15.0),
            }
            await stack.stop_worker(0)  # then the start path alone: see the module docstring

            levels: list[dict[str, Any]] = []
            for concurrency in sizes.ingest_concurrency:
                log(f"ingest: concurrency {concurrency}, worker stopped")
                levels.append(
                    {"worker": "stopped", **await bench.pair(sizes.ingest_requests, concurrency)}
                )

            log(f"ingest: concurrency {top}, API only (not a trigger stage)")
            await bench.quiet()
            count = 5 * sizes.ingest_requests  # cheap requests: more of them to time
            api_only = await bench.run("ignored", count, top)
            api_only_summary = latency_summary(api_only["latencies"], api_only["wall"])
            api_only_summary["api_cpu_ms_per_request"] = round(
                1000 * api_only["api_cpu"] / count, 3
            )
        finally:
            await bench.close()
    headline = next(level for level in levels if level["concurrency"] == top)
    return {
        "levels": levels,
        "with_worker_running": with_worker,
        "api_only_not_a_trigger": api_only_summary,
        "webhook_vs_raw_start_ratio": headline["throughput_ratio"],
        "webhook_p99_ms_at_top": headline["webhook"]["p99_ms"],
        "top_concurrency": top,
        "seconds_waiting_for_a_quiet_server": round(bench.quiet_seconds, 1),
    }

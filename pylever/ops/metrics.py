"""Prometheus metrics (default registry, served by the API's ``GET /metrics``).

Label values must stay low-cardinality: ``endpoint`` is a templated path such
as ``GET /opportunities/{id}``, never one with a real id or a query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:  # importing temporalio.client costs half a second (cli.py imports this)
    from temporalio.client import Client

EXTERNAL_CALLS = Counter(
    "pylever_external_calls",
    "HTTP requests to Lever and Py, one per attempt; status is the HTTP status or 'error'.",
    ["service", "endpoint", "status"],
)

EXTERNAL_LATENCY = Histogram(
    "pylever_external_call_duration_seconds",
    "Duration of one HTTP attempt to Lever or Py, network failures included.",
    ["service", "endpoint"],
)

WEBHOOKS = Counter(
    "pylever_webhooks",
    "Lever webhook deliveries by account, event and outcome.",
    ["account", "event", "outcome"],
)

CALLBACKS = Counter(
    "pylever_py_callbacks",
    "Py result callbacks by outcome.",
    ["outcome"],
)

ADMIN_AUTH_REFUSALS = Counter(
    "pylever_admin_auth_refusals",
    "Admin-token checks of the API refused, per client address throttle (pylever.edge.throttle): "
    "outcome bad_token (a wrong token, one of the client's budget spent) or throttled "
    "(429: the budget is spent; the token was not looked at).",
    ["endpoint", "outcome"],
)

LEVER_AUTH_REFUSALS = Counter(
    "pylever_lever_auth_refusals",
    "Lever calls of the worker's activities answered 401 or 403 (the account's API key refused).",
    ["account"],
)

LEVER_KEY_REFUSED = Gauge(
    "pylever_lever_key_refused",
    "1 while Lever refuses the account's API key (its last answer was 401 or 403), 0 once "
    "Lever accepts it again.",
    ["account"],
)

SWEEP_RUNS = Counter(
    "pylever_sweep_runs",
    "Sweeps and backfills that finished (worker), by account and mode (sweep, backfill, dry_run).",
    ["account", "mode"],
)
SWEEP_STARTED = Counter(
    "pylever_sweep_started",
    "Assessments a sweep or backfill started (worker): candidates in a trigger stage whose "
    "webhook never came (mode=sweep), or backfilled (mode=backfill).",
    ["account", "mode"],
)
CONFIG_RELOADS = Counter(
    "pylever_config_reloads",
    "Configuration reloads (SIGHUP) by process (api, worker) and result: ok, or failed (the "
    "file did not validate, or applying it failed; the configuration in force is kept).",
    ["process", "result"],
)

CONFIG_LOADED = Gauge(
    "pylever_config_loaded_timestamp_seconds",
    "When the process last loaded its configuration file successfully (start or reload).",
    ["process"],
)

ASSESSMENTS = Gauge(
    "pylever_assessments",
    "Invitation workflows Temporal holds, by PyStatus (counted from visibility at most once "
    "per 30 s, in the background of scrapes).",
    ["status"],
)

ASSESSMENT_STATUSES = (
    "resolving",
    "invited",
    "started",
    "completed",
    "expired",
    "cancelled",
    "not_sent",
    "error",
)
ASSESSMENTS_TTL = 30.0  # seconds between two visibility counts of ``ASSESSMENTS``
FIRST_COUNT_WAIT = 2.5  # seconds a scrape waits for the very first count (rpc timeout 2 s)


async def refresh_assessment_gauge(client: Client) -> None:
    """Count invitation workflows per status across every worker, from Temporal visibility.

    One count per status: Temporal visibility supports ``GROUP BY`` on
    ``ExecutionStatus`` only ("GROUP BY ... PyStatus" is refused). A status
    whose count fails keeps its last value: metrics answer even when Temporal does not.
    """

    async def count(status: str) -> int:
        result = await client.count_workflows(
            f"WorkflowType = 'InvitationWorkflow' AND PyStatus = '{status}'",
            rpc_timeout=timedelta(seconds=2),
        )
        return result.count

    counts = await asyncio.gather(
        *(count(status) for status in ASSESSMENT_STATUSES), return_exceptions=True
    )
    for status, counted in zip(ASSESSMENT_STATUSES, counts, strict=True):
        if isinstance(counted, int):
            ASSESSMENTS.labels(status=status).set(counted)


class AssessmentGauge:
    """``ASSESSMENTS`` for the API's scrapes, counted from visibility at most once per ``ttl``.

    Each scrape calls :meth:`scraped`. When the last count started ``ttl`` seconds ago
    or more and none is running, it starts one in the background (eight visibility
    count queries) and the scrape goes on with the values it has: a burst of scrapes
    costs Temporal one count per ``ttl``, and no scrape waits for Temporal, except
    the first ones of the process, which wait up to ``first_wait`` seconds for the
    first count (there are no values yet). A count that fails (Temporal down) keeps
    the last values and waits ``ttl`` like any other.
    """

    def __init__(
        self,
        client: Client,
        *,
        ttl: float = ASSESSMENTS_TTL,
        first_wait: float = FIRST_COUNT_WAIT,
        clock: Callable[[], float] = time.monotonic,
        count: Callable[[Client], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._first_wait = first_wait
        self._clock = clock
        self._count = count or refresh_assessment_gauge
        self._started_at = -math.inf  # when the last count started
        self._task: asyncio.Task[None] | None = None  # the count in flight
        self._counted = False  # a count has finished
        self.counts = 0  # counts started by this process

    async def scraped(self) -> None:
        now = self._clock()
        if self._task is None and now - self._started_at >= self._ttl:
            self._started_at = now
            self.counts += 1
            self._task = asyncio.ensure_future(self._run())
            self._task.add_done_callback(_retrieve)
        task = self._task
        if task is not None and not self._counted:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), self._first_wait)

    def expire(self) -> None:
        """Count again at the next scrape (tests; an operator has no need of it)."""
        self._started_at = -math.inf

    async def aclose(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        try:
            await self._count(self._client)
        finally:
            self._counted = True
            self._task = None


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()

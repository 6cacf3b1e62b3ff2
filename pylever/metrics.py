"""Prometheus metrics (default registry, served by the API's ``GET /metrics``).

Label values must stay low-cardinality: ``endpoint`` is a templated path such
as ``GET /opportunities/{id}``, never one with a real id or a query string.
"""

from __future__ import annotations

import asyncio
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
    "Admin-token checks of the API refused, per client address throttle (pylever.throttle): "
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

ASSESSMENTS = Gauge(
    "pylever_assessments",
    "Invitation workflows Temporal holds, by PyStatus (read from visibility at scrape time).",
    ["status"],
)

ASSESSMENT_STATUSES = (
    "resolving", "invited", "started", "completed", "expired", "cancelled", "not_sent", "error",
)


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

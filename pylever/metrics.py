"""Prometheus metrics (default registry, served by the API's ``GET /metrics``).

Label values must stay low-cardinality: ``endpoint`` is a templated path such
as ``GET /opportunities/{id}``, never one with a real id or a query string.
"""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import Counter, Gauge, Histogram
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

ASSESSMENTS = Gauge(
    "pylever_assessments",
    "Invitation workflows Temporal holds, by PyStatus (read from visibility at scrape time).",
    ["status"],
)

ASSESSMENT_STATUSES = (
    "resolving", "invited", "started", "completed", "expired", "cancelled", "not_sent", "error",
)


async def refresh_assessment_gauge(client: Client) -> None:
    """Count invitation workflows per status across every worker, from Temporal visibility."""
    try:
        result = await client.count_workflows(
            "WorkflowType = 'InvitationWorkflow' GROUP BY PyStatus",
            rpc_timeout=timedelta(seconds=2),
        )
    except Exception:  # metrics must answer even when Temporal does not
        return
    counts = {status: 0 for status in ASSESSMENT_STATUSES}
    for group in result.groups:
        if group.group_values and isinstance(group.group_values[0], str):
            counts[group.group_values[0]] = group.count
    for status, count in counts.items():
        ASSESSMENTS.labels(status=status).set(count)

"""What on-call relies on: search attributes, summaries and details in the Temporal UI,
the status endpoint, /metrics (API and worker), JSON logs without secrets.

Visibility is eventually consistent: every read of it polls.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle

from pylever.contracts import search_attributes as sa
from pylever.ops.logs import JsonFormatter
from pylever.ops.metrics import ASSESSMENT_STATUSES
from pylever.ops.worker_metrics import start_metrics_server
from sandbox.devserver import wait_for_visibility
from tests.support.integration_stack import (
    ADMIN_TOKEN,
    PAYLOAD_KEY,
    PY_ASSESSMENT_STAGE_ID,
    SECRETS,
    Stack,
    free_port,
)

ROOT = Path(__file__).resolve().parents[2]
TEST = "Python Basics"
TEST_ID = "tst_python_basics"


def child_id(workflow_id: str) -> str:
    return f"{workflow_id}:{TEST_ID}"


async def current_details(handle: WorkflowHandle[Any, Any]) -> str:
    """What the Web UI shows as "current details": the SDK answers it through a built-in query
    (``workflow.set_current_details`` is not part of DescribeWorkflowExecution)."""
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


# --- search attributes, summary, current details ----------------------------------------


async def test_search_attributes_summary_and_details_through_a_lifecycle(stack: Stack) -> None:
    opp = stack.candidate("Alan Turing", "alan.turing@example.com")
    attempt = await stack.move(opp, "Py Assessment")
    assert attempt.status == 202, attempt.body
    parent_id = attempt.body["workflow_id"]
    child = child_id(parent_id)
    mine = f'LeverOpportunityId="{opp}"'

    # invited: the parent and its child, found the way the Web UI filters
    await wait_for_visibility(
        stack.client, f'LeverAccount="acme" AND PyStatus="invited" AND {mine}',
        expected_ids={parent_id, child},
    )  # fmt: skip
    (found,) = await wait_for_visibility(
        stack.client, f'{mine} AND PyTest="{TEST}"', expected_ids={child}
    )
    attrs = found.typed_search_attributes
    assert attrs.get(sa.LEVER_ACCOUNT) == "acme"
    assert attrs.get(sa.LEVER_OPPORTUNITY_ID) == opp
    assert attrs.get(sa.LEVER_STAGE_ID) == PY_ASSESSMENT_STAGE_ID
    assert attrs.get(sa.PY_TEST) == TEST
    assert attrs.get(sa.PY_VERDICT) is None and attrs.get(sa.PY_SCORE) is None

    # static summaries (encrypted in history like any payload, readable with the codec)
    parent = stack.client.get_workflow_handle(parent_id)
    handle = stack.client.get_workflow_handle(child)
    parent_desc = await parent.describe()
    assert await parent_desc.static_summary() == f"opportunity {opp} · stage Py Assessment"
    child_desc = await handle.describe()
    assert await child_desc.static_summary() == f"Alan Turing · {TEST} · resolving"
    raw = child_desc.raw_description.execution_config.user_metadata.summary
    assert raw.metadata["encoding"] == b"binary/encrypted"
    assert b"Alan Turing" not in raw.data

    invitation = await stack.invitation(opp)
    details = await current_details(handle)
    assert details.startswith(f"**Alan Turing · {TEST} · invited**")
    assert f"- invitation: {invitation['id']}" in details
    assert "- next check: " in details

    # started
    await stack.py.start(invitation["id"])
    await wait_for_visibility(stack.client, f'PyStatus="started" AND {mine}', expected_ids={child})
    assert "· started**" in await current_details(handle)

    # completed: verdict and score, on the child; the parent completes too
    await stack.py.complete(invitation["id"], 85)
    await stack.result(parent_id)
    (done,) = await wait_for_visibility(
        stack.client,
        f'PyStatus="completed" AND PyVerdict="pass" AND PyScore >= 85 AND {mine}',
        expected_ids={child},
    )
    assert done.typed_search_attributes.get(sa.PY_SCORE) == 85.0
    assert done.typed_search_attributes.get(sa.PY_VERDICT) == "pass"
    await wait_for_visibility(
        stack.client, f'PyStatus="completed" AND {mine}', expected_ids={parent_id, child}
    )
    details = await current_details(handle)
    assert details.startswith(f"**Alan Turing · {TEST} · completed (pass)**")
    assert "- score: 85" in details and "next check" not in details


# --- status endpoint -------------------------------------------------------------------


async def test_status_endpoint(stack: Stack) -> None:
    url = f"{stack.api_url}/accounts/acme/candidates/some-opportunity"
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": ADMIN_TOKEN}):
        response = await stack.http.get(url, headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "unauthorized"
        assert ADMIN_TOKEN not in response.text
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = await stack.http.get(
        f"{stack.api_url}/accounts/initech/candidates/some-opportunity", headers=auth
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_account"

    opp = stack.candidate("Katherine Johnson", "katherine.johnson@example.com")
    attempt = await stack.move(opp, "Py Assessment")
    invitation = await stack.invitation(opp)
    await stack.py.complete(invitation["id"], 30)
    await stack.result(attempt.body["workflow_id"])

    async def settled() -> dict[str, Any] | None:
        response = await stack.http.get(
            f"{stack.api_url}/accounts/acme/candidates/{opp}", headers=auth
        )
        assert response.status_code == 200, response.text
        body = response.json()
        rows = body["assessments"]
        if len(rows) == 2 and all(r["status"] == "completed" and r["closed_at"] for r in rows):
            return body
        return None

    body = await stack.eventually(settled, 20)
    assert "katherine.johnson@example.com" not in json.dumps(body)
    assert body["account_id"] == "acme" and body["opportunity_id"] == opp
    parent, child = sorted(body["assessments"], key=lambda r: r["kind"])
    assert parent["kind"] == "assessment" and parent["workflow_id"] == attempt.body["workflow_id"]
    assert child["kind"] == "invitation" and child["workflow_id"] == child_id(parent["workflow_id"])
    assert child["test"] == TEST
    assert child["status"] == "completed" and child["execution_status"] == "completed"
    assert child["invitation_id"] == invitation["id"]
    assert child["verdict"] == "fail" and child["score"] == 30.0
    assert child["stage_id"] == PY_ASSESSMENT_STAGE_ID
    assert child["last_error"] is None and child["next_check_at"] is None
    for key in ("sent_at", "started_at", "closed_at"):
        assert child[key] and child[key][:4].isdigit(), key  # RFC 3339
    assert child["started_at"] <= child["sent_at"] <= child["closed_at"]

    empty = await stack.http.get(
        f"{stack.api_url}/accounts/acme/candidates/never-seen-opportunity", headers=auth
    )
    assert empty.status_code == 200 and empty.json()["assessments"] == []


# --- /metrics -----------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def scrape(stack: Stack) -> dict:
    response = await stack.http.get(f"{stack.api_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


TEMPLATED = re.compile(
    r"^(GET|POST|PUT|DELETE) (/(v1|stages|opportunities|tests|invitations|"
    r"addTags|removeTags|addLinks|stage|reminders|cancel|\{id\}))+$"
)


async def test_metrics_move_with_webhooks_callbacks_and_calls(stack: Stack) -> None:
    before = await scrape(stack)
    opp = stack.candidate("Mary Jackson", "mary.jackson@example.com")
    attempt = await stack.move(opp, "Py Assessment")
    invitation = await stack.invitation(opp)
    _, callback = await stack.py.complete(invitation["id"], 90)
    assert callback is not None and callback.status == 202
    await stack.result(attempt.body["workflow_id"])
    after = await scrape(stack)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    webhook = {"account": "acme", "event": "candidateStageChange", "outcome": "started"}
    assert delta("pylever_webhooks_total", **webhook) == 1
    assert delta("pylever_py_callbacks_total", outcome="signalled") == 1
    calls = "pylever_external_calls_total"
    assert delta(calls, service="Lever", endpoint="GET /opportunities/{id}", status="200") >= 1
    assert delta(calls, service="Lever", endpoint="POST /opportunities/{id}/addTags",
                 status="200") >= 2  # fmt: skip
    assert delta(calls, service="Lever", endpoint="PUT /opportunities/{id}/stage",
                 status="200") == 1  # fmt: skip
    assert delta(calls, service="Py", endpoint="POST /v1/invitations", status="201") == 1
    assert delta("pylever_external_call_duration_seconds_count", service="Py",
                 endpoint="POST /v1/invitations") == 1  # fmt: skip
    # the labels this candidate's calls moved (unit tests of the transport add their own)
    endpoints = {
        dict(labels)["endpoint"]
        for (name, labels), count in after.items()
        if name == calls and count > before.get((name, labels), 0.0)
    }
    assert "GET /opportunities/{id}" in endpoints and "POST /v1/invitations" in endpoints
    assert all(TEMPLATED.match(e) for e in endpoints), endpoints
    text = json.dumps(sorted(endpoints))
    assert opp not in text and invitation["id"] not in text

    # pylever_assessments is counted from visibility at most once per 30 s, in the background
    # of scrapes (tests/integration/test_metrics_cache.py); expired here, it agrees with a count.
    async def agrees() -> bool:
        stack.api_app.state.service.assessments.expire()
        scraped = await scrape(stack)
        for status in ASSESSMENT_STATUSES:
            counted = await stack.client.count_workflows(
                f"WorkflowType = 'InvitationWorkflow' AND PyStatus = '{status}'"
            )
            if value(scraped, "pylever_assessments", status=status) != counted.count:
                return False
        return value(scraped, "pylever_assessments", status="completed") >= 1

    await stack.eventually(agrees, 20)


# --- logs -------------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Every log record of the process at INFO and above, rendered as production renders it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "httpx", "httpcore")}
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # as pylever.ops.logs.configure_logging does in production
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


async def test_logs_are_json_with_context_and_no_secrets(
    stack: Stack, json_logs: io.StringIO
) -> None:
    email = "dorothy.vaughan@example.com"
    opp = stack.candidate("Dorothy Vaughan", email)
    attempt = await stack.move(opp, "Py Assessment")
    workflow_id = attempt.body["workflow_id"]
    invitation = await stack.invitation(opp)
    await stack.py.complete(invitation["id"], 60)
    await stack.result(workflow_id)
    # a badly signed webhook is logged too, without what its body carried (a secret here)
    bad = await stack.http.post(
        f"{stack.api_url}/webhooks/lever/acme",
        json={"event": "candidateStageChange", "token": SECRETS["acme_token"],
              "triggeredAt": 1, "signature": "00", "data": {"opportunityId": opp}},
    )  # fmt: skip
    assert bad.status_code == 401

    lines = json_logs.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]  # each line is one JSON object
    assert all(isinstance(e, dict) and {"ts", "level", "logger", "event"} <= e.keys()
               for e in entries)  # fmt: skip
    webhook = [e for e in entries if e["event"] == "lever webhook" and e.get("opportunity") == opp]
    assert {e["outcome"] for e in webhook} == {"started"}, webhook
    (started,) = webhook
    assert started["account"] == "acme" and started["workflow_id"] == workflow_id
    assert started["lever_event"] == "candidateStageChange"
    refused = [
        e for e in entries if e["event"] == "lever webhook" and e["outcome"] == "bad_signature"
    ]
    assert refused and refused[-1]["account"] == "acme"
    (callback,) = [e for e in entries
                   if e["event"] == "py callback" and e.get("opportunity") == opp]  # fmt: skip
    assert callback["outcome"] == "signalled" and callback["account"] == "acme"
    assert callback["workflow_id"] == child_id(workflow_id)
    assert callback["py_event"] == "invitation.completed"

    text = "\n".join(lines)
    for secret in (*SECRETS.values(), ADMIN_TOKEN, base64.b64encode(PAYLOAD_KEY).decode()):
        assert secret not in text
    assert email not in text


# --- the worker's metrics endpoint --------------------------------------------------------


async def get_text(url: str) -> str | None:
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(url)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


async def test_metrics_server_serves_app_metrics_when_the_sdk_is_down() -> None:
    registry = CollectorRegistry()
    calls = Counter("pylever_test_calls", "test", ["endpoint"], registry=registry)
    calls.labels("GET /stages").inc(3)
    port = free_port()
    server = start_metrics_server(
        "127.0.0.1", port, sdk_url=f"http://127.0.0.1:{free_port()}/metrics", registry=registry
    )
    try:
        text = await get_text(f"http://127.0.0.1:{port}/metrics")
        assert text is not None
        scraped = samples(text)
        assert value(scraped, "pylever_test_calls_total", endpoint="GET /stages") == 3
        assert value(scraped, "pylever_worker_sdk_metrics_up") == 0
        assert await get_text(f"http://127.0.0.1:{port}/nothing") is None
    finally:
        server.shutdown()
        server.server_close()


def worker_config(stack: Stack, path: Path) -> None:
    acme = stack.config.account("acme")
    assert acme is not None
    path.write_text(
        f"""
[service]
public_url = "{stack.api_url}"

[py]
api_url = "{stack.config.py.api_url}"
api_key = "env:PY_API_KEY"
callback_secret = "env:PY_CALLBACK_SECRET"

[[accounts]]
id = "acme"
lever_api_url = "{acme.lever_api_url}"
lever_api_key = "env:ACME_LEVER_API_KEY"
webhook_signature_tokens = ["env:ACME_LEVER_STAGE_TOKEN"]

  [[accounts.triggers]]
  stage = "Py Assessment"
  default_test = "Python Basics"
  move_on_pass = "Onsite"        # no such stage: a startup check warns, the worker runs on
"""
    )


async def test_worker_serves_its_own_and_the_sdks_metrics_on_one_port(
    stack: Stack, tmp_path: Path
) -> None:
    """``python worker.py`` as in production, against the stack's dev server on its own queue."""
    config = tmp_path / "worker.toml"
    worker_config(stack, config)
    address = f"127.0.0.1:{free_port()}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYLEVER_CONFIG": str(config),
        "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
        "PYLEVER_TASK_QUEUE": "py-lever-ops-worker",
        "PYLEVER_PAYLOAD_KEYS": base64.b64encode(PAYLOAD_KEY).decode(),
        "PYLEVER_WORKER_METRICS_ADDRESS": address,
        "PY_API_KEY": SECRETS["py_api_key"],
        "PY_CALLBACK_SECRET": SECRETS["callback_secret"],
        "ACME_LEVER_API_KEY": SECRETS["acme_lever_key"],
        "ACME_LEVER_STAGE_TOKEN": SECRETS["acme_token"],
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "worker.py"),
            cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file, stderr=log_file,
        )  # fmt: skip
    try:

        def logged() -> list[dict[str, Any]]:
            return [json.loads(line) for line in log_path.read_text().splitlines() if line]

        async def scraped() -> dict | None:
            assert proc.returncode is None, log_path.read_text()
            text = await get_text(f"http://{address}/metrics")
            if text is None:
                return None
            metrics = samples(text)
            ready = (
                value(metrics, "pylever_worker_sdk_metrics_up") == 1
                and any(name.startswith("temporal_") for name, _ in metrics)
                and value(metrics, "pylever_external_calls_total", service="Lever",
                          endpoint="GET /stages", status="200") >= 1
                and value(metrics, "pylever_external_calls_total", service="Py",
                          endpoint="GET /v1/tests", status="200") >= 1
            )  # fmt: skip
            return metrics if ready else None

        metrics = await stack.eventually(scraped, 30)
        # the SDK's worker metrics, labelled with the worker's task queue
        queues = {dict(labels).get("task_queue") for name, labels in metrics
                  if name.startswith("temporal_")}  # fmt: skip
        assert "py-lever-ops-worker" in queues, sorted(q for q in queues if q)

        def warned() -> list[dict[str, Any]] | None:
            found = [e for e in logged() if e["event"] == "startup check failed"]
            return found or None

        (warning,) = await stack.eventually(warned, 10)
        assert warning["level"] == "warning"
        assert warning["check"] == "move_on_pass stage" and warning["target"] == "Onsite"
        assert any(e["event"] == "worker started" for e in logged())
        assert proc.returncode is None  # a failed check does not stop the worker

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        text = log_path.read_text()
        assert any(e["event"] == "worker stopping" for e in logged())
        for secret in (*SECRETS.values(), env["PYLEVER_PAYLOAD_KEYS"]):
            assert secret not in text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- docs/operations.md stays true -----------------------------------------------------------

OPERATIONS_MD = ROOT / "docs" / "operations.md"


async def test_documented_visibility_queries_are_valid(stack: Stack) -> None:
    text = OPERATIONS_MD.read_text()
    block = text.split("Queries (Web UI filter box", 1)[1].split("```", 2)[1]
    queries = [q.strip() for q in block.splitlines() if q.strip()]
    assert len(queries) >= 5 and 'PyStatus="invited" AND LeverAccount="acme"' in queries
    for query in queries:
        query = query.replace("<opportunity id>", "some-opportunity")
        await stack.client.count_workflows(query)  # raises RPCError on an invalid query


def test_every_metric_is_documented() -> None:
    from pylever.ops import metrics

    text = OPERATIONS_MD.read_text()
    names = {
        f"{c._name}_total" if c._type == "counter" else c._name
        for c in vars(metrics).values()
        if hasattr(c, "_name") and hasattr(c, "_type")
    }
    assert names >= {"pylever_webhooks_total", "pylever_assessments"}
    for name in names | {"pylever_worker_sdk_metrics_up"}:
        assert f"`{name}`" in text, name

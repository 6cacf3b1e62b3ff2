"""No secret leaves the service: a full lifecycle on the stack, then every place looked at.

The values of ``tests.support.integration_stack.SECRETS`` (API keys, webhook signature tokens, the
callback secret), the admin token and the payload key must not appear in the log output
(every logger, as the JSON lines production writes), in any error body the API answered
(this test provokes every kind), in ``/metrics``, or in the raw workflow histories.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest

from pylever.edge.signatures import py_signature_header, sign_lever_webhook
from pylever.ops.logs import JsonFormatter
from sandbox.py import build_callback
from tests.support.integration_stack import ADMIN_TOKEN, PAYLOAD_KEY, SECRETS, Stack
from workflows.decisions import TAG_PASS


def secret_forms() -> dict[str, bytes]:
    """Each secret, and the forms a key could take when it leaks."""
    forms = {name: value.encode() for name, value in SECRETS.items()}
    forms["admin_token"] = ADMIN_TOKEN.encode()
    forms["payload_key_raw"] = PAYLOAD_KEY
    forms["payload_key_b64"] = base64.b64encode(PAYLOAD_KEY)
    forms["payload_key_b64url"] = base64.urlsafe_b64encode(PAYLOAD_KEY)
    forms["payload_key_hex"] = PAYLOAD_KEY.hex().encode()
    forms["payload_key_repr"] = repr(PAYLOAD_KEY).encode()
    # the basic-auth header Lever clients send
    for name in ("acme_lever_key", "globex_lever_key"):
        forms[f"{name}_basic"] = base64.b64encode(f"{SECRETS[name]}:".encode())
    return forms


def leaks(where: str, data: bytes | str) -> list[str]:
    blob = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return [f"{name} in {where}" for name, form in secret_forms().items() if form in blob]


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Every logger at DEBUG, formatted as production does (pylever.ops.logs.JsonFormatter)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


async def provoke_every_error(stack: Stack, http: httpx.AsyncClient) -> list[httpx.Response]:
    """One request for each error the API can answer."""
    api = stack.api_url
    webhook = f"{api}/webhooks/lever/acme"
    callback = f"{api}/callbacks/py"
    secret = SECRETS["callback_secret"]
    stage = sign_lever_webhook(SECRETS["acme_token"], "candidateStageChange", {})
    unsigned = {**stage, "signature": "0" * 64}
    bad_id = sign_lever_webhook(
        SECRETS["acme_token"], "candidateStageChange",
        {"opportunityId": SECRETS["acme_token"], "toStageId": "a:b"},
    )  # fmt: skip
    bad_data = sign_lever_webhook(SECRETS["acme_token"], "candidateStageChange", {})
    bad_data["data"] = [SECRETS["acme_lever_key"]]
    not_json = SECRETS["acme_token"].encode() + b"{"
    completed = {
        "id": "inv_x",
        "status": "completed",
        "reference": "assessment:acme:o:s:t",
        "score": 101,
        "report_url": "https://py.example/r",
    }
    no_such = {**completed, "score": 50, "reference": "assessment:acme:nobody:s:t"}
    requests: list[tuple[str, str, Any, dict[str, str]]] = [
        ("POST", f"{api}/webhooks/lever/nobody", json.dumps(stage), {}),  # 404 account
        ("POST", webhook, json.dumps(unsigned), {}),  # 401
        ("POST", webhook, not_json, {}),  # 400 invalid_json
        ("POST", webhook, json.dumps(bad_id), {}),  # 400 invalid_webhook
        ("POST", webhook, json.dumps(bad_data), {}),  # 400 data not an object
        ("POST", webhook, b"{" + b" " * (1024 * 1024 + 1), {}),  # 413
        ("GET", webhook, None, {}),  # 405
        ("POST", f"{api}/nothing/here", b"{}", {}),  # 404 route
        ("POST", callback, b"{}", {}),  # 401 missing
        ("POST", callback, b"{}", {"Py-Signature": py_signature_header("wrong", b"{}")}),  # 401
        (
            "POST",
            callback,
            b"{}",
            {  # 401 stale
                "Py-Signature": py_signature_header(secret, b"{}", timestamp=int(time.time()) - 999)
            },
        ),
        ("POST", callback, not_json, {"Py-Signature": py_signature_header(secret, not_json)}),
        (*("POST", callback), *build_callback(secret, "invitation.completed", completed)),  # 422
        (*("POST", callback), *build_callback(secret, "invitation.completed", no_such)),  # 404
        (*("POST", callback), *build_callback(secret, "invitation.other", completed)),  # 422
        ("GET", f"{api}/accounts/acme/candidates/x", None, {}),  # 401
        (
            "GET",
            f"{api}/accounts/acme/candidates/x",
            None,
            {"Authorization": f"Bearer {SECRETS['acme_token']}"},
        ),  # 401 wrong token
        (
            "GET",
            f"{api}/accounts/nobody/candidates/x",
            None,
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ),  # 404
        (
            "GET",
            f"{api}/accounts/acme/candidates/a:b",
            None,
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ),  # 400
        ("POST", f"{api}/codec/decode", b'{"payloads": []}', {}),  # 401
        ("POST", f"{api}/codec/decode", b"[", {"Authorization": f"Bearer {ADMIN_TOKEN}"}),
        (
            "POST",
            f"{api}/codec/decode",
            json.dumps(
                {
                    "payloads": [
                        {
                            "metadata": {
                                "encoding": base64.b64encode(b"binary/encrypted").decode(),
                                "encryption-key-id": base64.b64encode(b"deadbeef").decode(),
                            },
                            "data": base64.b64encode(b"x" * 40).decode(),
                        }
                    ]
                }
            ),
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ),  # 400 unknown key id
        (
            "POST",
            f"{api}/codec/login",
            json.dumps({"token": SECRETS["py_api_key"]}),
            {"Content-Type": "application/json"},
        ),  # 401
        ("POST", f"{api}/codec/login", {"token": "x"}, {}),  # 401 (HTML)
    ]
    responses = []
    for method, url, body, headers in requests:
        if isinstance(body, dict):
            response = await http.request(method, url, data=body, headers=headers)
        else:
            response = await http.request(method, url, content=body, headers=headers)
        responses.append(response)
    return responses


async def raw_histories(stack: Stack) -> list[tuple[str, bytes, str]]:
    """Every execution in the namespace: (id, serialized history proto, its proto-JSON)."""
    found = []
    async for execution in stack.client.list_workflows():
        token = b""
        events = []
        while True:
            page = await stack.client.workflow_service.get_workflow_execution_history(
                GetWorkflowExecutionHistoryRequest(
                    namespace=stack.client.namespace,
                    execution=WorkflowExecution(workflow_id=execution.id, run_id=execution.run_id),
                    next_page_token=token,
                )
            )
            events.append(page.history)
            token = page.next_page_token
            if not token:
                break
        raw = b"".join(h.SerializeToString() for h in events)
        text = "\n".join(json_format.MessageToJson(h) for h in events)
        found.append((execution.id, raw, text))
    return found


async def test_no_secret_in_logs_errors_metrics_or_histories(stack: Stack, log_output: io.StringIO):
    name = f"Sekrit Candidate {uuid.uuid4().hex[:8]}"
    email = f"sekrit.{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(timeout=30) as http:
        # Lever's "Verify Connection", then a whole assessment
        verify = await stack.lever.send_verify()
        assert verify is not None and verify.status == 200
        opp = stack.candidate(name, email)
        attempt = await stack.move(opp, "Py Assessment")
        assert attempt.status == 202, attempt.body
        invitation = await stack.invitation(opp)
        _, started = await stack.py.start(invitation["id"])
        assert started is not None and started.status == 202
        _, completed = await stack.py.complete(invitation["id"], 88)
        assert completed is not None and completed.status == 202
        result = await stack.result(attempt.body["workflow_id"])
        assert result.status == "completed" and TAG_PASS in stack.tags(opp)
        # the duplicate after the end: 409
        raw, headers = build_callback(
            SECRETS["callback_secret"],
            "invitation.completed",
            stack.py.invitation(invitation["id"]),
        )
        duplicate = await http.post(f"{stack.api_url}/callbacks/py", content=raw, headers=headers)
        assert duplicate.status_code == 409
        # archived afterwards: the withdraw workflow runs too
        _, archived = await stack.lever.archive_candidate(opp, True)
        assert archived is not None and archived.status == 202

        errors = [duplicate, *await provoke_every_error(stack, http)]
        statuses = sorted({r.status_code for r in errors})
        assert statuses == [400, 401, 404, 405, 409, 413, 422], statuses

        status = await http.get(
            f"{stack.api_url}/accounts/acme/candidates/{opp}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert status.status_code == 200
        metrics = await http.get(f"{stack.api_url}/metrics")
        assert metrics.status_code == 200 and "pylever" in metrics.text.lower()

    histories = await raw_histories(stack)
    ids = {workflow_id for workflow_id, _, _ in histories}
    assert attempt.body["workflow_id"] in ids
    assert any(i.startswith("withdraw:acme:") for i in ids)

    logs = log_output.getvalue()
    assert "lever webhook" in logs and "py callback" in logs  # the capture works
    for line in logs.splitlines():
        json.loads(line)  # one JSON object per line

    found: list[str] = []
    found += leaks("logs", logs)
    for response in errors:
        found += leaks(
            f"{response.request.method} {response.request.url.path} answer", response.content
        )
    found += leaks("status endpoint", status.content)
    found += leaks("metrics", metrics.content)
    for workflow_id, raw, text in histories:
        found += leaks(f"history {workflow_id}", raw)
        found += leaks(f"history {workflow_id} (JSON)", text)
    assert not found, found

    # candidate data is no secret to the operator, but it stays out of logs and metrics
    for where, text in (("logs", logs), ("metrics", metrics.text)):
        assert email not in text, where
        assert name not in text, where
    # and error bodies are the documented shape
    for response in errors:
        if response.headers.get("content-type", "").startswith("application/json"):
            body = response.json()
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body

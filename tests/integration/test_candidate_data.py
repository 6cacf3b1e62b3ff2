"""Candidate names and emails are not in Temporal in clear text (SPEC section 6).

The raw history, as ``temporal workflow show -o json`` prints it without a codec, of the
parent and the child (inputs, results, signals, memo, summaries, failure messages) holds
neither the candidate's name nor email; the API's codec endpoint reveals them with the
admin token and refuses without it. Failure messages are encrypted too
(``pylever.temporal.codec.data_converter`` encodes failure attributes whenever there is a codec),
because an external service's error text can echo candidate data.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pylever.temporal.codec import ENCODING
from sandbox.devserver import TEMPORAL_BIN
from sandbox.py import PyError
from tests.support.integration_stack import ADMIN_TOKEN, Stack
from workflows.decisions import TAG_INVITE_FAILED, TAG_PASS, invitation_workflow_id

ENCRYPTED = base64.b64encode(ENCODING).decode()


def unique_candidate(label: str) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"Ottilie {label} Quux{tag}", f"ottilie.{tag}@example.com"


async def temporal_cli(stack: Stack, *args: str) -> str:
    """The ``temporal`` CLI against the stack's dev server, ignoring any user profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    proc = await asyncio.create_subprocess_exec(
        TEMPORAL_BIN, *args,
        "--address", stack.env.client.service_client.config.target_host,
        "--namespace", stack.client.namespace,
        "--disable-config-file", "--disable-config-env",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")
    return out.decode()


async def show(stack: Stack, workflow_id: str, *extra: str) -> str:
    return await temporal_cli(stack, "workflow", "show", "-w", workflow_id, "-o", "json", *extra)


def payloads(node: Any) -> Iterator[dict[str, Any]]:
    """Every Payload (proto-JSON: ``metadata`` + ``data``, base64) anywhere in a history."""
    if isinstance(node, dict):
        if isinstance(node.get("metadata"), dict) and "encoding" in node["metadata"]:
            yield node
        for value in node.values():
            yield from payloads(value)
    elif isinstance(node, list):
        for value in node:
            yield from payloads(value)


def clear_forms(*values: str) -> list[bytes]:
    """Ways a value could appear: itself, JSON-escaped, lower-cased, parts of it."""
    forms: set[bytes] = set()
    for value in values:
        forms |= {value.encode(), json.dumps(value)[1:-1].encode(), value.lower().encode()}
        forms |= {part.encode() for part in value.replace("@", " ").split() if len(part) > 6}
    return sorted(forms)


def assert_absent(history_text: str, name: str, email: str) -> list[dict[str, Any]]:
    """Name and email are neither in the CLI's text nor in any decoded payload; every
    payload that is not a search attribute is encrypted. Returns the encrypted ones."""
    for form in clear_forms(name, email):
        assert form.decode() not in history_text, form
    history = json.loads(history_text)
    encrypted: list[dict[str, Any]] = []
    for payload in payloads(history):
        data = base64.b64decode(payload.get("data", ""))
        for form in clear_forms(name, email):
            assert form not in data, (form, payload)
        if payload["metadata"]["encoding"] == ENCRYPTED:
            encrypted.append(payload)
    # The only clear payloads are search attributes (ids, test names, statuses) and the
    # SDK's patch markers (a patch id: workflow.patched never passes through the codec).
    indexed = _search_attribute_payloads(history) + _patch_marker_payloads(history)
    for payload in payloads(history):
        if payload["metadata"]["encoding"] != ENCRYPTED:
            assert any(payload is p for p in indexed), payload
    return encrypted


def _patch_marker_payloads(history: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for event in history["events"]:
        marker = event.get("markerRecordedEventAttributes")
        if marker and marker.get("markerName") == "core_patch":
            found.extend(payloads(marker.get("details", {})))
    return found


def _search_attribute_payloads(history: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "searchAttributes" and isinstance(value, dict):
                    found.extend(payloads(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(history)
    return found


async def decode(stack: Stack, encrypted: list[dict[str, Any]], **headers: str) -> Any:
    return await stack.http.post(
        f"{stack.api_url}/codec/decode",
        json={"payloads": encrypted},
        headers={"X-Namespace": "default", **headers},
    )


def decoded_text(response: Any) -> str:
    """The decoded payloads' data, as one text."""
    assert response.status_code == 200, response.text
    return "\n".join(
        base64.b64decode(p.get("data", "")).decode("utf-8", errors="replace")
        for p in response.json()["payloads"]
    )


async def test_name_and_email_are_encrypted_in_history_and_readable_with_the_admin_token(
    stack: Stack,
):
    name, email = unique_candidate("Clear")
    opp = stack.candidate(name, email)
    attempt = await stack.move(opp, "Py Assessment")
    parent_id = attempt.body["workflow_id"]
    invitation = await stack.invitation(opp)
    await stack.py.start(invitation["id"])
    await stack.py.complete(invitation["id"], 95)
    result = await stack.result(parent_id)
    assert result.status == "completed" and TAG_PASS in stack.tags(opp)
    child_id = invitation_workflow_id(parent_id, invitation["test_id"])
    assert invitation["reference"] == child_id

    encrypted: list[dict[str, Any]] = []
    for workflow_id in (parent_id, child_id):
        text = await show(stack, workflow_id)
        found = assert_absent(text, name, email)
        assert found, workflow_id
        encrypted += found
    # the child carries the name in its summary (user metadata), encrypted as well
    child = json.loads(await show(stack, child_id))
    summary = child["events"][0]["userMetadata"]["summary"]
    assert summary["metadata"]["encoding"] == ENCRYPTED

    # the codec endpoint: 401 without the admin token, the clear text with it
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}):
        denied = await decode(stack, encrypted, **headers)
        assert denied.status_code == 401
        assert email not in denied.text and name not in denied.text
        assert denied.json()["error"]["code"] == "unauthorized"
    clear = decoded_text(await decode(stack, encrypted, Authorization=f"Bearer {ADMIN_TOKEN}"))
    assert email in clear and name in clear
    summary_clear = decoded_text(
        await decode(stack, [summary], Authorization=f"Bearer {ADMIN_TOKEN}")
    )
    assert name in summary_clear and "Python Basics" in summary_clear

    # what an operator runs: the CLI through the codec endpoint shows the candidate
    operator_view = await show(
        stack, child_id,
        "--codec-endpoint", f"{stack.api_url}/codec",
        "--codec-auth", f"Bearer {ADMIN_TOKEN}",
    )  # fmt: skip
    shown = json.loads(operator_view)
    assert all(p["metadata"]["encoding"] != ENCRYPTED for p in payloads(shown))
    data = b"\n".join(base64.b64decode(p.get("data", "")) for p in payloads(shown))
    assert email.encode() in data and name.encode() in data


@pytest.fixture
def py_echoes_candidate(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Py answers 422 with the candidate's name and email in the message (some APIs do)."""
    target: dict[str, str] = {}
    original = stack.py._validate_invitation

    def validate(body: dict[str, Any]) -> None:
        candidate = body.get("candidate") or {}
        if candidate.get("email") == target.get("email"):
            raise PyError(
                422, "invalid_email",
                f"{candidate['name']} <{candidate['email']}> bounced: mailbox unavailable",
            )  # fmt: skip
        original(body)

    monkeypatch.setattr(stack.py, "_validate_invitation", validate)
    return target


async def test_failure_messages_echoing_candidate_data_are_encrypted(
    stack: Stack, py_echoes_candidate: dict[str, str]
):
    name, email = unique_candidate("Echo")
    py_echoes_candidate["email"] = email
    opp = stack.candidate(name, email)
    attempt = await stack.move(opp, "Py Assessment")
    parent_id = attempt.body["workflow_id"]
    result = await stack.result(parent_id)
    assert result.status == "error"
    [child_result] = result.invitations
    # the failure message keeps to service, endpoint, status and code: Py's own words
    # (here echoing the candidate) travel only in the failure's encrypted details
    assert child_result.error and "422 invalid_email" in child_result.error
    assert email not in child_result.error and name not in child_result.error
    assert TAG_INVITE_FAILED in stack.tags(opp)
    child_id = invitation_workflow_id(parent_id, "tst_python_basics")

    child_text = await show(stack, child_id)
    encrypted = assert_absent(child_text, name, email)
    assert_absent(await show(stack, parent_id), name, email)
    child = json.loads(child_text)
    failed = [
        e["activityTaskFailedEventAttributes"]
        for e in child["events"]
        if "activityTaskFailedEventAttributes" in e
    ]
    assert failed, "the invitation activity should have failed"
    failure = failed[0]["failure"]
    assert failure["message"] == "Encoded failure"
    assert failure.get("stackTrace", "") == ""
    assert failure["encodedAttributes"]["metadata"]["encoding"] == ENCRYPTED
    # the retry policy still decides on the type, which is not encrypted: a 422 is final
    assert failure["applicationFailureInfo"]["type"] == "BadRequestError"
    assert failed[0]["retryState"] == "RETRY_STATE_NON_RETRYABLE_FAILURE"

    attributes = decoded_text(
        await decode(stack, [failure["encodedAttributes"]], Authorization=f"Bearer {ADMIN_TOKEN}")
    )
    assert "422" in attributes and email not in attributes
    details = failure["applicationFailureInfo"]["details"]["payloads"]
    assert all(p["metadata"]["encoding"] == ENCRYPTED for p in details)
    said = decoded_text(await decode(stack, details, Authorization=f"Bearer {ADMIN_TOKEN}"))
    assert email in said and name in said
    assert (await decode(stack, encrypted)).status_code == 401

    # the operator's status endpoint (admin token) tells why, from the encrypted memo
    status = await stack.http.get(
        f"{stack.api_url}/accounts/acme/candidates/{opp}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    rows = status.json()["assessments"]
    assert any(r["last_error"] and "422" in r["last_error"] for r in rows), rows

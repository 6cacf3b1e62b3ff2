"""Helpers shared by the pipeline tests (test_pipeline, test_webhooks, test_callbacks, test_replay).

They drive the session ``stack`` (tests/support/integration_stack.py) the way Lever, Py
and a recruiter would, and check what the API answers. Importing this starts nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
from temporalio.client import WorkflowExecutionDescription
from temporalio.service import RPCError, RPCStatusCode

from pylever.contracts.records import AssessmentResult
from pylever.edge.signatures import sign_lever_webhook
from sandbox.lever import LeverSandbox
from sandbox.py import build_callback
from tests.support.integration_stack import ADMIN_TOKEN, SECRETS, Stack
from workflows import decisions

PY_TESTS = {
    "Python Basics": "tst_python_basics",
    "SQL Fundamentals": "tst_sql",
    "Algorithms": "tst_algorithms",
}


# --- the API's answers ------------------------------------------------------------------


def assert_error(
    response: httpx.Response, status: int, code: str | None = None, *, leaks: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``response`` is ``status`` with exactly ``{"error": {"code", "message"}}`` and no secret."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    for secret in (*SECRETS.values(), ADMIN_TOKEN, *leaks):
        assert secret not in response.text, f"the error body echoes {secret!r}"
    return body["error"]


# --- Lever ----------------------------------------------------------------------------


def lever_of(stack: Stack, account: str) -> LeverSandbox:
    return {"acme": stack.lever, "globex": stack.globex}[account]


def lever_control_url(stack: Stack, account: str = "acme") -> str:
    """The sandbox's base URL (its recruiter UI lives under ``/_sandbox``)."""
    acc = stack.config.account(account)
    assert acc is not None
    return acc.lever_api_url.removesuffix("/v1")


@contextlib.contextmanager
def webhooks_off(lever: LeverSandbox) -> Iterator[None]:
    """Lever stops delivering for a moment: the test delivers (or forges) the webhook itself."""
    url = lever.webhook_url
    lever.webhook_url = None
    try:
        yield
    finally:
        lever.webhook_url = url


async def enter_silently(stack: Stack, opp_id: str, stage: str, account: str = "acme") -> dict:
    """Move the candidate in Lever without a delivery; return the webhook ``data`` Lever would send."""
    lever = lever_of(stack, account)
    before = lever.opportunity(opp_id)
    with webhooks_off(lever):
        after, attempt = await lever.move_candidate(opp_id, stage)
    assert attempt is None
    return {
        "opportunityId": opp_id,
        "candidateId": opp_id,
        "contactId": after["contact"],
        "toStageId": after["stage"],
        "fromStageId": before["stage"],
    }


def signed(token: str, data: dict, event: str = "candidateStageChange", **kw: Any) -> bytes:
    return json.dumps(sign_lever_webhook(token, event, data, **kw)).encode()


def webhook_url(stack: Stack, account: str = "acme") -> str:
    return f"{stack.api_url}/webhooks/lever/{account}"


async def post_webhook(stack: Stack, raw: bytes, account: str = "acme") -> httpx.Response:
    return await stack.http.post(
        webhook_url(stack, account), content=raw, headers={"Content-Type": "application/json"}
    )


def assessment_id(account: str, opp_id: str, stage_id: str) -> str:
    return decisions.assessment_workflow_id(account, opp_id, stage_id)


# --- Py ---------------------------------------------------------------------------------


async def post_callback(
    stack: Stack,
    event: str,
    invitation: dict,
    *,
    timestamp: int | None = None,
    secret: str = SECRETS["callback_secret"],
) -> httpx.Response:
    raw, headers = build_callback(secret, event, invitation, timestamp=timestamp)
    return await stack.http.post(f"{stack.api_url}/callbacks/py", content=raw, headers=headers)


# --- Temporal ---------------------------------------------------------------------------


async def describe(stack: Stack, workflow_id: str) -> WorkflowExecutionDescription | None:
    try:
        return await stack.client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def assert_no_workflow(stack: Stack, workflow_id: str) -> None:
    assert await describe(stack, workflow_id) is None, f"{workflow_id} was started"


async def finished(stack: Stack, workflow_id: str, timeout: float = 30) -> AssessmentResult:
    return await stack.result(workflow_id, timeout)


async def candidate_status(stack: Stack, account: str, opp_id: str) -> list[dict]:
    response = await stack.http.get(
        f"{stack.api_url}/accounts/{account}/candidates/{opp_id}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 200, response.text
    return response.json()["assessments"]


def verdict_tags(tags: list[str]) -> set[str]:
    return {decisions.TAG_PASS, decisions.TAG_FAIL, decisions.TAG_NEEDS_REVIEW} & set(tags)

"""Status shows what a running assessment waits for: the activity it keeps retrying.

A stand-in invitation workflow whose ``lever.add_tags`` answers 401 forever (as
while a customer rotates its Lever key) runs on a dev server with the payload
codec, so failure messages are encrypted in Temporal; the gateway decrypts the
last one through the client's data converter.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from pylever.contracts import search_attributes as sa
from pylever.ops.commands.status import render_status
from pylever.temporal.codec import AesGcmCodec, data_converter, generate_key
from pylever.temporal.gateway import Gateway
from sandbox.devserver import start_dev_server

QUEUE = "status-waiting"
LEVER_401 = "Lever POST /opportunities/{id}/addTags -> 401 Unauthorized"
CANDIDATE_EMAIL = "ada@example.com"


@activity.defn(name="lever.add_tags")
async def refused_add_tags(opportunity_id: str) -> None:
    # The service's own words (which may echo a candidate) go into the details, as
    # activities.errors does; the message is the summary.
    raise ApplicationError(LEVER_401, f"Invalid API key ({CANDIDATE_EMAIL})", type="AuthError")


@workflow.defn(name="InvitationWorkflow", sandboxed=False)
class RefusedWorkflow:
    @workflow.run
    async def run(self, opportunity_id: str) -> None:
        await workflow.execute_activity(
            refused_add_tags,
            opportunity_id,
            start_to_close_timeout=timedelta(seconds=5),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=200), backoff_coefficient=1.0
            ),
        )


@workflow.defn(name="AssessmentWorkflow", sandboxed=False)
class IdleWorkflow:
    """Running, waiting on nothing that fails (a child, a timer, a signal)."""

    @workflow.run
    async def run(self, opportunity_id: str) -> None:
        await workflow.wait_condition(lambda: False)


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    codec = AesGcmCodec([base64.b64decode(generate_key())])
    environment = await start_dev_server(data_converter=data_converter(codec))
    try:
        yield environment
    finally:
        await environment.shutdown()


async def start(client: Client, wf: Any, workflow_id: str, opportunity_id: str) -> None:
    await client.start_workflow(
        wf,
        opportunity_id,
        id=workflow_id,
        task_queue=QUEUE,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(sa.LEVER_ACCOUNT, "acme"),
                SearchAttributePair(sa.LEVER_OPPORTUNITY_ID, opportunity_id),
                SearchAttributePair(sa.LEVER_STAGE_ID, "stage-1"),
                SearchAttributePair(sa.PY_STATUS, "started"),
            ]
        ),
    )


async def rows_until(gateway: Gateway, opp: str, done: Any, within: float = 20) -> list[dict]:
    deadline = time.monotonic() + within
    while True:
        rows = await gateway.candidate_assessments("acme", opp)
        if done(rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)


async def test_status_shows_the_activity_a_running_assessment_retries(
    env: WorkflowEnvironment,
) -> None:
    client = env.client
    opp = f"opp-{uuid.uuid4().hex[:8]}"
    invitation_id, assessment_id = f"invitation:acme:{opp}", f"assessment:acme:{opp}"
    gateway = Gateway(client, QUEUE)
    async with Worker(
        client,
        task_queue=QUEUE,
        workflows=[RefusedWorkflow, IdleWorkflow],
        activities=[refused_add_tags],
    ):
        before = datetime.now().astimezone()
        await start(client, RefusedWorkflow.run, invitation_id, opp)
        await start(client, IdleWorkflow.run, assessment_id, opp)

        def retried(rows: list[dict]) -> bool:
            by_id = {r["workflow_id"]: r for r in rows}
            waiting = by_id.get(invitation_id, {}).get("waiting")
            return assessment_id in by_id and bool(waiting) and waiting["attempts"] >= 3

        rows = await rows_until(gateway, opp, retried)
        by_id = {r["workflow_id"]: r for r in rows}
        assert set(by_id) == {invitation_id, assessment_id}, rows
        waiting = by_id[invitation_id]["waiting"]
        assert waiting is not None, rows
        assert waiting["activity"] == "lever.add_tags"
        assert waiting["attempts"] >= 3
        assert waiting["last_error"] == f"AuthError: {LEVER_401}"  # decrypted
        since = datetime.fromisoformat(waiting["since"])
        # When it was first scheduled, not when the current retry was.
        assert before - timedelta(seconds=2) <= since <= before + timedelta(seconds=2)
        assert by_id[assessment_id]["waiting"] is None  # running, nothing failing
        assert CANDIDATE_EMAIL not in repr(rows)

        # In Temporal the message is encrypted: only the data converter reads it.
        description = await client.get_workflow_handle(invitation_id).describe()
        [pending] = description.raw_description.pending_activities
        assert pending.last_failure.message == "Encoded failure"

        text = render_status({"account_id": "acme", "opportunity_id": opp, "assessments": rows})
        [line] = [line for line in text.splitlines() if "waiting for" in line]
        assert line.startswith("  invitation -: waiting for Lever since ")
        assert f"last answer: AuthError: {LEVER_401}" in line
        assert f"({waiting['attempts']} attempts)" in line

        for workflow_id in (invitation_id, assessment_id):
            await client.get_workflow_handle(workflow_id).terminate()

    # Closed executions are not described: nothing waits.
    rows = await rows_until(
        gateway, opp, lambda rs: all(r["execution_status"] != "running" for r in rs)
    )
    assert rows and all(r["waiting"] is None for r in rows)

"""The assessment workflow with stand-in activities: Lever refusing for good never fails it.

A webhook we accepted must end in a finished workflow or a visible error tag; when
even the tag cannot be written (candidate deleted, key revoked), the workflow still
finishes, with the reason in its result.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from pylever.contracts.records import (
    AssessmentInput,
    AssessmentResult,
    Candidate,
    CreateInvitation,
    FindTests,
    InvitationRecord,
    ReadCandidate,
    Status,
    TagWrite,
    TriggerSettings,
)
from pylever.temporal.codec import data_converter
from sandbox.devserver import start_dev_server
from workflows.assessment import AssessmentWorkflow
from workflows.decisions import lever_task_queue
from workflows.invitation import InvitationWorkflow

QUEUE = "wf-failures"
SETTINGS = TriggerSettings(stage="s", default_test="Python Basics", expire_after_seconds=3600)


class FakeWorld:
    def __init__(self, *, email: str | None, tests: dict[str, str], py_refuses: bool) -> None:
        self.email = email
        self.tests = tests
        self.py_refuses = py_refuses
        self.tag_attempts: list[tuple[str, ...]] = []

    @activity.defn(name="lever.read_candidate")
    async def read_candidate(self, req: ReadCandidate) -> Candidate:
        return Candidate(
            opportunity_id=req.opportunity_id,
            name="Ada",
            email=self.email,
            entered_stage=True,
            archived=False,
        )

    @activity.defn(name="lever.add_tags")
    async def add_tags(self, req: TagWrite) -> None:
        self.tag_attempts.append(req.tags)
        raise ApplicationError("Lever 404 NotFound", type="NotFoundError", non_retryable=True)

    @activity.defn(name="py.find_tests")
    async def find_tests(self, req: FindTests) -> dict[str, str]:
        return {n: self.tests[n] for n in req.names if n in self.tests}

    @activity.defn(name="py.create_invitation")
    async def create_invitation(self, req: CreateInvitation) -> InvitationRecord:
        raise ApplicationError("Py 422 invalid_email", type="BadRequestError", non_retryable=True)


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await start_dev_server(data_converter=data_converter(None))
    try:
        yield environment
    finally:
        await environment.shutdown()


async def run(client: Client, world: FakeWorld) -> AssessmentResult:
    async with (
        Worker(
            client,
            task_queue=QUEUE,
            workflows=[AssessmentWorkflow, InvitationWorkflow],
            activities=[world.find_tests, world.create_invitation],
        ),
        Worker(
            client,
            task_queue=lever_task_queue(QUEUE),
            activities=[world.read_candidate, world.add_tags],
        ),
    ):
        return await client.execute_workflow(
            AssessmentWorkflow.run,
            AssessmentInput(
                account_id="acme", opportunity_id="opp", stage_id="s", settings=SETTINGS
            ),
            id=f"assessment:acme:opp-{uuid.uuid4().hex[:8]}:s",
            task_queue=QUEUE,
        )


@pytest.mark.parametrize(
    ("world", "status", "tag"),
    [
        (
            FakeWorld(email="a@example.com", tests={}, py_refuses=False),
            Status.NOT_SENT,
            "Py - No Test Configured",
        ),
        (
            FakeWorld(email=None, tests={"Python Basics": "t1"}, py_refuses=False),
            Status.ERROR,
            "Py - Error: No Email",
        ),
    ],
)
async def test_an_untaggable_candidate_still_ends_the_assessment(
    env: WorkflowEnvironment, world: FakeWorld, status: Status, tag: str
) -> None:
    result = await run(env.client, world)
    assert result.status == status
    assert world.tag_attempts == [(tag,)]  # tried once: a 404 is permanent
    assert result.reason and "cannot tag" in result.reason and "NotFoundError" in result.reason


async def test_invite_failed_that_cannot_be_tagged_still_ends(env: WorkflowEnvironment) -> None:
    world = FakeWorld(email="a@example.com", tests={"Python Basics": "t1"}, py_refuses=True)
    result = await run(env.client, world)
    assert result.status == Status.ERROR
    [invitation] = result.invitations
    assert invitation.status == Status.ERROR
    assert (
        invitation.error
        and "invalid_email" in invitation.error
        and "cannot tag" in invitation.error
    )
    assert world.tag_attempts == [("Py - Error: Invite Failed",)]

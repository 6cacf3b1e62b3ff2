"""Workflow determinism: saved histories must replay against the workflows in the tree.

``tests/histories/*.json`` hold real histories (Temporal's JSON history format,
payloads encrypted with the stack's test key ``PAYLOAD_KEY``) recorded from the
integration stack:

- ``assessment-pass`` / ``invitation-pass``: a full pass lifecycle (invited,
  started callback, completed callback, verdict tags, report link, move on pass);
- ``assessment-invite-failed`` / ``invitation-invite-failed``: Py refuses the
  invitation for good (422);

and ``workflow_ids.json`` their workflow ids (a child's id derives from its parent's).

A workflow change that is not replay-safe (another activity order, a new step
without ``workflow.patched``) makes ``test_saved_history_replays`` fail. When a
change is *meant* to be incompatible (and running workflows are handled), record
the histories again and commit them with the change::

    PYLEVER_RECORD_HISTORIES=1 .venv/bin/pytest tests/test_replay.py
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from activities.py import FindTests, PyActivities
from pylever import search_attributes as sa
from pylever.codec import AesGcmCodec, data_converter
from pylever.models import (
    AssessmentInput,
    AssessmentResult,
    InvitationInput,
    InvitationResult,
    Status,
)
from tests.integration_stack import PAYLOAD_KEY, Stack
from workflows import decisions
from workflows.assessment import AssessmentWorkflow, InvitationWorkflow, _LeverOps

HISTORIES = Path(__file__).parent / "histories"
RECORD = os.environ.get("PYLEVER_RECORD_HISTORIES") == "1"
SAVED = ("assessment-pass", "invitation-pass", "assessment-invite-failed", "invitation-invite-failed")


def replayer(*workflows: type) -> Replayer:
    return Replayer(
        workflows=list(workflows or (AssessmentWorkflow, InvitationWorkflow)),
        data_converter=data_converter(AesGcmCodec([PAYLOAD_KEY])),
    )


# Child workflow ids derive from the parent's id, so replay needs the recorded ids.
WORKFLOW_IDS = HISTORIES / "workflow_ids.json"


def load(name: str) -> WorkflowHistory:
    path = HISTORIES / f"{name}.json"
    if not path.exists() or not WORKFLOW_IDS.exists():
        pytest.fail(f"{path} is missing: record it with PYLEVER_RECORD_HISTORIES=1 "
                    ".venv/bin/pytest tests/test_replay.py")
    workflow_id = json.loads(WORKFLOW_IDS.read_text())[name]
    return WorkflowHistory.from_json(workflow_id, path.read_text())


def save(histories: dict[str, WorkflowHistory]) -> None:
    HISTORIES.mkdir(exist_ok=True)
    for name, history in histories.items():
        text = json.dumps(json.loads(history.to_json()), indent=1) + "\n"
        (HISTORIES / f"{name}.json").write_text(text)
    ids = {name: history.workflow_id for name, history in sorted(histories.items())}
    WORKFLOW_IDS.write_text(json.dumps(ids, indent=2) + "\n")


def activity_types(history: WorkflowHistory) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


# --- recording (and replaying what the current code writes) ---------------------------------


async def _iterate(histories: Iterable[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for history in histories:
        yield history


async def _pass_lifecycle(stack: Stack) -> tuple[WorkflowHistory, WorkflowHistory]:
    opp = stack.candidate("Replay Pass", "replay.pass@example.com")
    attempt = await stack.move(opp, "Py Assessment")
    workflow_id = attempt.body["workflow_id"]
    invitation = await stack.invitation(opp)
    await stack.py.start(invitation["id"])
    await stack.wait_tag(opp, decisions.TAG_STARTED)
    await stack.py.complete(invitation["id"], 92)
    result = await stack.result(workflow_id)
    assert result.status == Status.COMPLETED and result.invitations[0].verdict == "pass"
    parent = await stack.client.get_workflow_handle(workflow_id).fetch_history()
    child = await stack.client.get_workflow_handle(invitation["reference"]).fetch_history()
    return parent, child


async def _invite_failed(stack: Stack) -> tuple[WorkflowHistory, WorkflowHistory]:
    opp = stack.candidate("Replay Refused", "replay-refused@localhost")  # Py answers 422
    attempt = await stack.move(opp, "Py Assessment")
    workflow_id = attempt.body["workflow_id"]
    result = await stack.result(workflow_id)
    assert result.status == Status.ERROR
    child_id = decisions.invitation_workflow_id(workflow_id, result.invitations[0].test.id)
    parent = await stack.client.get_workflow_handle(workflow_id).fetch_history()
    child = await stack.client.get_workflow_handle(child_id).fetch_history()
    return parent, child


async def test_current_histories_replay_and_record(stack: Stack) -> None:
    """What the workflows write now replays with the stack's converter (and is saved when asked)."""
    parent, child = await _pass_lifecycle(stack)
    failed_parent, failed_child = await _invite_failed(stack)
    recorded = {
        "assessment-pass": parent,
        "invitation-pass": child,
        "assessment-invite-failed": failed_parent,
        "invitation-invite-failed": failed_child,
    }
    assert set(recorded) == set(SAVED)
    results = await replayer().replay_workflows(_iterate(recorded.values()))
    assert results.replay_failures == {}
    if RECORD:
        save(recorded)


# --- the saved histories ------------------------------------------------------------------


def test_saved_histories_are_the_lifecycles_they_claim() -> None:
    """Guards the fixtures themselves: a truncated or wrong recording would prove little."""
    assert activity_types(load("assessment-pass")) == ["lever.read_candidate", "py.find_tests"]
    assert activity_types(load("invitation-pass")) == [
        "py.create_invitation",
        "lever.add_tags",  # Py - Invited
        "lever.add_tags",  # Py - Started
        "lever.remove_tags",
        "lever.add_tags",  # the verdict
        "lever.add_links",
        "lever.move_to_stage",
    ]
    assert activity_types(load("invitation-invite-failed")) == [
        "py.create_invitation", "lever.add_tags",
    ]
    for name in SAVED:
        events = load(name).events
        assert events[-1].HasField("workflow_execution_completed_event_attributes"), name
    signals = [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in load("invitation-pass").events
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert signals == ["py_event", "py_event"]  # started, completed


@pytest.mark.parametrize("name", SAVED)
def test_saved_histories_hold_no_clear_text_payloads(name: str) -> None:
    """Every payload but the search attributes (ids, statuses) went through the codec."""
    plain: list[tuple[str, ...]] = []
    encrypted = 0

    def walk(node: object, path: tuple[str, ...]) -> None:
        nonlocal encrypted
        if isinstance(node, dict):
            metadata = node.get("metadata")
            if isinstance(metadata, dict) and "encoding" in metadata:
                if base64.b64decode(metadata["encoding"]) == b"binary/encrypted":
                    encrypted += 1
                else:
                    plain.append(path)
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, list):
            for value in node:
                walk(value, path)

    walk(json.loads((HISTORIES / f"{name}.json").read_text()), ())
    assert encrypted > 0
    assert plain and all(p[-2] == "indexedFields" for p in plain), plain


@pytest.mark.parametrize("name", SAVED)
async def test_saved_history_replays(name: str) -> None:
    await replayer().replay_workflow(load(name))


# --- proof that the replay test catches a non-deterministic change ---------------------------
#
# Each variant is registered under the real workflow's name. They subclass the real
# workflows (same signals, queries and helpers); only ``run`` differs.


@workflow.defn(name="AssessmentWorkflow", sandboxed=False)
class UnchangedAssessment(AssessmentWorkflow):
    @workflow.run
    async def run(self, input: AssessmentInput) -> AssessmentResult:
        return await super().run(input)


@workflow.defn(name="AssessmentWorkflow", sandboxed=False)
class ReorderedAssessment(AssessmentWorkflow):
    """Asks Py for the tests before reading the opportunity: two activities swap places."""

    @workflow.run
    async def run(self, input: AssessmentInput) -> AssessmentResult:
        workflow.upsert_search_attributes(
            [
                sa.LEVER_ACCOUNT.value_set(input.account_id),
                sa.LEVER_OPPORTUNITY_ID.value_set(input.opportunity_id),
                sa.LEVER_STAGE_ID.value_set(input.stage_id),
            ]
        )
        self._set_status(Status.RESOLVING)
        await workflow.execute_activity_method(
            PyActivities.find_tests,
            FindTests(names=(input.settings.default_test or "",)),
            start_to_close_timeout=timedelta(seconds=30),
        )
        await _LeverOps(input.account_id, input.opportunity_id).read_candidate(input.stage_id)
        return AssessmentResult(status=Status.NOT_SENT)


@workflow.defn(name="InvitationWorkflow", sandboxed=False)
class TagsBeforeInviting(InvitationWorkflow):
    """Tags "Py - Invited" before asking Py: a Lever write moves ahead of the invitation."""

    @workflow.run
    async def run(self, input: InvitationInput) -> InvitationResult:
        lever = _LeverOps(input.account_id, input.opportunity_id)
        await lever.change_tags(decisions.TagChange(add=(decisions.TAG_INVITED,)))
        return await super().run(input)


@workflow.defn(name="InvitationWorkflow", sandboxed=False)
class PatchedInvitation(InvitationWorkflow):
    """The same new step as above, behind ``workflow.patched``: old histories still replay."""

    @workflow.run
    async def run(self, input: InvitationInput) -> InvitationResult:
        if workflow.patched("tag-before-inviting"):
            lever = _LeverOps(input.account_id, input.opportunity_id)
            await lever.change_tags(decisions.TagChange(add=(decisions.TAG_INVITED,)))
        return await super().run(input)


@pytest.mark.parametrize(
    ("name", "variant"),
    [("assessment-pass", UnchangedAssessment), ("invitation-pass", PatchedInvitation)],
)
async def test_replay_safe_variants_pass(name: str, variant: type) -> None:
    """The control: the variants' machinery (subclass, same name) is not what fails below."""
    await replayer(variant).replay_workflow(load(name))


@pytest.mark.parametrize(
    ("name", "variant"),
    [
        ("assessment-pass", ReorderedAssessment),
        ("assessment-invite-failed", ReorderedAssessment),
        ("invitation-pass", TagsBeforeInviting),
        ("invitation-invite-failed", TagsBeforeInviting),
    ],
)
async def test_a_non_deterministic_change_fails_replay(name: str, variant: type) -> None:
    with pytest.raises(workflow.NondeterminismError):
        await replayer(variant).replay_workflow(load(name))

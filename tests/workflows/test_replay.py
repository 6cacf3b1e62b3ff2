"""Workflow determinism: saved histories must replay against the workflows in the tree.

``tests/histories/*.json`` hold real histories (Temporal's JSON history format,
payloads encrypted with the stack's test key ``PAYLOAD_KEY``) of every workflow
type and path, recorded from the integration stack by tests/support/record_histories.py,
and ``workflow_ids.json`` their workflow ids (a child's id derives from its
parent's, so a parent replays only under its recorded id). There are two sets:

- the *shipped* set (``assessment-pass``, ...): recorded from the code before
  ``workflow.patched("durable-invitation")``; frozen, never recorded again. It proves
  that executions started before that patch still replay (``workflows.shipped_v1``);
- the *durable* set (``durable-assessment-pass``, ...): the same paths recorded from
  the durable shape (each history starts with the patch's ``core_patch`` marker), plus
  paths of that shape only: ``lever-refused``, ``adopted`` and ``account-removed``, and
  the group ``more`` (``unconfirmed``, ``lever-gone``, ``contract-error``,
  ``cancel-holds-result``) below.

``CLAIMS`` below says which path each file is; every path, its histories (the
durable set: the same names with ``durable-`` in front):

- pass: ``assessment-pass``, ``invitation-pass`` (invited, started callback,
  completed callback, verdict tags, report link, move on pass);
- invite-failed: ``assessment-invite-failed``, ``invitation-invite-failed`` (Py
  refuses the invitation for good, 422);
- several: ``assessment-several``, ``invitation-several-1`` (Python Basics, pass),
  ``invitation-several-2`` (SQL Fundamentals, fail): two tests for one candidate,
  the parent's ``_conclude_several`` clears the in-progress tags;
- lost-callback: ``assessment-lost-callback``, ``invitation-lost-callback``
  (completed at Py without a callback; the 2-day check takes the result);
- expired: ``assessment-expired``, ``invitation-expired`` (reminders at 2 and 5
  days, at 7 days Py's cancel and "Py - Expired");
- archived: ``withdraw-archived``, ``assessment-archived``, ``invitation-archived``
  (started, then archived in Lever: cancelled at Py, in-progress tags cleared);
- deleted: ``withdraw-deleted``, ``assessment-deleted``, ``invitation-deleted``
  (deleted in Lever: cancelled at Py, nothing written to Lever; recorded with a
  stand-in for ``temporal.delete_candidate_executions`` that deletes nothing);
- operator-cancel: ``assessment-operator-cancel``, ``invitation-operator-cancel``
  (``handle.cancel()`` on a waiting assessment; see ``test_operator_cancel_as_recorded``
  and ``test_durable_operator_cancel``);
- lever-refused (durable only): ``durable-assessment-lever-refused``,
  ``durable-invitation-lever-refused`` (Lever answers 401 while the result arrives:
  the verdict write is one activity retried until Lever accepts the key again);
- adopted (durable only): ``durable-assessment-adopted-1``,
  ``durable-invitation-adopted-1`` (the first run: its child terminated, the parent
  ends ``error``), ``durable-assessment-adopted-2``, ``durable-invitation-adopted-2``
  (the re-run after the candidate re-entered the stage: the child adopts the open
  invitation, ``py.get_invitation`` instead of ``py.create_invitation``);
- account-removed (durable only): ``durable-remove-account-account-removed``,
  ``durable-assessment-account-removed``, ``durable-invitation-account-removed`` (invited,
  then acme removed from the configuration: ``RemoveAccountWorkflow`` lists and signals
  ``withdraw``, ``account_removed``; cancelled at Py, nothing written to Lever, the
  assessment ends "account removed from configuration"; the removal lists 5 more times,
  finds nothing new and ends). Recorded on the shared Lever task queue: its Lever
  activities carry the account as fairness key. ``RemoveAccountWorkflow`` has no
  ``workflow.patched`` marker (it never had another shape in a release);
- unconfirmed (durable only, group ``more``): ``durable-withdraw-unconfirmed`` (a
  forged ``candidateDeleted`` webhook naming an active, invited candidate: Lever is
  read 4 times, at once and after 10 s, 1 min and 5 min, never confirms it; the
  withdrawal ends with 0 and signals nothing);
- lever-gone (durable only, group ``more``): ``durable-assessment-lever-gone``,
  ``durable-invitation-lever-gone`` (deleted in Lever without a webhook, then the
  started callback: the "Py - Started" tag meets a 404, cancelled at Py, ends
  ``cancelled``);
- contract-error (durable only, group ``more``): ``durable-assessment-contract-error``,
  ``durable-invitation-contract-error`` (completed at Py without a ``report_url`` and
  without a callback: the 2-day check meets ``PyContractError``, the in-progress tags
  are cleared, ends ``error``);
- cancel-holds-result (durable only, group ``more``):
  ``durable-assessment-cancel-holds-result``, ``durable-invitation-cancel-holds-result``
  (completed at Py without a callback, then the assessment is cancelled: the child's
  ``py.cancel`` gets the result back, which is written; both end COMPLETED).

A workflow change that is not replay-safe (another activity order, a new step
without ``workflow.patched``) makes ``test_saved_history_replays`` fail. When a
change is *meant* to be incompatible (and running workflows are handled), record
the durable set again and commit it with the change::

    PYLEVER_RECORD_HISTORIES=durable:all .venv/bin/pytest tests/integration/test_replay_recording.py  # every path
    PYLEVER_RECORD_HISTORIES=durable:expired,adopted .venv/bin/pytest tests/integration/test_replay_recording.py
    PYLEVER_RECORD_HISTORIES=durable:more .venv/bin/pytest tests/integration/test_replay_recording.py  # the 4 above

A value without a set (``1``, ``expired,deleted``) records the durable set too; the
shipped set is written only when named (``shipped:...``), and the current code cannot
write it: its claims have no ``core_patch`` marker, so such a recording fails its
check before anything is saved.

Normal runs only replay the saved files (this module: no stack, only ``Replayer``),
plus the two fast paths (pass, invite-failed) recorded from the current code and
replayed afresh on the session stack (tests/integration/test_replay_recording.py, which
also records); the other paths need a time-skipping stack of their own and run only when
recording.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from activities.temporal_ops import TemporalActivities
from pylever.contracts import search_attributes as sa
from pylever.contracts.activities import PyActivity
from pylever.contracts.commands import CandidateCommandsInput, CommandOutcome, CommandWatchInput
from pylever.contracts.records import (
    AssessmentInput,
    AssessmentResult,
    CandidateRef,
    FindTests,
    InvitationInput,
    InvitationResult,
    RemoveAccountInput,
    RemoveAccountResult,
    Status,
    Withdrawal,
    WithdrawInput,
)
from pylever.contracts.sweep import SweepInput, SweepResult
from pylever.temporal.codec import AesGcmCodec, data_converter
from pylever.temporal.workers import WORKFLOWS
from tests.support import record_histories
from tests.support.integration_stack import PAYLOAD_KEY
from workflows import decisions
from workflows.assessment import AssessmentWorkflow
from workflows.calls import LeverOps as _LeverOps
from workflows.commands import CandidateCommandsWorkflow, CommandWatchWorkflow
from workflows.invitation import InvitationWorkflow
from workflows.remove_account import RemoveAccountWorkflow
from workflows.sweep import SweepWorkflow
from workflows.versions import DURABLE
from workflows.withdraw import WithdrawCandidateWorkflow

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
# Child workflow ids derive from the parent's id, so replay needs the recorded ids.
WORKFLOW_IDS = HISTORIES / "workflow_ids.json"
# The saved sets: the prefix of their names.
SETS = {"shipped": "", "durable": "durable-"}
SHIPPED, DURABLE_SET = SETS["shipped"], SETS["durable"]
GROUPS = {**record_histories.FAST, **record_histories.SLOW}  # the paths of both sets
GROUPS_OF = {
    "shipped": GROUPS,
    "durable": {**GROUPS, **record_histories.DURABLE_ONLY, **record_histories.MORE},
}
# Names for several groups at once, by set.
ALIASES_OF: dict[str, dict[str, set[str]]] = {
    "shipped": {},
    "durable": {"more": set(record_histories.MORE)},
}


# --- what each saved history is -----------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """The path a saved history claims to be.

    ``activities``: scheduled activity types, in order. ``milestones``: the other
    events that tell paths apart, in order (``workflow.patched`` markers, signals
    received and sent, children, fired timers, cancel requests) and last the close
    event (see ``milestones``).
    ``parent``: for a child, the saved parent its workflow id derives from.
    """

    activities: tuple[str, ...]
    milestones: tuple[str, ...]
    parent: str | None = None


_READ_AND_FIND = ("lever.read_candidate", "py.find_tests")
_INVITE = ("py.create_invitation", "lever.add_tags")  # the invitation, "Py - Invited"
_ONE_CHILD = ("child-started", "child-completed")

# The shipped set: no marker (the code before ``workflow.patched``).
SHIPPED_CLAIMS: dict[str, Claim] = {
    "assessment-pass": Claim(_READ_AND_FIND, (*_ONE_CHILD, "completed")),
    "invitation-pass": Claim(
        (
            *_INVITE,
            "lever.add_tags",  # Py - Started
            "lever.remove_tags",
            "lever.add_tags",  # the verdict
            "lever.add_links",
            "lever.move_to_stage",
        ),
        ("signaled:py_event", "signaled:py_event", "completed"),  # started, completed
        parent="assessment-pass",
    ),
    "assessment-invite-failed": Claim(_READ_AND_FIND, (*_ONE_CHILD, "completed")),
    "invitation-invite-failed": Claim(
        ("py.create_invitation", "lever.add_tags"),  # refused; "Py - Error: Invite Failed"
        ("completed",),
        parent="assessment-invite-failed",
    ),
    "assessment-several": Claim(
        (*_READ_AND_FIND, "lever.remove_tags"),  # _conclude_several; a fail: no move
        ("child-started", "child-started", "child-completed", "child-completed", "completed"),
    ),
    **{
        f"invitation-several-{n}": Claim(
            # Not the last test: the verdict without removing the in-progress tags.
            (*_INVITE, "lever.add_tags", "lever.add_links"),
            ("signaled:py_event", "completed"),
            parent="assessment-several",
        )
        for n in (1, 2)
    },
    "assessment-lost-callback": Claim(_READ_AND_FIND, (*_ONE_CHILD, "completed")),
    "invitation-lost-callback": Claim(
        (
            *_INVITE,
            "py.get_invitation",  # the 2-day check finds the result: no reminder
            "lever.remove_tags",
            "lever.add_tags",  # Py - Fail
            "lever.add_links",
        ),
        ("timer-fired", "completed"),  # no callback at all
        parent="assessment-lost-callback",
    ),
    "assessment-expired": Claim(_READ_AND_FIND, (*_ONE_CHILD, "completed")),
    "invitation-expired": Claim(
        (
            *_INVITE,
            "py.get_invitation",
            "py.remind",  # 2 days
            "py.get_invitation",
            "py.remind",  # 5 days
            "py.get_invitation",
            "py.cancel",  # 7 days
            "lever.remove_tags",
            "lever.add_tags",  # Py - Expired
        ),  # fmt: skip
        ("timer-fired", "timer-fired", "timer-fired", "completed"),
        parent="assessment-expired",
    ),
    "withdraw-archived": Claim(
        ("temporal.running_assessments",), ("signal-sent:withdraw", "completed")
    ),
    "assessment-archived": Claim(
        _READ_AND_FIND,
        (
            "child-started",
            "signaled:withdraw",
            "signal-sent:withdraw",
            "child-completed",
            "completed",
        ),
    ),  # fmt: skip
    "invitation-archived": Claim(
        (*_INVITE, "lever.add_tags", "py.cancel", "lever.remove_tags"),  # Started; cleared
        ("signaled:py_event", "signaled:withdraw", "completed"),
        parent="assessment-archived",
    ),
    "withdraw-deleted": Claim(
        (
            "temporal.running_assessments",
            "temporal.wait_closed",
            "temporal.delete_candidate_executions",
        ),
        ("signal-sent:withdraw", "completed"),
    ),
    "assessment-deleted": Claim(
        _READ_AND_FIND,
        (
            "child-started",
            "signaled:withdraw",
            "signal-sent:withdraw",
            "child-completed",
            "completed",
        ),
    ),  # fmt: skip
    "invitation-deleted": Claim(
        (*_INVITE, "py.cancel"),  # nothing written to Lever after the delete
        ("signaled:withdraw", "completed"),
        parent="assessment-deleted",
    ),
    "assessment-operator-cancel": Claim(
        _READ_AND_FIND,
        ("child-started", "cancel-requested", "cancel-sent", "child-canceled", "canceled"),
    ),
    "invitation-operator-cancel": Claim(
        _INVITE,  # no py.cancel, no tag change: see test_operator_cancel_as_recorded
        ("cancel-requested", "canceled"),
        parent="assessment-operator-cancel",
    ),
}

# The durable set: each history starts with the marker of ``workflow.patched(DURABLE)``.
# The cosmetic tags ("Py - Invited", "Py - Started") are written by background tasks,
# but one after the other and before the outcome, so the activity order is fixed.
_P = f"patched:{DURABLE}"
_D = DURABLE_SET
_STANDARD_ASSESSMENT = Claim(_READ_AND_FIND, (_P, *_ONE_CHILD, "completed"))
_WITHDRAW_SIGNALS = (  # the two acme trigger stages' ids, first; only "Py Assessment" runs
    "signal-sent:withdraw", "signal-sent:withdraw", "signal-failed",
)  # fmt: skip
DURABLE_CLAIMS: dict[str, Claim] = {
    f"{_D}assessment-pass": _STANDARD_ASSESSMENT,
    f"{_D}invitation-pass": Claim(
        SHIPPED_CLAIMS["invitation-pass"].activities,  # the same writes, in the same order
        (_P, "signaled:py_event", "signaled:py_event", "completed"),
        parent=f"{_D}assessment-pass",
    ),
    f"{_D}assessment-invite-failed": _STANDARD_ASSESSMENT,
    f"{_D}invitation-invite-failed": Claim(
        ("py.create_invitation", "lever.add_tags"),  # refused; "Py - Error: Invite Failed"
        (_P, "completed"),
        parent=f"{_D}assessment-invite-failed",
    ),
    f"{_D}assessment-several": Claim(
        (*_READ_AND_FIND, "lever.remove_tags"),  # _conclude_several; pass + fail: no move
        (_P, "child-started", "child-started", "child-completed", "child-completed", "completed"),
    ),
    **{
        f"{_D}invitation-several-{n}": Claim(
            (*_INVITE, "lever.add_tags", "lever.add_links"),  # not alone: no tag removal
            (_P, "signaled:py_event", "completed"),
            parent=f"{_D}assessment-several",
        )
        for n in (1, 2)
    },
    f"{_D}assessment-lost-callback": _STANDARD_ASSESSMENT,
    f"{_D}invitation-lost-callback": Claim(
        SHIPPED_CLAIMS["invitation-lost-callback"].activities,
        (_P, "timer-fired", "completed"),
        parent=f"{_D}assessment-lost-callback",
    ),
    f"{_D}assessment-expired": _STANDARD_ASSESSMENT,
    f"{_D}invitation-expired": Claim(
        SHIPPED_CLAIMS["invitation-expired"].activities,
        (_P, "timer-fired", "timer-fired", "timer-fired", "completed"),
        parent=f"{_D}assessment-expired",
    ),
    f"{_D}withdraw-archived": Claim(
        # Lever confirms the archive; then, after the signals by id, a listing (nothing new)
        ("lever.opportunity_state", "temporal.running_assessments"),
        (_P, *_WITHDRAW_SIGNALS, "completed"),
    ),
    f"{_D}assessment-archived": Claim(
        _READ_AND_FIND,
        (
            _P,
            "child-started",
            "signaled:withdraw",
            "signal-sent:withdraw",
            "child-completed",
            "completed",
        ),
    ),  # fmt: skip
    f"{_D}invitation-archived": Claim(
        SHIPPED_CLAIMS["invitation-archived"].activities,  # Started; cancel at Py; cleared
        (_P, "signaled:py_event", "signaled:withdraw", "completed"),
        parent=f"{_D}assessment-archived",
    ),
    f"{_D}withdraw-deleted": Claim(
        (
            "lever.opportunity_state",  # Lever confirms the delete (404)
            "temporal.running_assessments",
            "temporal.wait_closed",
            "temporal.delete_executions",  # by the known ids
            "temporal.delete_candidate_executions",  # the sweep
        ),
        (_P, *_WITHDRAW_SIGNALS, "completed"),
    ),
    f"{_D}assessment-deleted": Claim(
        _READ_AND_FIND,
        (
            _P,
            "child-started",
            "signaled:withdraw",
            "signal-sent:withdraw",
            "child-completed",
            "completed",
        ),
    ),  # fmt: skip
    f"{_D}invitation-deleted": Claim(
        (*_INVITE, "py.cancel"),  # nothing written to Lever after the delete
        (_P, "signaled:withdraw", "completed"),
        parent=f"{_D}assessment-deleted",
    ),
    f"{_D}assessment-operator-cancel": Claim(
        _READ_AND_FIND,
        (_P, "child-started", "cancel-requested", "cancel-sent", "child-canceled", "canceled"),
    ),
    f"{_D}invitation-operator-cancel": Claim(
        (*_INVITE, "py.cancel", "lever.remove_tags"),  # cancelled at Py, tags cleared
        (_P, "cancel-requested", "canceled"),
        parent=f"{_D}assessment-operator-cancel",
    ),
    f"{_D}assessment-lever-refused": _STANDARD_ASSESSMENT,
    f"{_D}invitation-lever-refused": Claim(
        (
            *_INVITE,
            "lever.remove_tags",  # refused (401) and retried: one activity, several attempts
            "lever.add_tags",  # Py - Pass
            "lever.add_links",
            "lever.move_to_stage",
        ),
        (_P, "signaled:py_event", "completed"),
        parent=f"{_D}assessment-lever-refused",
    ),
    f"{_D}assessment-adopted-1": Claim(
        _READ_AND_FIND,
        (_P, "child-started", "child-terminated", "completed"),  # ends error
    ),
    f"{_D}invitation-adopted-1": Claim(
        _INVITE, (_P, "terminated"), parent=f"{_D}assessment-adopted-1"
    ),
    f"{_D}assessment-adopted-2": Claim(
        (*_READ_AND_FIND, "temporal.previous_invitations"),  # a re-run
        (_P, *_ONE_CHILD, "completed"),
    ),
    f"{_D}invitation-adopted-2": Claim(
        (
            "py.get_invitation",  # adopted: no py.create_invitation
            "lever.add_tags",  # Py - Invited
            "lever.remove_tags",
            "lever.add_tags",  # Py - Pass
            "lever.add_links",
            "lever.move_to_stage",
        ),
        (_P, "signaled:py_event", "completed"),
        parent=f"{_D}assessment-adopted-2",
    ),
    f"{_D}remove-account-account-removed": Claim(
        # Listed at once (one assessment), then after 15 s, 30 s, 1 min, 2 min and 4 min:
        # nothing new for 2 minutes, done.
        ("temporal.account_assessments",) * 6,
        ("signal-sent:withdraw", *("timer-fired",) * 5, "completed"),
    ),
    f"{_D}assessment-account-removed": Claim(
        _READ_AND_FIND,
        (
            _P,
            "child-started",
            "signaled:withdraw",
            "signal-sent:withdraw",
            "child-completed",
            "completed",
        ),
    ),  # fmt: skip
    f"{_D}invitation-account-removed": Claim(
        (*_INVITE, "py.cancel"),  # nothing written to Lever after the removal
        (_P, "signaled:withdraw", "completed"),
        parent=f"{_D}assessment-account-removed",
    ),
    # --- the group ``more`` ---
    f"{_D}withdraw-unconfirmed": Claim(
        # Asked at once, then after 10 s, 1 min and 5 min; never "gone": nothing signalled
        ("lever.opportunity_state",) * 4,
        (_P, "timer-fired", "timer-fired", "timer-fired", "completed"),
    ),
    f"{_D}assessment-lever-gone": _STANDARD_ASSESSMENT,  # ends cancelled (its child's)
    f"{_D}invitation-lever-gone": Claim(
        (
            *_INVITE,
            "lever.add_tags",  # Py - Started: 404, the candidate is gone
            "py.cancel",  # nothing more written to Lever
        ),
        (_P, "signaled:py_event", "completed"),
        parent=f"{_D}assessment-lever-gone",
    ),
    f"{_D}assessment-contract-error": _STANDARD_ASSESSMENT,  # ends error (its child's)
    f"{_D}invitation-contract-error": Claim(
        (
            *_INVITE,
            "py.get_invitation",  # the 2-day check: PyContractError (no report_url)
            "lever.remove_tags",  # the in-progress tags; no verdict, no reminder
        ),
        (_P, "timer-fired", "completed"),  # no callback at all
        parent=f"{_D}assessment-contract-error",
    ),
    f"{_D}assessment-cancel-holds-result": Claim(
        _READ_AND_FIND,  # writes nothing itself
        (
            _P,
            "child-started",
            "cancel-requested",
            "cancel-sent",
            "child-completed",
            "completed",
        ),  # the child's result: the assessment ends completed
    ),  # fmt: skip
    f"{_D}invitation-cancel-holds-result": Claim(
        (
            *_INVITE,
            "py.cancel",  # 409: completed meanwhile, the result comes back
            "lever.remove_tags",
            "lever.add_tags",  # Py - Pass
            "lever.add_links",
            "lever.move_to_stage",
        ),
        (_P, "cancel-requested", "completed"),  # no callback
        parent=f"{_D}assessment-cancel-holds-result",
    ),
    f"{_D}sweep-swept": Claim(
        (
            "sweep.plan",
            "lever.list_waiting",  # "Py Assessment": the one candidate
            "sweep.start_waiting",
            "lever.list_waiting",  # "Technical Screen": nobody
            "sweep.report",
        ),
        ("completed",),  # no patch: SweepWorkflow shipped after DURABLE
    ),
    # Issue 15, recruiter commands: Extend and Resend in one look, then the result.
    f"{_D}assessment-commanded": _STANDARD_ASSESSMENT,
    f"{_D}invitation-commanded": Claim(
        (
            *_INVITE,
            "py.remind",  # Resend (Extend calls nothing: the expiry moves)
            "lever.remove_tags",
            "lever.add_tags",  # Py - Pass
            "lever.add_links",
            "lever.move_to_stage",
        ),
        (
            _P,
            "update-accepted",
            "update-completed",
            "update-accepted",
            "update-completed",
            "signaled:py_event",
            "completed",
        ),  # fmt: skip
        parent=f"{_D}assessment-commanded",
    ),
    f"{_D}commands-commanded": Claim(
        (
            "lever.read_tags",  # the tags now, not the listing's
            "commands.previous",  # none left unremoved by an earlier run
            "commands.targets",  # Extend: the open invitation
            "commands.deliver",
            "commands.targets",  # Resend
            "commands.deliver",
            "lever.remove_tags",  # both tags at once
        ),
        ("completed",),  # no patch: shipped after DURABLE
    ),
    f"{_D}watch-commanded": Claim(
        ("commands.plan", "lever.list_commanded"),  # one list call for the four tags
        ("child-started", "completed"),  # the candidate's commands, left running (ABANDON)
    ),
    f"{_D}assessment-recruiter-cancel": _STANDARD_ASSESSMENT,
    f"{_D}invitation-recruiter-cancel": Claim(
        (*_INVITE, "py.cancel", "lever.remove_tags"),  # no verdict
        (_P, "update-accepted", "update-completed", "completed"),
        parent=f"{_D}assessment-recruiter-cancel",
    ),
    # The retake's run: no test choice (the same test), a new invitation, the verdict replaced.
    f"{_D}assessment-retake": Claim(("lever.read_candidate",), (_P, *_ONE_CHILD, "completed")),
    f"{_D}invitation-retake": Claim(
        (
            *_INVITE,
            "lever.remove_tags",  # Py - Invited and the earlier verdict
            "lever.add_tags",  # Py - Pass
            "lever.add_links",
            "lever.move_to_stage",
        ),
        (_P, "signaled:py_event", "completed"),
        parent=f"{_D}assessment-retake",
    ),
}
CLAIMS: dict[str, Claim] = {**SHIPPED_CLAIMS, **DURABLE_CLAIMS}
SAVED = tuple(CLAIMS)
SAVED_DURABLE = tuple(DURABLE_CLAIMS)

_MILESTONES = {
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED: "child-started",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED: "child-completed",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED: "child-failed",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_CANCELED: "child-canceled",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TERMINATED: "child-terminated",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TIMED_OUT: "child-timed-out",
    EventType.EVENT_TYPE_TIMER_FIRED: "timer-fired",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED: "cancel-requested",
    EventType.EVENT_TYPE_REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED: "cancel-sent",
    EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED: "signal-failed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "update-accepted",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED: "update-completed",
    # the close events
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "completed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "failed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "canceled",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "terminated",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: "timed-out",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "continued-as-new",
}
PATCH_MARKER = "core_patch"  # the marker ``workflow.patched`` records
_CLOSES = ("completed", "failed", "canceled", "terminated", "timed-out", "continued-as-new")


def activity_types(history: WorkflowHistory) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


def patch_id(event: HistoryEvent) -> str | None:
    """The patch id of a ``workflow.patched`` marker: its clear-text JSON payload
    ``{"id": ..., "deprecated": ...}`` (sdk-core's ``PatchedMarkerData``)."""
    marker = event.marker_recorded_event_attributes
    if marker.marker_name != PATCH_MARKER:
        return None
    details = marker.details.get("patch-data")  # (a lookup by [] would add the key)
    payloads = details.payloads if details is not None else []
    data = json.loads(payloads[0].data) if payloads else None
    return str(data.get("id") if isinstance(data, dict) else data)


def milestones(history: WorkflowHistory) -> list[str]:
    out = []
    for e in history.events:
        if e.HasField("marker_recorded_event_attributes"):
            found = patch_id(e)
            name = e.marker_recorded_event_attributes.marker_name
            out.append(f"marker:{name}" if found is None else f"patched:{found}")
        elif e.HasField("workflow_execution_signaled_event_attributes"):
            out.append(f"signaled:{e.workflow_execution_signaled_event_attributes.signal_name}")
        elif e.HasField("signal_external_workflow_execution_initiated_event_attributes"):
            name = e.signal_external_workflow_execution_initiated_event_attributes.signal_name
            out.append(f"signal-sent:{name}")
        elif e.event_type in _MILESTONES:
            out.append(_MILESTONES[e.event_type])
    return out


def assert_is_the_claimed_path(name: str, history: WorkflowHistory) -> None:
    claim = CLAIMS[name]
    assert history.events, name
    assert history.events[0].HasField("workflow_execution_started_event_attributes"), name
    assert activity_types(history) == list(claim.activities), name
    found = milestones(history)
    assert found == list(claim.milestones), name
    # Closed, and nothing after the close event.
    assert found[-1] in _CLOSES and _MILESTONES.get(history.events[-1].event_type) == found[-1]


def replayer(*workflows: type) -> Replayer:
    return Replayer(
        # Default: every workflow the worker runs (a newly registered one is replayed too).
        workflows=list(workflows or WORKFLOWS),
        data_converter=data_converter(AesGcmCodec([PAYLOAD_KEY])),
    )


def load(name: str) -> WorkflowHistory:
    path = HISTORIES / f"{name}.json"
    if not path.exists() or not WORKFLOW_IDS.exists():
        pytest.fail(
            f"{path} is missing: record it with PYLEVER_RECORD_HISTORIES=durable:"
            f"{_group_of(name)} .venv/bin/pytest tests/integration/test_replay_recording.py"
        )
    workflow_id = json.loads(WORKFLOW_IDS.read_text())[name]
    return WorkflowHistory.from_json(workflow_id, path.read_text())


def save(histories: dict[str, WorkflowHistory]) -> None:
    """Write the histories; their ids join the others' in ``workflow_ids.json``."""
    HISTORIES.mkdir(exist_ok=True)
    for name, history in histories.items():
        text = json.dumps(json.loads(history.to_json()), indent=1) + "\n"
        (HISTORIES / f"{name}.json").write_text(text)
    ids = json.loads(WORKFLOW_IDS.read_text()) if WORKFLOW_IDS.exists() else {}
    ids.update({name: history.workflow_id for name, history in histories.items()})
    WORKFLOW_IDS.write_text(json.dumps(dict(sorted(ids.items())), indent=2) + "\n")


# --- recording (and replaying what the current code writes) ---------------------------------


async def _iterate(histories: Iterable[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for history in histories:
        yield history


async def _check_and_replay(recorded: dict[str, WorkflowHistory]) -> None:
    """Each recording is the path it claims (in its set: the shipped set's claims have no
    ``core_patch`` marker, which the current code always writes) and replays."""
    for name, history in recorded.items():
        assert name in CLAIMS, f"{name}: no claim for it"
        assert_is_the_claimed_path(name, history)
    results = await replayer().replay_workflows(_iterate(recorded.values()))
    assert results.replay_failures == {}


_NAME = re.compile(
    r"(durable-)?(assessment|invitation|withdraw|remove-account|sweep|commands|watch)-(.+?)(?:-\d+)?"
)


def _group_of(name: str) -> str:
    """The recording group of a saved name: ``invitation-several-2`` -> ``several``."""
    found = _NAME.fullmatch(name)
    assert found, name
    return found.group(3)


def _set_of(name: str) -> str:
    """``durable`` for ``durable-assessment-pass``, ``shipped`` for ``assessment-pass``."""
    found = _NAME.fullmatch(name)
    assert found, name
    return "durable" if found.group(1) else "shipped"


def _type_of(name: str) -> str:
    """``assessment``, ``invitation``, ``withdraw`` or ``remove-account``."""
    found = _NAME.fullmatch(name)
    assert found, name
    return found.group(2)


# --- the saved histories ------------------------------------------------------------------


def test_the_saved_files_are_the_claimed_ones() -> None:
    """No saved file without a claim, no claim without a file, an id for each."""
    files = {p.stem for p in HISTORIES.glob("*.json")} - {WORKFLOW_IDS.stem}
    assert files == set(SAVED)
    ids = json.loads(WORKFLOW_IDS.read_text())
    assert set(ids) == set(SAVED)
    assert all(_group_of(name) in GROUPS_OF[_set_of(name)] for name in SAVED)
    # Both sets hold every path of the shipped one.
    durable = {n for n in SAVED if _set_of(n) == "durable"}
    assert durable >= {DURABLE_SET + n for n in SHIPPED_CLAIMS}


@pytest.mark.parametrize("name", SAVED)
def test_each_set_is_of_its_shape(name: str) -> None:
    """The shipped set has no ``workflow.patched`` marker (replayed, its executions take
    ``workflows.shipped_v1``); the durable set's first command is the DURABLE marker (but
    for ``RemoveAccountWorkflow`` and ``SweepWorkflow``, which have none)."""
    history = load(name)
    patches = [p for e in history.events if (p := patch_id(e)) is not None]
    if _set_of(name) == "shipped" or _type_of(name) in (
        "remove-account",
        "sweep",
        "commands",
        "watch",
    ):
        assert patches == [], name
    else:
        assert patches == [DURABLE], name
        first = next(
            e
            for e in history.events
            if e.HasField("marker_recorded_event_attributes")
            or e.HasField("activity_task_scheduled_event_attributes")
        )
        assert patch_id(first) == DURABLE, name


@pytest.mark.parametrize("name", SAVED)
def test_saved_histories_are_the_lifecycles_they_claim(name: str) -> None:
    """Guards the fixtures themselves: a truncated or wrong recording would prove little."""
    history = load(name)
    assert_is_the_claimed_path(name, history)
    parent = CLAIMS[name].parent
    if parent is not None:  # replaying the parent starts children under these ids
        ids = json.loads(WORKFLOW_IDS.read_text())
        assert history.workflow_id.startswith(ids[parent] + ":"), name
        assert any(
            e.start_child_workflow_execution_initiated_event_attributes.workflow_id
            == history.workflow_id
            for e in load(parent).events
        ), f"{parent} did not start {name}"


def test_operator_cancel_as_recorded() -> None:
    """What the code of the recording does on ``handle.cancel()`` of a running assessment
    whose child waits for the result (the behaviour being fixed):

    - the parent's ``asyncio.gather`` over its children is cancelled, which requests the
      cancellation of the child (``RequestCancelExternalWorkflowExecution``); the parent
      waits for it and ends CANCELED (``WorkflowFailureError`` with ``CancelledError``);
    - the child is *not* left running and is not terminated: the ``CancelledError``
      interrupts its ``wait_condition`` and leaves ``run`` (only ``ActivityError`` is
      caught), so it ends CANCELED at once, with no clean-up: no ``py.cancel`` (the
      invitation stays "invited" at Py) and no Lever write ("Py - Invited" stays on the
      candidate); its last status upsert says "invited".
    """
    parent, child = load("assessment-operator-cancel"), load("invitation-operator-cancel")
    assert milestones(parent)[-3:] == ["cancel-sent", "child-canceled", "canceled"]
    assert milestones(child) == ["cancel-requested", "canceled"]
    assert "py.cancel" not in activity_types(child)
    assert activity_types(child)[-1] == "lever.add_tags"  # Py - Invited, and nothing after


def test_durable_operator_cancel() -> None:
    """The durable shape on the same ``handle.cancel()``: the parent's gather forwards the
    cancel to the child (one request); the child catches it, cancels the invitation at Py
    and clears the in-progress tags (one test: the child does it), then ends CANCELED; so
    does the parent, which writes nothing itself."""
    parent = load(f"{DURABLE_SET}assessment-operator-cancel")
    child = load(f"{DURABLE_SET}invitation-operator-cancel")
    assert milestones(parent)[-4:] == [
        "cancel-requested",
        "cancel-sent",
        "child-canceled",
        "canceled",
    ]
    assert milestones(child)[-2:] == ["cancel-requested", "canceled"]
    cancel_requested = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
    assert _activities_after(child, cancel_requested) == ["py.cancel", "lever.remove_tags"]


def _activities_after(history: WorkflowHistory, event_type: int) -> list[str]:
    first = next(e.event_id for e in history.events if e.event_type == event_type)
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_id > first and e.HasField("activity_task_scheduled_event_attributes")
    ]


def _attempts(history: WorkflowHistory) -> list[tuple[str, int]]:
    """(activity type, attempt) of each started activity, in order."""
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    }
    return [
        (scheduled[a.scheduled_event_id], a.attempt)
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
        for a in (e.activity_task_started_event_attributes,)
    ]


def test_durable_lever_refused_is_one_retried_activity() -> None:
    """Lever refused the key while the result arrived: the first write of the outcome (the
    in-progress tags' removal) is one activity that took several attempts (Temporal records
    only the last start); every other activity took one."""
    child = load(f"{DURABLE_SET}invitation-lever-refused")
    attempts = _attempts(child)
    retried = [(t, n) for t, n in attempts if n > 1]
    assert len(retried) == 1 and retried[0][0] == "lever.remove_tags", attempts
    assert retried[0][1] >= 3, attempts  # refused at least twice
    failed = [e for e in child.events if e.HasField("activity_task_failed_event_attributes")]
    assert failed == []  # retried, never failed for good


def test_durable_adopted_rerun() -> None:
    """The first run's child was terminated with its invitation open at Py; the first run
    ended with a result (``error``); the re-run asked for the earlier invitations and its
    child adopted that invitation (read, not created) under the same child id."""
    ids = json.loads(WORKFLOW_IDS.read_text())
    first, rerun = (load(f"{DURABLE_SET}assessment-adopted-{n}") for n in (1, 2))
    first_child, rerun_child = (load(f"{DURABLE_SET}invitation-adopted-{n}") for n in (1, 2))
    assert first.workflow_id == rerun.workflow_id
    assert first_child.workflow_id == rerun_child.workflow_id
    assert ids[f"{DURABLE_SET}assessment-adopted-1"] == ids[f"{DURABLE_SET}assessment-adopted-2"]
    assert "temporal.previous_invitations" not in activity_types(first)
    assert "temporal.previous_invitations" in activity_types(rerun)
    assert activity_types(first_child)[0] == "py.create_invitation"
    assert activity_types(rerun_child)[0] == "py.get_invitation"
    assert "py.create_invitation" not in activity_types(rerun_child)


def _failed_activities(history: WorkflowHistory) -> list[tuple[str, str]]:
    """(activity type, failure type) of each activity that failed for good (the type stays
    clear text; the message and details are encrypted)."""
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    }
    return [
        (scheduled[a.scheduled_event_id], a.failure.application_failure_info.type)
        for e in history.events
        if e.HasField("activity_task_failed_event_attributes")
        for a in (e.activity_task_failed_event_attributes,)
    ]


async def test_durable_unconfirmed_withdrawal_rereads_and_signals_nothing() -> None:
    """The forged delete: Lever re-read after 10 s, 1 min and 5 min (the timers), each
    read answered (none failed); no signal, no listing, no deletion; the result is 0."""
    withdraw = load(f"{DURABLE_SET}withdraw-unconfirmed")
    timers = [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        for e in withdraw.events
        if e.HasField("timer_started_event_attributes")
    ]
    assert timers == [timedelta(seconds=10), timedelta(minutes=1), timedelta(minutes=5)]
    assert _failed_activities(withdraw) == []
    assert not [m for m in milestones(withdraw) if m.startswith("signal")]
    closing = withdraw.events[-1].workflow_execution_completed_event_attributes
    converter = data_converter(AesGcmCodec([PAYLOAD_KEY]))
    assert await converter.decode(closing.result.payloads, [int]) == [0]


def test_durable_lever_gone_stops_at_the_404() -> None:
    """The Started tag failed for good with Lever's 404 (``NotFoundError``); the only call
    after it is Py's cancel: no tag cleared on a candidate who is gone."""
    child = load(f"{DURABLE_SET}invitation-lever-gone")
    assert _failed_activities(child) == [("lever.add_tags", "NotFoundError")]
    assert activity_types(child)[-1] == "py.cancel"


def test_durable_contract_error_is_the_2_day_check() -> None:
    """The 2-day check's read of Py failed for good with ``PyContractError``; no reminder,
    no verdict: only the in-progress tags' removal after it."""
    child = load(f"{DURABLE_SET}invitation-contract-error")
    assert _failed_activities(child) == [("py.get_invitation", "PyContractError")]
    assert "py.remind" not in activity_types(child)


def test_durable_cancel_holding_a_result_ends_completed() -> None:
    """The operator's cancel met a result Py held: after the cancel request the child
    cancels at Py and writes the verdict; the child and the assessment end completed (no
    CANCELED close), and the assessment writes nothing itself."""
    parent = load(f"{DURABLE_SET}assessment-cancel-holds-result")
    child = load(f"{DURABLE_SET}invitation-cancel-holds-result")
    cancel_requested = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
    assert _activities_after(child, cancel_requested) == [
        "py.cancel", "lever.remove_tags", "lever.add_tags", "lever.add_links",
        "lever.move_to_stage",
    ]  # fmt: skip
    assert _activities_after(parent, cancel_requested) == []
    assert milestones(parent)[-2:] == ["child-completed", "completed"]
    assert milestones(child)[-1] == "completed"


def test_durable_account_removed_writes_nothing_and_uses_the_shared_lever_queue() -> None:
    """The removal's withdrawal: after it, the child's only call is Py's cancel (no Lever
    write); the parent ends without a Lever call of its own. Every Lever activity ran on
    the shared Lever task queue (``<queue>-lever``) with the account as fairness key; Py's
    on the workflow's own queue."""
    parent = load(f"{DURABLE_SET}assessment-account-removed")
    child = load(f"{DURABLE_SET}invitation-account-removed")
    signaled = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    assert _activities_after(child, signaled) == ["py.cancel"]
    assert _activities_after(parent, signaled) == []
    lever_calls = 0
    for history in (parent, child):
        own = history.events[0].workflow_execution_started_event_attributes.task_queue.name
        for e in history.events:
            if not e.HasField("activity_task_scheduled_event_attributes"):
                continue
            scheduled = e.activity_task_scheduled_event_attributes
            if scheduled.activity_type.name.startswith("lever."):
                lever_calls += 1
                assert scheduled.task_queue.name == decisions.lever_task_queue(own)
                assert scheduled.priority.fairness_key == "acme"
            else:
                assert scheduled.task_queue.name == own
    assert lever_calls == 2  # read_candidate; add_tags (Py - Invited)


async def test_durable_account_removal_lists_until_quiet() -> None:
    """The removal's timers: 15 s, 15 s, 30 s, 1 min, 2 min (listings at 0, 15 s, 30 s,
    1 min, 2 min, 4 min); one ``withdraw`` sent; its result counts it."""
    remover = load(f"{DURABLE_SET}remove-account-account-removed")
    timers = [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds()
        for e in remover.events
        if e.HasField("timer_started_event_attributes")
    ]
    assert timers == [15, 15, 30, 60, 120], timers
    assert _failed_activities(remover) == []
    closing = remover.events[-1].workflow_execution_completed_event_attributes
    converter = data_converter(AesGcmCodec([PAYLOAD_KEY]))
    [result] = await converter.decode(closing.result.payloads, [RemoveAccountResult])
    assert result == RemoveAccountResult(found=1, signalled=1)


async def _with_withdrawal_reason(name: str, reason: str) -> WorkflowHistory:
    """A saved history whose ``withdraw`` signals name another reason."""
    history = load(name)
    converter = data_converter(AesGcmCodec([PAYLOAD_KEY]))
    for e in history.events:
        if e.HasField("workflow_execution_signaled_event_attributes"):
            signaled = e.workflow_execution_signaled_event_attributes
            if signaled.signal_name == "withdraw":
                [withdrawal] = await converter.decode(signaled.input.payloads, [Withdrawal])
                assert withdrawal.reason == "deleted", withdrawal
                del signaled.input.payloads[:]
                signaled.input.payloads.extend(await converter.encode([Withdrawal(reason=reason)]))
    return history


@pytest.mark.parametrize("name", ["assessment-deleted", "invitation-deleted"])
async def test_shipped_shape_takes_an_account_removal_as_a_delete(name: str) -> None:
    """``workflows.shipped_v1`` knows ``account_removed``: a pre-durable execution told so
    takes the deleted path, command for command (no Lever write); the same history told
    ``archived`` does not (it clears the in-progress tags: one more command)."""
    await replayer().replay_workflow(await _with_withdrawal_reason(name, "account_removed"))
    if name.startswith("invitation"):
        archived = await _with_withdrawal_reason(name, "archived")
        with pytest.raises(workflow.NondeterminismError):
            await replayer().replay_workflow(archived)


@pytest.mark.parametrize("name", SAVED)
def test_saved_histories_hold_no_clear_text_payloads(name: str) -> None:
    """Every payload but the search attributes (ids, statuses) and the ``core_patch``
    marker of ``workflow.patched`` (the patch id) went through the codec."""
    plain: list[tuple[str, ...]] = []
    markers: list[object] = []
    encrypted = 0

    def walk(node: object, path: tuple[str, ...]) -> None:
        nonlocal encrypted
        if isinstance(node, dict):
            metadata = node.get("metadata")
            if isinstance(metadata, dict) and "encoding" in metadata:
                if base64.b64decode(metadata["encoding"]) == b"binary/encrypted":
                    encrypted += 1
                elif path[-4:] == ("markerRecordedEventAttributes", "details", "patch-data",
                                   "payloads"):  # fmt: skip
                    markers.append(json.loads(base64.b64decode(node.get("data", ""))))
                else:
                    plain.append(path)
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, list):
            for value in node:
                walk(value, path)

    walk(json.loads((HISTORIES / f"{name}.json").read_text()), ())
    assert encrypted > 0
    assert all(p[-2] == "indexedFields" for p in plain), plain
    # The marker holds the patch id and nothing else; so does the search attribute that
    # ``workflow.patched`` upserts with it (TemporalChangeVersion).
    durable = _set_of(name) == "durable" and _type_of(name) not in (
        "remove-account",
        "sweep",
        "commands",
        "watch",
    )
    assert markers == ([{"id": DURABLE, "deprecated": False}] if durable else []), markers
    # The withdraw, remove-account, sweep and watch workflows set no search attribute of
    # their own (gateway.withdraw_candidate, gateway.remove_account, the schedules): no clear
    # text at all but the patch's; the others upsert theirs.
    ours = [p for p in plain if p[-1] != "TemporalChangeVersion"]
    quiet = ("withdraw", "remove-account", "sweep", "watch")
    assert bool(ours) is not (_type_of(name) in quiet), plain
    assert any(p[-1] == "TemporalChangeVersion" for p in plain) is durable, plain


@pytest.mark.parametrize("name", SAVED)
async def test_saved_history_replays(name: str) -> None:
    await replayer().replay_workflow(load(name))


# --- proof that the replay test catches a non-deterministic change ---------------------------
#
# Each variant is registered under the real workflow's name. They subclass the real
# workflows (same signals, queries and helpers); only ``run`` differs. The changed ones
# first ask ``workflow.patched(DURABLE)`` as the real ``run`` does (False when a shipped
# history replays, True for a durable one): else a durable history would fail on its
# unmatched marker alone, not on the reordering each variant stands for.


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
        workflow.patched(DURABLE)
        workflow.upsert_search_attributes(
            [
                sa.LEVER_ACCOUNT.value_set(input.account_id),
                sa.LEVER_OPPORTUNITY_ID.value_set(input.opportunity_id),
                sa.LEVER_STAGE_ID.value_set(input.stage_id),
            ]
        )
        self._set_status(Status.RESOLVING)
        await workflow.execute_activity(
            PyActivity.find_tests.name,
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
        workflow.patched(DURABLE)
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


@workflow.defn(name="WithdrawCandidateWorkflow", sandboxed=False)
class UnchangedWithdraw(WithdrawCandidateWorkflow):
    @workflow.run
    async def run(self, input: WithdrawInput) -> int:
        return await super().run(input)


@workflow.defn(name="WithdrawCandidateWorkflow", sandboxed=False)
class WaitsBeforeSignalling(WithdrawCandidateWorkflow):
    """Waits for the assessments to close before telling them: an activity moves ahead of
    the ``withdraw`` signals."""

    @workflow.run
    async def run(self, input: WithdrawInput) -> int:
        workflow.patched(DURABLE)
        ref = CandidateRef(account_id=input.account_id, opportunity_id=input.opportunity_id)
        running: list[str] = await workflow.execute_activity_method(
            TemporalActivities.running_assessments, ref,
            start_to_close_timeout=timedelta(seconds=30),
        )  # fmt: skip
        await workflow.execute_activity_method(
            TemporalActivities.wait_closed, running, start_to_close_timeout=timedelta(hours=1)
        )
        return len(running)


@workflow.defn(name="RemoveAccountWorkflow", sandboxed=False)
class UnchangedRemoveAccount(RemoveAccountWorkflow):
    @workflow.run
    async def run(self, input: RemoveAccountInput) -> RemoveAccountResult:
        return await super().run(input)


@workflow.defn(name="RemoveAccountWorkflow", sandboxed=False)
class WaitsBeforeListing(RemoveAccountWorkflow):
    """Waits before its first listing: a timer moves ahead of the first activity."""

    @workflow.run
    async def run(self, input: RemoveAccountInput) -> RemoveAccountResult:
        await workflow.sleep(1)
        return await super().run(input)


@workflow.defn(name="SweepWorkflow", sandboxed=False)
class UnchangedSweep(SweepWorkflow):
    @workflow.run
    async def run(self, input: SweepInput) -> SweepResult:
        return await super().run(input)


@workflow.defn(name="SweepWorkflow", sandboxed=False)
class WaitsBeforePlanning(SweepWorkflow):
    """Waits before its plan: a timer moves ahead of the first activity."""

    @workflow.run
    async def run(self, input: SweepInput) -> SweepResult:
        await workflow.sleep(1)
        return await super().run(input)


@workflow.defn(name="CandidateCommandsWorkflow", sandboxed=False)
class UnchangedCandidateCommands(CandidateCommandsWorkflow):
    @workflow.run
    async def run(self, input: CandidateCommandsInput) -> list[CommandOutcome]:
        return await super().run(input)


@workflow.defn(name="CandidateCommandsWorkflow", sandboxed=False)
class RemovesTagsFirst(CandidateCommandsWorkflow):
    """Removes the command tags before reading them: a Lever write moves ahead."""

    @workflow.run
    async def run(self, input: CandidateCommandsInput) -> list[CommandOutcome]:
        lever = _LeverOps(input.account_id, input.opportunity_id)
        await lever.change_tags(decisions.TagChange(remove=("Py - Resend",)))
        return await super().run(input)


@workflow.defn(name="CommandWatchWorkflow", sandboxed=False)
class UnchangedWatch(CommandWatchWorkflow):
    @workflow.run
    async def run(self, input: CommandWatchInput) -> dict[str, int]:
        return await super().run(input)


@workflow.defn(name="CommandWatchWorkflow", sandboxed=False)
class WaitsBeforeLooking(CommandWatchWorkflow):
    """Waits before its first look: a timer moves ahead of the first activity."""

    @workflow.run
    async def run(self, input: CommandWatchInput) -> dict[str, int]:
        await workflow.sleep(1)
        return await super().run(input)


_VARIANT_OF = {
    "commands": RemovesTagsFirst,
    "watch": WaitsBeforeLooking,
    "sweep": WaitsBeforePlanning,
    "assessment": ReorderedAssessment,
    "invitation": TagsBeforeInviting,
    "withdraw": WaitsBeforeSignalling,
    "remove-account": WaitsBeforeListing,
}
_SAFE_VARIANT_OF = {
    "commands": UnchangedCandidateCommands,
    "watch": UnchangedWatch,
    "sweep": UnchangedSweep,
    "assessment": UnchangedAssessment,
    "invitation": PatchedInvitation,
    "withdraw": UnchangedWithdraw,
    "remove-account": UnchangedRemoveAccount,
}


@pytest.mark.parametrize("name", SAVED)
async def test_replay_safe_variants_pass(name: str) -> None:
    """The control: the variants' machinery (subclass, same name) is not what fails below."""
    await replayer(_SAFE_VARIANT_OF[_type_of(name)]).replay_workflow(load(name))


@pytest.mark.parametrize("name", SAVED)
async def test_a_non_deterministic_change_fails_replay(name: str) -> None:
    with pytest.raises(workflow.NondeterminismError) as caught:
        await replayer(_VARIANT_OF[_type_of(name)]).replay_workflow(load(name))
    # Caught for the reordering, not for the variant's handling of the patch marker.
    assert "patch marker" not in str(caught.value), caught.value

"""Every record that crosses a Temporal boundary: workflow inputs and results,
signals, and the activities' arguments and results.

They travel through Temporal with the pydantic data converter, encrypted by the
payload codec. Keep them small: ids, not whole Lever opportunities. A field added
here must have a default (histories recorded before it still decode), and a
field is never renamed or removed while a running execution may carry it.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class Status(StrEnum):
    """``PyStatus`` values (SPEC section 6)."""

    RESOLVING = "resolving"
    INVITED = "invited"
    STARTED = "started"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    NOT_SENT = "not_sent"
    ERROR = "error"


# A closed assessment in one of these states runs again when the candidate re-enters the stage.
# ``cancelled`` (archived or deleted in Lever, or cancelled at Py) is one: a recruiter who
# un-archives a candidate and moves them back expects a new invitation. Py's idempotency key
# counts the entries into the stage (``decisions.idempotency_key``), so only a real re-entry
# gets a new invitation; a re-delivered old webhook gets the cancelled one back.
RERUNNABLE = frozenset({Status.NOT_SENT, Status.ERROR, Status.CANCELLED})


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NEEDS_REVIEW = "needs_review"


class TriggerSettings(_Record):
    """A trigger's effective settings, fixed when the assessment starts."""

    stage: str  # as configured: a stage name or id
    default_test: str | None = None
    pass_threshold: float | None = None
    fail_threshold: float | None = None
    move_on_pass: str | None = None
    move_on_fail: str | None = None
    reminders_seconds: tuple[int, ...] = ()
    expire_after_seconds: int


class ChosenTest(_Record):
    id: str
    name: str


class AssessmentInput(_Record):
    account_id: str
    opportunity_id: str
    stage_id: str
    settings: TriggerSettings
    # A later run of the same (account, opportunity, stage) after one that ended without a
    # result: its invitations still open at Py are adopted, not sent again.
    rerun: bool = False
    # A recruiter's ``Py - Retake`` (workflows/commands.py): the n-th retake of this
    # assessment sends a new invitation for these tests (no test choice, nothing adopted).
    retake: int = 0
    retake_tests: tuple[ChosenTest, ...] = ()
    retake_id: str = ""  # the command's own id: part of Py's idempotency key (a new one each)


class Candidate(_Record):
    """What the workflow needs from a Lever opportunity (name and email are encrypted in history)."""

    opportunity_id: str
    name: str = ""
    email: str | None = None
    tags: tuple[str, ...] = ()
    entered_stage: bool
    archived: bool
    stage_entries: int = 1  # how many times it entered the stage (Lever's stageChanges)


class InvitationInput(_Record):
    account_id: str
    opportunity_id: str
    stage_id: str
    settings: TriggerSettings
    test: ChosenTest
    candidate_name: str
    candidate_email: str
    stage_entry: int = 1  # which entry into the stage this is: part of Py's idempotency key
    tests_in_assessment: int = 1  # >1: the parent clears in-progress tags and moves the candidate
    # The invitation an earlier run of this workflow id sent: adopted if still open at Py
    # (its clock kept: reminders and expiry count from Py's created_at), applied if completed.
    adopt_invitation_id: str | None = None
    retake: int = 0  # >0: a recruiter's retake: a new idempotency key; the verdict replaces
    retake_id: str = ""  # which retake (``AssessmentInput.retake_id``)


class InvitationRecord(_Record):
    """The part of a Py invitation the workflow keeps."""

    id: str
    status: Literal["invited", "started", "completed", "expired", "cancelled"]
    score: float | None = None
    report_url: str | None = None
    completed_at: datetime | None = None
    created_at: datetime | None = None  # when Py created it: reminders and expiry count from here


MAX_REPORT_URL = 2048
# An https URL: a host name, IPv4 or [IPv6] host, an optional port, then only characters
# RFC 3986 allows (no spaces, controls, quotes, angle brackets or backslashes).
_REPORT_URL = re.compile(
    r"(?i:https)://(?P<authority>[^/?#]*)(?:[/?#][A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*)?"
)
_HOST_PORT = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
)


def report_url_problem(url: str) -> str | None:
    """What is wrong with a Py ``report_url`` (it ends up as a link in Lever), or None.

    It must be https, at most 2,048 characters, and carry no user info (``user:pass@``).
    """
    if len(url) > MAX_REPORT_URL:
        return f"is longer than {MAX_REPORT_URL} characters"
    match = _REPORT_URL.fullmatch(url)  # fullmatch: "$" would also accept a trailing newline
    if match is None:
        return "is not an https URL"
    authority = match["authority"]
    if "@" in authority:
        return "carries user info"
    host_port = _HOST_PORT.fullmatch(authority)
    if host_port is None or int(host_port["port"] or 0) > 65535:
        return "is not an https URL"
    return None


class PyEvent(_Record):
    """A validated Py callback, as the API signals it to the invitation workflow."""

    event: Literal["invitation.started", "invitation.completed", "invitation.expired"]
    invitation: InvitationRecord


class Withdrawal(_Record):
    """The candidate left the process in Lever (archived, deleted), or the customer left
    py-lever (``account_removed``: its account was removed from the configuration)."""

    reason: Literal["archived", "deleted", "account_removed", "recruiter_cancelled"]


class InvitationResult(_Record):
    test: ChosenTest
    status: Status
    invitation_id: str | None = None
    verdict: Verdict | None = None
    score: float | None = None
    report_url: str | None = None
    error: str | None = None


class AssessmentResult(_Record):
    status: Status
    reason: str | None = None
    invitations: tuple[InvitationResult, ...] = Field(default_factory=tuple)


class WithdrawInput(_Record):
    account_id: str
    opportunity_id: str
    reason: Literal["archived", "deleted"]
    # The account's trigger stage ids: the candidate's assessments are reached by their
    # deterministic ids (decisions.assessment_workflow_id), not through visibility.
    stage_ids: tuple[str, ...] = ()


# --- Lever activities (activities/lever.py) ------------------------------------


class OpportunityRef(BaseModel):
    model_config = ConfigDict(frozen=True)
    account_id: str
    opportunity_id: str


class ReadCandidate(OpportunityRef):
    stage_id: str


class TagWrite(OpportunityRef):
    tags: tuple[str, ...]


class LinkWrite(OpportunityRef):
    links: tuple[str, ...]


class StageMove(OpportunityRef):
    stage: str  # a stage name or id, as configured


# --- Py activities (activities/py.py) ------------------------------------------


class FindTests(BaseModel):
    model_config = ConfigDict(frozen=True)
    names: tuple[str, ...]


class CreateInvitation(BaseModel):
    model_config = ConfigDict(frozen=True)
    reference: str  # the invitation workflow's id; also the idempotency key
    test_id: str
    candidate_name: str
    candidate_email: str
    idempotency_key: str | None = None  # default: the reference (decisions.idempotency_key)


# --- Temporal activities (activities/temporal_ops.py) --------------------------


class CandidateRef(BaseModel):
    model_config = ConfigDict(frozen=True)
    account_id: str
    opportunity_id: str
    already_deleted: tuple[str, ...] = ()  # workflow_id/run_id deleted by id: not counted again


class AccountPage(BaseModel):
    """A page of an account's running assessments: ``page_token`` None for the first."""

    model_config = ConfigDict(frozen=True)
    account_id: str
    page_token: str | None = None  # base64 of Temporal's next_page_token
    page_size: int = 100


class AssessmentPage(BaseModel):
    model_config = ConfigDict(frozen=True)
    workflow_ids: tuple[str, ...] = ()
    next_page_token: str | None = None  # None: that was the last page


# --- account removal (workflows/remove_account.py) -----------------------------


SETTLE_SECONDS = 15  # between the first listing and the second
QUIET_SECONDS = 120  # the longest interval; nothing new for this long ends the listings
HORIZON_SECONDS = 15 * 60  # no listing later than this after the first
SIGNALS_PER_RUN = 500  # then continue-as-new
PAGE_SIZE = 100


class RemoveAccountInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    account_id: str
    settle_seconds: int = SETTLE_SECONDS  # 0: list once
    quiet_seconds: int = QUIET_SECONDS
    horizon_seconds: int = HORIZON_SECONDS
    page_size: int = PAGE_SIZE
    signals_per_run: int = SIGNALS_PER_RUN
    # Carried by continue-as-new (a first run has none of these).
    found: int = 0
    signalled: int = 0
    seen: tuple[str, ...] = ()
    first_listing_at: datetime | None = None
    quiet_since: datetime | None = None  # the first listing of a run of empty ones
    page_token: str | None = None  # the listing in progress


class RemoveAccountResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    found: int = 0  # running assessments listed (each counted once)
    signalled: int = 0  # of those, told to withdraw (the others had finished meanwhile)

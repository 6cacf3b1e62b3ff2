"""Time and lifecycle (SPEC sections 2, 4, 6) with the real default durations.

Reminders at 2 d and 5 d, expiry at 7 d (the stack's config has no ``[defaults]``,
so the built-in ones apply), lost callbacks recovered at a reminder, expiry
versus a racing result, ``invitation.started`` / ``invitation.expired``
callbacks, archive and delete in Lever, re-entry after an archive, the sweep
(issue 14) and the recruiters' command tags (issue 15: extend, resend, cancel, retake).

The whole stack (tests/support/integration_stack.py) runs on a dev server with
per-workflow time skipping (``sandbox.devserver.start_time_skipping``).
How time is driven here:

- The API gets a client that does **not** stamp a time-skipping config
  (``unstamped_client``): workflows it starts run on the wall clock, like in
  production, and nothing skips by itself. With the environment's own client
  every assessment (and its child, which inherits the config) would skip on its
  own straight to the 7-day expiry before a test could act at day 3.
- Each test drives the clock of the ``InvitationWorkflow`` child, which owns the
  timers: ``env.fast_forward(child, timedelta(days=3))`` fires what falls due
  before +3 d and stops there (a timer due exactly at the target may stay
  unfired, so the targets sit a day past the checkpoints);
  ``env.fast_forward(child, None)`` skips until the child closes. The parent has
  no timer of its own (fast-forwarding it would never return).
- While an activity is in flight the clock stands still, so the Py sandbox can
  be paused inside a request (``RequestSpy`` hooks) to land a result exactly
  while a reminder or the expiry talks to Py.
- Virtual times are read from the child's history (event times are virtual)
  and its memo (``sent_at``, ``next_check_at`` come from ``workflow.now()``).
- The worker keeps the environment's client. The server starts children, which
  inherit the parent's config (none), but a workflow the worker's activities start
  with that client (a sweep's assessment, a recruiter's retake via
  ``Gateway.start_retake``) is stamped and skips on its own. The command tests run
  their look (``command``) inside ``env.with_time_skipping_disabled()``, which turns
  the stamping off for the worker too (the same client object), so a retake's new
  week is driven by the test like the first one.
- Deleting closed executions is slow on a default dev server (~34 s): the server
  here gets ``FAST_DELETE_ARGS`` (~4 s), see there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from pylever.contracts import search_attributes as sa
from pylever.contracts.commands import COMMAND_TAGS, CommandOutcome, CommandWatchInput
from pylever.contracts.records import AssessmentResult, Status
from sandbox.devserver import (
    FAST_DELETE_ARGS,
    free_port,
    start_time_skipping,
    wait_for_visibility,
)
from sandbox.lever import PY_ASSESSMENT_STAGE_ID
from tests.support.integration_stack import ADMIN_TOKEN, Stack, running_stack
from tests.support.pipeline_support import (
    PY_TESTS,
    assessment_id,
    candidate_status,
    lever_control_url,
)
from workflows.commands import CommandWatchWorkflow, candidate_commands_workflow_id
from workflows.decisions import (
    TAG_EXPIRED,
    TAG_FAIL,
    TAG_INVITED,
    TAG_NEEDS_REVIEW,
    TAG_PASS,
    TAG_STARTED,
    idempotency_key,
    invitation_workflow_id,
)

DAY = 86_400.0
# A skipped-to timer fires ~20 ms (virtual) after its deadline, and activities add
# real seconds; 60 s is a wide margin that still tells 2 d from 5 d.
TOLERANCE = 60.0
PY_TAGS = {TAG_INVITED, TAG_STARTED, TAG_PASS, TAG_FAIL, TAG_NEEDS_REVIEW, TAG_EXPIRED}


# --------------------------------------------------------------------------- stack


def unstamped_client(env: WorkflowEnvironment) -> Client:
    """The environment's client without its time-skipping interceptor (see the module doc)."""
    config = env.client.config()
    config["interceptors"] = [
        i for i in config["interceptors"] if "timeskipping" not in type(i).__module__
    ]
    return Client(**config)


class RequestSpy:
    """Wraps a sandbox's ``/v1`` request handling: logs each request, runs hooks around some.

    ``hook(method, path, nth, before=..., after=...)``: on the ``nth`` request to
    exactly ``method path``, await ``before()`` before the sandbox handles it, and
    ``after()`` once its answer is built (the answer already holds the state of that
    moment). The Temporal activity making the request is in flight all along, so the
    workflow's clock stands still.
    """

    @dataclass
    class Hook:
        method: str
        path: str
        nth: int
        before: Callable[[], Awaitable[Any]] | None
        after: Callable[[], Awaitable[Any]] | None
        seen: int = 0
        fired: asyncio.Event = field(default_factory=asyncio.Event)

    def __init__(self, sandbox: Any) -> None:
        self.log: list[tuple[float, str, str, int]] = []  # (monotonic, method, path, status)
        self._hooks: list[RequestSpy.Hook] = []
        inner = sandbox._api_response

        async def spied(request: Any, handler: Any) -> Any:
            method, path = request.method, request.url.path
            due = []
            for hook in self._hooks:
                if (hook.method, hook.path) == (method, path):
                    hook.seen += 1
                    if hook.seen == hook.nth:
                        due.append(hook)
            for hook in due:
                if hook.before:
                    await hook.before()
            response = await inner(request, handler)
            for hook in due:
                if hook.after:
                    await hook.after()
                hook.fired.set()
            self.log.append((time.monotonic(), method, path, response.status_code))
            return response

        sandbox._api_response = spied  # the sandbox's routes look it up on each request

    @contextlib.contextmanager
    def hook(
        self,
        method: str,
        path: str,
        nth: int = 1,
        *,
        before: Callable[[], Awaitable[Any]] | None = None,
        after: Callable[[], Awaitable[Any]] | None = None,
    ) -> Iterator[RequestSpy.Hook]:
        hook = RequestSpy.Hook(method, path, nth, before, after)
        self._hooks.append(hook)
        try:
            yield hook
        finally:
            self._hooks.remove(hook)

    def requests(
        self, method: str | None = None, containing: str = "", since: float = 0.0
    ) -> list[tuple[str, str, int]]:
        return [
            (m, p, status)
            for at, m, p, status in self.log
            if at >= since and containing in p and (method is None or m == method)
        ]


@dataclass
class Lifecycle:
    stack: Stack
    py_spy: RequestSpy
    lever_spy: RequestSpy

    @property
    def env(self) -> WorkflowEnvironment:
        return self.stack.env


async def start_lifecycle_env(**kwargs: Any) -> WorkflowEnvironment:
    return await start_time_skipping(extra_args=FAST_DELETE_ARGS, **kwargs)


@pytest.fixture(scope="module")
async def lc() -> AsyncIterator[Lifecycle]:
    async with running_stack(
        "py-lever-lifecycle", start_env=start_lifecycle_env, api_client=unstamped_client
    ) as stack:
        yield Lifecycle(stack, RequestSpy(stack.py), RequestSpy(stack.lever))


# ------------------------------------------------------------------------- helpers


@dataclass
class Case:
    opp: str
    parent_id: str
    child: WorkflowHandle[Any, Any]
    invitation_id: str
    sent_at: datetime

    @property
    def inv_path(self) -> str:
        return f"/v1/invitations/{self.invitation_id}"


async def details(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    """The invitation workflow's memo (``workflow.now()``-derived times, virtual)."""
    memo = await (await handle.describe()).memo()
    return dict(memo.get("assessment") or {})


async def wait_status(lc: Lifecycle, case: Case, status: str) -> None:
    async def reached() -> bool:
        return (await details(case.child)).get("status") == status

    await lc.stack.eventually(reached)


async def invited(
    lc: Lifecycle,
    name: str,
    stage: str = "Py Assessment",
    tags: tuple[str, ...] = (),
    test: str = "Python Basics",
) -> Case:
    """A candidate whose invitation was sent and whose child now waits for the first check."""
    s = lc.stack
    slug = name.lower().replace(" ", ".")
    opp = s.candidate(name, f"{slug}@example.com", tags=tags)
    attempt = await s.move(opp, stage)
    assert attempt.status == 202 and attempt.body["status"] == "started", attempt.body
    parent_id = attempt.body["workflow_id"]
    child = s.client.get_workflow_handle(invitation_workflow_id(parent_id, PY_TESTS[test]))
    invitation = await s.invitation(opp)
    await s.wait_tag(opp, TAG_INVITED)

    async def waiting() -> dict[str, Any] | None:
        memo = await details(child)
        return memo if memo.get("next_check_at") else None

    memo = await s.eventually(waiting)
    return Case(opp, parent_id, child, invitation["id"], datetime.fromisoformat(memo["sent_at"]))


async def fast_forward(lc: Lifecycle, case: Case, days: float | None) -> bool:
    """Advance the child's clock by ``days`` (``None``: until it closes). True: target reached."""
    duration = None if days is None else timedelta(days=days)
    return await asyncio.wait_for(lc.env.fast_forward(case.child, duration), 60)


async def activity_marks(case: Case) -> list[tuple[str, float]]:
    """(activity type, virtual seconds after the invitation was sent) of each scheduled activity."""
    marks = []
    async for event in case.child.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            at = event.event_time.ToDatetime().replace(tzinfo=case.sent_at.tzinfo)
            marks.append((name, (at - case.sent_at).total_seconds()))
    return marks


def at(marks: list[tuple[str, float]], activity: str) -> list[float]:
    return [offset for name, offset in marks if name == activity]


def assert_about(actual: list[float], expected_days: list[float], what: str) -> None:
    assert len(actual) == len(expected_days), f"{what}: {[a / DAY for a in actual]} days"
    for value, days in zip(actual, expected_days, strict=True):
        assert days * DAY <= value <= days * DAY + TOLERANCE, (
            f"{what}: {value / DAY:.5f} d is not {days} d"
        )


def py_tags(lc: Lifecycle, opp: str) -> set[str]:
    return PY_TAGS & set(lc.stack.tags(opp))


def reminders(lc: Lifecycle, case: Case) -> int:
    return lc.stack.py.invitations[case.invitation_id].reminders


def py_status(lc: Lifecycle, case: Case) -> str:
    return lc.stack.py.invitation(case.invitation_id)["status"]


async def result(lc: Lifecycle, case: Case) -> AssessmentResult:
    return await lc.stack.result(case.parent_id)


async def describe_or_none(client: Client, workflow_id: str) -> Any:
    try:
        return await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def assert_applied_once(lc: Lifecycle, case: Case, tag: str) -> None:
    """The result is in, once: one verdict tag write, one report link, no expiry, Py completed."""
    res = await result(lc, case)
    assert res.status == Status.COMPLETED, res
    [inv] = res.invitations
    assert inv.status == Status.COMPLETED and inv.invitation_id == case.invitation_id
    lever = lc.stack.lever
    assert py_tags(lc, case.opp) == {tag}
    assert lever.count_api_writes(case.opp, "addTags", tag) == 1
    assert lever.count_api_writes(case.opp, "addLinks") == 1
    assert lever.count_api_writes(case.opp, "addTags", TAG_EXPIRED) == 0
    assert py_status(lc, case) == "completed"


# ------------------------------------------------------------ reminders and expiry


async def test_reminders_at_2_and_5_days_and_none_after_the_result(lc: Lifecycle) -> None:
    case = await invited(lc, "Rhoda Reminder")
    memo = await details(case.child)
    next_check = datetime.fromisoformat(memo["next_check_at"])
    assert next_check - case.sent_at == timedelta(days=2)  # default reminders ["2d", "5d"]
    assert reminders(lc, case) == 0

    assert await fast_forward(lc, case, 3) is True
    assert reminders(lc, case) == 1
    memo = await details(case.child)
    assert memo["status"] == "invited"
    assert datetime.fromisoformat(memo["next_check_at"]) - case.sent_at == timedelta(days=5)

    assert await fast_forward(lc, case, 3) is True  # day 6
    assert reminders(lc, case) == 2
    memo = await details(case.child)
    assert datetime.fromisoformat(memo["next_check_at"]) - case.sent_at == timedelta(days=7)

    # The status endpoint shows the same times (from visibility: poll, it may lag).
    async def status_row() -> dict[str, Any] | None:
        rows = await lc.stack.http.get(
            f"{lc.stack.api_url}/accounts/acme/candidates/{case.opp}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        found = [r for r in rows.json()["assessments"] if r["workflow_id"] == case.child.id]
        return found[0] if found and found[0]["next_check_at"] == memo["next_check_at"] else None

    row = await lc.stack.eventually(status_row)
    assert row["sent_at"] == case.sent_at.isoformat()

    _, callback = await lc.stack.py.complete(case.invitation_id, 92)
    assert callback is not None and callback.status == 202
    await assert_applied_once(lc, case, TAG_PASS)
    assert reminders(lc, case) == 2  # none after the result

    marks = await activity_marks(case)
    # Each reminder time: ask Py first, then remind.
    assert_about(at(marks, "py.get_invitation"), [2, 5], "status checks")
    assert_about(at(marks, "py.remind"), [2, 5], "reminders")
    names = [name for name, _ in marks if name.startswith("py.")]
    assert names == ["py.create_invitation", "py.get_invitation", "py.remind",
                     "py.get_invitation", "py.remind"]  # fmt: skip


@pytest.mark.parametrize("lost_on_day", [1, 3])
async def test_lost_callback_is_recovered_at_the_next_reminder(
    lc: Lifecycle, lost_on_day: int
) -> None:
    """Completed at Py, callback never sent: the next reminder time takes the result, sends no reminder."""
    case = await invited(lc, f"Lost Callback Day{lost_on_day}")
    if lost_on_day > 2:
        assert await fast_forward(lc, case, lost_on_day) is True
    assert reminders(lc, case) == (1 if lost_on_day > 2 else 0)
    _, callback = await lc.stack.py.complete(case.invitation_id, 30, callback=False)
    assert callback is None
    assert (await details(case.child))["status"] == "invited"  # nothing told it

    assert await fast_forward(lc, case, 7) is False  # closed before the target
    await assert_applied_once(lc, case, TAG_FAIL)
    recovered_at = 5 if lost_on_day > 2 else 2
    marks = await activity_marks(case)
    assert_about(at(marks, "py.get_invitation")[-1:], [recovered_at], "recovering check")
    assert reminders(lc, case) == (1 if lost_on_day > 2 else 0)  # no reminder at recovery
    assert len(at(marks, "py.remind")) == reminders(lc, case)
    assert at(marks, "py.cancel") == []


async def test_expiry_cancels_at_py_and_tags_expired(lc: Lifecycle) -> None:
    case = await invited(lc, "Ezra Expiry")
    assert await fast_forward(lc, case, None) is False
    res = await result(lc, case)
    assert res.status == Status.EXPIRED
    assert py_tags(lc, case.opp) == {TAG_EXPIRED}
    assert lc.stack.lever.count_api_writes(case.opp, "addTags", TAG_EXPIRED) == 1
    assert lc.stack.lever.count_api_writes(case.opp, "removeTags", TAG_INVITED) == 1
    assert py_status(lc, case) == "cancelled"
    assert reminders(lc, case) == 2
    marks = await activity_marks(case)
    assert_about(at(marks, "py.get_invitation"), [2, 5, 7], "status checks")
    assert_about(at(marks, "py.cancel"), [7], "cancel")
    desc = await case.child.describe()
    assert desc.typed_search_attributes.get(sa.PY_STATUS) == "expired"


async def test_started_callback_tags_started_and_the_expiry_removes_it(lc: Lifecycle) -> None:
    case = await invited(lc, "Stella Started")
    _, callback = await lc.stack.py.start(case.invitation_id)
    assert callback is not None and callback.status == 202
    await lc.stack.wait_tag(case.opp, TAG_STARTED)
    await wait_status(lc, case, "started")

    assert await fast_forward(lc, case, None) is False
    assert (await result(lc, case)).status == Status.EXPIRED
    assert py_tags(lc, case.opp) == {TAG_EXPIRED}
    assert lc.stack.lever.count_api_writes(case.opp, "removeTags", TAG_STARTED) == 1
    assert py_status(lc, case) == "cancelled"
    # A started candidate is not reminded; Py is still asked at each reminder time.
    assert reminders(lc, case) == 0
    marks = await activity_marks(case)
    assert_about(at(marks, "py.get_invitation"), [2, 5, 7], "status checks")
    assert at(marks, "py.remind") == []


async def test_started_without_callback_is_tagged_at_the_reminder(lc: Lifecycle) -> None:
    case = await invited(lc, "Sam Silentstart")
    record = lc.stack.py.invitations[case.invitation_id]
    url, record.callback_url = record.callback_url, f"http://127.0.0.1:{free_port()}/callbacks/py"
    try:
        _, callback = await lc.stack.py.start(case.invitation_id)
    finally:
        record.callback_url = url
    assert callback is not None and callback.status is None  # never arrived
    assert TAG_STARTED not in lc.stack.tags(case.opp)

    assert await fast_forward(lc, case, 3) is True
    assert py_tags(lc, case.opp) == {TAG_INVITED, TAG_STARTED}
    assert reminders(lc, case) == 0
    await wait_status(lc, case, "started")

    await lc.stack.py.complete(case.invitation_id, 60)
    await assert_applied_once(lc, case, TAG_NEEDS_REVIEW)


async def test_expired_callback_tags_expired_without_a_cancel(lc: Lifecycle) -> None:
    case = await invited(lc, "Xavier Pyexpired")
    _, callback = await lc.stack.py.expire(case.invitation_id)
    assert callback is not None and callback.status == 202
    assert (await result(lc, case)).status == Status.EXPIRED
    assert py_tags(lc, case.opp) == {TAG_EXPIRED}
    assert py_status(lc, case) == "expired"
    assert lc.py_spy.requests("POST", f"{case.inv_path}/cancel") == []
    assert at(await activity_marks(case), "py.cancel") == []


# ------------------------------------------------------------- results racing a step


async def _complete(lc: Lifecycle, case: Case, score: float, callback: bool) -> None:
    _, attempt = await lc.stack.py.complete(case.invitation_id, score, callback=callback)
    if callback:
        assert attempt is not None and attempt.status == 202, attempt


RACES = {
    # name: (method, path suffix, nth request, hook "before"/"after", callback, days to skip)
    "lost callback just before the expiry": (None, None, 0, None, False, 6),
    "lost callback between the expiry's check and cancel (409)": (
        "GET", "", 3, "after", False, None),
    "callback while the expiry's check is in flight": ("GET", "", 3, "before", True, None),
    "callback while the expiry's cancel is in flight (409)": (
        "POST", "/cancel", 1, "before", True, None),
    "callback while a reminder is in flight (409)": ("POST", "/reminders", 1, "before", True, None),
    "lost callback between a reminder's check and the reminder (409)": (
        "GET", "", 1, "after", False, None),
}  # fmt: skip


@pytest.mark.parametrize("race", list(RACES))
async def test_a_result_racing_a_reminder_or_the_expiry_is_applied_once(
    lc: Lifecycle, race: str
) -> None:
    method, suffix, nth, when, callback, skip_days = RACES[race]
    case = await invited(lc, f"Racer {list(RACES).index(race)}")
    score = 55

    async def complete() -> None:
        await _complete(lc, case, score, callback)

    if method is None:  # no hook: complete (callback lost) a day before the expiry
        assert await fast_forward(lc, case, skip_days) is True
        await complete()
        assert await fast_forward(lc, case, None) is False
        await assert_applied_once(lc, case, TAG_NEEDS_REVIEW)
        assert at(await activity_marks(case), "py.cancel") == []
        return

    hook_args = {when: complete}
    with lc.py_spy.hook(method, case.inv_path + suffix, nth, **hook_args) as hook:
        assert await fast_forward(lc, case, None) is False
        assert hook.fired.is_set()
    await assert_applied_once(lc, case, TAG_NEEDS_REVIEW)
    marks = await activity_marks(case)
    if "reminder" in race:
        # Resolved at the first reminder time (2 d), not days later; nothing reminded.
        assert reminders(lc, case) == 0
        assert_about(at(marks, "py.get_invitation")[-1:], [2], "resolving check")
    else:
        assert reminders(lc, case) == 2
        assert_about(at(marks, "py.get_invitation")[2:3], [7], "expiry check")
    cancels = lc.py_spy.requests("POST", f"{case.inv_path}/cancel")
    assert all(status == 409 for _, _, status in cancels), cancels


# ------------------------------------------------------------- archive and delete


async def archive(lc: Lifecycle, opp: str, archived: bool = True) -> Any:
    _, attempt = await lc.stack.lever.archive_candidate(opp, archived)
    assert attempt is not None
    return attempt


async def test_archive_cancels_the_invitation_and_clears_in_progress_tags(lc: Lifecycle) -> None:
    case = await invited(lc, "Archie Archived")
    await lc.stack.py.start(case.invitation_id)
    await lc.stack.wait_tag(case.opp, TAG_STARTED)
    before = time.monotonic()

    attempt = await archive(lc, case.opp)
    assert attempt.status == 202 and attempt.body["status"] == "withdrawing", attempt.body
    withdrawn = await lc.stack.client.get_workflow_handle(attempt.body["workflow_id"]).result()
    assert withdrawn == 1

    res = await result(lc, case)
    assert res.status == Status.CANCELLED
    assert [i.status for i in res.invitations] == [Status.CANCELLED]
    assert py_status(lc, case) == "cancelled"
    assert py_tags(lc, case.opp) == set()
    assert lc.stack.lever.count_api_writes(case.opp, "addTags") == 2  # Invited, Started only
    assert lc.py_spy.requests("POST", f"{case.inv_path}/cancel", since=before) == [
        ("POST", f"{case.inv_path}/cancel", 200)
    ]
    assert reminders(lc, case) == 0


async def test_a_result_racing_the_archive_is_kept(lc: Lifecycle) -> None:
    """Completed (callback not yet in) just before the archive: the cancel answers 409 and the
    result is applied (verdict and report; an archived candidate is not moved)."""
    case = await invited(lc, "Rosa Racearchive")

    async def complete() -> None:
        await _complete(lc, case, 95, callback=False)

    with lc.py_spy.hook("POST", f"{case.inv_path}/cancel", before=complete) as hook:
        attempt = await archive(lc, case.opp)
        assert attempt.status == 202
        await lc.stack.client.get_workflow_handle(attempt.body["workflow_id"]).result()
        res = await result(lc, case)
        assert hook.fired.is_set()
    assert res.invitations[0].status == Status.COMPLETED
    assert res.invitations[0].verdict == "pass"
    assert py_tags(lc, case.opp) == {TAG_PASS}
    assert lc.stack.lever.count_api_writes(case.opp, "addLinks") == 1
    assert lc.stack.lever.opportunity(case.opp)["stage"] == PY_ASSESSMENT_STAGE_ID  # not moved


async def test_unarchived_and_moved_back_gets_a_new_invitation(lc: Lifecycle) -> None:
    """Decision (pylever/temporal/gateway.py ``start_assessment``, ``models.RERUNNABLE``): a cancelled
    assessment runs again on a real re-entry into the stage; a re-delivered old webhook
    does not send a second invitation."""
    s = lc.stack
    case = await invited(lc, "Una Unarchived")
    first_delivery = next(
        d["id"] for d in reversed(s.lever.deliveries)
        if d["event"] == "candidateStageChange" and d["body"]["data"]["opportunityId"] == case.opp
    )  # fmt: skip
    attempt = await archive(lc, case.opp)
    await s.client.get_workflow_handle(attempt.body["workflow_id"]).result()
    assert (await result(lc, case)).status == Status.CANCELLED
    unarchived = await archive(lc, case.opp, archived=False)
    assert unarchived.status == 200 and unarchived.body["status"] == "ignored"

    # Lever's "re-send" of the old delivery: same entry into the stage, no new invitation.
    rerun = await s.http.post(
        f"{lever_control_url(s)}/_sandbox/webhooks/deliveries/{first_delivery}/rerun"
    )
    webhook = rerun.json()["webhook"]
    assert webhook["status"] == 202 and webhook["body"]["status"] == "started", webhook
    again = await result(lc, case)
    assert again.status == Status.CANCELLED
    assert [i["id"] for i in s.invitations(case.opp)] == [case.invitation_id]
    assert py_tags(lc, case.opp) == set()

    # A real re-entry: out of the stage and back in.
    await s.move(case.opp, "Phone screen")
    back = await s.move(case.opp, "Py Assessment")
    assert back.status == 202 and back.body["status"] == "started", back.body

    def second() -> dict[str, Any] | None:
        found = [i for i in s.invitations(case.opp) if i["id"] != case.invitation_id]
        return found[0] if found else None

    new = await s.eventually(second)
    assert new["status"] == "invited"
    assert new["idempotency_key"] == f"{case.child.id}#2"
    await s.wait_tag(case.opp, TAG_INVITED)
    # A late callback about the old invitation reaches the new run (same reference): ignored.
    _, late = await s.py.resend(case.invitation_id, "invitation.expired")
    assert late is not None and late.status == 202
    new_case = Case(case.opp, case.parent_id, case.child, new["id"], case.sent_at)

    async def waiting_on_the_new_one() -> bool:
        memo = await details(case.child)
        return memo.get("invitation_id") == new["id"] and memo.get("status") == "invited"

    await s.eventually(waiting_on_the_new_one)
    assert TAG_EXPIRED not in s.tags(case.opp)

    await s.py.complete(new["id"], 85)
    res = await result(lc, new_case)
    # Had the late "expired" (signalled first) been taken, this would have ended expired.
    assert res.status == Status.COMPLETED and res.invitations[0].invitation_id == new["id"]
    assert py_tags(lc, case.opp) == {TAG_PASS}
    assert s.lever.count_api_writes(case.opp, "addTags", TAG_EXPIRED) == 0
    assert s.py.invitation(case.invitation_id)["status"] == "cancelled"


def _payloads(message: Message) -> Iterator[Payload]:
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if isinstance(value, Message):
            items: Any = [value]
        elif hasattr(value, "items"):  # a map field (e.g. memo, header fields)
            items = value.values()
        else:  # a repeated field
            items = value
        for item in items:
            if isinstance(item, Payload):
                yield item
            elif isinstance(item, Message):
                yield from _payloads(item)


async def decoded_history(client: Client, workflow_id: str) -> bytes:
    """Every payload of the execution's history, decrypted, concatenated."""
    codec = client.data_converter.payload_codec
    assert codec is not None
    out = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        for payload in _payloads(event):
            [plain] = await codec.decode([payload])
            out.append(plain.data)
    return b"\n".join(out)


async def test_delete_cancels_writes_nothing_and_leaves_no_execution(lc: Lifecycle) -> None:
    s = lc.stack
    name, email = "Dora Deleted", "dora.deleted@example.com"
    opp = s.candidate(name, email, tags=("SQL Fundamentals",))
    # A finished assessment in one stage ...
    screen = await s.move(opp, "Technical Screen")
    assert screen.status == 202
    done = await s.invitation(opp)
    await s.py.complete(done["id"], 90)
    assert (await s.result(screen.body["workflow_id"])).status == Status.COMPLETED
    # ... and a running one in another.
    attempt = await s.move(opp, "Py Assessment")
    parent_id = attempt.body["workflow_id"]
    assert parent_id == assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID)

    def open_invitation() -> dict[str, Any] | None:
        found = [i for i in s.invitations(opp) if i["status"] == "invited"]
        return found[0] if found else None

    open_inv = await s.eventually(open_invitation)
    await s.eventually(lambda: s.lever.count_api_writes(opp, "addTags", TAG_INVITED) == 2)
    ids = {
        screen.body["workflow_id"],
        invitation_workflow_id(screen.body["workflow_id"], PY_TESTS["SQL Fundamentals"]),
        parent_id,
        invitation_workflow_id(parent_id, PY_TESTS["SQL Fundamentals"]),
    }
    query = f'{sa.LEVER_OPPORTUNITY_ID.name} = "{opp}"'
    await wait_for_visibility(s.client, query, expected_ids=ids)

    before = time.monotonic()
    _, deleted = await s.lever.delete_candidate(opp)
    assert deleted is not None and deleted.status == 202, deleted
    withdraw_id = deleted.body["workflow_id"]
    count = await asyncio.wait_for(s.client.get_workflow_handle(withdraw_id).result(), 60)
    assert count == 4

    # Py: the open invitation is cancelled; the finished one is left alone.
    assert s.py.invitation(open_inv["id"])["status"] == "cancelled"
    assert s.py.invitation(done["id"])["status"] == "completed"
    # Lever: after the delete, one read that confirms it (404), and no write at all.
    assert lc.lever_spy.requests(containing=opp, since=before) == [
        ("GET", f"/v1/opportunities/{opp}", 404)
    ]
    # Temporal: nothing of the candidate is left.
    await wait_for_visibility(s.client, query, expected_ids=set(), within=30)
    for workflow_id in ids:
        deadline = time.monotonic() + 30
        while (desc := await describe_or_none(s.client, workflow_id)) is not None:
            assert time.monotonic() < deadline, f"{workflow_id} still exists: {desc.status}"
            await asyncio.sleep(0.2)

    # The withdraw workflow itself is kept as the record of the deletion: ids only.
    desc = await s.client.get_workflow_handle(withdraw_id).describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    assert desc.typed_search_attributes.get(sa.LEVER_OPPORTUNITY_ID) is None
    history = await decoded_history(s.client, withdraw_id)
    assert name.encode() not in history and email.encode() not in history
    assert b"SQL Fundamentals" not in history


async def test_delete_while_resolving_is_harmless(lc: Lifecycle) -> None:
    """Deleted before the assessment could read the opportunity: nothing sent, nothing left."""
    s = lc.stack
    opp = s.candidate("Quick Delete", "quick.delete@example.com")
    gate = asyncio.Event()

    async def hold() -> None:
        await asyncio.wait_for(gate.wait(), 30)

    with lc.lever_spy.hook("GET", f"/v1/opportunities/{opp}", before=hold):
        attempt = await s.move(opp, "Py Assessment")
        parent_id = attempt.body["workflow_id"]
        query = f'{sa.LEVER_OPPORTUNITY_ID.name} = "{opp}"'
        await wait_for_visibility(s.client, query, expected_ids={parent_id})
        _, deleted = await s.lever.delete_candidate(opp)
        assert deleted is not None and deleted.status == 202
        gate.set()
    withdraw = s.client.get_workflow_handle(deleted.body["workflow_id"])
    assert await asyncio.wait_for(withdraw.result(), 60) == 1
    assert s.invitations(opp) == []
    assert lc.lever_spy.requests("POST", containing=opp) == []
    await wait_for_visibility(s.client, query, expected_ids=set(), within=30)
    assert await describe_or_none(s.client, parent_id) is None


def test_idempotency_key_counts_the_entries_into_the_stage() -> None:
    ref = "assessment:acme:opp:stage:tst_python_basics"
    assert idempotency_key(ref, 1) == ref  # the first entry: as before re-entries existed
    assert idempotency_key(ref, 0) == ref
    assert idempotency_key(ref, 2) == f"{ref}#2"


# --------------------------------------------------------------- the sweep (issue 14)


async def test_a_swept_candidate_lives_the_real_week_and_is_left_alone_after(lc: Lifecycle) -> None:
    """Under time skipping: a candidate whose webhook never came is invited by a sweep;
    the invitation then runs its real reminders and 7-day expiry (skipped, not shrunk);
    the sweeps after that leave the expired candidate alone: one invitation in all."""
    from pylever.contracts.sweep import SweepInput, SweepResult
    from tests.support.pipeline_support import enter_silently
    from workflows.sweep import SweepWorkflow

    s = lc.stack
    since = datetime.now(UTC) - timedelta(seconds=2)
    opp = s.candidate("Swept Week", "swept.week@example.com")
    await enter_silently(s, opp, "Py Assessment")

    async def sweep() -> SweepResult:
        return await unstamped_client(lc.env).execute_workflow(
            SweepWorkflow.run,
            SweepInput(account_id="acme", since=since),
            id=f"lifecycle-sweep-{uuid.uuid4().hex[:8]}",
            task_queue=s.task_queue,
            result_type=SweepResult,
        )

    first = await sweep()
    assert (first.listed, first.started) == (1, 1), first
    invitation = await s.invitation(opp)
    parent_id = assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID)
    child = s.client.get_workflow_handle(
        invitation_workflow_id(parent_id, PY_TESTS["Python Basics"])
    )
    assert (
        await fast_forward(
            lc, Case(opp, parent_id, child, invitation["id"], datetime.now(UTC)), None
        )
        is False
    )
    await s.wait_tag(opp, TAG_EXPIRED)
    reminders = s.py.invitations[invitation["id"]].reminders
    assert reminders == 2  # at 2 d and 5 d, then the expiry at 7 d

    again = await sweep()
    assert (again.listed, again.assessed, again.started) == (1, 1, 0), again
    assert len(s.invitations(opp)) == 1


async def test_sweeps_leave_old_and_archived_alone_and_race_a_late_webhook_to_one_invitation(
    lc: Lifecycle,
) -> None:
    """Under time skipping: entries older than the 3-day lookback and archived candidates
    are not touched; a sweep and the late webhook of the same entry make one invitation."""
    from pylever.contracts.sweep import SweepInput, SweepResult
    from tests.support.pipeline_support import enter_silently, post_webhook, signed
    from workflows.sweep import SweepWorkflow

    s = lc.stack
    now_ms = int(time.time() * 1000)
    old = s.lever.create_candidate(
        name="Sweep Old", emails=["sweep.old@example.com"], stage="Py Assessment",
        advanced_at=now_ms - int(3.5 * DAY * 1000),
    )["id"]  # fmt: skip
    archived = s.lever.create_candidate(
        name="Sweep Archived", emails=["sweep.archived@example.com"], stage="Py Assessment"
    )["id"]
    s.lever.opportunities[archived]["archived"] = {"reason": "hired", "archivedAt": now_ms}
    late = s.candidate("Sweep Late", "sweep.late@example.com")
    data = await enter_silently(s, late, "Py Assessment")
    token = s.config.accounts[0].webhook_signature_tokens[0].get_secret_value()

    sweep = unstamped_client(lc.env).execute_workflow(
        SweepWorkflow.run,
        SweepInput(account_id="acme"),
        id=f"lifecycle-sweep-{uuid.uuid4().hex[:8]}",
        task_queue=s.task_queue,
        result_type=SweepResult,
    )
    result, response = await asyncio.gather(sweep, post_webhook(s, signed(token, data)))
    assert response.status_code == 202
    await s.invitation(late)
    await asyncio.sleep(1)
    assert len(s.invitations(late)) == 1
    assert s.invitations(old) == [] and s.invitations(archived) == []
    assert result.listed >= 1  # "Sweep Late" (and other tests' recent candidates, assessed)
    for opp in (old, archived):
        with pytest.raises(RPCError):
            await s.client.get_workflow_handle(
                assessment_id("acme", opp, PY_ASSESSMENT_STAGE_ID)
            ).describe()


# ------------------------------------------------------- recruiter commands (issue 15)


async def command(lc: Lifecycle, opp: str, *tags: str) -> list[CommandOutcome]:
    """A recruiter adds command tags in Lever; one look (what the account's schedule does
    every ``commands_every``) applies them: the candidate's outcomes, once its tags are gone.

    The look starts unstamped (as the sweep tests do), and stamping stays off until the
    candidate's commands are done: a retake's new assessment is started by the worker's
    activity (``Gateway.start_retake``) with the worker's client, the environment's own,
    which would otherwise stamp it and skip it to its expiry by itself (module doc).
    """
    s = lc.stack
    s.lever.recruiter_tags(opp, add=list(tags))
    with lc.env.with_time_skipping_disabled():
        await unstamped_client(lc.env).execute_workflow(
            CommandWatchWorkflow.run,
            CommandWatchInput(account_id="acme", window_seconds=0),
            id=f"lifecycle-look-{uuid.uuid4().hex[:8]}",
            task_queue=s.task_queue,
            execution_timeout=timedelta(seconds=60),
        )
        handle = s.client.get_workflow_handle(
            candidate_commands_workflow_id("acme", opp), result_type=list[CommandOutcome]
        )
        outcomes = await asyncio.wait_for(handle.result(), 60)
    assert [o.command.value for o in outcomes] == list(tags), outcomes
    assert not set(COMMAND_TAGS) & set(s.tags(opp))  # applied or not, the tag is gone
    return outcomes


def error_tags(lc: Lifecycle, opp: str) -> list[str]:
    return [t for t in lc.stack.tags(opp) if t.startswith("Py - Error")]


async def retaken(lc: Lifecycle, case: Case) -> Case:
    """The retake's new invitation (same test, a new key: ``#retake-<the command run's
    id>``), once the new run of the invitation workflow (same id) waits for its first check."""
    s = lc.stack
    commands_run = candidate_commands_workflow_id("acme", case.opp)
    run_id = (await s.client.get_workflow_handle(commands_run).describe()).run_id

    def new_invitation() -> dict[str, Any] | None:
        found = [i for i in s.invitations(case.opp) if i["id"] != case.invitation_id]
        return found[0] if found else None

    new = await s.eventually(new_invitation)
    assert len(s.invitations(case.opp)) == 2
    assert new["test_id"] == PY_TESTS["Python Basics"]
    assert new["idempotency_key"] == f"{case.child.id}#retake-{run_id}"
    first = s.py.invitations[case.invitation_id].idempotency_key
    assert first == case.child.id  # the first invitation's key: the reference as it is

    async def waiting() -> dict[str, Any] | None:
        memo = await details(case.child)  # the latest run
        ready = memo.get("invitation_id") == new["id"] and memo.get("next_check_at")
        return memo if ready else None

    memo = await s.eventually(waiting)
    async for event in case.child.fetch_history_events():  # its run skips no time by itself
        started = event.workflow_execution_started_event_attributes
        assert not started.time_skipping_config.enabled, started.time_skipping_config
        break
    await s.wait_tag(case.opp, TAG_INVITED)
    return Case(
        case.opp, case.parent_id, case.child, new["id"], datetime.fromisoformat(memo["sent_at"])
    )


@pytest.mark.parametrize("extend_on_day", [6, 3])
async def test_extend_moves_the_expiry_past_the_original_week(
    lc: Lifecycle, extend_on_day: int
) -> None:
    """Py - Extend on day 6 (or 3, before the 5-day reminder): still open on day 8,
    expires at 7 + 3 = 10 days; the reminders keep their times (2 d, 5 d)."""
    case = await invited(lc, f"Extra Extend Day{extend_on_day}")
    assert await fast_forward(lc, case, extend_on_day) is True
    assert reminders(lc, case) == (2 if extend_on_day > 5 else 1)

    [outcome] = await command(lc, case.opp, "Py - Extend")
    assert outcome.applied and outcome.target == case.child.id, outcome
    expires = case.sent_at + timedelta(days=10)
    assert outcome.detail == f"expiry moved to {expires.isoformat()}"

    # The next check: the 5-day reminder where it was, else the moved expiry.
    next_check = case.sent_at + timedelta(days=5) if extend_on_day < 5 else expires

    async def moved() -> dict[str, Any] | None:
        memo = await details(case.child)
        times = (memo.get("expires_at"), memo.get("next_check_at"))
        return memo if times == (expires.isoformat(), next_check.isoformat()) else None

    memo = await lc.stack.eventually(moved)
    assert [(c["command"], c["applied"]) for c in memo["commands"]] == [("Py - Extend", True)]

    assert await fast_forward(lc, case, 8 - extend_on_day) is True  # past the original expiry
    assert (await details(case.child))["status"] == "invited"
    assert py_status(lc, case) == "invited"
    assert py_tags(lc, case.opp) == {TAG_INVITED}
    assert lc.stack.lever.count_api_writes(case.opp, "addTags", TAG_EXPIRED) == 0
    assert lc.py_spy.requests("POST", f"{case.inv_path}/cancel") == []
    assert reminders(lc, case) == 2

    assert await fast_forward(lc, case, None) is False
    res = await result(lc, case)
    assert res.status == Status.EXPIRED
    assert py_tags(lc, case.opp) == {TAG_EXPIRED}
    assert py_status(lc, case) == "cancelled"
    assert reminders(lc, case) == 2
    marks = await activity_marks(case)
    assert_about(at(marks, "py.remind"), [2, 5], "reminders")  # not moved
    assert_about(at(marks, "py.get_invitation"), [2, 5, 10], "status checks")
    assert_about(at(marks, "py.cancel"), [10], "cancel")
    assert error_tags(lc, case.opp) == []


async def test_extend_with_nothing_open_is_not_applicable(lc: Lifecycle) -> None:
    case = await invited(lc, "Ned Nothingopen")
    assert await fast_forward(lc, case, None) is False
    await lc.stack.wait_tag(case.opp, TAG_EXPIRED)
    writes = len(lc.stack.lever.api_writes(case.opp))

    [outcome] = await command(lc, case.opp, "Py - Extend")
    assert not outcome.applied
    assert outcome.detail == "no open invitation (the assessment is expired)"
    assert py_tags(lc, case.opp) == {TAG_EXPIRED}
    assert error_tags(lc, case.opp) == []
    # One write: the command tag's removal (a recruiter's tag edit is no API write).
    [removal] = lc.stack.lever.api_writes(case.opp)[writes:]
    assert removal["op"] == "removeTags" and removal["values"] == ["Py - Extend"], removal
    assert py_status(lc, case) == "cancelled" and reminders(lc, case) == 2

    async def status_row() -> dict[str, Any] | None:
        rows = await candidate_status(lc.stack, "acme", case.opp)
        found = [r for r in rows if r.get("kind") == "commands" and r.get("tags_removed")]
        return found[0] if found else None

    row = await lc.stack.eventually(status_row)
    assert [(o["command"], o["applied"], o["detail"]) for o in row["outcomes"]] == [
        ("Py - Extend", False, outcome.detail)
    ]


async def test_retake_after_expiry_is_a_new_invitation_with_its_own_week(lc: Lifecycle) -> None:
    s = lc.stack
    case = await invited(lc, "Rex Retakexpired")
    assert await fast_forward(lc, case, None) is False
    assert (await result(lc, case)).status == Status.EXPIRED
    assert py_tags(lc, case.opp) == {TAG_EXPIRED}

    [outcome] = await command(lc, case.opp, "Py - Retake")
    assert outcome.applied and outcome.target == case.parent_id, outcome
    again = await retaken(lc, case)
    await s.eventually(lambda: TAG_EXPIRED not in s.tags(case.opp))  # stale now
    assert py_tags(lc, case.opp) == {TAG_INVITED}
    memo = await details(case.child)
    assert datetime.fromisoformat(memo["next_check_at"]) - again.sent_at == timedelta(days=2)
    parent = await s.client.get_workflow_handle(case.parent_id).describe()
    assert (await parent.memo()).get("retake") == 1

    # Its own week, counted from the new send: reminders at 2 d and 5 d, still open on day 6.
    assert await fast_forward(lc, again, 6) is True
    assert reminders(lc, again) == 2
    assert reminders(lc, case) == 2  # the expired one is left alone
    assert py_status(lc, again) == "invited"
    assert_about(at(await activity_marks(again), "py.remind"), [2, 5], "retake's reminders")

    await s.py.complete(again.invitation_id, 92)
    res = await result(lc, again)
    assert res.status == Status.COMPLETED
    [inv] = res.invitations
    assert inv.invitation_id == again.invitation_id and inv.verdict == "pass"
    await s.eventually(lambda: py_tags(lc, case.opp) == {TAG_PASS})
    links = s.lever.opportunity(case.opp)["links"]
    assert links == [s.py.invitation(again.invitation_id)["report_url"]], links
    assert error_tags(lc, case.opp) == []


async def test_retake_after_a_fail_replaces_the_verdict(lc: Lifecycle) -> None:
    s = lc.stack
    case = await invited(lc, "Fay Failretake")
    await s.py.complete(case.invitation_id, 30)
    first = await result(lc, case)
    assert first.status == Status.COMPLETED and first.invitations[0].verdict == "fail"
    await s.eventually(lambda: py_tags(lc, case.opp) == {TAG_FAIL})

    [outcome] = await command(lc, case.opp, "Py - Retake")
    assert outcome.applied, outcome
    again = await retaken(lc, case)
    assert py_tags(lc, case.opp) == {
        TAG_FAIL,
        TAG_INVITED,
    }  # the fail stands until the retake's result

    await s.py.complete(again.invitation_id, 92)
    res = await result(lc, again)
    assert res.status == Status.COMPLETED
    assert [(i.invitation_id, i.verdict) for i in res.invitations] == [
        (again.invitation_id, "pass")
    ]
    await s.eventually(lambda: py_tags(lc, case.opp) == {TAG_PASS})
    assert s.lever.count_api_writes(case.opp, "removeTags", TAG_FAIL) == 1
    assert s.lever.count_api_writes(case.opp, "addTags", TAG_PASS) == 1
    links = s.lever.opportunity(case.opp)["links"]
    assert links == [
        s.py.invitation(case.invitation_id)["report_url"],
        s.py.invitation(again.invitation_id)["report_url"],
    ], links


async def test_resend_mid_week_reminds_once_now_and_keeps_the_schedule(lc: Lifecycle) -> None:
    case = await invited(lc, "Rene Resend")
    assert await fast_forward(lc, case, 3) is True
    assert reminders(lc, case) == 1

    [outcome] = await command(lc, case.opp, "Py - Resend")
    assert outcome.applied and outcome.target == case.child.id, outcome
    assert reminders(lc, case) == 2  # at once, by exactly one

    assert await fast_forward(lc, case, 3) is True  # day 6
    assert reminders(lc, case) == 3
    assert await fast_forward(lc, case, None) is False
    assert (await result(lc, case)).status == Status.EXPIRED
    assert reminders(lc, case) == 3
    marks = await activity_marks(case)
    assert_about(at(marks, "py.remind"), [2, 3, 5], "reminders")
    assert_about(at(marks, "py.get_invitation"), [2, 5, 7], "status checks")
    assert_about(at(marks, "py.cancel"), [7], "cancel")  # the expiry did not move


async def test_cancel_mid_week_cancels_at_py_without_a_verdict(lc: Lifecycle) -> None:
    s = lc.stack
    case = await invited(lc, "Cora Cancelled")
    assert await fast_forward(lc, case, 4) is True
    assert reminders(lc, case) == 1

    [outcome] = await command(lc, case.opp, "Py - Cancel")
    assert outcome.applied and outcome.target == case.child.id, outcome
    assert py_status(lc, case) == "cancelled"
    res = await result(lc, case)
    assert res.status == Status.CANCELLED
    [inv] = res.invitations
    assert inv.status == Status.CANCELLED and inv.verdict is None
    assert py_tags(lc, case.opp) == set()
    assert s.lever.count_api_writes(case.opp, "removeTags", TAG_INVITED) == 1
    for verdict in (TAG_PASS, TAG_FAIL, TAG_NEEDS_REVIEW, TAG_EXPIRED):
        assert s.lever.count_api_writes(case.opp, "addTags", verdict) == 0
    assert s.lever.count_api_writes(case.opp, "addLinks") == 0
    assert error_tags(lc, case.opp) == []
    desc = await case.child.describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED  # closed: no timer left
    assert desc.typed_search_attributes.get(sa.PY_STATUS) == "cancelled"
    assert reminders(lc, case) == 1
    marks = await activity_marks(case)
    assert_about(at(marks, "py.remind"), [2], "reminders")
    assert_about(at(marks, "py.cancel"), [4], "cancel")

"""How the workflows call their activities: timeouts, retry policies, typed wrappers.

Every Lever and Py call is one activity attempt (the clients try once; Temporal
retries). What is final depends on what is at stake:

- ``SETUP_RETRY``: before an invitation is live (reading the opportunity, finding
  the tests, creating the invitation). Transient answers (5xx, 429, timeouts,
  401/403 while a key is rotated) are retried for a day; a 4xx that retrying
  cannot fix (404, 400, 409, 422) is final.
- ``durable_retry(settings)``: once an invitation is live at Py, its Lever
  writes and Py calls are retried until they succeed, for ``expire_after`` + 7
  days. Only answers that no retry can change are final: the opportunity is gone
  (404), or Lever refuses the request itself (400 on a stage move to a deleted
  stage). A 401/403 is *not* final: the customer may be rotating its key.

The failure ``type`` is the client error's class name (``activities.errors``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    import workflows.decisions as decisions
    from pylever.contracts.activities import Activity, LeverActivity
    from pylever.contracts.errors import (
        PY_CONTRACT_ERROR,
        UNKNOWN_ACCOUNT,
        BadRequestError,
        ConflictError,
        NotFoundError,
        PermanentApiError,
        UnknownStageError,
    )
    from pylever.contracts.records import (
        Candidate,
        LinkWrite,
        OpportunityRef,
        ReadCandidate,
        StageMove,
        TagWrite,
        TriggerSettings,
    )

# Answers that no retry changes: 4xx (AuthError is not one: keys get rotated), and a Py
# record that breaks the contract. A failure's type is its error class's name
# (activities/errors.py), so the list is made from the classes.
_FINAL_CLASSES = (
    BadRequestError,
    NotFoundError,
    ConflictError,
    PermanentApiError,
    UnknownStageError,
)
FINAL_ERRORS = [*(cls.__name__ for cls in _FINAL_CLASSES), PY_CONTRACT_ERROR]
START_TO_CLOSE = timedelta(seconds=15)  # the clients time out after 10 s
SETUP_HORIZON = timedelta(days=1)
COMMAND_HORIZON = timedelta(hours=1)  # a recruiter's command: tried for an hour, then refused
DURABLE_MARGIN = timedelta(
    days=7
)  # beyond expire_after: how long a live invitation's writes are retried

SETUP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=[*FINAL_ERRORS, UNKNOWN_ACCOUNT],  # (it is also non_retryable)
)
# Retries back off to one every 30 minutes: a key rotated in minutes is retried within about a
# minute of working again; an outage of days costs Lever 48 requests a day per waiting write.
DURABLE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=30),
    non_retryable_error_types=FINAL_ERRORS,
)


ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")


def error_message(exc: BaseException) -> str:
    """What a failed activity or child said (its cause's message, or its class)."""
    cause = exc.cause if isinstance(exc, ActivityError | ChildWorkflowError) and exc.cause else exc
    return str(cause) or type(cause).__name__


def failure_type(exc: BaseException) -> str | None:
    """A failed activity's ``type``: the client error's class name (``activities.errors``)."""
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    return cause.type if isinstance(cause, ApplicationError) else None


def durable_horizon(settings: TriggerSettings) -> timedelta:
    """How long a write of a live invitation is retried: ``expire_after`` + 7 days."""
    return timedelta(seconds=settings.expire_after_seconds) + DURABLE_MARGIN


class LeverOps:
    """Lever activities of one candidate, on the shared Lever task queue.

    Each carries the account as its fairness key: the server gives every account
    its own rate limit on that queue (``pylever.temporal.lever_limits``) and serves the
    accounts fairly, so one account's backlog does not hold up another's.

    ``horizon`` None: setup calls (a day, ``SETUP_RETRY``). A timedelta: the
    durable calls of a live invitation (``DURABLE_RETRY`` for that long).
    """

    def __init__(
        self, account_id: str, opportunity_id: str, horizon: timedelta | None = None
    ) -> None:
        self.account_id = account_id
        self.opportunity_id = opportunity_id
        # Not behind workflow.patched, on purpose: replay compares an activity's type and
        # id, not its task queue or priority (every recorded history replays with this),
        # and a patch would pin executions started before the shared queue to the old
        # per-account queues for their whole life. Calls already scheduled there are
        # drained by pylever.temporal.legacy_queues.
        self.task_queue = decisions.lever_task_queue(workflow.info().task_queue)
        self.priority = Priority(fairness_key=account_id)
        self._horizon = horizon

    def durable(self, horizon: timedelta) -> LeverOps:
        return LeverOps(self.account_id, self.opportunity_id, horizon)

    async def _run(self, stub: Activity[ArgT, ResultT], arg: ArgT) -> ResultT:
        return await call(
            stub,
            arg,
            task_queue=self.task_queue,
            priority=self.priority,
            start_to_close_timeout=START_TO_CLOSE,
            schedule_to_close_timeout=self._horizon or SETUP_HORIZON,
            retry_policy=SETUP_RETRY if self._horizon is None else DURABLE_RETRY,
        )

    async def read_candidate(self, stage_id: str) -> Candidate:
        result: Candidate = await self._run(
            LeverActivity.read_candidate,
            ReadCandidate(
                account_id=self.account_id, opportunity_id=self.opportunity_id, stage_id=stage_id
            ),
        )
        return result

    async def opportunity_state(self) -> str:
        """``active``, ``archived`` or ``gone``: what Lever says of the opportunity now."""
        state: str = await self._run(
            LeverActivity.opportunity_state,
            OpportunityRef(account_id=self.account_id, opportunity_id=self.opportunity_id),
        )
        return state

    async def change_tags(self, change: decisions.TagChange) -> None:
        if change.remove:
            await self._run(LeverActivity.remove_tags, self._tags(change.remove))
        if change.add:
            await self._run(LeverActivity.add_tags, self._tags(change.add))

    async def add_link(self, link: str) -> None:
        await self._run(
            LeverActivity.add_links,
            LinkWrite(
                account_id=self.account_id, opportunity_id=self.opportunity_id, links=(link,)
            ),
        )

    async def move_to_stage(self, stage: str) -> None:
        await self._run(
            LeverActivity.move_to_stage,
            StageMove(account_id=self.account_id, opportunity_id=self.opportunity_id, stage=stage),
        )

    def _tags(self, tags: tuple[str, ...]) -> TagWrite:
        return TagWrite(account_id=self.account_id, opportunity_id=self.opportunity_id, tags=tags)


async def background_lever_call(
    stub: Activity[ArgT, ResultT], arg: ArgT, account_id: str
) -> ResultT:
    """A sweep's Lever call on the shared Lever queue (the setup policy: a day of retries)."""
    return await call(
        stub,
        arg,
        task_queue=decisions.lever_task_queue(workflow.info().task_queue),
        priority=decisions.background_priority(account_id),
        start_to_close_timeout=START_TO_CLOSE,
        schedule_to_close_timeout=SETUP_HORIZON,
        retry_policy=SETUP_RETRY,
    )


async def py_call(
    stub: Activity[ArgT, ResultT], arg: ArgT, horizon: timedelta | None = None
) -> ResultT:
    """A Py activity: setup policy by default, the durable one with a ``horizon``."""
    return await call(
        stub,
        arg,
        start_to_close_timeout=START_TO_CLOSE,
        schedule_to_close_timeout=horizon or SETUP_HORIZON,
        retry_policy=SETUP_RETRY if horizon is None else DURABLE_RETRY,
    )


async def call(stub: Activity[ArgT, ResultT], arg: ArgT, **options: Any) -> ResultT:
    """Run ``stub``'s activity with ``options`` (timeouts, retry policy, task queue): the
    type checker holds ``arg`` and the result to the stub's signature."""
    result: ResultT = await workflow.execute_activity(
        stub.name, arg, result_type=stub.result_type, **options
    )
    return result


__all__ = [
    "COMMAND_HORIZON",
    "DURABLE_RETRY",
    "FINAL_ERRORS",
    "SETUP_RETRY",
    "LeverOps",
    "background_lever_call",
    "call",
    "durable_horizon",
    "error_message",
    "failure_type",
    "py_call",
]

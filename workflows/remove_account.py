"""An account removed from the configuration: withdraw its running assessments.

Started by the worker's configuration reload (``Gateway.remove_account``, workflow
id ``remove-account:<account>``: several workers reloading at once start it once).
It lists the account's running ``AssessmentWorkflow`` executions from visibility,
page by page, and signals each ``withdraw`` with ``Withdrawal(reason="account_removed")``:
as for a deleted candidate, each open invitation is cancelled at Py and nothing is
written to Lever (the customer's key may already be revoked); the assessment ends
``cancelled`` with the reason "account removed from configuration".

It keeps listing, since assessments can still start after the first listing (an API
that reloads later, visibility lagging a start): again after ``settle_seconds``, then
at intervals that double up to ``quiet_seconds`` (by default at 15 s, 30 s, 1 min,
2 min, 4 min, 6 min, ...), until two listings at least ``quiet_seconds`` apart found
nothing new in between, and no longer than ``horizon_seconds`` (15 minutes) in all.
An assessment listed again is not signalled again; one signalled twice (after a
continue-as-new, see below) ignores the second withdrawal (``AssessmentWorkflow.withdraw``).

Every ``signals_per_run`` signals (or when Temporal suggests it) it continues as new,
carrying its counts, its clock, the listing in progress and the most recent
``CARRIED_IDS`` ids it signalled; an id older than those, still running and listed
again, is signalled again (ignored) and counted again.

The signal ``stop`` (an account configured again) ends it after the page in hand.
The query ``progress`` answers the counts so far.

Its shape (several listings, continue-as-new) is not the one of commit 19034fc,
which listed twice; that shape never shipped in a release, so no ``workflow.patched``.
Its input, activity arguments and results are account and workflow ids only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import workflows.decisions as decisions
    from pylever.contracts.activities import TemporalActivity
    from pylever.contracts.records import (
        AccountPage,
        AssessmentPage,
        RemoveAccountInput,
        RemoveAccountResult,
        Withdrawal,
    )
    from workflows.assessment import AssessmentWorkflow
    from workflows.calls import call

CARRIED_IDS = 2000  # signalled ids carried into the next run

_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


def remove_account_workflow_id(account_id: str) -> str:
    return f"remove-account:{account_id}"


def next_listing_in(elapsed: float, settle: int, quiet: int) -> float:
    """Seconds to the next listing, ``elapsed`` seconds after the first one: as long as
    the time already spent (whole seconds), at least ``settle``, at most ``quiet`` (15,
    15, 30, 60, 120, 120, ... with the defaults)."""
    return float(min(max(int(elapsed), settle), quiet))


def quiet_enough(quiet_since: datetime | None, now: datetime, quiet: int) -> bool:
    """Whether the listings have found nothing new for ``quiet`` seconds."""
    return quiet_since is not None and (now - quiet_since).total_seconds() >= quiet


class _ContinueAsNew(Exception):
    pass


@dataclass
class RemoveAccountState:
    """What the removal knows. A continue-as-new carries it into the next run
    (``RemoveAccountInput``, ``_carried``): all but ``signalled_here``, ``new_in_pass``
    and ``stopped``, and of ``seen`` the last ``CARRIED_IDS``."""

    seen: dict[str, None] = field(default_factory=dict)  # ids signalled, in that order
    found: int = 0
    signalled: int = 0
    signalled_here: int = 0  # in this run
    page_token: str | None = None  # the listing in progress
    new_in_pass: int = 0  # ids new in the listing in progress
    first_listing_at: datetime | None = None
    quiet_since: datetime | None = None  # no new ids since
    stopped: bool = False  # the account is configured again


@workflow.defn
class RemoveAccountWorkflow:
    @workflow.init
    def __init__(self, input: RemoveAccountInput) -> None:
        self.state = RemoveAccountState(
            seen=dict.fromkeys(input.seen),
            found=input.found,
            signalled=input.signalled,
            page_token=input.page_token,
            first_listing_at=input.first_listing_at,
            quiet_since=input.quiet_since,
        )

    @workflow.signal
    def stop(self) -> None:
        """The account is configured again: list no more."""
        self.state.stopped = True

    @workflow.query
    def progress(self) -> RemoveAccountResult:
        return RemoveAccountResult(found=self.state.found, signalled=self.state.signalled)

    @workflow.run
    async def run(self, input: RemoveAccountInput) -> RemoveAccountResult:
        state = self.state
        if state.first_listing_at is None:
            state.first_listing_at = workflow.now()
        first = state.first_listing_at
        while not state.stopped:
            try:
                new = await self._withdraw_listed(input)
            except _ContinueAsNew:
                if state.new_in_pass:
                    state.quiet_since = None
                workflow.continue_as_new(self._carried(input))
            now = workflow.now()
            if new:
                state.quiet_since = None
            elif state.quiet_since is None:
                state.quiet_since = now
            elapsed = (now - first).total_seconds()
            if (
                input.settle_seconds <= 0
                or quiet_enough(state.quiet_since, now, input.quiet_seconds)
                or elapsed >= input.horizon_seconds
            ):
                break
            delay = next_listing_in(elapsed, input.settle_seconds, input.quiet_seconds)
            delay = min(delay, input.horizon_seconds - elapsed)
            try:
                await workflow.wait_condition(lambda: state.stopped, timeout=delay)
            except TimeoutError:
                pass
        workflow.logger.info(
            "account %s removed: %d running assessments found, %d told to withdraw",
            input.account_id, state.found, state.signalled,
        )  # fmt: skip
        return self.progress()

    def _carried(self, input: RemoveAccountInput) -> RemoveAccountInput:
        state = self.state
        return input.model_copy(
            update={
                "found": state.found,
                "signalled": state.signalled,
                "seen": tuple(state.seen)[-CARRIED_IDS:],
                "first_listing_at": state.first_listing_at,
                "quiet_since": state.quiet_since,
                "page_token": state.page_token,
            }
        )

    async def _withdraw_listed(self, input: RemoveAccountInput) -> int:
        """One pass over the listing, page by page (from ``state.page_token``: a pass carried
        over a continue-as-new goes on); ids already seen are not signalled again.
        The number of new ids."""
        state = self.state
        state.new_in_pass = 0
        while True:
            if state.signalled_here >= input.signals_per_run or (
                state.signalled_here and workflow.info().is_continue_as_new_suggested()
            ):
                raise _ContinueAsNew
            page: AssessmentPage = await call(
                TemporalActivity.account_assessments,
                AccountPage(
                    account_id=input.account_id,
                    page_token=state.page_token,
                    page_size=input.page_size,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_RETRY,
            )
            new = [w for w in dict.fromkeys(page.workflow_ids) if w not in state.seen]
            state.seen.update(dict.fromkeys(new))
            state.found += len(new)
            state.new_in_pass += len(new)
            reached = await asyncio.gather(*(self._signal(w) for w in new))
            state.signalled += sum(reached)
            state.signalled_here += len(new)
            workflow.set_current_details(
                f"**{decisions.ACCOUNT_REMOVED_TEXT}**: {state.found} running assessments "
                f"found, {state.signalled} told to withdraw"
            )
            state.page_token = page.next_page_token
            if state.page_token is None or state.stopped:
                state.page_token = None
                return state.new_in_pass

    @staticmethod
    async def _signal(workflow_id: str) -> bool:
        handle: workflow.ExternalWorkflowHandle[AssessmentWorkflow] = (
            workflow.get_external_workflow_handle_for(AssessmentWorkflow.run, workflow_id)
        )
        try:
            await handle.signal(AssessmentWorkflow.withdraw, Withdrawal(reason="account_removed"))
        except Exception as exc:  # it finished between the listing and the signal
            if is_cancelled_exception(exc):
                raise
            return False
        return True


__all__ = [
    "RemoveAccountInput",
    "RemoveAccountResult",
    "RemoveAccountWorkflow",
    "remove_account_workflow_id",
]

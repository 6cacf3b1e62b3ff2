"""An account removed from the configuration: withdraw its running assessments.

Started by the worker's configuration reload (``Gateway.remove_account``, workflow
id ``remove-account:<account>``: several workers reloading at once start it once).
It lists the account's running ``AssessmentWorkflow`` executions from visibility,
page by page, and signals each ``withdraw`` with ``Withdrawal(reason="account_removed")``:
as for a deleted candidate, each open invitation is cancelled at Py and nothing is
written to Lever (the customer's key may already be revoked); the assessment ends
``cancelled`` with the reason "account removed from configuration".

A second listing after ``settle_seconds`` catches assessments that started
meanwhile (an API that had not reloaded yet, or visibility lagging a start).
Its input, activity arguments and results are account and workflow ids only.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel, ConfigDict
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import workflows.decisions as decisions
    from activities.temporal_ops import AccountPage, AssessmentPage, TemporalActivities
    from pylever.models import Withdrawal
    from workflows.assessment import AssessmentWorkflow

SETTLE_SECONDS = 15  # between the first listing and the second
PAGE_SIZE = 100

_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


class RemoveAccountInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    account_id: str
    settle_seconds: int = SETTLE_SECONDS  # 0: list once
    page_size: int = PAGE_SIZE


class RemoveAccountResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    found: int = 0  # running assessments listed (each counted once)
    signalled: int = 0  # of those, told to withdraw (the others had finished meanwhile)


def remove_account_workflow_id(account_id: str) -> str:
    return f"remove-account:{account_id}"


@workflow.defn
class RemoveAccountWorkflow:
    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._signalled = 0

    @workflow.run
    async def run(self, input: RemoveAccountInput) -> RemoveAccountResult:
        await self._withdraw_listed(input)
        if input.settle_seconds > 0:
            await asyncio.sleep(input.settle_seconds)
            await self._withdraw_listed(input)
        workflow.logger.info(
            "account %s removed: %d running assessments found, %d told to withdraw",
            input.account_id, len(self._seen), self._signalled,
        )  # fmt: skip
        return RemoveAccountResult(found=len(self._seen), signalled=self._signalled)

    async def _withdraw_listed(self, input: RemoveAccountInput) -> None:
        """One pass over the listing, page by page; ids already seen are not signalled again."""
        token: str | None = None
        while True:
            page: AssessmentPage = await workflow.execute_activity_method(
                TemporalActivities.account_assessments,
                AccountPage(
                    account_id=input.account_id, page_token=token, page_size=input.page_size
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_RETRY,
            )
            new = [w for w in dict.fromkeys(page.workflow_ids) if w not in self._seen]
            self._seen.update(new)
            reached = await asyncio.gather(*(self._signal(w) for w in new))
            self._signalled += sum(reached)
            workflow.set_current_details(
                f"**{decisions.ACCOUNT_REMOVED_TEXT}**: {len(self._seen)} running assessments "
                f"found, {self._signalled} told to withdraw"
            )
            token = page.next_page_token
            if token is None:
                return

    @staticmethod
    async def _signal(workflow_id: str) -> bool:
        handle = workflow.get_external_workflow_handle_for(AssessmentWorkflow.run, workflow_id)
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

"""Running assessments of accounts the configuration no longer names.

A reload (``SIGHUP``) that removes an account withdraws its running assessments.
An account dropped from the file while the workers were down (a restart instead
of a reload) is not seen leaving: the worker finds such assessments at start and
warns, naming the account and ``python cli.py remove-account ACCOUNT``, which
withdraws them as a reload would. Nothing is withdrawn unasked: a wrong file
mounted by mistake must not cancel a customer's invitations.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from temporalio.client import Client

from pylever.contracts import search_attributes as sa
from pylever.ops.logs import log_event

log = logging.getLogger("pylever.temporal.unconfigured")


def running_assessments_query(task_queue: str) -> str:
    return (
        f"TaskQueue = {sa.quote(task_queue)} AND WorkflowType = 'AssessmentWorkflow' "
        "AND ExecutionStatus = 'Running'"
    )


async def unconfigured_accounts(
    client: Client, task_queue: str, configured: Iterable[str]
) -> dict[str, int]:
    """Running assessments per account that ``configured`` does not name."""
    known = set(configured)
    counts: Counter[str] = Counter()
    async for execution in client.list_workflows(running_assessments_query(task_queue)):
        account = execution.typed_search_attributes.get(sa.LEVER_ACCOUNT)
        if account and account not in known:
            counts[account] += 1
    return dict(counts)


async def warn_about_unconfigured(
    client: Client, task_queue: str, configured: Iterable[str]
) -> None:
    for account, running in sorted(
        (await unconfigured_accounts(client, task_queue, configured)).items()
    ):
        log_event(
            log,
            f"{running} running assessments belong to account {account!r}, which the "
            "configuration does not name: put it back, or withdraw them with "
            f"`python cli.py remove-account {account}`",
            logging.WARNING,
            account=account,
            running=running,
        )


__all__ = ["running_assessments_query", "unconfigured_accounts", "warn_about_unconfigured"]

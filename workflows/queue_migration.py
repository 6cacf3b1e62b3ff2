"""A marker of when this deployment moved Lever activities to the one shared queue.

Before, every account's Lever activities ran on a task queue of its own
(``decisions.legacy_lever_task_queue``). An activity scheduled there keeps its
queue for all its attempts, so executions that were running when the shared
queue arrived may still have Lever calls waiting on the old queues.
``pylever.temporal.legacy_queues`` keeps polling those queues, for the accounts that
still have such executions, until none is left; this workflow's start time is
the moment that divides old executions from new ones. It stays open (it costs
one execution and no work) so that the moment is not forgotten when retention
would delete a closed one.
"""

from __future__ import annotations

from temporalio import workflow

MARKER_PREFIX = "py-lever:lever-queue-migration"


def marker_workflow_id(task_queue: str) -> str:
    """One marker per deployment (its main task queue) in the namespace."""
    return f"{MARKER_PREFIX}:{task_queue}"


@workflow.defn
class LeverQueueMigrationWorkflow:
    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

"""Each account's Lever rate limit, enforced by the Temporal server on the shared Lever queue.

Lever allows 10 requests/s per API key. Every Lever activity runs on one task
queue (``decisions.lever_task_queue``) with its account as fairness key, and the
queue's configuration gives every fairness key the same default rate, scaled by a
weight for the accounts whose ``lever_requests_per_second`` differs from the
default (weight = the account's rate / the default). The server applies the
limit to all worker processes together, so adding workers never adds Lever
traffic. The worker sets it at start and on every reload (``apply_lever_limits``);
the limit needs the queue to have a single partition (docs/operations.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import RateLimit, TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    UpdateTaskQueueConfigRequest,
)
from temporalio.client import Client

from pylever.config.file import Account
from pylever.ops.logs import log_event

log = logging.getLogger("pylever.temporal.lever_limits")

DEFAULT_RPS: float = Account.model_fields["lever_requests_per_second"].default
REASON = "py-lever: each Lever account's requests per second (lever_requests_per_second)"


@dataclass(frozen=True)
class LeverLimits:
    """The queue configuration for a set of accounts."""

    default_rps: float = DEFAULT_RPS
    weights: dict[str, float] = field(default_factory=dict)  # accounts not at the default

    def rate_of(self, account_id: str) -> float:
        return self.default_rps * self.weights.get(account_id, 1.0)


def lever_limits(accounts: Iterable[Account], default_rps: float = DEFAULT_RPS) -> LeverLimits:
    weights = {
        a.id: a.lever_requests_per_second / default_rps
        for a in accounts
        if a.lever_requests_per_second != default_rps
    }
    return LeverLimits(default_rps, weights)


@dataclass(frozen=True)
class LimitChange:
    """What ``apply_lever_limits`` changed on the server (nothing when all is empty)."""

    default_rps: float | None = None
    set_weights: dict[str, float] = field(default_factory=dict)
    unset_weights: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.default_rps is not None or bool(self.set_weights) or bool(self.unset_weights)


def _same(current: float | None, desired: float) -> bool:
    # The server keeps 32-bit floats: 5/9 comes back as 0.5555556.
    return current is not None and abs(current - desired) <= 1e-6 * max(1.0, abs(desired))


def limit_change(
    desired: LeverLimits, current_default: float | None, current_weights: dict[str, float]
) -> LimitChange:
    """The update that turns the server's configuration into ``desired``."""
    return LimitChange(
        default_rps=None if _same(current_default, desired.default_rps) else desired.default_rps,
        set_weights={
            key: weight
            for key, weight in desired.weights.items()
            if not _same(current_weights.get(key), weight)
        },
        unset_weights=tuple(sorted(set(current_weights) - set(desired.weights))),
    )


async def apply_lever_limits(
    client: Client, task_queue: str, accounts: Iterable[Account]
) -> LimitChange:
    """Make the server's per-account limits on ``task_queue`` match ``accounts``."""
    desired = lever_limits(accounts)
    described = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            report_config=True,
        )
    )
    config = described.config
    current_default = (
        config.fairness_keys_rate_limit_default.rate_limit.requests_per_second
        if config.HasField("fairness_keys_rate_limit_default")
        and config.fairness_keys_rate_limit_default.HasField("rate_limit")
        else None
    )
    change = limit_change(desired, current_default, dict(config.fairness_weight_overrides))
    if not change:
        return change
    request = UpdateTaskQueueConfigRequest(
        namespace=client.namespace,
        identity=client.identity,
        task_queue=task_queue,
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        set_fairness_weight_overrides=change.set_weights,
        unset_fairness_weight_overrides=list(change.unset_weights),
    )
    if change.default_rps is not None:
        request.update_fairness_key_rate_limit_default.rate_limit.CopyFrom(
            RateLimit(requests_per_second=change.default_rps)
        )
        request.update_fairness_key_rate_limit_default.reason = REASON
    await client.workflow_service.update_task_queue_config(request)
    log_event(
        log,
        "Lever limits set",
        task_queue=task_queue,
        default_rps=desired.default_rps,
        accounts_with_own_rate=len(desired.weights),
        weights_set=len(change.set_weights),
        weights_unset=len(change.unset_weights),
    )
    return change


__all__ = [
    "DEFAULT_RPS",
    "LeverLimits",
    "LimitChange",
    "apply_lever_limits",
    "lever_limits",
    "limit_change",
]

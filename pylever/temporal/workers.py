"""The worker's parts: the workflows and activities it runs, on which task queues, with
which clients; the search attributes it registers; its connection to Temporal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities.commands import CommandActivities
from activities.lever import LeverActivities, LeverClients
from activities.py import PyActivities
from activities.sweep import SweepActivities
from activities.temporal_ops import TemporalActivities
from pylever.clients.lever_accounts import LeverAccounts, activity_client
from pylever.clients.py import PyClient
from pylever.config.environment import Settings
from pylever.config.file import AppConfig
from pylever.contracts import search_attributes as sa
from pylever.ops.logs import log_event
from pylever.ops.worker_metrics import serve_worker_metrics
from pylever.temporal.gateway import Gateway
from workflows.assessment import AssessmentWorkflow
from workflows.commands import CandidateCommandsWorkflow, CommandWatchWorkflow
from workflows.decisions import lever_task_queue
from workflows.invitation import InvitationWorkflow
from workflows.queue_migration import LeverQueueMigrationWorkflow
from workflows.remove_account import RemoveAccountWorkflow
from workflows.sweep import SweepWorkflow
from workflows.withdraw import WithdrawCandidateWorkflow

log = logging.getLogger("pylever.worker")

WORKFLOWS = [
    AssessmentWorkflow,
    InvitationWorkflow,
    WithdrawCandidateWorkflow,
    RemoveAccountWorkflow,
    SweepWorkflow,
    CommandWatchWorkflow,
    CandidateCommandsWorkflow,
]
GRACEFUL_SHUTDOWN = timedelta(seconds=45)


async def register_search_attributes(client: Client) -> list[str]:
    """Add the custom search attributes of SPEC section 6 that the namespace lacks."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    known = set(existing.custom_attributes) | set(existing.system_attributes)
    missing: dict[str, IndexedValueType.ValueType] = {}
    for key in sa.ALL:
        if key.name not in known:
            # The SDK's enum shares its numbers with the proto's IndexedValueType.
            missing[key.name] = IndexedValueType.ValueType(key.indexed_value_type.value)
    if missing:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
            )
        except RPCError as exc:
            if exc.status != RPCStatusCode.ALREADY_EXISTS:  # another worker was first
                raise
    return sorted(missing)


@contextlib.asynccontextmanager
async def external_clients(
    config: AppConfig, *, lever_rps: float | None = None
) -> AsyncIterator[tuple[LeverAccounts, PyClient]]:
    """Clients for activities: one attempt each, Temporal retries. Lever clients are
    made per account on first use."""
    levers = LeverAccounts(config.accounts, lambda a: activity_client(a, rate=lever_rps))
    py = py_client_for(config)
    try:
        yield levers, py
    finally:
        await levers.aclose()
        await py.aclose()


def py_client_for(config: AppConfig) -> PyClient:
    return PyClient(config.py.api_url, config.py.api_key.get_secret_value(), max_attempts=1)


def lever_worker(
    client: Client,
    task_queue: str,
    activities: LeverActivities,
    extra_activities: Sequence[Callable[..., Any]] = (),
    **options: Any,
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        activities=[
            activities.read_candidate,
            activities.opportunity_state,
            activities.add_tags,
            activities.remove_tags,
            activities.add_links,
            activities.move_to_stage,
            activities.list_waiting,
            activities.list_commanded,
            activities.read_tags,
            *extra_activities,
        ],
        **options,
    )


class Workers:
    """The process's two workers (main, Lever) and the activity objects a reload updates.

    The Lever worker has no rate of its own: each account's limit is the shared
    queue's fairness-key limit (``pylever.temporal.lever_limits``)."""

    def __init__(
        self,
        client: Client,
        config: AppConfig,
        task_queue: str,
        levers: LeverClients,
        py: PyClient,
        *,
        on_unknown_account: Callable[[], Awaitable[object]] | None = None,
        removed_account: Callable[[str], bool] | None = None,
        **worker_options: Any,
    ) -> None:
        self.lever = LeverActivities(levers, on_unknown=on_unknown_account, removed=removed_account)
        self.py = PyActivities(py, config.callback_url)
        temporal = TemporalActivities(client)
        self.sweep = SweepActivities(config, levers, Gateway(client, task_queue))
        self.commands = CommandActivities(config, levers, Gateway(client, task_queue))
        self.options: dict[str, Any] = {"graceful_shutdown_timeout": GRACEFUL_SHUTDOWN,
                                        **worker_options}  # fmt: skip
        self.workers = [
            Worker(
                client,
                task_queue=task_queue,
                workflows=[*WORKFLOWS, LeverQueueMigrationWorkflow],
                activities=[
                    self.py.find_tests,
                    self.py.create_invitation,
                    self.py.get_invitation,
                    self.py.remind,
                    self.py.cancel,
                    temporal.running_assessments,
                    temporal.account_assessments,
                    temporal.previous_invitations,
                    temporal.wait_closed,
                    temporal.delete_executions,
                    temporal.delete_candidate_executions,
                    self.sweep.start_waiting,
                    self.sweep.report,
                    self.commands.targets,
                    self.commands.deliver,
                    self.commands.previous,
                    self.commands.retake,
                ],
                **self.options,
            ),
            lever_worker(
                client,
                lever_task_queue(task_queue),
                self.lever,
                [self.sweep.plan, self.commands.plan],
                **self.options,
            ),
        ]


async def connect(settings: Settings, converter: object, runtime: Runtime | None) -> Client:
    """Connect, waiting up to a minute for Temporal (it may be starting beside us)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            return await Client.connect(
                settings.temporal_address,
                namespace=settings.temporal_namespace,
                data_converter=converter,  # type: ignore[arg-type]
                runtime=runtime,
            )
        except Exception as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log_event(log, "waiting for Temporal", logging.WARNING, error=type(exc).__name__)
            await asyncio.sleep(1)


def sdk_runtime() -> Runtime | None:
    """With ``PYLEVER_WORKER_METRICS_ADDRESS``: one /metrics for py-lever's and the SDK's metrics."""
    try:
        exporter = serve_worker_metrics(os.environ)
    except OSError as exc:  # the port is taken, or the address is not ours
        raise ValueError(f"PYLEVER_WORKER_METRICS_ADDRESS: cannot serve metrics: {exc}") from None
    if exporter is None:
        return None
    log_event(log, "serving metrics", address=f"{exporter.address[0]}:{exporter.address[1]}")
    return exporter.runtime

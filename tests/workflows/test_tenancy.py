"""Many accounts on one fleet: the shared Lever queue's per-account limits, Lever
clients made on first use, and the drain of the old per-account queues.

The server-side parts run against a dev server of their own (one partition, as
production's dynamic config sets it). The two that take real time (the server holding
each account to its rate, the drain of an old queue) are in
tests/integration/test_tenancy_real_time.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from temporalio import workflow
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    import httpx
    from pydantic import SecretStr

    from activities.lever import LeverActivities
    from pylever.clients.lever import LeverClient
    from pylever.clients.lever_accounts import LeverAccounts
    from pylever.config.file import Account
    from pylever.contracts.records import ReadCandidate, TagWrite
    from pylever.temporal.legacy_queues import (
        LegacyQueueDrain,
        account_of,
        old_executions_query,
    )
    from pylever.temporal.lever_limits import (
        DEFAULT_RPS,
        LeverLimits,
        apply_lever_limits,
        lever_limits,
        limit_change,
    )
    from sandbox.devserver import FAIRNESS_ARGS, partition_args, start_dev_server
    from sandbox.lever import LeverSandbox
    from workflows.decisions import lever_task_queue

KEY = "tenancy-lever-key-41d2"


def account(account_id: str, rps: float = DEFAULT_RPS, key: str = KEY) -> Account:
    return Account.model_construct(
        id=account_id,
        lever_api_url="http://lever.sandbox/v1",
        lever_api_key=SecretStr(key),
        lever_requests_per_second=rps,
    )


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await start_dev_server(
        extra_args=[*partition_args(1), *FAIRNESS_ARGS], data_converter=pydantic_data_converter
    )
    try:
        yield environment
    finally:
        await environment.shutdown()


def new_queue() -> str:
    return f"tenancy-{uuid.uuid4().hex[:8]}"


# --- limits: what the queue's configuration should be ----------------------------------


def test_accounts_at_the_default_rate_need_no_weight():
    limits = lever_limits([account("acme"), account("globex", 4.5), account("initech", 9.0)])
    assert limits.default_rps == DEFAULT_RPS == 9.0
    assert limits.weights == {"globex": 0.5}
    assert limits.rate_of("globex") == 4.5
    assert limits.rate_of("acme") == limits.rate_of("anyone-else") == 9.0


def test_limit_change_tolerates_the_servers_32_bit_floats_and_unsets_stale_weights():
    desired = LeverLimits(9.0, {"globex": 5 / 9, "initech": 1 / 3})
    # As the server answers after an earlier apply: float32 values, one account gone.
    change = limit_change(desired, 9.0, {"globex": 0.5555556, "acme": 0.5})
    assert change.default_rps is None
    assert change.set_weights == {"initech": 1 / 3}
    assert change.unset_weights == ("acme",)
    assert not limit_change(desired, 9.0, {"globex": 0.5555556, "initech": 0.33333334})
    assert limit_change(desired, None, {}).default_rps == 9.0


async def test_apply_sets_the_per_account_limits_once_and_follows_reloads(env):
    queue = lever_task_queue(new_queue())
    first = await apply_lever_limits(
        env.client, queue, [account(f"a{i}", 5.0 if i % 2 else 9.0) for i in range(1000)]
    )
    assert first.default_rps == 9.0 and len(first.set_weights) == 500
    again = await apply_lever_limits(
        env.client, queue, [account(f"a{i}", 5.0 if i % 2 else 9.0) for i in range(1000)]
    )
    assert not again  # nothing to change: no update sent
    # A reload: most accounts gone, one with a new rate of its own.
    reloaded = await apply_lever_limits(env.client, queue, [account("a0"), account("a7", 3.0)])
    assert reloaded.set_weights == {"a7": 3.0 / 9.0}
    assert len(reloaded.unset_weights) == 499


# --- Lever clients made on first use --------------------------------------------------


async def test_lever_clients_are_made_on_first_use_and_kept_until_their_settings_change():
    made: list[str] = []

    def factory(a: Account) -> LeverClient:
        made.append(a.id)
        return LeverClient(a.lever_api_url, a.lever_api_key.get_secret_value(), rate=0)

    levers = LeverAccounts([account(f"a{i}") for i in range(1000)], factory, retire_after=0.01)
    try:
        assert len(levers) == 1000 and levers.clients_made == 0  # idle: no client at all
        first = levers.get("a1")
        assert first is not None and levers.get("a1") is first and made == ["a1"]
        assert levers.get("nobody") is None
        levers.get("a2")
        # A reload: a1 keeps its settings, a2's key changes, a3 is removed, b1 is new.
        levers.update([account("a1"), account("a2", key="rotated-key"), account("b1")])
        assert levers.get("a1") is first
        assert levers.get("a2") is not None and made[-1] == "a2"
        assert levers.get("a3") is None and "b1" in levers
        await asyncio.sleep(0.05)  # the retired a2 client is closed after its grace
        assert levers.clients_made == 2
    finally:
        await levers.aclose()


async def test_an_unknown_account_re_reads_the_configuration_before_failing():
    lever = LeverSandbox(api_key=KEY, signature_token="t", burst=1000)
    opp = lever.create_candidate(name="Ada", emails=["ada@example.com"])["id"]
    known: dict[str, LeverClient] = {}
    rereads: list[float] = []

    async def reread() -> None:
        rereads.append(time.monotonic())
        known["newco"] = LeverClient(
            "http://lever.sandbox/v1", KEY, transport=httpx.ASGITransport(app=lever.app),
            max_attempts=1, rate=0,
        )  # fmt: skip

    activities = LeverActivities(known, on_unknown=reread)
    try:
        await activities.add_tags(TagWrite(account_id="newco", opportunity_id=opp, tags=("x",)))
        assert len(rereads) == 1
        assert "x" in lever.opportunities[opp]["tags"]
        with pytest.raises(ApplicationError) as refused:
            await activities.add_tags(TagWrite(account_id="gone", opportunity_id=opp, tags=("y",)))
        assert refused.value.type == "UnknownAccount" and refused.value.non_retryable
        assert len(rereads) == 2
    finally:
        for client in known.values():
            await client.aclose()


# --- the old per-account queues ------------------------------------------------------


def test_old_executions_are_named_by_their_ids_and_start_times():
    assert account_of("assessment:acme:opp-1:stage-2") == "acme"
    assert account_of("assessment:acme:opp-1:stage-2:test") == "acme"
    assert account_of("withdraw:globex:opp-9:archived") == "globex"
    assert account_of("remove-account:acme") is None
    query = old_executions_query("py-lever", datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    assert query.startswith('TaskQueue = "py-lever" AND ')  # this deployment's only
    assert "StartTime < '2026-11-30T13:00:00.000000Z'" in query  # an hour of rolling deploy
    assert "ExecutionStatus = 'Running'" in query and "'InvitationWorkflow'" in query


async def test_a_deployment_without_old_executions_polls_no_old_queue(env):
    made: list[str] = []

    def make_worker(queue: str, rate: float) -> Worker:
        made.append(queue)
        raise AssertionError("no old queue should be polled")

    drain = LegacyQueueDrain(env.client, new_queue(), make_worker, lambda _: 9.0)
    await asyncio.wait_for(drain.run(), 30)
    assert made == []


# --- the worker's side of a reload ---------------------------------------------------


def _process(client: Client, tmp_path, *accounts: dict):  # type: ignore[no-untyped-def]
    from pylever.config.environment import Settings
    from pylever.config.file import load_config
    from pylever.temporal.worker_process import WorkerProcess
    from sandbox.toml_writer import to_toml
    from tests.integration.test_reload import small_config

    path = tmp_path / "pylever.toml"
    path.write_text(to_toml(small_config(*accounts)))
    settings = Settings(task_queue=new_queue(), config_path=str(path))
    return WorkerProcess(client, settings, load_config(path), path.stat().st_mtime), path


async def test_a_removed_account_keeps_its_lever_calls_through_its_grace(env, tmp_path):
    """Its assessments get the withdrawal while their Lever calls still work (so they end
    cancelled, account removed, rather than error on an unknown account); then it is gone."""
    from pylever.config.reload import AccountChanges
    from sandbox.toml_writer import to_toml
    from tests.integration.test_reload import account as account_entry
    from tests.integration.test_reload import small_config

    process, path = _process(
        env.client,
        tmp_path,
        account_entry("acme"),
        account_entry("leaving", lever_requests_per_second=4.5),
    )
    old = process.reloader.current
    assert process.levers.get("leaving") is not None
    path.write_text(to_toml(small_config(account_entry("acme"))))
    assert await process.reloader.reload()
    changes = AccountChanges.between(old, process.reloader.current)
    assert changes.removed == ("leaving",)
    assert process.levers.get("leaving") is not None  # within its grace: calls in flight run
    with pytest.raises(ApplicationError) as refused:  # but no new assessment starts
        await process.workers.lever.read_candidate(
            ReadCandidate(account_id="leaving", opportunity_id="o", stage_id="s")
        )
    assert refused.value.type == "UnknownAccount" and "removed" in str(refused.value)
    removal = await env.client.get_workflow_handle("remove-account:leaving").describe()
    assert removal.status is not None
    await process._forget("leaving")  # what the grace timer runs
    assert process.levers.get("leaving") is None and process.levers.get("acme") is not None
    await process._cancel_deferred()
    await process.levers.aclose()


async def test_an_unknown_account_takes_only_additions_from_the_file(env, tmp_path):
    """An activity naming an account this worker does not know re-reads the file, but a
    file caught half-edited (an account missing) withdraws nobody: removals wait for SIGHUP."""
    from sandbox.toml_writer import to_toml
    from tests.integration.test_reload import account as account_entry
    from tests.integration.test_reload import small_config

    process, path = _process(env.client, tmp_path, account_entry("acme"), account_entry("globex"))
    path.write_text(to_toml(small_config(account_entry("acme"), account_entry("newco"))))
    await process.reread_for_unknown_account()
    assert process.levers.get("newco") is not None  # added
    assert process.levers.get("globex") is not None  # not removed
    assert [a.id for a in process.reloader.current.accounts] == ["acme", "globex"]
    with pytest.raises(RPCError):  # no removal started
        await env.client.get_workflow_handle("remove-account:globex").describe()
    await process.levers.aclose()


async def test_running_assessments_of_unconfigured_accounts_are_found(env):
    from temporalio.common import SearchAttributePair, TypedSearchAttributes

    from pylever.contracts import search_attributes as sa
    from pylever.temporal.unconfigured import unconfigured_accounts

    queue = new_queue()  # no worker: the executions stay running
    for account_id, n in (("acme", 1), ("gone-co", 2)):
        for i in range(n):
            await env.client.start_workflow(
                "AssessmentWorkflow", id=f"assessment:{account_id}:{queue}-{i}:s",
                task_queue=queue,
                search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(sa.LEVER_ACCOUNT, account_id)]
                ),
            )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        found = await unconfigured_accounts(env.client, queue, ["acme"])
        if found == {"gone-co": 2} or time.monotonic() > deadline:  # visibility catches up
            break
        await asyncio.sleep(0.3)
    assert found == {"gone-co": 2}

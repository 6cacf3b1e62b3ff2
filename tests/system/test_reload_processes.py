"""Reloading the configuration on SIGHUP (issue 12) with the deployment as real processes.

One ``ProcessStack`` (dev server, Lever and Py sandboxes, ``uvicorn api:app`` and two
``python worker.py``), one scenario, each step a rewrite of the config file and a
``kill -HUP`` to the API and both workers:

1. ADD a second account, ``globex`` (its secrets as ``file:`` paths, as an operator
   onboards one): its signed webhook, 404 before, is accepted and its candidate invited
   to globex's default test within seconds.
2. CHANGE acme's default test and thresholds: a new assessment is invited to the new
   test and judged on the new thresholds; one already running keeps the old ones.
3. BROKEN file (a threshold out of range): every process stays up, logs exactly one
   ERROR line naming the file and the field, counts it in /metrics (API and workers),
   and both accounts' webhooks still behave as before.
4. REMOVE globex while two of its candidates hold live invitations: its webhooks get
   404, both assessments end ``cancelled`` ("account removed from configuration"),
   their invitations are cancelled at Py, nothing more is written to Lever for them,
   and ``remove-account:globex`` ran once although two workers reloaded. A globex
   webhook whose body was still arriving during the reload is answered 202 (the
   request finishes on the configuration it started with); its assessment sends nothing.
5. IN FLIGHT: SIGHUPs to the API while a batch of webhooks is arriving: none dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from pylever.contracts.records import AssessmentResult, RemoveAccountResult, Status
from pylever.edge.signatures import sign_lever_webhook
from sandbox.devserver import free_port
from sandbox.launcher import ManagedProcess
from sandbox.process_stack import (
    ACCOUNT,
    ADMIN_TOKEN,
    PY_ASSESSMENT_STAGE_ID,
    SECRETS,
    TRIGGER_STAGE,
    ProcessStack,
)
from sandbox.toml_writer import toml_table as _table
from tests.support.process_stacks import process_stack
from workflows.decisions import (
    TAG_INVITED,
    TAG_NEEDS_REVIEW,
    TAG_PASS,
    assessment_workflow_id,
)
from workflows.remove_account import RemoveAccountWorkflow, remove_account_workflow_id

pytestmark = pytest.mark.slow

GLOBEX = "globex"
GLOBEX_TOKEN = "ps-globex-stage-token-0c7d"
REMOVED_TEXT = "account removed from configuration"
# sandbox.py DEFAULT_TESTS
PYTHON_BASICS, SQL, ALGORITHMS = "tst_python_basics", "tst_sql", "tst_algorithms"


# --- the config file ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AccountFile:
    """One ``[[accounts]]`` entry and its trigger."""

    id: str
    api_key: str
    tokens: tuple[str, ...]
    default_test: str
    pass_threshold: float = 80
    fail_threshold: float = 40


def config_text(stack: ProcessStack, accounts: Sequence[AccountFile]) -> str:
    """The file the processes read: ProcessStack's service and Py sections, these accounts."""
    lines = _table("[service]", {"public_url": stack.api_url})
    lines += _table("[py]", {"api_url": stack.py_url, "api_key": "env:PY_API_KEY",
                             "callback_secret": "env:PY_CALLBACK_SECRET"})  # fmt: skip
    lines += _table("[defaults]", {"reminders": ["2d", "5d"], "expire_after": "7d"})
    for account in accounts:
        lines += _table("[[accounts]]", {
            "id": account.id,
            "lever_api_url": f"{stack.lever_url}/v1",
            "lever_api_key": account.api_key,
            "webhook_signature_tokens": list(account.tokens),
            "pass_threshold": account.pass_threshold,
            "fail_threshold": account.fail_threshold,
        })  # fmt: skip
        lines += _table("[[accounts.triggers]]", {
            "stage": TRIGGER_STAGE, "default_test": account.default_test,
        })  # fmt: skip
    return "\n".join(lines)


# --- watching the processes ------------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, Any]]:
    """The structured log lines in ``text`` (uvicorn's and the SDK's plain lines skipped)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


class Mark:
    """Where each process's log ends now: ``since(proc)`` reads what came after."""

    def __init__(self, procs: Sequence[ManagedProcess]) -> None:
        self.offsets = {p.name: p.log_path.stat().st_size for p in procs}

    def since(self, proc: ManagedProcess) -> list[dict[str, Any]]:
        with open(proc.log_path, "rb") as log:
            log.seek(self.offsets[proc.name])
            return json_lines(log.read().decode(errors="replace"))


def processes(stack: ProcessStack) -> list[ManagedProcess]:
    return [stack.api, *stack.workers]


async def sighup(
    stack: ProcessStack, procs: Sequence[ManagedProcess] | None = None, *, expect: str
) -> dict[str, dict[str, Any]]:
    """``kill -HUP`` each process; its first reload line (``expect``: the event's start)."""
    procs = processes(stack) if procs is None else procs
    mark = Mark(procs)
    for proc in procs:
        assert proc.pid is not None and proc.running, proc.name
        os.kill(proc.pid, signal.SIGHUP)

    async def probe() -> dict[str, dict[str, Any]] | None:
        lines = {}
        for proc in procs:
            reload_lines = [
                e for e in mark.since(proc)
                if e.get("logger") == "pylever.config.reload" and e["event"].startswith(expect)
            ]  # fmt: skip
            if not reload_lines:
                return None
            lines[proc.name] = reload_lines[0]
        return lines

    lines = await stack.eventually(probe, 30, interval=0.1, what=f"{expect!r} in every log")
    for proc in procs:  # a reload never ends a process
        assert proc.running, f"{proc.name} exited after SIGHUP:\n{proc.log_tail()}"
    return lines


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


# --- Lever, as a recruiter and as Lever's webhooks ---------------------------------------------


async def candidate_in_trigger_stage(stack: ProcessStack, name: str) -> dict[str, Any]:
    """An opportunity created straight into "Py Assessment" (the sandbox sends no webhook)."""
    response = await stack.http.post(
        f"{stack.lever_url}/_sandbox/candidates",
        json={"name": name, "emails": [f"{name.lower().replace(' ', '.')}@example.com"],
              "stage": TRIGGER_STAGE},
    )  # fmt: skip
    response.raise_for_status()
    return dict(response.json())


async def post_stage_change(
    stack: ProcessStack,
    account_id: str,
    token: str,
    opp: Mapping[str, Any],
    *,
    hold_until: asyncio.Event | None = None,
) -> httpx.Response:
    """A ``candidateStageChange`` into Py Assessment, signed as Lever signs it.

    ``hold_until``: send the headers and half the body, the rest once the event is set."""
    data = {"opportunityId": opp["id"], "candidateId": opp["id"], "contactId": opp["contact"],
            "fromStageId": "lead-new", "toStageId": PY_ASSESSMENT_STAGE_ID}  # fmt: skip
    raw = json.dumps(sign_lever_webhook(token, "candidateStageChange", data)).encode()
    content: bytes | AsyncIterator[bytes] = raw
    if hold_until is not None:
        held = hold_until

        async def halves() -> AsyncIterator[bytes]:
            yield raw[: len(raw) // 2]
            await held.wait()
            yield raw[len(raw) // 2 :]

        content = halves()
    return await stack.http.post(
        f"{stack.api_url}/webhooks/lever/{account_id}",
        content=content,
        headers={"Content-Type": "application/json", "User-Agent": "Lever-Webhooks"},
    )


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


async def invitation(stack: ProcessStack, opp_id: str, timeout: float = 20) -> dict[str, Any]:
    """The one invitation Py holds for the opportunity (within ``timeout`` seconds)."""
    [found] = await stack.wait_invitations(opp_id, timeout=timeout)
    return found


async def result_of(stack: ProcessStack, workflow_id: str, timeout: float = 30) -> AssessmentResult:
    """The assessment's result, through Temporal (the API answers 404 for a removed account)."""
    client = await stack.client()
    handle = client.get_workflow_handle(workflow_id, result_type=AssessmentResult)
    try:
        return await asyncio.wait_for(handle.result(), timeout)
    except TimeoutError:
        status = (await handle.describe()).status
        state = status.name if status is not None else "unknown"
        raise AssertionError(
            f"{workflow_id} not closed within {timeout}s ({state}); logs in {stack.workdir}"
        ) from None


# --- the stack -----------------------------------------------------------------------------------


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[tuple[ProcessStack, list[str]]]:
    """Two workers, each serving its own /metrics (to read its reload counter): the stack
    and the workers' /metrics URLs."""
    async with process_stack(tmp_path / "stack", workers=0) as stack:
        worker_metrics = []
        for _ in range(2):
            port = free_port()
            address = {"PYLEVER_WORKER_METRICS_ADDRESS": f"127.0.0.1:{port}"}
            stack.options = dataclasses.replace(stack.options, worker_env=address)
            stack.add_worker()
            worker_metrics.append(f"http://127.0.0.1:{port}/metrics")
        await asyncio.gather(*(stack.wait_worker_ready(i) for i in range(2)))
        yield stack, worker_metrics


async def test_reload_add_change_broken_remove_on_real_processes(
    deployment: tuple[ProcessStack, list[str]],
) -> None:
    stack, worker_metrics = deployment
    workdir = stack.workdir
    # globex's secrets as files: an env: secret cannot change without a restart.
    (workdir / "globex_lever_api_key").write_text(SECRETS["ACME_LEVER_API_KEY"] + "\n")
    (workdir / "globex_stage_token").write_text(GLOBEX_TOKEN + "\n")
    acme = AccountFile(ACCOUNT, "env:ACME_LEVER_API_KEY", ("env:ACME_LEVER_STAGE_TOKEN",),
                       "Python Basics")  # fmt: skip
    globex = AccountFile(
        GLOBEX, f"file:{workdir / 'globex_lever_api_key'}",
        (f"file:{workdir / 'globex_stage_token'}",), "SQL Fundamentals",
    )  # fmt: skip
    acme_token = SECRETS["ACME_LEVER_STAGE_TOKEN"]
    api_metrics = f"{stack.api_url}/metrics"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    # --- 0. acme as started; globex unknown -------------------------------------------------
    a1 = await stack.create_candidate("Acme Before", "acme.before@example.com")
    assert (await stack.move(a1))["status"] == 202
    a1_invitation = await invitation(stack, a1, timeout=60)
    assert a1_invitation["test_id"] == PYTHON_BASICS
    g0 = await candidate_in_trigger_stage(stack, "Globex Early")
    assert_error(await post_stage_change(stack, GLOBEX, GLOBEX_TOKEN, g0), 404, "unknown_account")

    # --- 1. ADD globex ---------------------------------------------------------------------------
    stack.config_path.write_text(config_text(stack, [acme, globex]))
    lines = await sighup(stack, expect="configuration reloaded")
    for name, line in lines.items():
        assert line["level"] == "info", (name, line)
        assert (line["added"], line["changed"], line["removed"]) == ([GLOBEX], [], []), line
        assert line["role"] == ("api" if name == "api" else "worker"), line
        assert line["path"] == str(stack.config_path), line
    g1 = await candidate_in_trigger_stage(stack, "Globex First")
    accepted = await post_stage_change(stack, GLOBEX, GLOBEX_TOKEN, g1)
    assert accepted.status_code == 202, accepted.text
    g1_id = assessment_workflow_id(GLOBEX, g1["id"], PY_ASSESSMENT_STAGE_ID)
    assert accepted.json() == {"status": "started", "workflow_id": g1_id}
    g1_invitation = await invitation(stack, g1["id"], timeout=20)  # "within seconds"
    assert g1_invitation["test_id"] == SQL  # globex's default test, not acme's
    assert g1_invitation["reference"].startswith(f"assessment:{GLOBEX}:{g1['id']}:")
    # A wrong token is still refused for the new account; acme's token is not globex's.
    assert_error(await post_stage_change(stack, GLOBEX, acme_token, g1), 401, "bad_signature")

    # --- 2. CHANGE acme: another default test, lower thresholds -----------------------------------
    acme_changed = dataclasses.replace(
        acme, default_test="Algorithms", pass_threshold=50, fail_threshold=20
    )
    stack.config_path.write_text(config_text(stack, [acme_changed, globex]))
    lines = await sighup(stack, expect="configuration reloaded")
    for line in lines.values():
        assert (line["added"], line["changed"], line["removed"]) == ([], [ACCOUNT], []), line
    a2 = await stack.create_candidate("Acme After", "acme.after@example.com")
    assert (await stack.move(a2))["status"] == 202
    a2_invitation = await invitation(stack, a2, timeout=20)
    assert a2_invitation["test_id"] == ALGORITHMS  # the new default test
    # The same score: judged on the thresholds each assessment started with.
    await stack.complete(a1_invitation["id"], 60)  # 80/40: needs review
    await stack.complete(a2_invitation["id"], 60)  # 50/20: pass
    a1_tags = await stack.wait_tag(a1, TAG_NEEDS_REVIEW, timeout=30)
    a2_tags = await stack.wait_tag(a2, TAG_PASS, timeout=30)
    assert TAG_PASS not in a1_tags and TAG_NEEDS_REVIEW not in a2_tags

    # --- 3. BROKEN file: nothing changes ----------------------------------------------------------
    api_before = (await stack.http.get(api_metrics, headers=admin)).text
    assert metric(api_before, "pylever_config_reloads_total", process="api", result="ok") == 2.0
    assert metric(api_before, "pylever_config_reloads_total", process="api", result="failed") == 0.0
    broken = dataclasses.replace(acme_changed, pass_threshold=180)
    stack.config_path.write_text(config_text(stack, [broken, globex]))
    mark = Mark(processes(stack))
    lines = await sighup(stack, expect="configuration error")
    await asyncio.sleep(1.0)  # room for a second error line, were there one
    for proc in processes(stack):
        assert proc.running, f"{proc.name} exited on a broken file:\n{proc.log_tail()}"
        errors = [e for e in mark.since(proc) if e["level"] in ("error", "critical")]
        assert len(errors) == 1, (proc.name, errors)
        assert errors[0] == lines[proc.name]
        assert errors[0]["event"] == (
            f"configuration error: {stack.config_path}: accounts[0] (acme).pass_threshold: "
            "Input should be less than or equal to 100; keeping the configuration in force"
        ), errors[0]
        assert not [e for e in mark.since(proc) if e["event"] == "configuration reloaded"]
    api_after = (await stack.http.get(api_metrics, headers=admin)).text
    assert metric(api_after, "pylever_config_reloads_total", process="api", result="failed") == 1.0
    assert metric(api_after, "pylever_config_reloads_total", process="api", result="ok") == 2.0
    for url in worker_metrics:
        scraped = (await stack.http.get(url)).text
        assert metric(scraped, "pylever_config_reloads_total",
                      process="worker", result="failed") == 1.0, url  # fmt: skip
        assert metric(scraped, "pylever_config_reloads_total",
                      process="worker", result="ok") == 2.0, url  # fmt: skip
    # The configuration in force is still step 2's: both accounts served, acme's new test.
    g2 = await candidate_in_trigger_stage(stack, "Globex Second")
    a3 = await candidate_in_trigger_stage(stack, "Acme During Broken")
    for account_id, token, opp in ((GLOBEX, GLOBEX_TOKEN, g2), (ACCOUNT, acme_token, a3)):
        response = await post_stage_change(stack, account_id, token, opp)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "started"
    g2_invitation = await invitation(stack, g2["id"], timeout=20)
    assert g2_invitation["test_id"] == SQL
    assert (await invitation(stack, a3["id"], timeout=20))["test_id"] == ALGORITHMS

    # --- 4. REMOVE globex while two of its invitations are live -----------------------------------
    for opp in (g1, g2):  # every Lever write of the invitation done: Py - Invited is on
        await stack.wait_tag(opp["id"], TAG_INVITED, timeout=30)
    g2_id = assessment_workflow_id(GLOBEX, g2["id"], PY_ASSESSMENT_STAGE_ID)
    writes_before = {o["id"]: await stack.writes(o["id"]) for o in (g1, g2)}
    for opp_id, writes in writes_before.items():
        assert [w["op"] for w in writes] == ["addTags"], (opp_id, writes)
    # A globex webhook in flight across the reload: its body is still arriving.
    g3 = await candidate_in_trigger_stage(stack, "Globex In Flight")
    released = asyncio.Event()
    in_flight = asyncio.create_task(
        post_stage_change(stack, GLOBEX, GLOBEX_TOKEN, g3, hold_until=released)
    )
    await asyncio.sleep(0.5)  # the API has the headers and half the body
    stack.config_path.write_text(config_text(stack, [acme_changed]))
    lines = await sighup(stack, expect="configuration reloaded")
    for line in lines.values():
        assert (line["added"], line["changed"], line["removed"]) == ([], [], [GLOBEX]), line
    assert not in_flight.done()
    released.set()
    finished = await asyncio.wait_for(in_flight, 10)
    # Not dropped: it finishes on the configuration it started with.
    assert finished.status_code == 202, finished.text
    assert finished.json()["status"] == "started"
    g3_id = assessment_workflow_id(GLOBEX, g3["id"], PY_ASSESSMENT_STAGE_ID)
    assert finished.json()["workflow_id"] == g3_id
    assert_error(await post_stage_change(stack, GLOBEX, GLOBEX_TOKEN, g0), 404, "unknown_account")
    status = await stack.http.get(
        f"{stack.api_url}/accounts/{GLOBEX}/candidates/{g1['id']}", headers=admin
    )
    assert_error(status, 404, "unknown_account")
    for workflow_id in (g1_id, g2_id):
        result = await result_of(stack, workflow_id, timeout=30)
        assert (result.status, result.reason) == (Status.CANCELLED, REMOVED_TEXT), result
        assert [i.status for i in result.invitations] == [Status.CANCELLED], result

    async def cancelled_at_py() -> bool:
        statuses = [i["status"] for o in (g1, g2) for i in await stack.invitations(o["id"])]
        return statuses == ["cancelled", "cancelled"]

    await stack.eventually(cancelled_at_py, 20, what="globex's invitations cancelled at Py")
    client = await stack.client()
    remover = remove_account_workflow_id(GLOBEX)

    async def removal_runs() -> list[str]:
        return [w.run_id async for w in client.list_workflows(f'WorkflowId = "{remover}"')]

    runs = await stack.eventually(removal_runs, 10, what=f"{remover} listed")
    await asyncio.sleep(0.5)
    assert len(await removal_runs()) == len(runs) == 1, runs  # two workers reloaded, one removal

    # --- 5. IN FLIGHT: SIGHUPs to the API during a batch of webhooks ------------------------------
    batch = [await candidate_in_trigger_stage(stack, f"Acme Batch {i}") for i in range(12)]
    api_ok_before = metric((await stack.http.get(api_metrics)).text,
                           "pylever_config_reloads_total", process="api", result="ok")  # fmt: skip
    assert api_ok_before == 3.0  # add, change, remove (the broken file counted as failed)

    async def send(i: int, opp: Mapping[str, Any]) -> httpx.Response:
        await asyncio.sleep(i * 0.05)
        return await post_stage_change(stack, ACCOUNT, acme_token, opp)

    async def reload_api_repeatedly() -> None:
        for threshold in (55, 50, 55):  # each a real change of acme: new matcher and client
            await asyncio.sleep(0.12)
            stack.config_path.write_text(config_text(
                stack, [dataclasses.replace(acme_changed, pass_threshold=threshold)]))  # fmt: skip
            assert stack.api.pid is not None
            os.kill(stack.api.pid, signal.SIGHUP)

    *responses, _ = await asyncio.gather(
        *(send(i, opp) for i, opp in enumerate(batch)), reload_api_repeatedly()
    )
    assert [r.status_code for r in responses] == [202] * len(batch), [r.text for r in responses]
    assert {r.json()["status"] for r in responses} == {"started"}

    async def api_reloaded() -> float | None:
        text = (await stack.http.get(api_metrics)).text
        ok = metric(text, "pylever_config_reloads_total", process="api", result="ok")
        return ok if ok is not None and ok >= api_ok_before + 2 else None

    # Three SIGHUPs: at least two reloads (one coalesces with a reload under way).
    await stack.eventually(api_reloaded, 10, what="the API's reloads")
    assert stack.api.running

    # The removal keeps listing (15 s, 30 s, 1 min...) until quiet; once g3 has ended, stop it
    # (as an operator or a re-added account would) and read its counts.
    handle = client.get_workflow_handle(remover, result_type=RemoveAccountResult)
    # g3's assessment started after the workers dropped globex: its first Lever read is
    # refused (nothing sent), or, when a listing caught it first, it is withdrawn.
    g3_result = await result_of(stack, g3_id, timeout=40)
    await handle.signal(RemoveAccountWorkflow.stop)
    removal = await asyncio.wait_for(handle.result(), 40)
    assert g3_result.invitations == (), g3_result
    if removal.found == 2:
        assert removal == RemoveAccountResult(found=2, signalled=2)
        assert g3_result.status == Status.ERROR, g3_result
        assert (g3_result.reason or "").startswith("cannot read the opportunity"), g3_result
        assert "removed from the configuration" in (g3_result.reason or ""), g3_result
    else:
        assert removal.found == 3 and removal.signalled in (2, 3), removal
        assert g3_result.status in (Status.ERROR, Status.CANCELLED), g3_result
    assert await stack.invitations(g3["id"]) == []
    assert await stack.writes(g3["id"]) == []
    for opp_id, writes in writes_before.items():
        assert await stack.writes(opp_id) == writes, opp_id
    assert all(p.running for p in processes(stack))

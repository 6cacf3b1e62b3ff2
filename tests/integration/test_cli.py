"""``cli.py check`` against the Lever and Py sandboxes, ``cli.py status`` against the stack.

The commands run as subprocesses, as an operator runs them; the sandboxes (and
the stack's API) serve from this test process, so the subprocesses are awaited
with asyncio, never blocking the loop that serves them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pylever.ops.commands.status import render_status, waiting_text
from sandbox.devserver import free_port
from sandbox.lever import LeverSandbox
from sandbox.py import PySandbox
from tests.support.integration_stack import ADMIN_TOKEN, SECRETS, Servers, Stack

ROOT = Path(__file__).resolve().parents[2]

LEVER_KEY = "cli-lever-key-7d41"
PY_KEY = "cli-py-key-2b90"
CALLBACK_SECRET = "cli-callback-secret-55e1"
STAGE_TOKEN = "cli-stage-token-0c3f"
WRONG_LEVER_KEY = "cli-wrong-lever-key-e6a2"
WRONG_PY_KEY = "cli-wrong-py-key-93bd"
CLI_SECRETS = (LEVER_KEY, PY_KEY, CALLBACK_SECRET, STAGE_TOKEN, WRONG_LEVER_KEY, WRONG_PY_KEY)


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


async def run_cli(*args: str, env: Mapping[str, str]) -> Run:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "cli.py"), *args,
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


# --- check -------------------------------------------------------------------------------


@dataclass
class Sandboxes:
    lever_url: str
    py_url: str


@pytest.fixture(scope="module")
async def sandboxes() -> AsyncIterator[Sandboxes]:
    servers = Servers()
    lever = LeverSandbox(api_key=LEVER_KEY, signature_token=STAGE_TOKEN)
    py = PySandbox(api_key=PY_KEY, callback_secret=CALLBACK_SECRET)
    try:
        lever_url = await servers.serve(lever.app, free_port())
        py_url = await servers.serve(py.app, free_port())
        yield Sandboxes(lever_url, py_url)
    finally:
        await servers.stop()


def config_toml(
    sandboxes: Sandboxes,
    *,
    trigger_stage: str = "Py Assessment",
    default_test: str = "Python Basics",
    move_on_pass: str = "On-site interview",
) -> str:
    """config/demo.toml pointed at the test's sandboxes (secrets from the environment)."""
    return f"""
[service]
public_url = "http://127.0.0.1:8000"

[py]
api_url = "{sandboxes.py_url}"
api_key = "env:PY_API_KEY"
callback_secret = "env:PY_CALLBACK_SECRET"

[[accounts]]
id = "acme"
lever_api_url = "{sandboxes.lever_url}/v1"
lever_api_key = "env:ACME_LEVER_API_KEY"
webhook_signature_tokens = ["env:ACME_LEVER_STAGE_TOKEN"]
pass_threshold = 80
fail_threshold = 40

  [[accounts.triggers]]
  stage = "{trigger_stage}"
  default_test = "{default_test}"
  move_on_pass = "{move_on_pass}"

  [[accounts.triggers]]
  stage = "Technical Screen"
  default_test = "SQL Fundamentals"
  move_on_fail = "Reference check"
"""


def check_env(config: Path, **overrides: str) -> dict[str, str]:
    return {
        "PYLEVER_CONFIG": str(config),
        "PY_API_KEY": PY_KEY,
        "PY_CALLBACK_SECRET": CALLBACK_SECRET,
        "ACME_LEVER_API_KEY": LEVER_KEY,
        "ACME_LEVER_STAGE_TOKEN": STAGE_TOKEN,
        **overrides,
    }


def rows(run: Run) -> list[list[str]]:
    """The table's rows, split on the two-space column gaps: [account, check, target, result]."""
    lines = run.out.splitlines()
    assert lines[0].split() == ["account", "check", "target", "result"], run.out
    body = []
    for line in lines[2:]:
        if not line.strip():
            break
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        body.append(cells[:3] + [" ".join(cells[3:])])
    return body


def assert_no_secrets(run: Run) -> None:
    for secret in CLI_SECRETS:
        assert secret not in run.text


async def test_check_passes_for_a_good_config(sandboxes: Sandboxes, tmp_path: Path) -> None:
    config = tmp_path / "good.toml"
    config.write_text(config_toml(sandboxes))
    run = await run_cli("check", env=check_env(config))
    assert run.code == 0, run.text
    table = rows(run)
    checked = {(r[0], r[1], r[2]) for r in table}
    assert checked == {
        ("*", "py key", "GET /v1/tests"),
        ("acme", "lever key", "GET /stages"),
        ("acme", "trigger stage", "Py Assessment"),
        ("acme", "move_on_pass stage", "On-site interview"),
        ("acme", "trigger stage", "Technical Screen"),
        ("acme", "move_on_fail stage", "Reference check"),
        ("acme", "default test", "Python Basics"),
        ("acme", "default test", "SQL Fundamentals"),
    }
    assert all(r[3].startswith("ok") for r in table), run.out
    assert "all 8 checks passed" in run.out
    assert_no_secrets(run)


@pytest.mark.parametrize(
    ("case", "toml", "env", "check", "target", "problem"),
    [
        ("trigger stage", {"trigger_stage": "Py Assesment"}, {},
         "trigger stage", "Py Assesment", "neither the id nor the exact name"),
        ("default test", {"default_test": "Python Advanced"}, {},
         "default test", "Python Advanced", "no Py test has exactly this name"),
        ("move_on_pass", {"move_on_pass": "Onsite"}, {},
         "move_on_pass stage", "Onsite", "trigger 'Py Assessment'"),
        ("lever key", {}, {"ACME_LEVER_API_KEY": WRONG_LEVER_KEY},
         "lever key", "GET /stages", "Lever rejected the API key"),
        ("py key", {}, {"PY_API_KEY": WRONG_PY_KEY},
         "py key", "GET /v1/tests", "Py rejected the API key"),
    ],
)  # fmt: skip
async def test_check_names_the_problem(
    sandboxes: Sandboxes,
    tmp_path: Path,
    case: str,
    toml: dict[str, str],
    env: dict[str, str],
    check: str,
    target: str,
    problem: str,
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(config_toml(sandboxes, **toml))
    run = await run_cli("check", env=check_env(config, **env))
    assert run.code == 1, run.text
    table = rows(run)
    bad = [r for r in table if r[3].startswith("PROBLEM")]
    assert len(bad) == 1, run.out
    assert bad[0][:3] == ["*" if check == "py key" else "acme", check, target]
    assert problem in bad[0][3]
    assert "1 problem in" in run.out
    if case == "lever key":
        # Nothing else can be checked in Lever without the key: skipped, not reported ok.
        assert "401" in bad[0][3]
        assert {r[3] for r in table if "stage" in r[1]} == {"skipped: Lever stages not readable"}
    if case == "py key":
        assert "401" in bad[0][3]
        assert {r[3] for r in table if r[1] == "default test"} == {"skipped: Py tests not readable"}
    assert_no_secrets(run)


async def test_check_fails_while_lever_refuses_the_right_key(
    sandboxes: Sandboxes, tmp_path: Path
) -> None:
    """The configured key is right, but Lever refuses it for now (a key being rotated)."""
    config = tmp_path / "refused.toml"
    config.write_text(config_toml(sandboxes))
    async with httpx.AsyncClient(base_url=sandboxes.lever_url) as control:
        refused = await control.post("/_sandbox/faults", json={"refuse_key_for": 300})
        assert refused.status_code == 200 and refused.json()["refuse_key_for"] > 0
        try:
            run = await run_cli("check", env=check_env(config))
        finally:
            await control.post("/_sandbox/faults", json={"refuse_key_for": 0})
        stats = (await control.get("/_sandbox/stats")).json()
    assert run.code == 1, run.text
    bad = [r for r in rows(run) if r[3].startswith("PROBLEM")]
    assert [r[:3] for r in bad] == [["acme", "lever key", "GET /stages"]], run.out
    assert "Lever rejected the API key" in bad[0][3] and "401" in bad[0][3]
    assert stats["key_refusals"] >= 1
    assert_no_secrets(run)
    # Once Lever accepts the key again, the same config passes.
    again = await run_cli("check", env=check_env(config))
    assert again.code == 0, again.text


async def test_check_exits_2_on_a_bad_config(sandboxes: Sandboxes, tmp_path: Path) -> None:
    config = tmp_path / "unset.toml"
    config.write_text(config_toml(sandboxes))
    env = check_env(config)
    del env["ACME_LEVER_API_KEY"]
    run = await run_cli("check", env=env)
    assert run.code == 2, run.text
    assert "configuration error" in run.err
    assert str(config) in run.err and "ACME_LEVER_API_KEY" in run.err
    assert run.out == ""
    assert_no_secrets(run)

    run = await run_cli("check", env={})
    assert run.code == 2 and "PYLEVER_CONFIG is not set" in run.err


# --- status ------------------------------------------------------------------------------


def test_render_status_shows_what_a_running_assessment_waits_for() -> None:
    row = {
        "kind": "invitation",
        "test": "Python Basics",
        "status": "invited",
        "workflow_id": "invitation:acme:opp-1:stage:1",
        "execution_status": "running",
    }
    body = {
        "account_id": "acme",
        "opportunity_id": "opp-1",
        "assessments": [
            {**row, "waiting": {
                "activity": "lever.add_tags", "since": "2026-11-30T11:00:00.123+01:00",
                "attempts": 7,
                "last_error": "AuthError: Lever POST /opportunities/{id}/addTags -> 401 Unauthorized",
            }},
            {**row, "test": "SQL Fundamentals", "waiting": {
                "activity": "py.get_invitation", "since": "2026-11-30T09:30:00Z", "attempts": 1,
                "last_error": "RetryableApiError: Py GET /v1/invitations/{id} -> 503",
            }},
            {**row, "kind": "assessment", "test": None, "waiting": None},
        ],
    }  # fmt: skip
    text = render_status(body)
    waiting = [line for line in text.splitlines() if "waiting for" in line]
    assert waiting == [
        "  invitation Python Basics: waiting for Lever since 2026-11-30 10:00 UTC (7 attempts), "
        "last answer: AuthError: Lever POST /opportunities/{id}/addTags -> 401 Unauthorized",
        "  invitation SQL Fundamentals: waiting for Py since 2026-11-30 09:30 UTC (1 attempt), "
        "last answer: RetryableApiError: Py GET /v1/invitations/{id} -> 503",
    ]
    # Rows without ``waiting`` (an older API, closed runs) print as before.
    plain = render_status({**body, "assessments": [{**row, "waiting": None}]})
    assert "waiting for" not in plain and "retrying" not in plain
    assert waiting_text({"activity": "lever.move_to_stage"}) == "waiting for Lever"


async def completed_candidate(stack: Stack) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A candidate run to a Pass; returns (opportunity, invitation, the API's status row)."""
    opp = stack.candidate("Grace Hopper", "grace.hopper@example.com")
    attempt = await stack.move(opp, "Py Assessment")
    assert attempt.status == 202, attempt.body
    invitation = await stack.invitation(opp)
    await stack.py.complete(invitation["id"], 92)
    await stack.result(attempt.body["workflow_id"])

    async def invitation_row() -> dict[str, Any] | None:
        response = await stack.http.get(
            f"{stack.api_url}/accounts/acme/candidates/{opp}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert response.status_code == 200, response.text
        for row in response.json()["assessments"]:
            if row["kind"] == "invitation" and row["status"] == "completed" and row["closed_at"]:
                return row
        return None

    return opp, invitation, await stack.eventually(invitation_row, 20)


async def test_status_prints_the_candidates_assessments(stack: Stack) -> None:
    opp, invitation, _ = await completed_candidate(stack)
    env = {"PYLEVER_API_URL": stack.api_url, "PYLEVER_ADMIN_TOKEN": ADMIN_TOKEN}

    run = await run_cli("status", "acme", opp, env=env)
    assert run.code == 0, run.text
    assert f"account acme  opportunity {opp}  2 assessments" in run.out
    lines = run.out.splitlines()
    header = next(line for line in lines if line.startswith("kind"))
    assert header.split() == [
        "kind",
        "test",
        "status",
        "verdict",
        "score",
        "invitation",
        "sent",
        "next",
        "check",
        "started",
        "closed",
        "problem",
    ]
    child = next(line for line in lines if line.startswith("invitation "))
    for value in ("Python Basics", "completed", "pass", "92", invitation["id"]):
        assert value in child
    parent = next(line for line in lines if line.startswith("assessment "))
    assert "completed" in parent
    assert f"assessment:acme:{opp}:" in run.out  # workflow ids, to find them in the Web UI
    assert "grace.hopper@example.com" not in run.text and ADMIN_TOKEN not in run.text

    raw = await run_cli("status", "acme", opp, "--json", env=env)
    assert raw.code == 0, raw.text
    body = json.loads(raw.out)
    assert body["account_id"] == "acme" and body["opportunity_id"] == opp
    (row,) = [r for r in body["assessments"] if r["kind"] == "invitation"]
    assert row["invitation_id"] == invitation["id"]
    assert row["verdict"] == "pass" and row["score"] == 92


async def test_status_reports_refusals(stack: Stack) -> None:
    api = {"PYLEVER_API_URL": stack.api_url}
    wrong, unknown, unreachable, no_token = await asyncio.gather(
        run_cli("status", "acme", "some-opportunity",
                env={**api, "PYLEVER_ADMIN_TOKEN": "not-the-token"}),
        run_cli("status", "nope", "some-opportunity", env={**api, "PYLEVER_ADMIN_TOKEN": ADMIN_TOKEN}),
        run_cli("status", "acme", "some-opportunity",
                env={"PYLEVER_API_URL": f"http://127.0.0.1:{free_port()}",
                     "PYLEVER_ADMIN_TOKEN": ADMIN_TOKEN}),
        run_cli("status", "acme", "x", env=api),
    )  # fmt: skip
    assert wrong.code == 1 and "401 unauthorized" in wrong.err, wrong.text
    assert "not-the-token" not in wrong.text
    assert unknown.code == 1 and "404 unknown_account" in unknown.err, unknown.text
    assert unreachable.code == 1 and "cannot reach the API" in unreachable.err, unreachable.text
    assert no_token.code == 2 and "PYLEVER_ADMIN_TOKEN is not set" in no_token.err
    for run in (wrong, unknown, unreachable, no_token):
        assert ADMIN_TOKEN not in run.text
        for secret in SECRETS.values():
            assert secret not in run.text


# --- cancel ------------------------------------------------------------------------------


def test_cancel_parses_its_arguments() -> None:
    from cli import build_parser, cmd_cancel

    parser = build_parser()
    args = parser.parse_args(["cancel", "acme", "opp-1"])
    assert (args.handler, args.account, args.opportunity) == (cmd_cancel, "acme", "opp-1")
    assert args.stage is None and args.wait == 30.0
    args = parser.parse_args(["cancel", "acme", "opp-1", "--stage", "Py Assessment", "--wait", "0"])
    assert args.stage == "Py Assessment" and args.wait == 0.0
    with pytest.raises(SystemExit) as missing:
        parser.parse_args(["cancel", "acme"])
    assert missing.value.code == 2


async def test_cancel_when_nothing_runs(sandboxes: Sandboxes, stack: Stack, tmp_path: Path) -> None:
    """No assessment of the candidate: exit 1, each trigger stage's id named; bad input exits 2."""
    import base64

    from sandbox.lever import PY_ASSESSMENT_STAGE_ID
    from tests.support.integration_stack import PAYLOAD_KEY

    config = tmp_path / "pylever.toml"
    config.write_text(config_toml(sandboxes))
    target = stack.client.service_client.config.target_host
    env = check_env(
        config,
        TEMPORAL_ADDRESS=target,
        PYLEVER_PAYLOAD_KEYS=base64.b64encode(PAYLOAD_KEY).decode(),
    )
    every, one, by_id, unknown_account, unknown_stage = await asyncio.gather(
        run_cli("cancel", "acme", "nobody-0001", env=env),
        run_cli("cancel", "acme", "nobody-0001", "--stage", "Py Assessment", env=env),
        run_cli("cancel", "acme", "nobody-0001", "--stage", "some-old-stage-id", env=env),
        run_cli("cancel", "nope", "nobody-0001", env=env),
        run_cli("cancel", "acme", "nobody-0001", "--stage", "Not A Trigger", env=env),
    )
    assert every.code == 1, every.text
    assert "no running assessment of opportunity nobody-0001 in account acme" in every.err
    # Both trigger stages ("Py Assessment", "Technical Screen") resolved through GET /stages.
    not_found = [line for line in every.out.splitlines() if line.startswith("not found ")]
    assert len(not_found) == 2, every.out
    assert f"not found assessment:acme:nobody-0001:{PY_ASSESSMENT_STAGE_ID}" in not_found
    assert one.code == 1 and one.out.splitlines() == [
        f"not found assessment:acme:nobody-0001:{PY_ASSESSMENT_STAGE_ID}"
    ], one.text
    assert by_id.code == 1 and "assessment:acme:nobody-0001:some-old-stage-id" in by_id.out
    assert unknown_account.code == 2 and "unknown account 'nope'" in unknown_account.err
    assert unknown_stage.code == 2 and "'Not A Trigger'" in unknown_stage.err, unknown_stage.text
    for run in (every, one, by_id, unknown_account, unknown_stage):
        assert_no_secrets(run)
        assert "Traceback" not in run.text


async def test_remove_account_refuses_a_configured_account_and_asks_before_acting(
    sandboxes: Sandboxes, stack: Stack, tmp_path: Path
) -> None:
    """Withdrawing an account's assessments is for an account the file no longer names,
    and only with --yes; without it, the command says how many it would withdraw."""
    import base64

    from temporalio.service import RPCError

    from tests.support.integration_stack import PAYLOAD_KEY

    opp = stack.candidate("Ada Lovelace", "ada.lovelace@example.com")
    assert (await stack.move(opp, "Py Assessment")).status == 202
    await stack.invitation(opp)  # a live invitation: its assessment is running
    with_acme, without_acme = tmp_path / "with.toml", tmp_path / "without.toml"
    with_acme.write_text(config_toml(sandboxes))
    without_acme.write_text(config_toml(sandboxes).replace('id = "acme"', 'id = "initech"'))
    temporal = {
        "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
        "PYLEVER_TASK_QUEUE": stack.task_queue,
        "PYLEVER_PAYLOAD_KEYS": base64.b64encode(PAYLOAD_KEY).decode(),
    }
    configured, dry = await asyncio.gather(
        run_cli("remove-account", "acme", "--yes", env=check_env(with_acme, **temporal)),
        run_cli("remove-account", "acme", env=check_env(without_acme, **temporal)),
    )
    assert configured.code == 2 and "still in the configuration" in configured.err
    assert dry.code == 0, dry.text
    count = int(dry.out.split()[0])
    assert count >= 1 and "would be withdrawn" in dry.out and "--yes" in dry.out
    with pytest.raises(RPCError):  # nothing was started
        await stack.client.get_workflow_handle("remove-account:acme").describe()
    for run in (configured, dry):
        assert_no_secrets(run)
        assert "Traceback" not in run.text

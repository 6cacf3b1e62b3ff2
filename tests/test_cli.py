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

import pytest

from sandbox.lever import LeverSandbox
from sandbox.py import PySandbox
from tests.integration_stack import ADMIN_TOKEN, SECRETS, Servers, Stack, free_port

ROOT = Path(__file__).resolve().parent.parent

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
    assert header.split() == ["kind", "test", "status", "verdict", "score", "invitation", "sent",
                              "next", "check", "started", "closed", "problem"]
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

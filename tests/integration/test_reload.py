"""Reloading the configuration on SIGHUP (issue 12): ``pylever.config.reload`` and the API's reload.

Unit tests of ``AccountChanges`` and ``ConfigReloader`` (a good file, a broken one, an
``apply`` that fails, SIGHUPs coalescing on the running loop), then a second API on the
session stack reading a configuration file: an account added by a reload is accepted,
a removed one answers 404, a broken file changes nothing and is counted in /metrics,
and a request in flight during a reload finishes on the configuration it started with.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from starlette.applications import Starlette

from pylever.config.environment import Settings
from pylever.config.file import AppConfig, load_config
from pylever.config.reload import AccountChanges, ConfigReloader
from pylever.edge.app import create_app
from sandbox.lever import TECHNICAL_SCREEN_STAGE_ID
from sandbox.toml_writer import to_toml
from tests.support.integration_stack import ADMIN_TOKEN, PAYLOAD_KEY, SECRETS, Stack
from tests.support.pipeline_support import assert_error, signed

# --- writing configuration files ------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A config as TOML-ready data: secrets revealed, None and empty tables dropped."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, timedelta):
        return f"{int(value.total_seconds())}s"
    if isinstance(value, Mapping):
        items = {k: _plain(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in items.items() if v != {}}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_data(config: AppConfig) -> dict[str, Any]:
    return _plain(config.model_dump())


def write_config(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(to_toml(data), encoding="utf-8")


def account(account_id: str, key: str = "lever-key-0", token: str = "token-0", **more: Any) -> dict:
    return {
        "id": account_id,
        "lever_api_url": "http://127.0.0.1:9/v1",
        "lever_api_key": key,
        "webhook_signature_tokens": [token],
        "triggers": [{"stage": "Py Assessment", "default_test": "Python Basics"}],
        **more,
    }


def small_config(*accounts: dict) -> dict[str, Any]:
    return {
        "service": {"public_url": "http://127.0.0.1:9"},
        "py": {"api_url": "http://127.0.0.1:9", "api_key": "py-key-0",
               "callback_secret": "callback-secret-0"},
        "accounts": list(accounts),
    }  # fmt: skip


def reloads(process: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "pylever_config_reloads_total", {"process": process, "result": result}
    )
    return value or 0.0


class Applied:
    """An ``apply`` that records its calls; ``gate`` holds it; ``fail`` makes it raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[AppConfig, AppConfig, AccountChanges]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, old: AppConfig, new: AppConfig, changes: AccountChanges) -> None:
        self.calls.append((old, new, changes))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail


def reload_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pylever.config.reload" and r.levelno == level]


# --- AccountChanges -------------------------------------------------------------------------


def _parsed(tmp_path: Path, data: dict[str, Any], name: str = "c.toml") -> AppConfig:
    write_config(tmp_path / name, data)
    return load_config(tmp_path / name)


def test_account_changes_added_changed_removed(tmp_path: Path) -> None:
    old = _parsed(tmp_path, small_config(account("acme"), account("globex"), account("initech")))
    new = _parsed(tmp_path, small_config(
        account("globex"), account("acme", pass_threshold=70), account("hooli")))  # fmt: skip
    assert AccountChanges.between(old, new) == AccountChanges(
        added=("hooli",), changed=("acme",), removed=("initech",)
    )
    assert AccountChanges.between(old, old) == AccountChanges((), (), ())
    assert AccountChanges.between(old, old).unchanged


def test_a_rotated_secret_is_a_change(tmp_path: Path) -> None:
    old = _parsed(tmp_path, small_config(account("acme"), account("globex")))
    key = _parsed(tmp_path, small_config(account("acme", key="lever-key-1"), account("globex")))
    token = _parsed(tmp_path, small_config(account("acme"), account("globex", token="token-1")))
    assert AccountChanges.between(old, key).changed == ("acme",)
    assert AccountChanges.between(old, token).changed == ("globex",)
    # The secrets stay hidden in the record itself.
    assert "lever-key" not in repr(AccountChanges.between(old, key))


# --- ConfigReloader ------------------------------------------------------------------------


async def test_reload_applies_a_good_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pylever.toml"
    write_config(path, small_config(account("acme"), account("globex")))
    first = load_config(path)
    applied = Applied()
    reloader = ConfigReloader(path, "unit-ok", first, applied)
    assert (reloads("unit-ok", "ok"), reloads("unit-ok", "failed")) == (0.0, 0.0)  # pre-created
    assert (
        REGISTRY.get_sample_value(
            "pylever_config_reloads_total", {"process": "unit-ok", "result": "failed"}
        )
        == 0.0
    )

    write_config(path, small_config(account("acme", key="rotated-key"), account("initech")))
    caplog.set_level(logging.INFO, logger="pylever.config.reload")
    assert await reloader.reload() is True
    [(old, new, changes)] = applied.calls
    assert old is first and reloader.current is new
    assert [a.id for a in new.accounts] == ["acme", "initech"]
    assert changes == AccountChanges(added=("initech",), changed=("acme",), removed=("globex",))
    assert reloads("unit-ok", "ok") == 1.0 and reloads("unit-ok", "failed") == 0.0
    assert REGISTRY.get_sample_value(
        "pylever_config_loaded_timestamp_seconds", {"process": "unit-ok"}
    )
    [line] = reload_records(caplog, logging.INFO)
    assert line.getMessage() == "configuration reloaded"
    assert (line.added, line.changed, line.removed) == (["initech"], ["acme"], ["globex"])  # type: ignore[attr-defined]
    assert "rotated-key" not in caplog.text


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("accounts = 3\n[service\n", "not valid TOML"),
        (None, "accounts[0] (acme): fail_threshold (60) must be below pass_threshold (50)"),
    ],
)
async def test_a_broken_file_keeps_the_configuration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str | None, expected: str
) -> None:
    path = tmp_path / "pylever.toml"
    write_config(path, small_config(account("acme", key="the-secret-key")))
    first = load_config(path)
    applied = Applied()
    process = f"unit-broken-{len(expected)}"
    reloader = ConfigReloader(path, process, first, applied)
    if broken is None:  # valid TOML, invalid configuration: fail above pass
        write_config(path, small_config(
            account("acme", key="the-secret-key", pass_threshold=50, fail_threshold=60)))  # fmt: skip
    else:
        path.write_text(broken, encoding="utf-8")
    caplog.set_level(logging.INFO, logger="pylever.config.reload")

    assert await reloader.reload() is False
    assert reloader.current is first and applied.calls == []
    assert (reloads(process, "ok"), reloads(process, "failed")) == (0.0, 1.0)
    [line] = reload_records(caplog, logging.ERROR)  # exactly one error line
    message = line.getMessage()
    assert message.startswith(f"configuration error: {path}: "), message
    assert expected in message and message.endswith("; keeping the configuration in force")
    assert not reload_records(caplog, logging.INFO)
    assert "the-secret-key" not in caplog.text

    path.unlink()  # a file that is gone: the same
    assert await reloader.reload() is False
    assert reloads(process, "failed") == 2.0 and reloader.current is first


async def test_an_apply_that_fails_keeps_the_configuration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "pylever.toml"
    write_config(path, small_config(account("acme")))
    first = load_config(path)
    applied = Applied()
    applied.fail = RuntimeError("cannot start the Lever worker")
    reloader = ConfigReloader(path, "unit-apply", first, applied)
    write_config(path, small_config(account("acme"), account("globex")))
    caplog.set_level(logging.INFO, logger="pylever.config.reload")

    assert await reloader.reload() is False
    assert len(applied.calls) == 1 and reloader.current is first
    assert (reloads("unit-apply", "ok"), reloads("unit-apply", "failed")) == (0.0, 1.0)
    [line] = reload_records(caplog, logging.ERROR)
    assert "RuntimeError: cannot start the Lever worker" in line.getMessage()
    applied.fail = None  # fixed: the next reload goes through
    assert await reloader.reload() is True
    assert [a.id for a in reloader.current.accounts] == ["acme", "globex"]


async def test_sighups_during_a_reload_cause_exactly_one_more(tmp_path: Path) -> None:
    path = tmp_path / "pylever.toml"
    write_config(path, small_config(account("acme")))
    applied = Applied()
    applied.gate = asyncio.Event()
    reloader = ConfigReloader(path, "unit-sighup", load_config(path), applied)
    reloader.install()
    try:
        write_config(path, small_config(account("acme"), account("globex")))
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(applied.entered.wait(), 5)
        for _ in range(3):  # while the first reload is held in apply
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.sleep(0.05)
        assert len(applied.calls) == 1  # never two at once
        applied.gate.set()
        await _until(lambda: reloads("unit-sighup", "ok") == 2.0)
        await asyncio.sleep(0.3)
        assert len(applied.calls) == 2
        assert applied.calls[1][2] == AccountChanges((), (), ())  # the second saw the same file
        os.kill(os.getpid(), signal.SIGHUP)  # idle again: one more reload
        await _until(lambda: reloads("unit-sighup", "ok") == 3.0)
    finally:
        await reloader.aclose()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # the handler before install
    assert len(applied.calls) == 3


async def _until(condition: Any, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if condition():
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- the API ----------------------------------------------------------------------------------

INITECH_TOKEN = "initech-token-5e5e"


def stack_data(stack: Stack) -> dict[str, Any]:
    return config_data(stack.config)


def with_initech(data: dict[str, Any]) -> dict[str, Any]:
    """A third account, triggered by stage id (no Lever lookup), on globex's sandbox."""
    globex = next(a for a in data["accounts"] if a["id"] == "globex")
    initech = {
        **globex,
        "id": "initech",
        "webhook_signature_tokens": [INITECH_TOKEN],
        "triggers": [{"stage": TECHNICAL_SCREEN_STAGE_ID, "default_test": "Python Basics"}],
    }
    return {**data, "accounts": [*data["accounts"], initech]}  # fmt: skip


@pytest.fixture
async def reloading_api(
    stack: Stack, tmp_path: Path
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient, Path]]:
    """A second API on the session stack, reading its configuration from a file and
    reloading it on SIGHUP."""
    path = tmp_path / "pylever.toml"
    write_config(path, stack_data(stack))
    settings = Settings(
        config_path=str(path),
        task_queue=stack.task_queue,
        admin_token=ADMIN_TOKEN,
        payload_keys=base64.b64encode(PAYLOAD_KEY).decode(),
    )
    app = create_app(
        load_config(path), settings, client=stack.client, reload_on_sighup=True, lever_grace=0.2
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield app, http, path
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # handed back when the API stops


async def stage_change(
    http: httpx.AsyncClient, account_id: str, token: str, opp: str, stage: str
) -> httpx.Response:
    data = {"opportunityId": opp, "candidateId": opp, "contactId": opp, "toStageId": stage}
    return await http.post(f"/webhooks/lever/{account_id}", content=signed(token, data))


def closed(lever: Any) -> bool:
    return bool(lever._http._client.is_closed)


async def forget(stack: Stack, response: httpx.Response) -> None:
    """The assessment this test started for a made-up candidate: ended at once."""
    await stack.client.get_workflow_handle(response.json()["workflow_id"]).terminate("test")


async def test_api_reload_adds_and_removes_accounts(
    stack: Stack,
    reloading_api: tuple[Starlette, httpx.AsyncClient, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, http, path = reloading_api
    service = app.state.service
    before = await stage_change(http, "initech", INITECH_TOKEN, "opp-reload-1",
                                TECHNICAL_SCREEN_STAGE_ID)  # fmt: skip
    assert_error(before, 404, "unknown_account")
    acme_matcher = service.matchers["acme"]

    # SIGHUP with initech added: its webhooks are accepted within seconds.
    write_config(path, with_initech(stack_data(stack)))
    os.kill(os.getpid(), signal.SIGHUP)
    await _until(lambda: "initech" in service.matchers)
    accepted = await stage_change(http, "initech", INITECH_TOKEN, "opp-reload-1",
                                  TECHNICAL_SCREEN_STAGE_ID)  # fmt: skip
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "started"
    await forget(stack, accepted)
    assert service.matchers["acme"] is acme_matcher  # unchanged: matcher and stage cache kept

    # globex removed: its webhooks get 404, like any unknown account.
    data = with_initech(stack_data(stack))
    data["accounts"] = [a for a in data["accounts"] if a["id"] != "globex"]
    write_config(path, data)
    globex_lever = service.accounts.levers["globex"]
    assert await app.state.reloader.reload() is True
    removed = await stage_change(http, "globex", SECRETS["globex_token"], "opp-reload-2",
                                 TECHNICAL_SCREEN_STAGE_ID)  # fmt: skip
    assert_error(removed, 404, "unknown_account")
    assert not closed(globex_lever)  # requests that started before may still use it
    await _until(lambda: closed(globex_lever))  # closed after the grace delay

    # A broken file changes nothing, logs one error line and is counted.
    failed_before = reloads("api", "failed")
    broken = {**data, "accounts": [{**data["accounts"][0], "pass_threshold": 180},
                                   *data["accounts"][1:]]}  # fmt: skip
    write_config(path, broken)
    caplog.set_level(logging.INFO, logger="pylever.config.reload")
    assert await app.state.reloader.reload() is False
    [line] = reload_records(caplog, logging.ERROR)
    assert "pass_threshold" in line.getMessage()
    still = await stage_change(http, "initech", INITECH_TOKEN, "opp-reload-3",
                               TECHNICAL_SCREEN_STAGE_ID)  # fmt: skip
    assert still.status_code == 202, still.text
    await forget(stack, still)
    assert_error(
        await stage_change(http, "globex", SECRETS["globex_token"], "opp-reload-4",
                           TECHNICAL_SCREEN_STAGE_ID), 404, "unknown_account",
    )  # fmt: skip
    scraped = (await http.get("/metrics")).text
    assert reloads("api", "failed") == failed_before + 1 == 1.0
    assert 'pylever_config_reloads_total{process="api",result="failed"} 1.0' in scraped
    assert 'pylever_config_reloads_total{process="api",result="ok"} 2.0' in scraped


async def test_a_request_in_flight_finishes_on_its_configuration(
    stack: Stack, reloading_api: tuple[Starlette, httpx.AsyncClient, Path]
) -> None:
    """A webhook held in its stage lookup while a reload removes its account still ends 202."""
    app, http, path = reloading_api
    service = app.state.service
    matcher = service.matchers["acme"]
    lever = service.accounts.levers["acme"]
    held, release = asyncio.Event(), asyncio.Event()
    lookup = matcher.match

    async def slow_match(stage_id: str) -> Any:
        held.set()
        await release.wait()
        return await lookup(stage_id)

    matcher.match = slow_match  # this matcher only: the reload builds no new one for acme
    request = asyncio.create_task(
        stage_change(
            http, "acme", SECRETS["acme_token"], "opp-in-flight", TECHNICAL_SCREEN_STAGE_ID
        )  # fmt: skip
    )
    await asyncio.wait_for(held.wait(), 5)
    data = stack_data(stack)
    data["accounts"] = [a for a in data["accounts"] if a["id"] != "acme"]
    write_config(path, data)
    assert await app.state.reloader.reload() is True
    assert "acme" not in service.matchers
    release.set()
    response = await asyncio.wait_for(request, 10)
    assert response.status_code == 202, response.text
    await forget(stack, response)
    assert not closed(lever)  # kept open for the grace delay (0.2 s here, 30 s by default)
    assert_error(
        await stage_change(http, "acme", SECRETS["acme_token"], "opp-after",
                           TECHNICAL_SCREEN_STAGE_ID), 404, "unknown_account",
    )  # fmt: skip


async def test_api_reloads_a_file_changed_during_start_up(stack: Stack, tmp_path: Path) -> None:
    """A SIGHUP sent while the API started (before the lifespan installed the reload) was
    ignored: a file changed since it was read is reloaded once the handler is in place;
    an unchanged one is not."""
    from pylever.edge.app import config_mtime

    path = tmp_path / "pylever.toml"
    write_config(path, stack_data(stack))
    loaded_mtime = config_mtime(str(path))
    assert loaded_mtime is not None
    config = load_config(path)
    settings = Settings(
        config_path=str(path), task_queue=stack.task_queue,
        payload_keys=base64.b64encode(PAYLOAD_KEY).decode(),
    )  # fmt: skip
    ok = reloads("api", "ok")
    unchanged = create_app(config, settings, client=stack.client, reload_on_sighup=True,
                           lever_grace=0.2, loaded_mtime=loaded_mtime)  # fmt: skip
    async with unchanged.router.lifespan_context(unchanged):
        assert reloads("api", "ok") == ok
    write_config(path, with_initech(stack_data(stack)))  # during start-up
    os.utime(path, ns=(loaded_mtime, loaded_mtime + 1_000_000))  # (within one clock tick)
    app = create_app(config, settings, client=stack.client, reload_on_sighup=True,
                     lever_grace=0.2, loaded_mtime=loaded_mtime)  # fmt: skip
    async with app.router.lifespan_context(app):
        assert reloads("api", "ok") == ok + 1
        assert "initech" in app.state.service.matchers
        assert app.state.reloader.current.account("initech") is not None

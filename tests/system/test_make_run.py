"""`make run` (sandbox/stack.py): the whole stack starts, works, and Ctrl-C stops all of it.

Run on free ports with a config of its own, so it never collides with a developer's
`make run`; everything else is what `make run` does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sandbox.devserver import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def wait_for(probe, within: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if result := await probe():
                return result
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"{what} not within {within:.0f}s")


async def test_make_run_serves_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    api, temporal, ui, lever, py = (free_port() for _ in range(5))
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[service]
public_url = "http://127.0.0.1:{api}"
[py]
api_url = "http://127.0.0.1:{py}"
api_key = "env:T_PY_KEY"
callback_secret = "env:T_PY_SECRET"
[[accounts]]
id = "acme"
lever_api_url = "http://127.0.0.1:{lever}/v1"
lever_api_key = "env:T_LEVER_KEY"
webhook_signature_tokens = ["env:T_LEVER_TOKEN"]
  [[accounts.triggers]]
  stage = "Py Assessment"
  default_test = "Python Basics"
"""
    )
    env = {
        **os.environ,
        "PYLEVER_CONFIG": str(config),
        "PYLEVER_API_PORT": str(api),
        "PYLEVER_TEMPORAL_PORT": str(temporal),
        "PYLEVER_UI_PORT": str(ui),
        "PYLEVER_DATA_DIR": str(tmp_path / "data"),
        "T_PY_KEY": "py-key",
        "T_PY_SECRET": "py-secret",
        "T_LEVER_KEY": "lever-key",
        "T_LEVER_TOKEN": "lever-token",
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 (a long-lived child; nothing awaits it)
        [sys.executable, "-m", "sandbox.stack"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    ports = [api, temporal, ui, lever, py]
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def healthy() -> bool:
                return (await http.get(f"http://127.0.0.1:{api}/healthz")).status_code == 200

            await wait_for(healthy, 90, "/healthz")

            async def ui_up() -> bool:
                return (await http.get(f"http://127.0.0.1:{ui}/")).status_code == 200

            await wait_for(ui_up, 30, "the Temporal UI")
            assert (await http.get(f"http://127.0.0.1:{api}/readyz")).status_code == 200

            # A candidate flows: recruiter moves them in the Lever sandbox -> webhook -> worker.
            created = await http.post(
                f"http://127.0.0.1:{lever}/_sandbox/candidates",
                json={"name": "Ada", "emails": ["ada@example.com"]},
            )
            opp = created.json()["id"]
            moved = await http.post(
                f"http://127.0.0.1:{lever}/_sandbox/candidates/{opp}/stage",
                json={"stage": "Py Assessment"},
            )
            assert moved.json()["webhook"]["status"] == 202, moved.text

            async def invited() -> bool:
                got = await http.get(f"http://127.0.0.1:{lever}/_sandbox/candidates/{opp}")
                return "Py - Invited" in got.json()["tags"]

            await wait_for(invited, 30, "the Py - Invited tag")
        assert all(listening(p) for p in ports)

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "py-lever is running" in text and "stopping" in text
    assert [p for p in ports if listening(p)] == [], text[-3000:]
    # Secrets from the environment are not printed.
    for secret in ("py-key", "py-secret", "lever-key", "lever-token"):
        assert secret not in text

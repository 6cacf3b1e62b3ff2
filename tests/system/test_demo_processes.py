"""The demo (``python -m sandbox.demo --fast``) against ``make run`` with config/demo.toml.

``make run`` (sandbox/stack.py) runs the demo configuration moved to free ports, so it
never collides with a developer's own ``make run``; the demo's tour then runs as a
reader would run it, and its output tells what each step did: the verdicts, the
recruiter's ``Py - Resend`` (Py reminded, tag removed) and ``Py - Retake`` (a new
invitation, its verdict replacing the earlier one).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sandbox.devserver import free_port
from sandbox.stack import DEMO_ENV

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def demo_config(api: int, lever: int, py: int) -> str:
    text = (ROOT / "config" / "demo.toml").read_text()
    for old, new in (("127.0.0.1:8000", api), ("127.0.0.1:8101", lever), ("127.0.0.1:8102", py)):
        assert old in text, old
        text = text.replace(old, f"127.0.0.1:{new}")
    return text


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], within: float = 90) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            assert proc.poll() is None, "make run exited"
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{url} not answering within {within:.0f}s"
            await asyncio.sleep(0.3)


async def test_the_demo_tour_with_a_resend_and_a_retake(tmp_path: Path) -> None:
    api, temporal, ui, lever, py = (free_port() for _ in range(5))
    config = tmp_path / "demo.toml"
    config.write_text(demo_config(api, lever, py))
    assert 'commands_every = "2s"' in config.read_text()  # the commands act within seconds
    env = {
        **os.environ,
        **DEMO_ENV,
        "PYLEVER_CONFIG": str(config),
        "PYLEVER_API_PORT": str(api),
        "PYLEVER_TEMPORAL_PORT": str(temporal),
        "PYLEVER_UI_PORT": str(ui),
        "PYLEVER_DATA_DIR": str(tmp_path / "data"),
    }
    log = (tmp_path / "make-run.log").open("wb")
    stack = subprocess.Popen(  # noqa: ASYNC220 (a long-lived child; nothing awaits it)
        [sys.executable, "-m", "sandbox.stack"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        await wait_healthy(f"http://127.0.0.1:{api}/healthz", stack)
        demo = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sandbox.demo", "--fast",
            "--lever", f"http://127.0.0.1:{lever}", "--py", f"http://127.0.0.1:{py}",
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(demo.communicate(), 180)
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        try:
            stack.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()
        log.close()
    text = out.decode(errors="replace")
    assert demo.returncode == 0, text
    lines = text.splitlines()

    def line(start: str) -> str:
        found = [x for x in lines if x.strip().startswith(start)]
        assert found, f"no line starting {start!r} in:\n{text}"
        return found[0]

    def shown(label: str) -> list[str]:
        """The Py tags a ``show`` line printed after ``label``."""
        return line(label).strip().removeprefix(label).strip().split(", ")

    # 1. Ada: the resend reached Py once and its tag went away; then her pass.
    assert "Py - Resend" in shown("the recruiter's tag")
    assert "resend: Py reminded Ada (reminders sent: 1); the tag 'Py - Resend' is removed" in text
    assert shown("after the resend") == ["Py - Invited"]
    assert "Py - Pass" in shown("after Py's result")
    # 2. Linus: Needs Review, then a retake of the same test whose pass replaces it.
    assert line("invitation for test").endswith("test tst_algorithms")
    retake = line("retake: a new invitation")
    assert "for test tst_algorithms" in retake and "stays completed" in retake, retake
    assert shown("after the retake") == ["Py - Needs Review", "Py - Invited"]
    assert shown("after the retake's result (verdict replaced)") == ["Py - Pass"]
    # 3.-5. as before.
    assert "Py - Error: No Email" in text
    assert "(--fast: not waiting for the expiry)" in text

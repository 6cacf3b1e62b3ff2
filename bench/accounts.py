"""4. An idle worker with many accounts: resident memory and CPU by configured accounts.

For each size N (full 1, 100 and 1,000 accounts; quick 1, 100 and 300) a fresh
stack is started (``sandbox/process_stack.py``: dev server, sandboxes, API, one
``python worker.py``, the production worker unchanged) whose config lists N
accounts: ``acme`` and N-1 more (``acct-0002`` ...), each with its own Lever
key and webhook signature token as ``env:`` references, the way
``ProcessStack`` writes its one account, and each with one trigger. All of them
point at one Lever sandbox that accepts the N keys (``MultiKeyLeverSandbox``
below: ``sandbox.lever`` with a set of keys instead of one; each key keeps its
own 10/s, burst-20 bucket). No candidate moves: nothing runs but what the
worker does by itself.

Measured once the worker is ready (its pollers run and it logged
``startup checks done``: the start-up checks read ``GET /stages`` with each
account's key and Py's tests once) and then left alone for
``accounts_settle_seconds``:

- resident memory: VmRSS of the worker process plus any children
  (``/proc/<pid>/status``), read before and after the CPU window (the larger
  is reported);
- CPU: utime + stime of the worker (and children) over
  ``accounts_cpu_seconds`` (``/proc/<pid>/stat``), in % of one core; the dev
  server's over the same window is recorded beside it;
- the time from spawning the worker until it is ready, its thread count, and
  the API's and the dev server's RSS (in the JSON only).

Figures: ``accounts_rss_mib_<N>``, ``accounts_cpu_pct_<N>``,
``accounts_rss_ratio`` = RSS at the largest N ÷ RSS at 1 (target <= 1.25) and
``accounts_idle_cpu_pct`` = the worker's CPU at the largest N (target < 2).

``python -m bench.accounts lever-sandbox --help`` runs the multi-key Lever
sandbox (the stack starts it so; ``bench/neighbours.py`` uses the account
helpers).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BenchStack, ProcProbe, Sizes, log, mib
from sandbox._common import serve
from sandbox.launcher import PYTHON, ManagedProcess
from sandbox.lever import LeverSandbox, _basic_credentials
from sandbox.process_stack import SECRETS, TRIGGER_STAGE, StackOptions
from sandbox.toml_writer import toml_table

__all__ = [
    "ExtraAccount",
    "ExtraAccountsStack",
    "MultiKeyLeverSandbox",
    "process_tree",
    "run",
    "tree_cpu_seconds",
    "tree_rss_kib",
]

WORKER_READY_WITHIN = 900.0  # seconds: the old one-Worker-per-account start-up is slow at 1,000


# --------------------------------------------------------------------------- accounts


@dataclass(frozen=True)
class ExtraAccount:
    """One more account of the stack's config: its own Lever key and webhook token."""

    id: str
    lever_url: str  # the Lever sandbox's base URL ("/v1" is appended in the config)
    key: str
    token: str

    @property
    def _env(self) -> str:
        return "BENCH_" + re.sub(r"[^A-Z0-9]", "_", self.id.upper())

    @property
    def key_env(self) -> str:
        return f"{self._env}_LEVER_API_KEY"

    @property
    def token_env(self) -> str:
        return f"{self._env}_LEVER_STAGE_TOKEN"

    def secrets(self) -> dict[str, str]:
        return {self.key_env: self.key, self.token_env: self.token}

    def toml(self, options: StackOptions) -> list[str]:
        """``[[accounts]]`` and its trigger, as ``ProcessStack`` writes ``acme``."""
        lines = toml_table("[[accounts]]", {
            "id": self.id,
            "lever_api_url": f"{self.lever_url}/v1",
            "lever_api_key": f"env:{self.key_env}",
            "webhook_signature_tokens": [f"env:{self.token_env}"],
            "pass_threshold": options.pass_threshold,
            "fail_threshold": options.fail_threshold,
            "lever_requests_per_second": options.lever_requests_per_second,
        })  # fmt: skip
        lines += toml_table("[[accounts.triggers]]", {
            "stage": TRIGGER_STAGE,
            "default_test": options.default_test,
            "move_on_pass": options.move_on_pass,
        })  # fmt: skip
        return lines


class ExtraAccountsStack(BenchStack):
    """A ``BenchStack`` whose config lists ``extra_accounts()`` after ``acme``.

    Subclasses set what ``extra_accounts`` needs before calling ``__init__`` (the
    config is written there); ``self.lever_url`` is already set when it is called.
    The accounts' secrets go into the API's and workers' environment.
    """

    _extras: list[ExtraAccount] | None = None

    def extra_accounts(self) -> list[ExtraAccount]:
        raise NotImplementedError

    def extras(self) -> list[ExtraAccount]:
        if self._extras is None:
            self._extras = self.extra_accounts()
        return self._extras

    def _config_toml(self) -> str:
        lines = [super()._config_toml()]
        for account in self.extras():
            lines += account.toml(self.options)
        return "\n".join(lines)

    def _app_env(self) -> dict[str, str]:
        env = super()._app_env()
        for account in self.extras():
            env.update(account.secrets())
        return env

    def add_worker(self) -> int:
        self.worker_spawned_at = time.monotonic()
        return super().add_worker()

    async def wait_worker_ready(self, index: int, within: float = WORKER_READY_WITHIN) -> None:
        await super().wait_worker_ready(index, within)


# --------------------------------------------------------------------------- multi-key Lever


class MultiKeyLeverSandbox(LeverSandbox):
    """``LeverSandbox`` that accepts any of ``api_keys`` (one bucket per key, as before).

    The parent compares the request's key with ``self.api_key`` before its first
    ``await``; setting it to the request's key when that is one of ours (else to
    the first key) just before makes every listed key valid and every other one
    answer 401, as a wrong key does.
    """

    def __init__(self, *, api_keys: Sequence[str], **options: Any) -> None:
        super().__init__(api_key=api_keys[0], **options)
        self._keys = frozenset(api_keys)
        self._first_key = api_keys[0]

    async def _api_response(self, request: Any, handler: Any) -> Any:
        credentials = _basic_credentials(request.headers.get("authorization"))
        self.api_key = (
            credentials[0] if credentials and credentials[0] in self._keys else self._first_key
        )
        return await super()._api_response(request, handler)


def _serve_multi_key(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.accounts lever-sandbox",
        description="The Lever sandbox, accepting every key listed in --keys-file.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keys-file", required=True, help="one API key per line")
    parser.add_argument(
        "--signature-token",
        default=os.environ.get("LEVER_SANDBOX_SIGNATURE_TOKEN"),
        help="or LEVER_SANDBOX_SIGNATURE_TOKEN",
    )
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    keys = Path(args.keys_file).read_text().split()
    if not keys or not args.signature_token:
        parser.error("keys and a signature token are required")
    sandbox = MultiKeyLeverSandbox(
        api_keys=keys,
        signature_token=args.signature_token,
        webhook_url=args.webhook_url,
        rate=args.rate,
        burst=args.burst,
        seed=args.seed,
    )
    serve(sandbox.app, args.host, args.port)


class AccountsStack(ExtraAccountsStack):
    """``accounts`` accounts (``acme`` first) on one multi-key Lever sandbox."""

    def __init__(self, workdir: Path, *, accounts: int, **options: Any) -> None:
        self.account_count = accounts
        super().__init__(workdir, **options)
        keys_file = self.workdir / "lever-keys.txt"
        keys = [SECRETS["ACME_LEVER_API_KEY"], *(a.key for a in self.extras())]
        keys_file.write_text("\n".join(keys) + "\n")
        o = self.options
        # Replaces the single-key sandbox built by ProcessStack (same port, not started yet).
        self.lever = ManagedProcess(
            "lever-sandbox",
            [PYTHON, "-m", "bench.accounts", "lever-sandbox",
             "--port", str(self.lever_port), "--keys-file", str(keys_file),
             "--webhook-url", f"{self.api_url}/webhooks/lever/acme",
             "--rate", str(o.lever_rate), "--burst", str(o.lever_burst),
             *(["--seed", str(o.seed)] if o.seed is not None else [])],
            {**self._base_env(),
             "LEVER_SANDBOX_SIGNATURE_TOKEN": SECRETS["ACME_LEVER_STAGE_TOKEN"]},
            self.workdir / "lever-sandbox.log",
        )  # fmt: skip

    def extra_accounts(self) -> list[ExtraAccount]:
        return [
            ExtraAccount(
                id=f"acct-{i:04d}",
                lever_url=self.lever_url,
                key=f"bench-lever-key-{i:04d}-5e1c",
                token=f"bench-stage-token-{i:04d}-b7a2",
            )
            for i in range(2, self.account_count + 1)
        ]


# --------------------------------------------------------------------------- /proc, trees


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from ``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for path in glob.glob(f"/proc/{current}/task/*/children"):
            try:
                with open(path) as f:
                    todo += [int(c) for c in f.read().split()]
            except OSError:
                continue
    return found


def tree_rss_kib(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            total += ProcProbe(p).rss_kib()
        except (OSError, RuntimeError):
            continue  # gone, or a zombie
    return total


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in process_tree(pid):
        try:
            out[p] = ProcProbe(p).cpu_seconds()
        except OSError:
            continue
    return out


async def tree_cpu_percent(pid: int, seconds: float) -> dict[str, float]:
    """Average CPU of the tree over ``seconds`` (processes present at both ends)."""
    c0, t0 = tree_cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    c1, t1 = tree_cpu_seconds(pid), time.monotonic()
    used = sum(c1[p] - c0[p] for p in c1 if p in c0)
    return {
        "seconds": round(t1 - t0, 2),
        "cpu_seconds": round(used, 3),
        "cpu_percent": round(100 * used / (t1 - t0), 2),
        "processes": len(c1),
    }


def _startup_checks(log_text: str) -> dict[str, Any]:
    """The worker's ``startup checks done`` line: how many checks, how many problems."""
    for line in log_text.splitlines():
        if '"startup checks' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        return {k: entry.get(k) for k in ("event", "checks", "problems", "error")}
    return {}


# --------------------------------------------------------------------------- the scenario


async def _one_size(n: int, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    log(f"accounts: {n} account(s): starting the stack")
    async with AccountsStack(workdir / f"accounts-{n}", accounts=n, workers=1) as stack:
        ready_seconds = time.monotonic() - stack.worker_spawned_at
        worker = stack.workers[0]
        pid = worker.pid or 0
        checks = _startup_checks(worker.log_since_start())
        rss_ready = tree_rss_kib(pid)
        log(
            f"accounts: {n}: worker ready after {ready_seconds:.1f}s "
            f"({mib(rss_ready)} MiB); settling {sizes.accounts_settle_seconds:g}s"
        )
        await asyncio.sleep(sizes.accounts_settle_seconds)
        rss_before = tree_rss_kib(pid)
        temporal = ProcProbe(stack.temporal.pid or 0)
        cpu, temporal_cpu = await asyncio.gather(
            tree_cpu_percent(pid, sizes.accounts_cpu_seconds),
            temporal.cpu_percent(sizes.accounts_cpu_seconds),
        )
        rss_after = tree_rss_kib(pid)
        if not worker.running:
            raise RuntimeError(
                f"accounts: the worker with {n} accounts exited:\n{worker.log_tail()}"
            )
        result = {
            "accounts": n,
            "worker_ready_seconds": round(ready_seconds, 1),
            "startup_checks": checks,
            "worker_rss_mib": mib(max(rss_before, rss_after)),
            "worker_rss_mib_series": {
                "ready": mib(rss_ready),
                "after_settle": mib(rss_before),
                "after_cpu_window": mib(rss_after),
            },
            "worker_hwm_mib": mib(ProcProbe(pid).hwm_kib()),
            "worker_threads": ProcProbe(pid).threads(),
            "worker_cpu": cpu,
            "temporal_cpu": temporal_cpu,
            "temporal_rss_mib": mib(temporal.rss_kib()),
            "api_rss_mib": mib(tree_rss_kib(stack.api.pid or 0)),
        }
    log(
        f"accounts: {n}: RSS {result['worker_rss_mib']} MiB, CPU {cpu['cpu_percent']}% "
        f"(dev server {temporal_cpu['cpu_percent']}%)"
    )
    return result


async def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    by_size = [await _one_size(n, sizes, workdir) for n in sizes.accounts_sizes]
    smallest, largest = by_size[0], by_size[-1]
    return {
        "sizes": list(sizes.accounts_sizes),
        "settle_seconds": sizes.accounts_settle_seconds,
        "cpu_window_seconds": sizes.accounts_cpu_seconds,
        "by_size": by_size,
        "largest": largest["accounts"],
        "rss_ratio": round(largest["worker_rss_mib"] / smallest["worker_rss_mib"], 3),
        "idle_cpu_percent": largest["worker_cpu"]["cpu_percent"],
    }


def flat(result: Mapping[str, Any]) -> dict[str, Any]:
    """The key=value figures of this scenario (``bench/run.py``)."""
    out: dict[str, Any] = {}
    for entry in result["by_size"]:
        out[f"accounts_rss_mib_{entry['accounts']}"] = entry["worker_rss_mib"]
    for entry in result["by_size"]:
        out[f"accounts_cpu_pct_{entry['accounts']}"] = entry["worker_cpu"]["cpu_percent"]
    out["accounts_rss_ratio"] = result["rss_ratio"]
    out["accounts_idle_cpu_pct"] = result["idle_cpu_percent"]
    out["accounts_largest"] = result["largest"]
    return out


def table(result: Mapping[str, Any]) -> list[str]:
    lines = [
        f"Idle worker by configured accounts (settled {result['settle_seconds']:g} s, "
        f"CPU over {result['cpu_window_seconds']:g} s)",
        f"{'accounts':>8} {'ready s':>8} {'RSS MiB':>8} {'threads':>8} {'CPU %':>7} "
        f"{'server CPU %':>12} {'server MiB':>10} {'checks':>14}",
    ]
    for e in result["by_size"]:
        checks = e["startup_checks"]
        lines.append(
            f"{e['accounts']:>8} {e['worker_ready_seconds']:>8} {e['worker_rss_mib']:>8} "
            f"{e['worker_threads']:>8} {e['worker_cpu']['cpu_percent']:>7} "
            f"{e['temporal_cpu']['cpu_percent']:>12} {e['temporal_rss_mib']:>10} "
            f"{str(checks.get('checks')) + '/' + str(checks.get('problems')) + ' bad':>14}"
        )
    lines.append(
        f"  RSS at {result['largest']} ÷ RSS at 1: {result['rss_ratio']}; "
        f"idle CPU at {result['largest']}: {result['idle_cpu_percent']}% of a core"
    )
    return lines


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["lever-sandbox"]:
        sys.exit("usage: python -m bench.accounts lever-sandbox --port P --keys-file F ...")
    _serve_multi_key(sys.argv[2:])

"""A py-lever deployment as real processes, for fault, load and benchmark runs.

Every piece runs the way a deployment runs it, each in its own OS process, started by
the launcher ``make run`` uses too (sandbox/launcher.py, sandbox/devserver.py):

- the Temporal dev server (``DevServerProcess``: SQLite file with WAL pragmas,
  stopped and restarted on the same file and port);
- the Lever sandbox (``python -m sandbox.lever``) and the Py sandbox
  (``python -m sandbox.py``), reached over HTTP, including their ``/_sandbox``
  control endpoints (stats, candidates, writes, invitations, faults);
- the API (``python -m uvicorn api:app``);
- N workers (``python worker.py``) that can be SIGKILLed, stopped and restarted.

The API and the workers read a TOML config written to the work directory, whose
secrets are ``env:`` references, plus ``TEMPORAL_ADDRESS``, ``PYLEVER_TASK_QUEUE``,
``PYLEVER_ADMIN_TOKEN`` and ``PYLEVER_PAYLOAD_KEYS``. Each process logs to
``<workdir>/<name>.log``.

    async with ProcessStack(tmp_path, workers=2) as stack:
        opp = await stack.create_candidate("Ada", "ada@example.com")
        await stack.move(opp)
        [invitation] = await stack.wait_invitations(opp)
        await stack.complete(invitation["id"], 92)
        await stack.wait_tag(opp, "Py - Pass")

Importing this module starts nothing.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from pylever.temporal.codec import codec_from_env, data_converter, generate_key
from sandbox.devserver import FAIRNESS_ARGS, DevServerProcess, free_port, partition_args
from sandbox.launcher import (
    ManagedProcess,
    api_process,
    lever_sandbox_process,
    py_sandbox_process,
    worker_process,
)
from sandbox.lever import PY_ASSESSMENT_STAGE_ID
from sandbox.toml_writer import toml_table
from workflows.decisions import lever_task_queue

__all__ = [
    "ACCOUNT",
    "ADMIN_TOKEN",
    "PY_ASSESSMENT_STAGE_ID",
    "SECRETS",
    "TRIGGER_STAGE",
    "ProcessStack",
    "StackOptions",
]

T = TypeVar("T")

ACCOUNT = "acme"
TRIGGER_STAGE = "Py Assessment"
ADMIN_TOKEN = "process-stack-admin-token"
# Values of the config's ``env:`` references (names are the environment variables).
SECRETS: dict[str, str] = {
    "PY_API_KEY": "ps-py-key-4d1f",
    "PY_CALLBACK_SECRET": "ps-py-callback-secret-9a2e",
    "ACME_LEVER_API_KEY": "ps-acme-lever-key-70c3",
    "ACME_LEVER_STAGE_TOKEN": "ps-acme-stage-token-51bb",
}


# ------------------------------------------------------------------- options


@dataclass(frozen=True)
class StackOptions:
    """What the stack is started with. Faults can also be changed later over HTTP."""

    workers: int = 1
    task_queue: str = "py-lever-ps"
    # Lever sandbox: its per-key limit and injected 503s.
    lever_rate: float = 10.0
    lever_burst: int = 20
    lever_error_rate: float = 0.0
    # Py sandbox: injected 500s.
    py_error_rate: float = 0.0
    seed: int | None = 1234
    # Temporal task queue partitions (read and write). One, as deploy/dynamicconfig sets:
    # the server splits a queue's activity rate limit evenly between its partitions, so
    # with the default 4 the rate sags as partitions drain. None: the server's default.
    task_queue_partitions: int | None = 1
    # The account and its trigger (the TOML the API and workers read).
    lever_requests_per_second: float | None = None  # None: the config default
    pass_threshold: float | None = 80
    fail_threshold: float | None = 40
    default_test: str = "Python Basics"
    move_on_pass: str | None = None
    reminders: tuple[str, ...] = ("2d", "5d")
    expire_after: str = "7d"
    sweep_every: str = "off"  # the reconciliation sweep (issue 14); "off": no schedule
    sweep_lookback: str = "3d"
    # How often the worker looks for the recruiters' command tags (issue 15). None: not in
    # the file, so the config's default (1m); the command watch runs either way.
    commands_every: str | None = None
    # The workers check the config against Lever and Py at start (pylever/ops/checks.py,
    # logging "startup checks done"); start-up waits for that too.
    startup_checks: bool = True
    # Extra environment for the workers (e.g. PYLEVER_WORKER_METRICS_ADDRESS).
    worker_env: Mapping[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------- the stack


class ProcessStack:
    """Temporal, both sandboxes, the API and N workers as separate processes.

    ``start()`` / ``close()`` (or ``async with``) bring it all up and down. The
    methods below act on the processes (kill, stop, restart) and talk to the
    sandboxes and the API over HTTP; ``client()`` is a Temporal client with the
    deployment's payload codec, for looking at workflows.
    """

    def __init__(
        self, workdir: str | os.PathLike[str], options: StackOptions | None = None, **overrides: Any
    ) -> None:
        base = options or StackOptions()
        if overrides:
            base = dataclasses.replace(base, **overrides)
        self.options = base
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.api_port, self.lever_port, self.py_port = free_port(), free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.lever_url = f"http://127.0.0.1:{self.lever_port}"
        self.py_url = f"http://127.0.0.1:{self.py_port}"
        self.payload_keys = generate_key()
        self.temporal = DevServerProcess(
            self.workdir / "temporal.db",
            log_path=self.workdir / "temporal.log",
            # None up front: the workers register them at start, as in production.
            search_attributes=(),
            extra_args=[*partition_args(base.task_queue_partitions), *FAIRNESS_ARGS],
        )
        self.config_path = self.workdir / "pylever.toml"
        self.config_path.write_text(self._config_toml())
        self.lever = lever_sandbox_process(
            self.lever_port,
            webhook_url=f"{self.api_url}/webhooks/lever/{ACCOUNT}",
            api_key=SECRETS["ACME_LEVER_API_KEY"],
            signature_token=SECRETS["ACME_LEVER_STAGE_TOKEN"],
            env=self._base_env(),
            log_path=self.workdir / "lever-sandbox.log",
            rate=base.lever_rate,
            burst=base.lever_burst,
            error_rate=base.lever_error_rate,
            seed=base.seed,
        )
        self.py = py_sandbox_process(
            self.py_port,
            api_key=SECRETS["PY_API_KEY"],
            callback_secret=SECRETS["PY_CALLBACK_SECRET"],
            env=self._base_env(),
            log_path=self.workdir / "py-sandbox.log",
            error_rate=base.py_error_rate,
            seed=base.seed,
        )
        self.api = api_process(
            self.api_port, env=self._app_env(), log_path=self.workdir / "api.log"
        )
        self.workers: list[ManagedProcess] = []
        # uvicorn closes idle keep-alive connections after 5 s; a request racing that close
        # fails with RemoteProtocolError, so drop idle connections well before.
        self.http = httpx.AsyncClient(timeout=30, limits=httpx.Limits(keepalive_expiry=1.0))
        self._client: Client | None = None
        atexit.register(self._kill_all_now)

    # --- configuration and environment ---------------------------------------------

    def _config_toml(self) -> str:
        o = self.options
        lines = toml_table("[service]", {"public_url": self.api_url})
        lines += toml_table("[py]", {
            "api_url": self.py_url,
            "api_key": "env:PY_API_KEY",
            "callback_secret": "env:PY_CALLBACK_SECRET",
        })  # fmt: skip
        lines += toml_table("[defaults]", {
            "reminders": list(o.reminders), "expire_after": o.expire_after,
            "sweep_every": o.sweep_every, "sweep_lookback": o.sweep_lookback,
            "commands_every": o.commands_every,
        })  # fmt: skip
        lines += toml_table("[[accounts]]", {
            "id": ACCOUNT,
            "lever_api_url": f"{self.lever_url}/v1",
            "lever_api_key": "env:ACME_LEVER_API_KEY",
            "webhook_signature_tokens": ["env:ACME_LEVER_STAGE_TOKEN"],
            "pass_threshold": o.pass_threshold,
            "fail_threshold": o.fail_threshold,
            "lever_requests_per_second": o.lever_requests_per_second,
        })  # fmt: skip
        lines += toml_table("[[accounts.triggers]]", {
            "stage": TRIGGER_STAGE,
            "default_test": o.default_test,
            "move_on_pass": o.move_on_pass,
        })  # fmt: skip
        return "\n".join(lines)

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYLEVER_", "TEMPORAL_"))}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def app_env(self) -> dict[str, str]:
        """The API's and the workers' environment (also what ``cli.py`` needs)."""
        return self._app_env()

    def _app_env(self) -> dict[str, str]:
        return {
            **self._base_env(),
            **SECRETS,
            "PYLEVER_CONFIG": str(self.config_path),
            "TEMPORAL_ADDRESS": self.temporal.target,
            "PYLEVER_TASK_QUEUE": self.options.task_queue,
            "PYLEVER_ADMIN_TOKEN": ADMIN_TOKEN,
            "PYLEVER_PAYLOAD_KEYS": self.payload_keys,
        }

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> ProcessStack:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start everything; returns when each piece answers (workers: polling)."""
        for proc in (self.lever, self.py, self.api):
            proc.spawn()
        await self.temporal.start(ready_within=60)
        await asyncio.gather(
            self._wait_http(self.lever, f"{self.lever_url}/_sandbox/stats"),
            self._wait_http(self.py, f"{self.py_url}/_sandbox/stats"),
            self._wait_http(self.api, f"{self.api_url}/healthz"),
        )
        for _ in range(self.options.workers):
            self.add_worker()
        await asyncio.gather(*(self.wait_worker_ready(i) for i in range(len(self.workers))))

    async def close(self) -> None:
        """Stop every process (workers are killed: nothing they hold matters any more)."""
        for worker in self.workers:
            await worker.kill()
        for proc in (self.api, self.lever, self.py):
            await proc.stop(grace=5)
        await self.temporal.stop(grace=5)
        await self.http.aclose()
        atexit.unregister(self._kill_all_now)

    def _kill_all_now(self) -> None:
        for proc in (*self.workers, self.api, self.lever, self.py):
            proc.kill_now()
        # The dev server has its own atexit hook (DevServerProcess).

    async def _wait_http(self, proc: ManagedProcess, url: str, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while True:
            if not proc.running:
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await self.http.get(url, timeout=2)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.name} not answering {url}:\n{proc.log_tail()}")
            await asyncio.sleep(0.1)

    # --- workers -------------------------------------------------------------------------

    # ``python -m <worker_module>`` instead of ``python worker.py`` (a bench wrapper around it).
    worker_module: str | None = None

    def add_worker(self) -> int:
        """Spawn one more ``python worker.py``; returns its index (see ``wait_worker_ready``)."""
        index = len(self.workers)
        worker = worker_process(
            env={**self._app_env(), **self.options.worker_env},
            name=f"worker-{index}",
            log_path=self.workdir / f"worker-{index}.log",
            module=self.worker_module,
        )
        self.workers.append(worker)
        worker.spawn()
        return index

    async def wait_worker_ready(self, index: int, within: float = 60) -> None:
        """Until the worker's pollers run and its start-up checks are done.

        Both are read from the worker's log since its latest start. The start-up
        checks (``pylever.ops.checks``: Lever's stages and Py's tests, outside the rate
        limited queue) are awaited when ``StackOptions.startup_checks`` says the
        worker runs them, so their calls do not land in a measurement.
        """
        worker = self.workers[index]
        marks = ['"worker started"']
        if self.options.startup_checks:
            marks.append('"startup checks ')  # "... done" or "... failed to run"
        deadline = time.monotonic() + within
        while True:
            text = worker.log_since_start()
            missing = [m for m in marks if m not in text]
            if not missing:
                return
            if not worker.running:
                raise RuntimeError(f"{worker.name} exited:\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{worker.name} did not log {missing} within {within}s:\n{worker.log_tail()}"
                )
            await asyncio.sleep(0.1)

    async def kill_worker(self, index: int) -> int | None:
        """SIGKILL one worker (a crash: in-flight activities are lost until they time out)."""
        return await self.workers[index].kill()

    async def stop_worker(self, index: int, grace: float = 50) -> int | None:
        """SIGTERM one worker: it finishes in-flight activities (graceful shutdown)."""
        return await self.workers[index].stop(grace=grace)

    async def start_worker(self, index: int, *, wait: bool = True) -> None:
        """Start a stopped or killed worker again (same index, same log file)."""
        self.workers[index].spawn()
        if wait:
            await self.wait_worker_ready(index)

    async def restart_worker(self, index: int) -> None:
        await self.kill_worker(index)
        await self.start_worker(index)

    @property
    def running_workers(self) -> list[int]:
        return [i for i, w in enumerate(self.workers) if w.running]

    # --- Temporal ---------------------------------------------------------------------------

    async def stop_temporal(self, grace: float = 10) -> None:
        """Stop the dev server (SIGTERM); its SQLite file keeps every workflow."""
        await self.temporal.stop(grace=grace)

    async def kill_temporal(self) -> None:
        await self.temporal.kill()

    async def start_temporal(self) -> None:
        """Start the dev server again on the same database file and port."""
        await self.temporal.start(ready_within=60)

    async def client(self) -> Client:
        """A Temporal client with the deployment's codec (kept; reconnects by itself)."""
        if self._client is None:
            codec = codec_from_env({"PYLEVER_PAYLOAD_KEYS": self.payload_keys})
            self._client = await Client.connect(
                self.temporal.target, data_converter=data_converter(codec)
            )
        return self._client

    @property
    def lever_task_queue(self) -> str:
        """The shared task queue of Lever activities (each account rate-limited on it)."""
        return lever_task_queue(self.options.task_queue)

    async def poller_identities(self, task_queue: str, *, activities: bool = True) -> set[str]:
        """Identities of the workers that polled ``task_queue`` lately (activity or workflow)."""
        client = await self.client()
        kind = (
            TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
            if activities
            else (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)
        )
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=kind,
            )
        )
        return {p.identity for p in response.pollers}

    # --- the API ------------------------------------------------------------------------------

    async def readyz(self) -> int:
        return (await self.http.get(f"{self.api_url}/readyz", timeout=10)).status_code

    async def candidate_status(self, opportunity_id: str) -> dict[str, Any]:
        """``GET /accounts/acme/candidates/{id}`` with the admin token."""
        response = await self.http.get(
            f"{self.api_url}/accounts/{ACCOUNT}/candidates/{opportunity_id}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        response.raise_for_status()
        return response.json()

    # --- the Lever sandbox (a recruiter, and Lever's books) -----------------------------------

    async def _lever(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, f"{self.lever_url}/_sandbox{path}", **kwargs)
        response.raise_for_status()
        return response.json()

    async def create_candidate(
        self,
        name: str,
        email: str | None = None,
        tags: Sequence[str] = (),
        *,
        stage: str | None = None,
        advanced_at: int | None = None,
    ) -> str:
        """A new opportunity (in "New lead", or added straight into ``stage``: no webhook,
        entered at ``advanced_at`` epoch ms, default now); returns its id."""
        body: dict[str, Any] = {
            "name": name,
            "emails": [email] if email else [],
            "tags": list(tags),
        }
        if stage is not None:
            body["stage"] = stage
        if advanced_at is not None:
            body["advanced_at"] = advanced_at
        return str((await self._lever("POST", "/candidates", json=body))["id"])

    async def recruiter_tags(
        self, opportunity_id: str, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[str]:
        """A recruiter edits the candidate's tags in Lever's UI (no webhook, no API write),
        e.g. adds a command tag (``Py - Resend``); returns the tags now."""
        body = {"add": list(add), "remove": list(remove)}
        return list(
            (await self._lever("POST", f"/candidates/{opportunity_id}/tags", json=body))["tags"]
        )

    async def move(self, opportunity_id: str, stage: str = TRIGGER_STAGE) -> dict[str, Any]:
        """Move as a recruiter; returns the webhook's first attempt ``{status, body, delivery}``.

        A failed first attempt is retried by the sandbox in the background after
        1, 2, 4, 8 and 16 s, as Lever does.
        """
        result = await self._lever("POST", f"/candidates/{opportunity_id}/stage",
                                   json={"stage": stage})  # fmt: skip
        return dict(result["webhook"] or {})

    async def candidates(self) -> list[dict[str, Any]]:
        """Every opportunity the Lever sandbox holds (one request)."""
        return list(await self._lever("GET", "/candidates"))

    async def opportunity(self, opportunity_id: str) -> dict[str, Any]:
        return dict(await self._lever("GET", f"/candidates/{opportunity_id}"))

    async def tags(self, opportunity_id: str) -> list[str]:
        return list((await self.opportunity(opportunity_id))["tags"])

    async def writes(self, opportunity_id: str) -> list[dict[str, Any]]:
        """Lever API writes to the opportunity: ``{at, op, values, changed}``, oldest first."""
        return list(await self._lever("GET", f"/candidates/{opportunity_id}/writes"))

    async def count_writes(self, opportunity_id: str, op: str, value: str | None = None) -> int:
        """Like ``LeverSandbox.count_api_writes``: successful ``op`` calls (naming ``value``)."""
        return sum(
            1
            for w in await self.writes(opportunity_id)
            if w["op"] == op and (value is None or value in w["values"])
        )

    async def lever_stats(self) -> dict[str, Any]:
        """``{requests: {total, by_status, by_endpoint}, rate_limited, faults_injected, webhooks}``."""
        return dict(await self._lever("GET", "/stats"))

    async def lever_reset_stats(self) -> dict[str, Any]:
        return dict(await self._lever("POST", "/reset-stats"))

    async def lever_faults(self, **faults: Any) -> dict[str, Any]:
        """``error_rate`` (share of /v1 calls answered 503), ``rate``, ``burst``,
        ``refuse_key_for`` (seconds every /v1 call answers 401, as while a key is rotated)."""
        return dict(await self._lever("POST", "/faults", json=faults))

    async def webhook_deliveries(self) -> list[dict[str, Any]]:
        return list(await self._lever("GET", "/webhooks/deliveries"))

    # --- the Py sandbox (the candidate, and Py's books) -------------------------------------------

    async def _py(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, f"{self.py_url}/_sandbox{path}", **kwargs)
        response.raise_for_status()
        return response.json()

    async def all_invitations(self) -> list[dict[str, Any]]:
        """Every invitation Py holds, with the sandbox's bookkeeping fields."""
        return list(await self._py("GET", "/invitations"))

    async def invitations(self, opportunity_id: str) -> list[dict[str, Any]]:
        """Py's invitations whose reference names this opportunity."""
        return [i for i in await self.all_invitations() if f":{opportunity_id}:" in i["reference"]]

    async def invitations_by_opportunity(self) -> dict[str, list[dict[str, Any]]]:
        """All invitations grouped by the opportunity id in their reference (one request)."""
        grouped: dict[str, list[dict[str, Any]]] = {}
        for inv in await self.all_invitations():
            # reference = assessment:<account>:<opportunity>:<stage>:<test>
            parts = inv["reference"].split(":")
            grouped.setdefault(parts[2] if len(parts) > 2 else "", []).append(inv)
        return grouped

    async def wait_invitations(
        self, opportunity_id: str, count: int = 1, timeout: float = 60
    ) -> list[dict[str, Any]]:
        async def probe() -> list[dict[str, Any]] | None:
            found = await self.invitations(opportunity_id)
            return found if len(found) >= count else None

        return await self.eventually(
            probe, timeout, what=f"{count} invitation(s) of {opportunity_id}"
        )

    async def invitation(self, invitation_id: str) -> dict[str, Any]:
        """One invitation as Py holds it (``status``, ``reminders``, ``idempotency_key``, ...)."""
        return dict(await self._py("GET", f"/invitations/{invitation_id}"))

    async def complete(
        self, invitation_id: str, score: float, *, callback: bool = True
    ) -> dict[str, Any]:
        """The candidate finishes the test; returns ``{invitation, callback}``."""
        body = {"score": score, "callback": callback}
        return dict(await self._py("POST", f"/invitations/{invitation_id}/complete", json=body))

    async def py_stats(self) -> dict[str, Any]:
        return dict(await self._py("GET", "/stats"))

    async def py_faults(self, **faults: Any) -> dict[str, Any]:
        """``error_rate`` (share of /v1 calls answered 500), ``rate_limit_next``, ``lose_response_next``."""
        return dict(await self._py("POST", "/faults", json=faults))

    async def py_callbacks(self) -> list[dict[str, Any]]:
        return list(await self._py("GET", "/callbacks"))

    # --- waiting -------------------------------------------------------------------------------------

    async def wait_tag(self, opportunity_id: str, tag: str, timeout: float = 60) -> list[str]:
        async def probe() -> list[str] | None:
            tags = await self.tags(opportunity_id)
            return tags if tag in tags else None

        return await self.eventually(probe, timeout, what=f"tag {tag!r} on {opportunity_id}")

    async def eventually(
        self,
        probe: Callable[[], T | None | Awaitable[T | None]],
        timeout: float = 60,
        *,
        interval: float = 0.25,
        what: str = "condition",
    ) -> T:
        """Poll ``probe`` until it returns something truthy; fail naming ``what`` and the logs."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            if time.monotonic() > deadline:
                dead = [w.name for w in self.workers if not w.running]
                raise AssertionError(
                    f"{what} not met within {timeout}s (workers not running: {dead or 'none'}); "
                    f"logs in {self.workdir}"
                )
            await asyncio.sleep(interval)

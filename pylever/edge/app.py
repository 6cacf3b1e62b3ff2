"""The ASGI app: routes, start-up and shut-down, the reload on ``SIGHUP``.

``create_app`` builds an app for tests; ``app_from_env`` the one ``uvicorn api:app``
serves (see ``api.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from temporalio.client import Client
from temporalio.service import RetryConfig

from pylever.clients.lever import LeverClient
from pylever.clients.triggers import TriggerMatcher
from pylever.config.environment import Settings
from pylever.config.file import AppConfig, load_config_or_exit
from pylever.config.reload import ConfigReloader
from pylever.edge.codec_server import codec_routes
from pylever.edge.http_limits import BODY_TIMEOUT, BodyLimits, body_timeout_from_env
from pylever.edge.inbound import (
    HttpError,
    http_error,
    starlette_error,
    temporal_down,
    unexpected_error,
)
from pylever.edge.service import LEVER_GRACE, Service
from pylever.edge.throttle import AdminThrottle
from pylever.ops.logs import configure_logging, log_event
from pylever.temporal.codec import codec_from_env, data_converter
from pylever.temporal.gateway import Gateway, TemporalUnavailable

log = logging.getLogger("pylever.api")


def _endpoint(name: str) -> Any:
    """A route target that calls the ``Service`` the lifespan built."""

    async def endpoint(request: Request) -> Response:
        return await getattr(request.app.state.service, name)(request)

    endpoint.__name__ = name
    return endpoint


def build_routes(extra: list[BaseRoute]) -> list[BaseRoute]:
    return [
        Route("/webhooks/lever/{account_id}", _endpoint("lever_webhook"), methods=["POST"]),
        Route("/callbacks/py", _endpoint("py_callback"), methods=["POST"]),
        Route("/healthz", _endpoint("healthz"), methods=["GET"]),
        Route("/readyz", _endpoint("readyz"), methods=["GET"]),
        Route("/metrics", _endpoint("metrics"), methods=["GET"]),
        Route(
            "/accounts/{account_id}/candidates/{opportunity_id}",
            _endpoint("candidate_status"),
            methods=["GET"],
        ),
        *extra,
    ]


async def connect_temporal(settings: Settings, converter: Any) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=converter,
        lazy=True,
        retry_config=RetryConfig(
            max_retries=2, initial_interval_millis=100, max_interval_millis=500
        ),
    )


def create_app(
    config: AppConfig,
    settings: Settings,
    *,
    client: Client | None = None,
    lever_clients: Mapping[str, LeverClient] | None = None,
    body_timeout: float = BODY_TIMEOUT,
    reload_on_sighup: bool = False,
    lever_grace: float = LEVER_GRACE,
    loaded_mtime: int | None = None,
) -> Starlette:
    """The ASGI app. Without ``client`` it connects (lazily) to Temporal at start-up.

    ``body_timeout``: seconds a request body may take to arrive (``pylever.edge.http_limits``).
    With ``settings.config_path`` the lifespan keeps a ``ConfigReloader`` of that file in
    ``app.state.reloader``; ``reload_on_sighup`` also reloads it on ``SIGHUP``.
    ``lever_grace``: seconds a Lever client replaced by a reload stays open.
    ``loaded_mtime``: the file's ``st_mtime_ns`` when ``config`` was read (default: now); a
    file changed since then is reloaded once the SIGHUP handler is in place."""
    if settings.metrics_require_admin and not settings.admin_token:
        raise ValueError("PYLEVER_METRICS_REQUIRE_ADMIN needs PYLEVER_ADMIN_TOKEN")
    if reload_on_sighup and not settings.config_path:
        raise ValueError("reloading on SIGHUP needs PYLEVER_CONFIG")
    codec = codec_from_env({"PYLEVER_PAYLOAD_KEYS": settings.payload_keys or ""})
    converter = data_converter(codec)
    owned_lever = lever_clients is None
    levers = dict(
        lever_clients
        or {
            a.id: LeverClient(a.lever_api_url, a.lever_api_key.get_secret_value())
            for a in config.accounts
        }
    )
    matchers = {a.id: TriggerMatcher(a, levers[a.id]) for a in config.accounts}
    if loaded_mtime is None:
        loaded_mtime = config_mtime(settings.config_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        temporal = client or await connect_temporal(settings, converter)
        service = Service(
            config, settings, Gateway(temporal, settings.task_queue), matchers, levers,
            owned_levers=frozenset(levers.values()) if owned_lever else frozenset(),
            lever_grace=lever_grace,
        )  # fmt: skip
        app.state.service = service
        reloader = None
        if settings.config_path:
            reloader = ConfigReloader(settings.config_path, "api", config, service.apply_config)
            if reload_on_sighup:
                reloader.install()
                if config_mtime(settings.config_path) != loaded_mtime:
                    await reloader.reload()  # changed during start-up: that SIGHUP was ignored
        app.state.reloader = reloader
        log_event(log, "api started", accounts=[a.id for a in config.accounts])
        if "pylever.edge.http_server" not in sys.modules:  # uvicorn imports --http before the app
            log_event(
                log,
                "no header timeout: start uvicorn with --http "
                "pylever.edge.http_server:TimedH11Protocol (or UVICORN_HTTP)",
                logging.WARNING,
            )
        try:
            yield
        finally:
            if reloader is not None:
                await reloader.aclose()
            await service.aclose()

    admin_throttle = AdminThrottle()  # wrong admin tokens per client: /codec and status
    codec_extra = (
        codec_routes(
            codec,
            admin_token=settings.admin_token or "",
            cors_origins=settings.ui_origins,
            throttle=admin_throttle,
            trust_local_ui=settings.codec_trust_local_ui,  # make run only, never production
        )
        if settings.admin_token
        else []
    )
    app = Starlette(
        routes=build_routes(codec_extra),
        lifespan=lifespan,
        # Body timeout, quiet disconnects, no 413 racing an unread body; every route.
        middleware=[Middleware(BodyLimits, body_timeout=body_timeout)],
        exception_handlers={
            HttpError: http_error,
            HTTPException: starlette_error,
            TemporalUnavailable: temporal_down,
            Exception: unexpected_error,
        },
    )
    app.state.admin_throttle = admin_throttle
    return app


def app_from_env() -> Starlette:
    """Build the app from the environment; a bad config stops the process with one clear line."""
    configure_logging()
    ignore_sighup()  # until the lifespan installs the reload (SIGHUP's default kills)
    settings = Settings.from_env()
    loaded_mtime = config_mtime(settings.config_path)  # before reading: a later change reloads
    config = load_config_or_exit(settings.config_path, "api")
    try:
        return create_app(
            config, settings, body_timeout=body_timeout_from_env(), reload_on_sighup=True,
            loaded_mtime=loaded_mtime,
        )  # fmt: skip
    except ValueError as exc:  # PYLEVER_PAYLOAD_KEYS, PYLEVER_BODY_TIMEOUT, ..._REQUIRE_ADMIN
        print(f"py-lever api: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def config_mtime(path: str | None) -> int | None:
    """The configuration file's ``st_mtime_ns`` (None: no file)."""
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


def ignore_sighup() -> None:
    """Ignore SIGHUP (its default action ends the process) until a reloader takes it over;
    uvicorn handles SIGINT and SIGTERM only. Only the main thread may set it."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

"""The HTTP edge (SPEC section 3): Lever webhooks, Py callbacks, health, status, metrics.

It verifies, validates and hands over to Temporal; it never calls Lever or Py
inline, except the cached ``GET /stages`` that tells trigger stages apart.

Run: ``python -m uvicorn api:app --host 127.0.0.1 --port 8000`` with
``PYLEVER_CONFIG`` set. ``create_app`` builds an app for tests. Add
``--http pylever.http_server:TimedH11Protocol`` (or set ``UVICORN_HTTP`` to it, as the
Docker image does) for the header timeout; body limits (``pylever.http_limits``) need no flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from temporalio.client import Client
from temporalio.service import RetryConfig

from pylever import metrics
from pylever.codec import codec_from_env, data_converter
from pylever.codec_server import codec_routes
from pylever.config import Account, AppConfig, load_config_or_exit
from pylever.contracts import AssessmentInput, InvitationRecord, PyEvent, report_url_problem
from pylever.deliveries import DeliveryLedger
from pylever.errors import ApiError
from pylever.gateway import Gateway, TemporalUnavailable
from pylever.http_limits import BODY_TIMEOUT, BodyLimits, body_timeout_from_env
from pylever.lever_client import LeverClient
from pylever.logs import configure_logging, log_event
from pylever.reload import AccountChanges, ConfigReloader
from pylever.settings import Settings
from pylever.signatures import PySignatureError, verify_lever_webhook, verify_py_signature
from pylever.throttle import AdminThrottle, client_address
from pylever.triggers import TriggerMatcher, trigger_settings
from workflows.decisions import is_invitation_reference

log = logging.getLogger("pylever.api")

MAX_BODY_BYTES = 1024 * 1024
_LEVER_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # used with fullmatch
_STATUS_ENDPOINT = "GET /accounts/{account_id}/candidates/{opportunity_id}"  # a metrics label
_METRICS_ENDPOINT = "GET /metrics"
# Seconds a Lever client replaced by a reload stays open for requests using it: longer than
# one API request to Lever can take (LeverClient: 5 attempts x 10 s timeout, plus backoff).
LEVER_GRACE = 120.0


# --- errors ----------------------------------------------------------------------


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return error_response(exc.status, exc.code, exc.message)


async def _starlette_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _unexpected(_: Request, exc: Exception) -> Response:
    log_event(log, "unexpected error", logging.ERROR, error_type=type(exc).__name__)
    return error_response(500, "internal", "internal error")


async def _temporal_down(_: Request, exc: Exception) -> Response:
    log_event(log, "temporal unavailable", logging.WARNING)
    return error_response(503, "unavailable", "Temporal is not reachable; retry later")


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """Read at most ``limit`` bytes; refuse larger bodies before buffering them."""
    declared = request.headers.get("content-length")
    # isascii: str.isdigit() is also true for "²" or "١", which int() may refuse.
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, "too_large", f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "too_large", f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# A JSON escape of a UTF-16 surrogate ("\ud800"); paired ones decode to one character.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object in strict UTF-8 (RFC 8259), without lone surrogates; else 400.

    Lone surrogates (``"\\ud800"``) are legal JSON escapes but cannot be encoded
    again: they would fail later in an HMAC, a Temporal payload or a log line.
    Deep nesting fails in the C decoder as RecursionError, also a 400.
    """
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant)
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        raise HttpError(400, "invalid_json", "body is not valid JSON") from None
    if not isinstance(value, dict):
        raise HttpError(400, "invalid_json", "body must be a JSON object")
    return value


# --- Py callbacks --------------------------------------------------------------------


class _CallbackInvitation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str
    status: Literal["invited", "started", "completed", "expired", "cancelled"]
    reference: str
    score: StrictFloat | StrictInt | None = None
    report_url: str | None = None
    completed_at: datetime | None = None


class _Callback(BaseModel):
    model_config = ConfigDict(extra="ignore")
    event: Literal["invitation.started", "invitation.completed", "invitation.expired"]
    invitation: _CallbackInvitation


def validate_callback(payload: Mapping[str, Any]) -> tuple[str, PyEvent]:
    try:
        callback = _Callback.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise HttpError(422, "invalid_callback", f"{where}: {first['msg']}") from None
    inv = callback.invitation
    if callback.event == "invitation.completed":
        score = inv.score
        # A float must be finite; an int is compared as it is (math.isfinite overflows on
        # a 400-digit int, and float() would round a huge one into range).
        if (
            score is None
            or (isinstance(score, float) and not math.isfinite(score))
            or not 0 <= score <= 100
        ):
            raise HttpError(422, "invalid_score", "a completed invitation needs a score in 0..100")
        if not inv.report_url:
            raise HttpError(422, "invalid_report_url", "a completed invitation needs a report_url")
        if problem := report_url_problem(inv.report_url):  # https, <= 2,048, no user info
            raise HttpError(422, "invalid_report_url", f"the report_url {problem}")
    status = {
        "invitation.started": "started",
        "invitation.completed": "completed",
        "invitation.expired": "expired",
    }[callback.event]
    record = InvitationRecord(
        id=inv.id,
        status=status,  # type: ignore[arg-type]
        score=float(inv.score) if inv.score is not None and status == "completed" else None,
        report_url=inv.report_url if status == "completed" else None,
        completed_at=inv.completed_at,
    )
    return inv.reference, PyEvent(event=callback.event, invitation=record)


# --- the app ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Accounts:
    """The configuration in force and what the handlers build from it, per account.

    Replaced as a whole by a reload (one assignment): a request reads it once and keeps
    the snapshot it started with."""

    config: AppConfig
    matchers: Mapping[str, TriggerMatcher]
    levers: Mapping[str, LeverClient]


class Service:
    """Everything the handlers need, built once per process; the accounts are reloadable."""

    def __init__(
        self,
        config: AppConfig,
        settings: Settings,
        gateway: Gateway,
        matchers: Mapping[str, TriggerMatcher],
        levers: Mapping[str, LeverClient],
        *,
        owned_levers: frozenset[LeverClient] = frozenset(),
        lever_grace: float = LEVER_GRACE,
    ) -> None:
        self.accounts = Accounts(config, dict(matchers), dict(levers))
        self.settings = settings
        self.gateway = gateway
        self.deliveries = DeliveryLedger()  # a delivery token is bound to its first body
        # pylever_assessments: counted from visibility at most once per 30 s, off the scrape path
        self.assessments = metrics.AssessmentGauge(gateway.client)
        self._owned = set(owned_levers)  # the Lever clients this service closes (by identity)
        self._grace = lever_grace
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> AppConfig:
        return self.accounts.config

    @property
    def matchers(self) -> Mapping[str, TriggerMatcher]:
        return self.accounts.matchers

    # reload ------------------------------------------------------------------------

    async def apply_config(self, old: AppConfig, new: AppConfig, changes: AccountChanges) -> None:
        """Swap in ``new`` (``ConfigReloader``'s apply). Unchanged accounts keep their matcher
        and Lever client (the stage cache); added and changed ones get new ones; the clients
        replaced are closed after ``lever_grace`` seconds, when requests using them are done."""
        current = self.accounts
        fresh = set(changes.added) | set(changes.changed)
        matchers: dict[str, TriggerMatcher] = {}
        levers: dict[str, LeverClient] = {}
        for account in new.accounts:
            if account.id in fresh or account.id not in current.matchers:
                levers[account.id] = self._new_lever(account)
                matchers[account.id] = TriggerMatcher(account, levers[account.id])
            else:
                levers[account.id] = current.levers[account.id]
                matchers[account.id] = current.matchers[account.id]
        self.accounts = Accounts(new, matchers, levers)
        kept = set(levers.values())
        self._retire([c for c in current.levers.values() if c not in kept])

    def _new_lever(self, account: Account) -> LeverClient:
        lever = LeverClient(account.lever_api_url, account.lever_api_key.get_secret_value())
        self._owned.add(lever)
        return lever

    def _retire(self, levers: list[LeverClient]) -> None:
        """Close the clients this service owns after the grace delay (or when it stops)."""
        owned = [c for c in levers if c in self._owned]
        if not owned:
            return

        async def close_later() -> None:
            try:
                await asyncio.sleep(self._grace)
            finally:
                for lever in owned:
                    self._owned.discard(lever)
                    with contextlib.suppress(Exception):
                        await lever.aclose()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def aclose(self) -> None:
        """Close the Lever clients this service owns, the retired ones at once."""
        await self.assessments.aclose()
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for lever in self.accounts.levers.values():
            if lever in self._owned:
                self._owned.discard(lever)
                await lever.aclose()

    # Lever ------------------------------------------------------------------

    async def lever_webhook(self, request: Request) -> Response:
        accounts = self.accounts  # this request's snapshot, whatever a reload does meanwhile
        account_id = request.path_params["account_id"]
        account = accounts.config.account(account_id)
        if account is None:
            return self._webhook_done(404, "unknown", "-", "not_found", "unknown account")
        raw = await read_body(request)
        body = parse_json_object(raw)
        event_value = body.get("event")
        event = event_value if isinstance(event_value, str) else "-"
        if not verify_lever_webhook(body, account.signature_tokens()):
            return self._webhook_done(
                401, account_id, event, "bad_signature", "signature missing or wrong"
            )
        try:
            admitted = self.deliveries.admit(body)
        except RecursionError:  # nested deeper than a canonical digest can follow
            raise HttpError(400, "invalid_json", "body nests too deeply") from None
        if not admitted:
            # Genuine retries repeat the body; the signature does not cover it.
            return self._webhook_done(
                401,
                account_id,
                event,
                "replayed_token",
                "this delivery's token came before with another body",
            )
        data = body.get("data")
        if not isinstance(data, dict):
            raise HttpError(400, "invalid_webhook", "data must be a JSON object")
        if not data:
            return self._webhook_done(200, account_id, event, "verified", None, {"status": "ok"})
        if event == "candidateStageChange":
            return await self._stage_change(accounts, account_id, data)
        if event in ("candidateArchiveChange", "candidateDeleted"):
            opportunity_id = self._lever_id(data, "opportunityId")
            if event == "candidateArchiveChange" and not data.get("toArchived"):
                return self._ignored(account_id, event, "unarchived")
            reason: Literal["archived", "deleted"] = (
                "deleted" if event == "candidateDeleted" else "archived"
            )
            stage_ids = await accounts.matchers[account_id].stage_ids()
            workflow_id = await self.gateway.withdraw_candidate(
                account_id, opportunity_id, reason, stage_ids
            )
            return self._webhook_done(
                202,
                account_id,
                event,
                "withdrawing",
                None,
                {"status": "withdrawing", "workflow_id": workflow_id},
                opportunity=opportunity_id,
            )
        return self._ignored(account_id, event, "event not acted on")

    async def _stage_change(
        self, accounts: Accounts, account_id: str, data: Mapping[str, Any]
    ) -> Response:
        event = "candidateStageChange"
        opportunity_id = self._lever_id(data, "opportunityId")
        stage_id = self._lever_id(data, "toStageId")
        try:
            trigger = await accounts.matchers[account_id].match(stage_id)
        except ApiError as exc:
            log_event(
                log, "stage lookup failed", logging.WARNING, account=account_id, error=exc.message
            )
            return error_response(503, "lever_unavailable", "cannot list Lever stages; retry later")
        if trigger is None:
            return self._ignored(account_id, event, "not a trigger stage", opportunity_id)
        account = accounts.config.account(account_id)
        assert account is not None
        started = await self.gateway.start_assessment(
            AssessmentInput(
                account_id=account_id,
                opportunity_id=opportunity_id,
                stage_id=stage_id,
                settings=trigger_settings(accounts.config, account, trigger),
            )
        )
        return self._webhook_done(
            202,
            account_id,
            event,
            started.status,
            None,
            {"status": started.status, "workflow_id": started.workflow_id},
            opportunity=opportunity_id,
            workflow_id=started.workflow_id,
        )

    @staticmethod
    def _lever_id(data: Mapping[str, Any], field: str) -> str:
        value = data.get(field)
        if not isinstance(value, str) or not _LEVER_ID.fullmatch(value):
            raise HttpError(400, "invalid_webhook", f"data.{field} must be a Lever id")
        return value

    def _ignored(
        self, account_id: str, event: str, reason: str, opportunity: str | None = None
    ) -> Response:
        return self._webhook_done(
            200,
            account_id,
            event,
            "ignored",
            None,
            {"status": "ignored", "reason": reason},
            opportunity=opportunity,
        )

    def _webhook_done(
        self,
        status: int,
        account_id: str,
        event: str,
        outcome: str,
        error: str | None,
        body: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Response:
        metrics.WEBHOOKS.labels(
            account=account_id, event=_event_label(event), outcome=outcome
        ).inc()
        log_event(
            log,
            "lever webhook",
            account=account_id,
            lever_event=_loggable(event),
            outcome=outcome,
            **{k: v for k, v in fields.items() if v is not None},
        )
        if error is not None:
            code = {401: "bad_signature", 404: "unknown_account"}.get(status, outcome)
            if outcome == "replayed_token":
                code = outcome
            return error_response(status, code, error)
        return JSONResponse(body or {}, status_code=status)

    # Py ----------------------------------------------------------------------------

    async def py_callback(self, request: Request) -> Response:
        raw = await read_body(request)
        try:
            verify_py_signature(
                request.headers.get("py-signature"),
                raw,
                self.config.py.callback_secret.get_secret_value(),
            )
        except PySignatureError as exc:
            return self._callback_done(401, "bad_signature", str(exc))
        payload = parse_json_object(raw)
        try:
            reference, event = validate_callback(payload)
        except HttpError as exc:
            return self._callback_done(exc.status, exc.code, exc.message)
        if not is_invitation_reference(reference):
            return self._callback_done(404, "not_found", "no such assessment")
        outcome = await self.gateway.signal_py_event(reference, event)
        # The reference is "assessment:<account>:<opportunity>:<stage>:<test>" (checked above):
        # log who it concerns, so on-call can follow one candidate across webhook and callback.
        _, account_id, opportunity_id, *_ = reference.split(":")
        log_fields = {
            "account": account_id,
            "opportunity": opportunity_id,
            "workflow_id": reference,
            "py_event": event.event,
        }
        if outcome == "not_found":
            return self._callback_done(404, "not_found", "no such assessment", **log_fields)
        if outcome == "finished":
            return self._callback_done(409, "finished", "the assessment has finished", **log_fields)
        return self._callback_done(202, "signalled", None, **log_fields)

    def _callback_done(
        self, status: int, outcome: str, error: str | None, **fields: Any
    ) -> Response:
        metrics.CALLBACKS.labels(outcome=outcome).inc()
        log_event(log, "py callback", outcome=outcome, **fields)
        if error is not None:
            return error_response(status, outcome, error)
        return JSONResponse(
            {"status": outcome, "workflow_id": fields.get("workflow_id")}, status_code=status
        )

    # operations ------------------------------------------------------------------------

    async def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _: Request) -> Response:
        if await self.gateway.ready():
            return JSONResponse({"status": "ready"})
        return error_response(503, "unavailable", "Temporal is not reachable")

    async def metrics(self, request: Request) -> Response:
        # It names every account: with PYLEVER_METRICS_REQUIRE_ADMIN, for the admin token only.
        if (
            self.settings.metrics_require_admin
            and (refused := self._require_admin(request, _METRICS_ENDPOINT)) is not None
        ):
            return refused
        await self.assessments.scraped()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def _require_admin(self, request: Request, endpoint: str = _STATUS_ENDPOINT) -> Response | None:
        """None for the admin token; raises 401 for no or a wrong token; a 429 response while
        the client's budget of wrong tokens is spent. ``endpoint``: the metrics label."""
        expected = self.settings.admin_token
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        token = token.strip()
        if not expected or scheme.lower() != "bearer" or not token:  # no guess: not throttled
            raise HttpError(401, "unauthorized", "a valid admin bearer token is required")
        # Wrong tokens are throttled per client (pylever.throttle), shared with /codec.
        throttle: AdminThrottle = request.app.state.admin_throttle
        client = client_address(request)
        wait = throttle.retry_after(client, endpoint)
        if wait is not None:  # before the comparison: a right token is refused too
            refused = error_response(
                429, "too_many_attempts",
                f"too many wrong admin tokens from this address; retry in {wait} s",
            )  # fmt: skip
            refused.headers["Retry-After"] = str(wait)
            return refused
        if not hmac.compare_digest(token.encode("utf-8", errors="replace"), expected.encode()):
            throttle.failed(client, endpoint)
            raise HttpError(401, "unauthorized", "a valid admin bearer token is required")
        return None

    async def candidate_status(self, request: Request) -> Response:
        if (refused := self._require_admin(request)) is not None:
            return refused
        account_id = request.path_params["account_id"]
        opportunity_id = request.path_params["opportunity_id"]
        if self.config.account(account_id) is None:
            raise HttpError(404, "unknown_account", "unknown account")
        if not _LEVER_ID.fullmatch(opportunity_id):
            raise HttpError(400, "invalid_id", "not a Lever opportunity id")
        rows = await self.gateway.candidate_assessments(account_id, opportunity_id)
        return JSONResponse(
            {"account_id": account_id, "opportunity_id": opportunity_id, "assessments": rows}
        )


def _loggable(event: str) -> str:
    """The event name as sent, for the log: unsigned senders choose it, so it is bounded
    and, unless plainly printable (no U+2028, U+0085, controls), quoted with repr."""
    if len(event) <= 64 and event.isprintable():
        return event
    return repr(event[:64])


def _event_label(event: str) -> str:
    known = {
        "candidateStageChange",
        "candidateArchiveChange",
        "candidateDeleted",
        "candidateHired",
        "applicationCreated",
        "interviewCreated",
        "interviewUpdated",
        "interviewDeleted",
        "contactCreated",
        "contactUpdated",
    }
    return event if event in known else "other"


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

    ``body_timeout``: seconds a request body may take to arrive (``pylever.http_limits``).
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
        if "pylever.http_server" not in sys.modules:  # uvicorn imports --http before the app
            log_event(
                log,
                "no header timeout: start uvicorn with --http "
                "pylever.http_server:TimedH11Protocol (or UVICORN_HTTP)",
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
            HttpError: _http_error,
            HTTPException: _starlette_error,
            TemporalUnavailable: _temporal_down,
            Exception: _unexpected,
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


def __getattr__(name: str) -> Any:
    # ``uvicorn api:app`` builds the app on first access; importing ``api`` in tests does not.
    if name == "app":
        app = app_from_env()
        globals()["app"] = app
        return app
    raise AttributeError(name)

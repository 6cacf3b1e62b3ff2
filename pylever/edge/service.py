"""The endpoints' handlers (SPEC section 3): verify, validate and hand over to Temporal.

They never call Lever or Py inline, except the cached ``GET /stages`` that tells
trigger stages apart. The accounts are one immutable snapshot a reload replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pylever.clients.lever import LeverClient
from pylever.clients.triggers import TriggerMatcher, trigger_settings
from pylever.config.environment import Settings
from pylever.config.file import Account, AppConfig
from pylever.config.reload import AccountChanges
from pylever.contracts.errors import ApiError
from pylever.contracts.records import AssessmentInput
from pylever.edge.deliveries import DeliveryLedger
from pylever.edge.inbound import (
    HttpError,
    error_response,
    parse_json_object,
    read_body,
    validate_callback,
)
from pylever.edge.signatures import PySignatureError, verify_lever_webhook, verify_py_signature
from pylever.edge.throttle import AdminThrottle, client_address
from pylever.ops import metrics
from pylever.ops.logs import log_event
from pylever.temporal.gateway import Gateway
from workflows.decisions import is_invitation_reference

log = logging.getLogger("pylever.api")
_LEVER_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # used with fullmatch
_STATUS_ENDPOINT = "GET /accounts/{account_id}/candidates/{opportunity_id}"  # a metrics label
_METRICS_ENDPOINT = "GET /metrics"
# Seconds a Lever client replaced by a reload stays open for requests using it: longer than
# one API request to Lever can take (LeverClient: 5 attempts x 10 s timeout, plus backoff).
LEVER_GRACE = 120.0

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
        # Wrong tokens are throttled per client (pylever.edge.throttle), shared with /codec.
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

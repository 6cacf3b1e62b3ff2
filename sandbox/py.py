"""Py sandbox: a Starlette stand-in for the Py assessment platform API (v1) and its callbacks.

The real API is under ``/v1`` (Bearer auth, ``{"error": {"code", "message"}}``
errors, idempotent invitation creation, injected 500s and 429s with
``Retry-After``). ``/_sandbox`` stands for the candidate taking the test: it
starts, completes and expires invitations and sends signed callbacks.

Run it with ``python -m sandbox.py --help``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import hmac
import json
import os
import random
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from pylever.edge.signatures import py_signature_header
from sandbox._common import (
    JSON,
    BadBody,
    Deliverer,
    DeliveryStats,
    FirstAttempt,
    Handler,
    RequestStats,
    counted,
    first_attempt_json,
    is_number,
    read_json_object,
    sandbox_routes,
    serve,
)

DEFAULT_TESTS: list[dict[str, str]] = [
    {"id": "tst_python_basics", "name": "Python Basics"},
    {"id": "tst_sql", "name": "SQL Fundamentals"},
    {"id": "tst_algorithms", "name": "Algorithms"},
]
TESTS_PAGE_SIZE = 2
CALLBACK_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)
EVENT_BY_STATUS = {
    "started": "invitation.started",
    "completed": "invitation.completed",
    "expired": "invitation.expired",
}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
# Fields Py promises on every completed invitation (``complete(omit=...)`` can break that).
CONTRACT_FIELDS = frozenset({"score", "report_url"})


class PyError(Exception):
    """Answered as Py does: ``{"error": {"code": ..., "message": ...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        return py_error(self.status, self.code, self.message)


def py_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def rfc3339_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_callback(
    secret: str, event: str, invitation: JSON, *, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers of a Py callback (serialised once, then signed)."""
    raw = json.dumps({"event": event, "invitation": invitation}).encode()
    headers = {
        "Content-Type": "application/json",
        "Py-Signature": py_signature_header(secret, raw, timestamp=timestamp),
    }
    return raw, headers


@dataclass
class PyStats:
    requests: RequestStats = field(default_factory=RequestStats)
    rate_limited: int = 0
    faults_injected: int = 0
    lost_responses: int = 0
    invitations_created: int = 0
    idempotent_replays: int = 0
    idempotency_conflicts: int = 0
    reminders: int = 0
    cancels: int = 0
    callbacks: DeliveryStats = field(default_factory=DeliveryStats)

    def reset(self) -> None:
        self.requests.reset()
        self.callbacks.reset()
        self.rate_limited = self.faults_injected = self.lost_responses = 0
        self.invitations_created = self.idempotent_replays = self.idempotency_conflicts = 0
        self.reminders = self.cancels = 0

    def to_json(self) -> JSON:
        return {
            "requests": self.requests.to_json(),
            "rate_limited": self.rate_limited,
            "faults_injected": self.faults_injected,
            "lost_responses": self.lost_responses,
            "invitations_created": self.invitations_created,
            "idempotent_replays": self.idempotent_replays,
            "idempotency_conflicts": self.idempotency_conflicts,
            "reminders": self.reminders,
            "cancels": self.cancels,
            "callbacks": self.callbacks.to_json(),
        }


@dataclass
class InvitationRecord:
    invitation: JSON  # exactly the API's invitation JSON
    callback_url: str
    idempotency_key: str
    reminders: int = 0

    def to_json(self) -> JSON:
        """The invitation's own fields plus the sandbox's bookkeeping."""
        return {
            **self.invitation,
            "reminders": self.reminders,
            "cancelled": self.invitation["status"] == "cancelled",
            "callback_url": self.callback_url,
            "idempotency_key": self.idempotency_key,
        }


def _fingerprint(body: JSON) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _encode_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"tests:{index}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, index = text.partition(":")
        if prefix == "tests" and index.isdigit():
            return int(index)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise PyError(400, "invalid_cursor", "cursor is not one this API issued")


class PySandbox:
    """In-memory Py: tests, invitations, callbacks, stats and fault injection."""

    def __init__(
        self,
        *,
        api_key: str,
        callback_secret: str,
        tests: list[dict[str, Any]] | None = None,
        error_rate: float = 0.0,
        seed: int | None = None,
        base_url: str = "http://127.0.0.1:8102",
        delivery_transport: httpx.AsyncBaseTransport | None = None,
        retry_delays: Sequence[float] = CALLBACK_RETRY_DELAYS,
    ) -> None:
        self.api_key = api_key
        self.callback_secret = callback_secret
        self.tests: list[JSON] = [dict(t) for t in (DEFAULT_TESTS if tests is None else tests)]
        self.error_rate = error_rate
        self.base_url = base_url.rstrip("/")
        # Py's report links are https (py-lever refuses any other report_url); the sandbox
        # serves the page over its own scheme, at the same host and path.
        self.report_base = "https://" + self.base_url.split("://", 1)[-1]
        self.rate_limit_next = 0  # the next N API calls answer 429
        self.lose_response_next = 0  # the next N API calls do their work, then answer 500
        self.invitations: dict[str, InvitationRecord] = {}
        self.stats = PyStats()
        self._by_key: dict[str, tuple[str, str]] = {}  # Idempotency-Key -> (fingerprint, id)
        self._faults = random.Random(seed)
        self._ids = random.Random(None if seed is None else f"py-ids-{seed}")
        self._deliverer = Deliverer(
            stats=self.stats.callbacks, retry_delays=retry_delays, transport=delivery_transport
        )
        self.app = Starlette(
            routes=self._routes(),
            lifespan=self._lifespan,
            exception_handlers={HTTPException: self._http_exception},
        )

    # --- Python API (tests and the demo may call these directly) -------------------

    def invitation(self, invitation_id: str) -> JSON:
        return copy.deepcopy(self._record(invitation_id).invitation)

    @property
    def deliveries(self) -> list[JSON]:
        return [d.to_json() for d in self._deliverer.log]

    async def start(self, invitation_id: str) -> tuple[JSON, FirstAttempt | None]:
        record = self._record(invitation_id)
        self._require_status(record, {"invited", "started"}, "start")
        record.invitation["status"] = "started"
        return self._snapshot(record), await self._callback(record, "invitation.started")

    async def complete(
        self,
        invitation_id: str,
        score: float | None,
        report_url: str | None = None,
        *,
        callback: bool = True,
        omit: Iterable[str] = (),
    ) -> tuple[JSON, FirstAttempt | None]:
        """Complete with ``score`` and ``report_url`` (default: the sandbox's report page).

        ``omit`` (``"score"``, ``"report_url"``) breaks Py's contract on purpose: the
        completed invitation then has that field null, in the API and the callback.
        """
        omitted = set(omit)
        unknown = omitted - CONTRACT_FIELDS
        if unknown:
            raise PyError(422, "validation_error", f"cannot omit {sorted(unknown)}")
        if score is None and "score" not in omitted:
            raise PyError(422, "validation_error", "a completed invitation needs a score")
        record = self._record(invitation_id)
        self._require_status(record, {"invited", "started"}, "complete")
        inv = record.invitation
        inv.update(
            status="completed",
            score=None if "score" in omitted else score,
            report_url=None
            if "report_url" in omitted
            else report_url or f"{self.report_base}/reports/{inv['id']}",
            completed_at=rfc3339_now(),
        )
        result = await self._callback(record, "invitation.completed") if callback else None
        return self._snapshot(record), result

    async def expire(self, invitation_id: str) -> tuple[JSON, FirstAttempt | None]:
        record = self._record(invitation_id)
        self._require_status(record, {"invited", "started"}, "expire")
        record.invitation["status"] = "expired"
        return self._snapshot(record), await self._callback(record, "invitation.expired")

    async def resend(
        self, invitation_id: str, event: str | None = None
    ) -> tuple[JSON, FirstAttempt | None]:
        """Send a callback for the invitation as it is now (a duplicate, or a late one)."""
        record = self._record(invitation_id)
        event = event or EVENT_BY_STATUS.get(record.invitation["status"])
        if event is None:
            raise PyError(409, "conflict", "no callback event for an invitation in this status")
        return self._snapshot(record), await self._callback(record, event)

    async def wait_idle(self) -> None:
        """Wait for background callback retries to finish (tests)."""
        await self._deliverer.wait_idle()

    async def aclose(self) -> None:
        """Cancel background retries and close the delivery client (the lifespan calls this)."""
        await self._deliverer.aclose()

    # --- internals ----------------------------------------------------------------

    def _record(self, invitation_id: str) -> InvitationRecord:
        record = self.invitations.get(invitation_id)
        if record is None:
            raise PyError(404, "not_found", f"invitation {invitation_id} not found")
        return record

    @staticmethod
    def _snapshot(record: InvitationRecord) -> JSON:
        return copy.deepcopy(record.invitation)

    @staticmethod
    def _require_status(record: InvitationRecord, allowed: set[str], action: str) -> None:
        status = record.invitation["status"]
        if status not in allowed:
            raise PyError(409, "conflict", f"cannot {action} an invitation that is {status}")

    async def _callback(self, record: InvitationRecord, event: str) -> FirstAttempt:
        raw, headers = build_callback(self.callback_secret, event, record.invitation)
        return await self._deliverer.deliver(event, record.callback_url, raw, headers)

    def _validate_invitation(self, body: JSON) -> None:
        test_id = body.get("test_id")
        if not isinstance(test_id, str) or not test_id:
            raise PyError(422, "validation_error", "'test_id' is required")
        if not any(t["id"] == test_id for t in self.tests):
            raise PyError(422, "unknown_test", f"no test with id {test_id!r}")
        candidate = body.get("candidate")
        if not isinstance(candidate, dict):
            raise PyError(
                422, "validation_error", "'candidate' must be an object with name and email"
            )
        name, email = candidate.get("name"), candidate.get("email")
        if not isinstance(name, str) or not name.strip():
            raise PyError(422, "validation_error", "'candidate.name' is required")
        if not isinstance(email, str) or not _EMAIL.match(email):
            raise PyError(422, "invalid_email", "'candidate.email' is not a valid email address")
        reference = body.get("reference")
        if not isinstance(reference, str) or not reference:
            raise PyError(422, "validation_error", "'reference' is required")
        callback_url = body.get("callback_url")
        if not isinstance(callback_url, str) or not callback_url.startswith(
            ("http://", "https://")
        ):
            raise PyError(422, "validation_error", "'callback_url' must be an http(s) URL")

    # --- the real API (/v1) ------------------------------------------------------------

    def _routes(self) -> list[Route]:
        api: list[tuple[str, str, Handler]] = [
            ("GET", "/tests", self._list_tests),
            ("POST", "/invitations", self._create_invitation),
            ("GET", "/invitations/{id}", self._get_invitation),
            ("POST", "/invitations/{id}/reminders", self._remind),
            ("POST", "/invitations/{id}/cancel", self._cancel),
        ]
        control: list[tuple[str, str, Handler]] = [
            ("GET", "/stats", self._c_stats),
            ("POST", "/reset-stats", self._c_reset_stats),
            ("POST", "/faults", self._c_faults),
            ("GET", "/invitations", self._c_list),
            ("GET", "/invitations/{id}", self._c_get),
            ("POST", "/invitations/{id}/start", self._c_start),
            ("POST", "/invitations/{id}/complete", self._c_complete),
            ("POST", "/invitations/{id}/expire", self._c_expire),
            ("POST", "/invitations/{id}/resend", self._c_resend),
            ("GET", "/callbacks", self._c_callbacks),
        ]
        routes = sandbox_routes(
            api,
            control,
            wrap_api=self._api,
            wrap_control=self._control,
            unknown=self._unknown_endpoint,
        )
        routes += [
            Route("/take/{id}", self._take_page, methods=["GET"]),
            Route("/reports/{id}", self._report_page, methods=["GET"]),
        ]
        return routes

    def _api(self, endpoint: str | None, handler: Handler) -> Handler:
        # Looked up per request, so tests can wrap _api_response after the app is built.
        return counted(
            self.stats.requests, endpoint, lambda r, h: self._api_response(r, h), handler
        )

    async def _api_response(self, request: Request, handler: Handler) -> Response:
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            self.stats.rate_limited += 1
            return py_error(429, "rate_limited", "too many requests", headers={"Retry-After": "1"})
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            return py_error(401, "unauthorized", "missing or invalid API key")
        if self.error_rate > 0 and self._faults.random() < self.error_rate:
            self.stats.faults_injected += 1
            return py_error(500, "internal", "internal error, please retry")
        try:
            response = await handler(request)
        except PyError as exc:
            return exc.response()
        except BadBody as exc:
            return py_error(400, "bad_request", str(exc))
        if self.lose_response_next > 0:
            # The work is done but the answer is lost: what idempotency keys are for.
            self.lose_response_next -= 1
            self.stats.lost_responses += 1
            return py_error(500, "internal", "internal error, please retry")
        return response

    async def _unknown_endpoint(self, request: Request) -> Response:
        raise PyError(404, "not_found", f"no such endpoint: {request.method} {request.url.path}")

    async def _list_tests(self, request: Request) -> Response:
        cursor = request.query_params.get("cursor")
        start = _decode_cursor(cursor) if cursor else 0
        end = start + TESTS_PAGE_SIZE
        next_cursor = _encode_cursor(end) if end < len(self.tests) else None
        return JSONResponse({"data": self.tests[start:end], "next_cursor": next_cursor})

    async def _create_invitation(self, request: Request) -> Response:
        key = request.headers.get("idempotency-key", "").strip()
        if not key or len(key) > 255:
            raise PyError(400, "missing_idempotency_key", "an Idempotency-Key header is required")
        body = await read_json_object(request)
        fingerprint = _fingerprint(body)
        known = self._by_key.get(key)
        if known is not None:
            if known[0] != fingerprint:
                self.stats.idempotency_conflicts += 1
                raise PyError(
                    409, "idempotency_conflict", "this Idempotency-Key was used with another body"
                )
            self.stats.idempotent_replays += 1
            return JSONResponse(self.invitations[known[1]].invitation, status_code=200)
        self._validate_invitation(body)
        inv_id = f"inv_{self._ids.getrandbits(96):024x}"
        invitation: JSON = {
            "id": inv_id,
            "test_id": body["test_id"],
            "status": "invited",
            "reference": body["reference"],
            "candidate": {"name": body["candidate"]["name"], "email": body["candidate"]["email"]},
            "test_url": f"{self.base_url}/take/{inv_id}",
            "score": None,
            "report_url": None,
            "created_at": rfc3339_now(),
            "completed_at": None,
        }
        self.invitations[inv_id] = InvitationRecord(invitation, body["callback_url"], key)
        self._by_key[key] = (fingerprint, inv_id)
        self.stats.invitations_created += 1
        return JSONResponse(invitation, status_code=201)

    async def _get_invitation(self, request: Request) -> Response:
        return JSONResponse(self._record(request.path_params["id"]).invitation)

    async def _remind(self, request: Request) -> Response:
        record = self._record(request.path_params["id"])
        self._require_status(record, {"invited", "started"}, "remind about")
        record.reminders += 1
        self.stats.reminders += 1
        return JSONResponse(
            {"id": record.invitation["id"], "reminders": record.reminders}, status_code=202
        )

    async def _cancel(self, request: Request) -> Response:
        record = self._record(request.path_params["id"])
        status = record.invitation["status"]
        if status == "completed":
            raise PyError(409, "conflict", "the invitation is already completed")
        if status in ("invited", "started"):
            record.invitation["status"] = "cancelled"
            self.stats.cancels += 1
        # Cancelling a cancelled or expired invitation changes nothing and is not an error.
        return JSONResponse(record.invitation)

    # --- control endpoints (/_sandbox): the candidate ---------------------------------

    def _control(self, handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except PyError as exc:
                return exc.response()
            except BadBody as exc:
                return py_error(400, "bad_request", str(exc))

        return run

    async def _http_exception(self, request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return py_error(exc.status_code, code, str(exc.detail))

    @staticmethod
    def _with_callback(invitation: JSON, result: FirstAttempt | None) -> JSONResponse:
        return JSONResponse(
            {
                "invitation": invitation,
                "callback": first_attempt_json(result, include_delivery=False),
            }
        )

    async def _c_stats(self, request: Request) -> Response:
        return JSONResponse(self.stats.to_json())

    async def _c_reset_stats(self, request: Request) -> Response:
        self.stats.reset()
        return JSONResponse(self.stats.to_json())

    async def _c_faults(self, request: Request) -> Response:
        body = await read_json_object(request)
        if "error_rate" in body:
            rate = body["error_rate"]
            if not is_number(rate) or not 0 <= rate <= 1:
                raise BadBody("'error_rate' must be a number between 0 and 1")
            self.error_rate = float(rate)
        for name in ("rate_limit_next", "lose_response_next"):
            if name in body:
                value = body[name]
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise BadBody(f"'{name}' must be a non-negative integer")
                setattr(self, name, value)
        return JSONResponse(
            {
                "error_rate": self.error_rate,
                "rate_limit_next": self.rate_limit_next,
                "lose_response_next": self.lose_response_next,
            }
        )

    async def _c_list(self, request: Request) -> Response:
        return JSONResponse([r.to_json() for r in self.invitations.values()])

    async def _c_get(self, request: Request) -> Response:
        return JSONResponse(self._record(request.path_params["id"]).to_json())

    async def _c_start(self, request: Request) -> Response:
        return self._with_callback(*await self.start(request.path_params["id"]))

    async def _c_complete(self, request: Request) -> Response:
        body = await read_json_object(request)
        score, report_url, callback, omit = (
            body.get("score"),
            body.get("report_url"),
            body.get("callback", True),
            body.get("omit", []),
        )
        if (
            not isinstance(omit, list)
            or not all(isinstance(f, str) for f in omit)
            or not set(omit) <= CONTRACT_FIELDS
        ):
            raise BadBody("'omit' must be a list of fields to leave null: 'score', 'report_url'")
        if "score" in omit:
            score = None
        elif not is_number(score) or not 0 <= score <= 100:
            raise BadBody("'score' must be a number between 0 and 100")
        if report_url is not None and not isinstance(report_url, str):
            raise BadBody("'report_url' must be a string")
        if not isinstance(callback, bool):
            raise BadBody("'callback' must be true or false")
        return self._with_callback(
            *await self.complete(
                request.path_params["id"], score, report_url, callback=callback, omit=omit
            )
        )

    async def _c_expire(self, request: Request) -> Response:
        return self._with_callback(*await self.expire(request.path_params["id"]))

    async def _c_resend(self, request: Request) -> Response:
        body = await read_json_object(request, empty_ok=True)
        event = body.get("event")
        if event is not None and not isinstance(event, str):
            raise BadBody("'event' must be a string")
        return self._with_callback(*await self.resend(request.path_params["id"], event))

    async def _c_callbacks(self, request: Request) -> Response:
        return JSONResponse(self.deliveries)

    # --- pages behind test_url and report_url (for the demo) -------------------------

    async def _take_page(self, request: Request) -> Response:
        inv = self._page_invitation(request)
        return HTMLResponse(
            f"<h1>{escape(inv['test_id'])}</h1><p>Sandbox test for "
            f"{escape(inv['candidate']['name'])}: status {escape(inv['status'])}.</p>"
        )

    async def _report_page(self, request: Request) -> Response:
        inv = self._page_invitation(request)
        if inv["status"] != "completed":
            raise HTTPException(404, "no report yet")
        return HTMLResponse(
            f"<h1>Report {escape(inv['id'])}</h1><p>{escape(inv['candidate']['name'])} scored "
            f"{inv['score']} on {escape(inv['test_id'])}.</p>"
        )

    def _page_invitation(self, request: Request) -> JSON:
        record = self.invitations.get(request.path_params["id"])
        if record is None:
            raise HTTPException(404, "no such invitation")
        return record.invitation

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8102)
    parser.add_argument(
        "--api-key", default=env.get("PY_SANDBOX_API_KEY"), help="or PY_SANDBOX_API_KEY"
    )
    parser.add_argument(
        "--callback-secret",
        default=env.get("PY_SANDBOX_CALLBACK_SECRET"),
        help="or PY_SANDBOX_CALLBACK_SECRET",
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help="public base of test_url/report_url (default http://HOST:PORT;"
        " report_url always says https, as Py's do)",
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share of /v1 calls answered 500"
    )
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("an API key is required: --api-key or PY_SANDBOX_API_KEY")
    if not args.callback_secret:
        parser.error(
            "a callback secret is required: --callback-secret or PY_SANDBOX_CALLBACK_SECRET"
        )
    sandbox = PySandbox(
        api_key=args.api_key,
        callback_secret=args.callback_secret,
        error_rate=args.error_rate,
        seed=args.seed,
        base_url=args.base_url or f"http://{args.host}:{args.port}",
    )
    serve(sandbox.app, args.host, args.port)


if __name__ == "__main__":
    main()

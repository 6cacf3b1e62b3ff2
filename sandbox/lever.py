"""Lever sandbox: a Starlette stand-in for Lever's API v1 and its webhooks.

The real API is under ``/v1`` (HTTP Basic auth with the API key as the user name
and an empty password, ``{"data": ...}`` envelopes, ``hasNext``/``next`` paging,
``{"code", "message"}`` errors, a token bucket per key that answers 429 without
``Retry-After``, injected 503s, and a refused key: for a while every call answers
401 as a wrong key does, like Lever while a customer rotates its API key). ``/_sandbox`` stands for a recruiter using
Lever's UI: it creates and moves candidates and delivers signed webhooks. It has
no auth and no rate limit.

Run it with ``python -m sandbox.lever --help``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import hmac
import json
import math
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pylever.edge.signatures import sign_lever_webhook
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
    now_ms,
    read_json_object,
    sandbox_routes,
    serve,
    str_list,
)

# The real GET /stages of a Lever sandbox (lever-samples/stages-list.opensdks.sandbox.json)
# with two custom stages for the demo triggers inserted before "On-site interview".
PY_ASSESSMENT_STAGE_ID = "3f9a7c2e-6b1d-4e8f-a5c3-9d2e7b4f1a60"
TECHNICAL_SCREEN_STAGE_ID = "8c4e1b7d-2f5a-4c9e-b3d6-1a7f5e2c9b84"
DEFAULT_STAGES: list[dict[str, str]] = [
    {"id": "lead-new", "text": "New lead"},
    {"id": "lead-reached-out", "text": "Reached out"},
    {"id": "lead-responded", "text": "Responded"},
    {"id": "applicant-new", "text": "New applicant"},
    {"id": "7100254d-2655-4b2a-9677-27b1bd5980fb", "text": "Tes stage"},
    {"id": "b7c29827-5a7b-454e-9b2d-1a18dcbebfd3", "text": "Phone screen"},
    {"id": PY_ASSESSMENT_STAGE_ID, "text": "Py Assessment"},
    {"id": TECHNICAL_SCREEN_STAGE_ID, "text": "Technical Screen"},
    {"id": "d09b0083-b7d4-4f86-8d90-d1532e53a3bb", "text": "On-site interview"},
    {"id": "c7212f5a-8e5f-481b-9170-258f9447aa32", "text": "Reference check"},
    {"id": "offer", "text": "Offer"},
]
RECRUITER_USER_ID = (
    "2c713392-d0e4-4355-8673-378d6a851cb8"  # the "UI" user (moves, archives, deletes)
)
API_USER_ID = "6a0f3d52-91b7-4c8e-a2d4-5e7b19c3f068"  # the user behind the API key
DEFAULT_ARCHIVE_REASON = "d35867b1-f661-4ec2-b477-b3e6524cc8b6"
CANDIDATES_URL = "https://hire.sandbox.lever.co/candidates"
WEBHOOK_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)  # Lever: five retries
VERIFY_EVENT = "candidateStageChange"
MAX_LIMIT = 100


class LeverError(Exception):
    """Answered as Lever does: ``{"code": ..., "message": ...}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        return lever_error(self.status, self.code, self.message)


def lever_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


@dataclass
class LeverStats:
    requests: RequestStats = field(default_factory=RequestStats)
    rate_limited: int = 0
    faults_injected: int = 0
    key_refusals: int = 0  # calls with the right key answered 401 while the key is refused
    webhooks: DeliveryStats = field(default_factory=DeliveryStats)

    def reset(self) -> None:
        self.requests.reset()
        self.webhooks.reset()
        self.rate_limited = 0
        self.faults_injected = 0
        self.key_refusals = 0

    def to_json(self) -> JSON:
        return {
            "requests": self.requests.to_json(),
            "rate_limited": self.rate_limited,
            "faults_injected": self.faults_injected,
            "key_refusals": self.key_refusals,
            "webhooks": self.webhooks.to_json(),
        }


class TokenBucket:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


# --- paging tokens ------------------------------------------------------------


def encode_cursor(parts: list[Any]) -> str:
    """An opaque ``next`` token shaped like Lever's: a percent-encoded JSON array."""
    return quote(json.dumps(parts, separators=(",", ":")), safe="")


def decode_cursor(token: str) -> list[Any]:
    """Accept the token as issued, already percent-decoded, or percent-encoded once more."""
    text = token
    for _ in range(4):
        try:
            value = json.loads(text)
        except ValueError:
            decoded = unquote(text)
            if decoded == text:
                break
            text = decoded
            continue
        if isinstance(value, list):
            return value
        break
    raise LeverError(400, "BadRequest", "invalid offset: pass the 'next' value back unchanged")


def _epoch_ms(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise LeverError(400, "BadRequest", f"{name} must be a timestamp in milliseconds")
    return int(raw)


def _opportunity_filter(request: Request) -> Callable[[JSON], bool]:
    """``GET /opportunities`` filters as Lever applies them: ``stage_id`` and ``tag`` are
    repeatable (any of them; tags exact and case-sensitive), ``archived`` is ``true`` or
    ``false``, ``advanced_at_start``/``_end`` bound ``lastAdvancedAt`` (inclusive, epoch ms)."""
    params = request.query_params
    stages = set(params.getlist("stage_id"))
    tags = set(params.getlist("tag"))
    archived = params.get("archived")
    if archived not in (None, "true", "false"):
        raise LeverError(400, "BadRequest", "archived must be true or false")
    start, end = _epoch_ms(request, "advanced_at_start"), _epoch_ms(request, "advanced_at_end")

    def keep(opp: JSON) -> bool:
        if stages and opp["stage"] not in stages:
            return False
        if tags and not tags.intersection(opp["tags"]):
            return False
        if archived is not None and (opp["archived"] is not None) != (archived == "true"):
            return False
        advanced = opp.get("lastAdvancedAt") or 0
        return (start is None or advanced >= start) and (end is None or advanced <= end)

    return keep


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return MAX_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise LeverError(400, "BadRequest", "limit must be an integer") from None
    if limit < 1:
        raise LeverError(400, "BadRequest", "limit must be at least 1")
    return min(limit, MAX_LIMIT)


def _page(items: list[JSON], next_token: str | None) -> JSONResponse:
    body: JSON = {"data": items, "hasNext": next_token is not None}
    if next_token is not None:
        body["next"] = next_token
    return JSONResponse(body)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _unique_new(values: Iterable[str], existing: Sequence[str]) -> list[str]:
    return [v for v in dict.fromkeys(values) if v not in existing]


def _archive_state(archived: JSON | None) -> JSON | None:
    """``archived`` as webhooks carry it: null or ``{archivedAt, reason}``."""
    if archived is None:
        return None
    return {"archivedAt": archived["archivedAt"], "reason": archived["reason"]}


class LeverSandbox:
    """In-memory Lever: opportunities, stages, API v1, webhooks, stats and fault injection."""

    def __init__(
        self,
        *,
        api_key: str,
        signature_token: str,
        webhook_url: str | None = None,
        stages: list[dict[str, Any]] | None = None,
        rate: float = 10.0,
        burst: int = 20,
        error_rate: float = 0.0,
        seed: int | None = None,
        delivery_transport: httpx.AsyncBaseTransport | None = None,
        retry_delays: Sequence[float] = WEBHOOK_RETRY_DELAYS,
        api_stage_webhooks: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self.signature_token = signature_token
        self.webhook_url = webhook_url
        self.stages: list[JSON] = [dict(s) for s in (DEFAULT_STAGES if stages is None else stages)]
        self.rate = rate
        self.burst = burst
        self.error_rate = error_rate
        # Like Lever, a stage change made through the API also fires candidateStageChange
        # (sent in the background, not awaited by the API call).
        self.api_stage_webhooks = api_stage_webhooks
        self.opportunities: dict[str, JSON] = {}
        self.writes: dict[str, list[JSON]] = {}  # opportunity id -> API writes, oldest first
        self.stats = LeverStats()
        self._faults = random.Random(seed)
        self._ids = random.Random(None if seed is None else f"lever-ids-{seed}")
        self._clock = clock  # the rate limiter's (monotonic seconds); tests may freeze it
        self._buckets: dict[str, TokenBucket] = {}
        self._refuse_key_until: float | None = None  # on self._clock
        self._deliverer = Deliverer(
            stats=self.stats.webhooks, retry_delays=retry_delays, transport=delivery_transport
        )
        self.app = Starlette(
            routes=self._routes(),
            lifespan=self._lifespan,
            exception_handlers={HTTPException: self._http_exception},
        )

    # --- Python API (tests and the demo may call these directly) -------------------

    def opportunity(self, opportunity_id: str) -> JSON:
        return copy.deepcopy(self._opp(opportunity_id))

    def recruiter_tags(
        self, opportunity_id: str, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> JSON:
        """A recruiter edits the candidate's tags in Lever's UI (no webhook, no API write)."""
        opp = self._opp(opportunity_id)
        opp["tags"].extend(_unique_new(list(add), opp["tags"]))
        opp["tags"] = [t for t in opp["tags"] if t not in remove]
        opp["updatedAt"] = now_ms()
        return copy.deepcopy(opp)

    def api_writes(self, opportunity_id: str) -> list[JSON]:
        """API writes to one opportunity: ``{at, op, values, changed}``, oldest first."""
        return copy.deepcopy(self.writes.get(opportunity_id, []))

    def count_api_writes(self, opportunity_id: str, op: str, value: str | None = None) -> int:
        """How many ``op`` calls (e.g. "addTags") succeeded, optionally only those naming ``value``."""
        return sum(
            1
            for w in self.writes.get(opportunity_id, [])
            if w["op"] == op and (value is None or value in w["values"])
        )

    @property
    def deliveries(self) -> list[JSON]:
        return [d.to_json() for d in self._deliverer.log]

    def refuse_key_for(self, seconds: float) -> None:
        """For ``seconds`` every API call answers 401 as a wrong key does (0 or less: stop).

        Lever does this for a while when a customer rotates its API key. The rate
        limit still comes first, as it does for a wrong key.
        """
        if not is_number(seconds):
            raise TypeError("seconds must be a number")
        self._refuse_key_until = self._clock() + seconds if seconds > 0 else None

    @property
    def key_refused_for(self) -> float:
        """Seconds the key is still refused (0: it is accepted)."""
        if self._refuse_key_until is None:
            return 0.0
        left = self._refuse_key_until - self._clock()
        if left <= 0:
            self._refuse_key_until = None
            return 0.0
        return left

    def create_candidate(
        self,
        *,
        name: str,
        emails: Sequence[str] = (),
        tags: Sequence[str] = (),
        stage: str = "lead-new",
        id: str | None = None,
        advanced_at: int | None = None,
    ) -> JSON:
        """A candidate as a recruiter adds one (no webhook). ``advanced_at`` (epoch ms, default
        now): when the candidate entered ``stage``, for one who has been waiting there."""
        stage_id = self.resolve_stage(stage)
        opp_id = id if id is not None else self._uuid()
        if opp_id in self.opportunities:
            raise LeverError(409, "Conflict", f"opportunity {opp_id} already exists")
        now = now_ms()
        entered = now if advanced_at is None else advanced_at
        opp: JSON = {
            "id": opp_id,
            "name": name,
            "contact": self._uuid(),
            "headline": "",
            "stage": stage_id,
            "confidentiality": "non-confidential",
            "location": "",
            "phones": [],
            "emails": list(dict.fromkeys(emails)),
            "links": [],
            "archived": None,
            "tags": list(dict.fromkeys(tags)),
            "sources": ["Added manually"],
            "stageChanges": [self._stage_change(stage_id, entered, RECRUITER_USER_ID)],
            "origin": "sourced",
            "sourcedBy": RECRUITER_USER_ID,
            "owner": RECRUITER_USER_ID,
            "followers": [RECRUITER_USER_ID],
            "applications": [self._uuid()],
            "createdAt": now,
            "updatedAt": now,
            "lastInteractionAt": now,
            "lastAdvancedAt": entered,
            "snoozedUntil": None,
            "urls": {"list": CANDIDATES_URL, "show": f"{CANDIDATES_URL}/{opp_id}"},
            "isAnonymized": False,
            "dataProtection": None,
        }
        self.opportunities[opp_id] = opp
        return copy.deepcopy(opp)

    async def move_candidate(
        self, opportunity_id: str, stage: str
    ) -> tuple[JSON, FirstAttempt | None]:
        """Move as a recruiter would (stage name or id) and deliver candidateStageChange."""
        opp = self._opp(opportunity_id)
        to_stage = self.resolve_stage(stage)
        from_stage = self._move(opp, to_stage, RECRUITER_USER_ID)
        data = {**self._webhook_ids(opp), "toStageId": to_stage, "fromStageId": from_stage}
        return copy.deepcopy(opp), await self._send("candidateStageChange", data)

    async def archive_candidate(
        self, opportunity_id: str, archived: bool, reason: str | None = None
    ) -> tuple[JSON, FirstAttempt | None]:
        opp = self._opp(opportunity_id)
        before = opp["archived"]
        now = now_ms()
        opp["archived"] = (
            {"reason": reason or DEFAULT_ARCHIVE_REASON, "archivedAt": now} if archived else None
        )
        opp["updatedAt"] = now
        data = {
            **self._webhook_ids(opp),
            "fromArchived": _archive_state(before),
            "toArchived": _archive_state(opp["archived"]),
        }
        return copy.deepcopy(opp), await self._send("candidateArchiveChange", data)

    async def delete_candidate(self, opportunity_id: str) -> tuple[JSON, FirstAttempt | None]:
        opp = self.opportunities.pop(self._opp(opportunity_id)["id"])
        data = {**self._webhook_ids(opp), "deletedBy": RECRUITER_USER_ID}
        return opp, await self._send("candidateDeleted", data)

    async def send_verify(self, event: str = VERIFY_EVENT) -> FirstAttempt | None:
        """Lever's "Verify Connection" test delivery: signed, ``data: {}``."""
        return await self._send(event, {})

    def resolve_stage(self, stage: str) -> str:
        """A stage id from an id or a name (exact, then case-insensitive)."""
        for s in self.stages:
            if s["id"] == stage:
                return stage
        for match in (lambda t: t == stage, lambda t: t.casefold() == stage.casefold()):
            for s in self.stages:
                if match(s["text"]):
                    return str(s["id"])
        raise LeverError(400, "BadRequest", f"unknown stage {stage!r}")

    async def wait_idle(self) -> None:
        """Wait for background deliveries and retries to finish (tests)."""
        await self._deliverer.wait_idle()

    async def aclose(self) -> None:
        """Cancel background retries and close the delivery client (the lifespan calls this)."""
        await self._deliverer.aclose()

    # --- internals ----------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    def _opp(self, opportunity_id: str) -> JSON:
        opp = self.opportunities.get(opportunity_id)
        if opp is None:
            raise LeverError(404, "NotFound", f"opportunity {opportunity_id} not found")
        return opp

    def _stage_index(self, stage_id: str) -> int:
        return next(i for i, s in enumerate(self.stages) if s["id"] == stage_id)

    def _stage_change(self, stage_id: str, at: int, user_id: str) -> JSON:
        return {
            "toStageId": stage_id,
            "toStageIndex": self._stage_index(stage_id),
            "updatedAt": at,
            "userId": user_id,
        }

    def _move(self, opp: JSON, stage_id: str, user_id: str) -> str:
        now = now_ms()
        from_stage = str(opp["stage"])
        opp["stage"] = stage_id
        opp["stageChanges"].append(self._stage_change(stage_id, now, user_id))
        opp["lastAdvancedAt"] = now
        opp["updatedAt"] = now
        return from_stage

    @staticmethod
    def _webhook_ids(opp: JSON) -> JSON:
        # candidateId is Lever's deprecated alias of the opportunity id.
        return {"opportunityId": opp["id"], "candidateId": opp["id"], "contactId": opp["contact"]}

    def _signed(self, event: str, data: JSON) -> tuple[bytes, dict[str, str]]:
        body = sign_lever_webhook(self.signature_token, event, data, triggered_at=now_ms())
        headers = {"Content-Type": "application/json", "User-Agent": "Lever-Webhooks"}
        return json.dumps(body).encode(), headers

    async def _send(self, event: str, data: JSON) -> FirstAttempt | None:
        if not self.webhook_url:
            return None
        raw, headers = self._signed(event, data)
        return await self._deliverer.deliver(event, self.webhook_url, raw, headers)

    def _log_write(
        self, opp: JSON, op: str, values: list[str], changed: list[str], at: int | None = None
    ) -> None:
        now = now_ms() if at is None else at
        opp["updatedAt"] = now
        entry = {"at": now, "op": op, "values": values, "changed": changed}
        self.writes.setdefault(opp["id"], []).append(entry)

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
        return bucket

    # --- the real API (/v1) ------------------------------------------------------------

    def _routes(self) -> list[Route]:
        api: list[tuple[str, str, Handler]] = [
            ("GET", "/stages", self._list_stages),
            ("GET", "/opportunities", self._list_opportunities),
            ("GET", "/opportunities/{id}", self._get_opportunity),
            ("POST", "/opportunities/{id}/addTags", self._add_tags),
            ("POST", "/opportunities/{id}/removeTags", self._remove_tags),
            ("POST", "/opportunities/{id}/addLinks", self._add_links),
            ("PUT", "/opportunities/{id}/stage", self._put_stage),
        ]
        control: list[tuple[str, str, Handler]] = [
            ("GET", "/stats", self._c_stats),
            ("POST", "/reset-stats", self._c_reset_stats),
            ("POST", "/faults", self._c_faults),
            ("GET", "/candidates", self._c_list),
            ("POST", "/candidates", self._c_create),
            ("GET", "/candidates/{id}", self._c_get),
            ("DELETE", "/candidates/{id}", self._c_delete),
            ("GET", "/candidates/{id}/writes", self._c_writes),
            ("POST", "/candidates/{id}/tags", self._c_tags),
            ("POST", "/candidates/{id}/stage", self._c_stage),
            ("POST", "/candidates/{id}/archive", self._c_archive),
            ("POST", "/webhooks/verify", self._c_verify),
            ("GET", "/webhooks/deliveries", self._c_deliveries),
            ("POST", "/webhooks/deliveries/{n:int}/rerun", self._c_rerun),
        ]
        routes = sandbox_routes(
            api,
            control,
            wrap_api=self._api,
            wrap_control=self._control,
            unknown=self._unknown_endpoint,
        )
        return routes

    def _api(self, endpoint: str | None, handler: Handler) -> Handler:
        # Looked up per request, so tests can wrap _api_response after the app is built.
        return counted(
            self.stats.requests, endpoint, lambda r, h: self._api_response(r, h), handler
        )

    async def _api_response(self, request: Request, handler: Handler) -> Response:
        credentials = _basic_credentials(request.headers.get("authorization"))
        if not self._bucket(credentials[0] if credentials else "").take():
            self.stats.rate_limited += 1
            return lever_error(429, "TooManyRequests", "Rate limit exceeded, please slow down")
        wrong_key = (
            credentials is None
            or not hmac.compare_digest(credentials[0].encode(), self.api_key.encode())
            or credentials[1] != ""
        )
        if not wrong_key and self.key_refused_for > 0:
            self.stats.key_refusals += 1
            wrong_key = True
        if wrong_key:
            return lever_error(
                401,
                "Unauthorized",
                "Invalid API key: use HTTP Basic auth, key as user name, empty password",
            )
        if self.error_rate > 0 and self._faults.random() < self.error_rate:
            self.stats.faults_injected += 1
            return lever_error(
                503, "ServiceUnavailable", "Service temporarily unavailable, retry later"
            )
        try:
            return await handler(request)
        except LeverError as exc:
            return exc.response()
        except BadBody as exc:
            return lever_error(400, "BadRequest", str(exc))

    async def _unknown_endpoint(self, request: Request) -> Response:
        raise LeverError(404, "NotFound", f"no such endpoint: {request.method} {request.url.path}")

    async def _list_stages(self, request: Request) -> Response:
        limit = _limit(request)
        start = 0
        offset = request.query_params.get("offset")
        if offset:
            parts = decode_cursor(offset)
            if len(parts) != 2 or parts[0] != 0 or not isinstance(parts[1], int) or parts[1] < 0:
                raise LeverError(400, "BadRequest", "invalid offset")
            start = parts[1]
        end = start + limit
        more = end < len(self.stages)
        return _page(
            copy.deepcopy(self.stages[start:end]), encode_cursor([0, end]) if more else None
        )

    async def _list_opportunities(self, request: Request) -> Response:
        limit = _limit(request)
        keep = _opportunity_filter(request)
        ordered = sorted(
            (o for o in self.opportunities.values() if keep(o)),
            key=lambda o: (o["createdAt"], o["id"]),
            reverse=True,
        )
        offset = request.query_params.get("offset")
        if offset:
            parts = decode_cursor(offset)
            if (
                len(parts) != 3
                or parts[0] != 1
                or not isinstance(parts[1], int)
                or not isinstance(parts[2], str)
            ):
                raise LeverError(400, "BadRequest", "invalid offset")
            after = (parts[1], parts[2])
            ordered = [o for o in ordered if (o["createdAt"], o["id"]) < after]
        page = ordered[:limit]
        next_token = None
        if len(ordered) > limit:
            last = page[-1]
            next_token = encode_cursor([1, last["createdAt"], last["id"]])
        return _page(copy.deepcopy(page), next_token)

    async def _get_opportunity(self, request: Request) -> Response:
        return JSONResponse({"data": self._opp(request.path_params["id"])})

    async def _add_tags(self, request: Request) -> Response:
        return await self._append(request, "tags", "addTags")

    async def _remove_tags(self, request: Request) -> Response:
        opp = self._opp(request.path_params["id"])
        tags = str_list(await read_json_object(request), "tags", required=True)
        removed = [t for t in opp["tags"] if t in tags]
        opp["tags"] = [t for t in opp["tags"] if t not in tags]
        self._log_write(opp, "removeTags", tags, removed)
        return JSONResponse({"data": opp})

    async def _add_links(self, request: Request) -> Response:
        return await self._append(request, "links", "addLinks")

    async def _append(self, request: Request, field: str, op: str) -> Response:
        """addTags / addLinks: append the values not there yet, keeping their order."""
        opp = self._opp(request.path_params["id"])
        values = str_list(await read_json_object(request), field, required=True)
        added = _unique_new(values, opp[field])
        opp[field].extend(added)
        self._log_write(opp, op, values, added)
        return JSONResponse({"data": opp})

    async def _put_stage(self, request: Request) -> Response:
        opp = self._opp(request.path_params["id"])
        body = await read_json_object(request)
        stage = body.get("stage")
        if not isinstance(stage, str):
            raise BadBody("'stage' must be a stage id")
        if not any(s["id"] == stage for s in self.stages):
            raise LeverError(400, "BadRequest", f"unknown stage id {stage!r}")
        from_stage = self._move(opp, stage, API_USER_ID)
        # One instant for the move and its log (a second clock read could cross a ms).
        self._log_write(opp, "stage", [stage], [stage], at=opp["updatedAt"])
        if self.api_stage_webhooks and self.webhook_url:
            data = {**self._webhook_ids(opp), "toStageId": stage, "fromStageId": from_stage}
            raw, headers = self._signed("candidateStageChange", data)
            self._deliverer.deliver_soon("candidateStageChange", self.webhook_url, raw, headers)
        return JSONResponse({"data": opp})

    # --- control endpoints (/_sandbox): the recruiter's UI ----------------------------

    def _control(self, handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except LeverError as exc:
                return exc.response()
            except BadBody as exc:
                return lever_error(400, "BadRequest", str(exc))

        return run

    async def _http_exception(self, request: Request, exc: HTTPException) -> Response:
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "Error")
        return lever_error(exc.status_code, code, str(exc.detail))

    @staticmethod
    def _with_webhook(opp: JSON, result: FirstAttempt | None) -> JSONResponse:
        return JSONResponse(
            {"opportunity": opp, "webhook": first_attempt_json(result, include_delivery=True)}
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
        if "rate" in body or "burst" in body:
            new_rate, new_burst = body.get("rate", self.rate), body.get("burst", self.burst)
            if not is_number(new_rate) or new_rate <= 0:
                raise BadBody("'rate' must be a positive number")
            if not isinstance(new_burst, int) or isinstance(new_burst, bool) or new_burst < 1:
                raise BadBody("'burst' must be a positive integer")
            self.rate, self.burst = float(new_rate), new_burst
            self._buckets.clear()
        if "refuse_key_for" in body:
            seconds = body["refuse_key_for"]
            if not is_number(seconds) or not math.isfinite(seconds) or seconds < 0:
                raise BadBody("'refuse_key_for' must be a number of seconds, 0 or more (0: stop)")
            self.refuse_key_for(float(seconds))
        return JSONResponse(
            {
                "error_rate": self.error_rate,
                "rate": self.rate,
                "burst": self.burst,
                "refuse_key_for": self.key_refused_for,
            }
        )

    async def _c_list(self, request: Request) -> Response:
        return JSONResponse(list(self.opportunities.values()))

    async def _c_create(self, request: Request) -> Response:
        body = await read_json_object(request)
        name = body.get("name")
        stage = body.get("stage", "lead-new")
        fixed_id = body.get("id")
        advanced_at = body.get("advanced_at")
        if advanced_at is not None and (
            not isinstance(advanced_at, int) or isinstance(advanced_at, bool) or advanced_at < 0
        ):
            raise BadBody("'advanced_at' must be epoch milliseconds")
        if not isinstance(name, str):
            raise BadBody("'name' is required and must be a string")
        if not isinstance(stage, str):
            raise BadBody("'stage' must be a stage name or id")
        if fixed_id is not None and (not isinstance(fixed_id, str) or not fixed_id):
            raise BadBody("'id' must be a non-empty string")
        opp = self.create_candidate(
            name=name,
            emails=str_list(body, "emails"),
            tags=str_list(body, "tags"),
            stage=stage,
            id=fixed_id,
            advanced_at=advanced_at,
        )
        return JSONResponse(opp, status_code=201)

    async def _c_get(self, request: Request) -> Response:
        return JSONResponse(self._opp(request.path_params["id"]))

    async def _c_writes(self, request: Request) -> Response:
        return JSONResponse(self.writes.get(request.path_params["id"], []))

    async def _c_tags(self, request: Request) -> Response:
        body = await read_json_object(request)
        opp = self.recruiter_tags(
            request.path_params["id"], add=str_list(body, "add"), remove=str_list(body, "remove")
        )
        return JSONResponse(opp)

    async def _c_stage(self, request: Request) -> Response:
        body = await read_json_object(request)
        stage = body.get("stage")
        if not isinstance(stage, str):
            raise BadBody("'stage' (a stage name or id) is required")
        opp, result = await self.move_candidate(request.path_params["id"], stage)
        return self._with_webhook(opp, result)

    async def _c_archive(self, request: Request) -> Response:
        body = await read_json_object(request)
        archived, reason = body.get("archived"), body.get("reason")
        if not isinstance(archived, bool):
            raise BadBody("'archived' must be true or false")
        if reason is not None and not isinstance(reason, str):
            raise BadBody("'reason' must be a string")
        opp, result = await self.archive_candidate(request.path_params["id"], archived, reason)
        return self._with_webhook(opp, result)

    async def _c_delete(self, request: Request) -> Response:
        opp, result = await self.delete_candidate(request.path_params["id"])
        return self._with_webhook(opp, result)

    async def _c_verify(self, request: Request) -> Response:
        body = await read_json_object(request, empty_ok=True)
        event = body.get("event", VERIFY_EVENT)
        if not isinstance(event, str):
            raise BadBody("'event' must be a string")
        result = await self.send_verify(event)
        return JSONResponse({"webhook": first_attempt_json(result, include_delivery=True)})

    async def _c_deliveries(self, request: Request) -> Response:
        return JSONResponse(self.deliveries)

    async def _c_rerun(self, request: Request) -> Response:
        """Like Lever's "Rerun" button: the same signed body again, as a new delivery."""
        original = self._deliverer.find(request.path_params["n"])
        if original is None:
            raise LeverError(404, "NotFound", "no such delivery")
        result = await self._deliverer.deliver(
            original.event, original.url, original.body, original.headers
        )
        return JSONResponse({"webhook": first_attempt_json(result, include_delivery=True)})

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.lever", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument(
        "--api-key", default=env.get("LEVER_SANDBOX_API_KEY"), help="or LEVER_SANDBOX_API_KEY"
    )
    parser.add_argument(
        "--signature-token",
        default=env.get("LEVER_SANDBOX_SIGNATURE_TOKEN"),
        help="or LEVER_SANDBOX_SIGNATURE_TOKEN",
    )
    parser.add_argument(
        "--webhook-url",
        default=env.get("LEVER_SANDBOX_WEBHOOK_URL"),
        help="where webhooks go (or LEVER_SANDBOX_WEBHOOK_URL); none: no delivery",
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share of /v1 calls answered 503"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second per key")
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("an API key is required: --api-key or LEVER_SANDBOX_API_KEY")
    if not args.signature_token:
        parser.error(
            "a signature token is required: --signature-token or LEVER_SANDBOX_SIGNATURE_TOKEN"
        )
    sandbox = LeverSandbox(
        api_key=args.api_key,
        signature_token=args.signature_token,
        webhook_url=args.webhook_url or None,
        rate=args.rate,
        burst=args.burst,
        error_rate=args.error_rate,
        seed=args.seed,
    )
    serve(sandbox.app, args.host, args.port)


if __name__ == "__main__":
    main()

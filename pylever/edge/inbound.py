"""What the edge accepts: bounded bodies, strict JSON, validated Py callbacks, and the
JSON error answers (``{"error": code, "message": ...}``) every endpoint gives."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pylever.contracts.records import InvitationRecord, PyEvent, report_url_problem
from pylever.ops.logs import log_event

log = logging.getLogger("pylever.api")

MAX_BODY_BYTES = 1024 * 1024

# --- errors ----------------------------------------------------------------------


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return error_response(exc.status, exc.code, exc.message)


async def starlette_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def unexpected_error(_: Request, exc: Exception) -> Response:
    log_event(log, "unexpected error", logging.ERROR, error_type=type(exc).__name__)
    return error_response(500, "internal", "internal error")


async def temporal_down(_: Request, exc: Exception) -> Response:
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

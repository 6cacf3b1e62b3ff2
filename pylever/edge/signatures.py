"""Lever webhook and Py callback signatures: sign (sandboxes, tests) and verify (API).

Lever signs ``token + str(triggeredAt)`` with HMAC-SHA256 keyed by the webhook's
signature token. Py signs ``f"{t}.{raw_body}"`` keyed by the callback secret and
sends ``Py-Signature: t=<unix seconds>,v1=<hex>``. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

PY_SIGNATURE_TOLERANCE_SECONDS = 300


def _hmac_hex(key: str, message: bytes) -> str:
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


# --- Lever -----------------------------------------------------------------


def lever_signature(signature_token: str, token: str, triggered_at: int | str) -> str:
    return _hmac_hex(signature_token, f"{token}{triggered_at}".encode())


def sign_lever_webhook(
    signature_token: str,
    event: str,
    data: Mapping[str, Any],
    *,
    triggered_at: int | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Build a webhook body exactly as Lever sends it."""
    triggered_at = int(time.time() * 1000) if triggered_at is None else triggered_at
    token = secrets.token_hex(24) if token is None else token  # 48 hex chars
    return {
        "triggeredAt": triggered_at,
        "event": event,
        "data": dict(data),
        "token": token,
        "signature": lever_signature(signature_token, token, triggered_at),
    }


def verify_lever_webhook(body: Mapping[str, Any], signature_tokens: Iterable[str]) -> bool:
    """True when the body's signature matches any of the account's tokens."""
    token = body.get("token")
    signature = body.get("signature")
    triggered_at = body.get("triggeredAt")
    if not isinstance(token, str) or not isinstance(signature, str):
        return False
    if isinstance(triggered_at, bool) or not isinstance(triggered_at, int | str):
        return False
    try:
        given = signature.encode("ascii")
        # A token or time with a lone surrogate cannot be signed: not a delivery from Lever.
        f"{token}{triggered_at}".encode()
    except UnicodeEncodeError:
        return False
    matched = False
    for key in signature_tokens:
        # No early exit: every token is compared so timing does not tell which matched.
        expected = lever_signature(key, token, triggered_at).encode()
        matched |= hmac.compare_digest(expected, given)
    return matched


# --- Py ----------------------------------------------------------------------


def py_signature_header(secret: str, raw_body: bytes, *, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_hmac_hex(secret, f'{t}.'.encode() + raw_body)}"


class PySignatureError(Exception):
    """The Py-Signature header is missing, malformed, stale or wrong (the reason says which)."""


def verify_py_signature(
    header: str | None,
    raw_body: bytes,
    secret: str,
    *,
    now: float | None = None,
    tolerance: int = PY_SIGNATURE_TOLERANCE_SECONDS,
) -> None:
    """Raise ``PySignatureError`` unless the header is a fresh, valid signature of the body."""
    if not header:
        raise PySignatureError("missing Py-Signature header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise PySignatureError("malformed Py-Signature header")
        parts.setdefault(key, []).append(value)
    ts_values = parts.get("t")
    signatures = parts.get("v1")
    if not ts_values or len(ts_values) != 1 or not signatures:
        raise PySignatureError("malformed Py-Signature header")
    if not ts_values[0].isascii() or not ts_values[0].isdigit() or len(ts_values[0]) > 12:
        raise PySignatureError("malformed Py-Signature timestamp")
    t = int(ts_values[0])
    now = time.time() if now is None else now
    if abs(now - t) > tolerance:
        raise PySignatureError("stale Py-Signature timestamp")
    expected = _hmac_hex(secret, f"{t}.".encode() + raw_body).encode()
    ok = False
    for candidate in signatures:
        try:
            ok |= hmac.compare_digest(expected, candidate.encode("ascii"))
        except UnicodeEncodeError:
            continue
    if not ok:
        raise PySignatureError("Py-Signature does not match")

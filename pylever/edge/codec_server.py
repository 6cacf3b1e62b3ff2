"""Temporal's remote codec endpoints, so the Web UI and the ``temporal`` CLI can show payloads.

``POST /codec/decode`` and ``POST /codec/encode`` take and return
``{"payloads": [<Payload as proto-JSON>, ...]}`` (the ``temporal.api.common.v1.Payloads``
message in protobuf's JSON mapping: metadata values and data are base64). They
are protected by ``Authorization: Bearer <admin token>`` and answer CORS for the
configured Web UI origins only.

Mount them in the API app::

    app = Starlette(routes=[..., *codec_routes(codec, admin_token=token,
                                                  cors_origins=["http://localhost:8080"])])

The ``temporal`` CLI uses them with
``--codec-endpoint http://host:8000/codec --codec-auth "Bearer $PYLEVER_ADMIN_TOKEN"``.
The Web UI sends an ``Authorization`` header only when its own login (OIDC) is
enabled and ``TEMPORAL_CODEC_PASS_ACCESS_TOKEN`` is true, and then it sends the
UI's access token, not the admin token.

Operators in the Web UI: a browser session instead of the bearer token
------------------------------------------------------------------------
``GET /codec/login`` is a small form where the operator pastes the admin token;
``POST /codec/login`` checks it and sets the session cookie ``pylever_codec``
(HMAC-SHA256 over its expiry with a key derived from the admin token; HttpOnly,
SameSite=Lax, Path=/codec, ``Secure`` on https, 8 hours by default), which
``/codec/decode`` and ``/codec/encode`` accept instead of the bearer token.
``POST /codec/logout`` clears it and revokes it: this process refuses that cookie
value until its expiry even if it was copied. Revocation is kept in memory, per
process (at most ``MAX_REVOKED`` values, pruned as they expire): with several API
replicas a cookie revoked on one is still accepted by the others, and a restart
forgets it; changing the admin token ends every session on every replica.

The browser sends the cookie with the UI's codec requests only when

- the UI includes credentials. In the UI (2.54): the "Codec Server" dialog (the
  glasses icon in the top bar) -> "Use my browser setting and ignore Cluster-level
  setting", endpoint ``http://127.0.0.1:8000/codec``, "Include cross-origin
  credentials" on, Apply; it is kept in the browser's localStorage. The
  ``temporalio/ui`` image sets it for everyone with
  ``TEMPORAL_CODEC_INCLUDE_CREDENTIALS=true``; ``temporal server start-dev`` has no
  flag for it (only ``--ui-codec-endpoint``), which is why ``make run`` trusts the
  local UI instead (below);
- the UI origin is in ``PYLEVER_UI_ORIGINS`` (CORS with credentials);
- the UI and the API are the same *site* (SameSite=Lax): ``127.0.0.1:8233`` and
  ``127.0.0.1:8000`` are, ``localhost:8233`` and ``127.0.0.1:8000`` are not;
  in production serve both under one registrable domain, over https.

The demo (``make run``): trusting the Web UI on this machine
-----------------------------------------------------------
With ``trust_local_ui`` (``PYLEVER_CODEC_TRUST_LOCAL_UI=1``, which ``make run`` sets and
production must never set) ``/codec/decode`` and ``/codec/encode`` also answer a request
with neither token nor cookie when all of these hold: the TCP peer
(``request.client.host``, never a header) is a loopback address (127.0.0.0/8, ::1); its
``Origin`` is one of the configured UI origins; it carries no ``Forwarded``,
``X-Forwarded-For`` or ``X-Real-IP`` header (a proxy on the same host would make every
client look local); and it is ``application/json``. That is what the dev server's UI
sends: its page fetches ``<endpoint>/decode`` from the browser on this machine, with
``Content-Type: application/json`` and ``X-Namespace`` (so after a CORS preflight) and
without credentials, so its first screen shows decoded payloads with no sign-in. Any
process on this machine can then decode by naming a UI origin; a web page elsewhere
cannot (the browser sets ``Origin``). Behind a reverse proxy on the same host the peer
is the proxy, hence: never in production. :func:`codec_routes` logs a WARNING when on.

Limits. Bodies of ``/codec/decode`` and ``/codec/encode`` are at most
``MAX_BODY_BYTES`` (4 MiB; 413 ``payload_too_large`` above; Temporal's own payload limit
is 2 MiB, 2.7 MiB as base64). Parsing, the codec and the answer's JSON run in a worker
thread (at most ``CODEC_THREADS`` at a time), on an event loop of their own, so the API
keeps answering other requests meanwhile; the codec therefore must not use anything
bound to the API's event loop (``AesGcmCodec`` does not). Wrong admin tokens (login,
bearer) are throttled per client address by :class:`pylever.edge.throttle.AdminThrottle`:
429 ``too_many_attempts`` with ``Retry-After``. A valid session cookie wins over a bearer
token: with one, the bearer token is not looked at (and cannot be guessed through it).

Cookie-authenticated codec requests must be ``application/json`` (a cross-site
form cannot send that without a CORS preflight) and, when the browser names an
``Origin``, come from a UI origin or the API itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import parse_qs

from google.protobuf import json_format
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec

from pylever.edge.throttle import AdminThrottle, client_address
from pylever.ops.logs import log_event
from pylever.temporal.codec import CodecError

__all__ = [
    "CODEC_PATH",
    "CODEC_THREADS",
    "MAX_BODY_BYTES",
    "MAX_REVOKED",
    "SESSION_COOKIE",
    "SESSION_TTL",
    "CodecSessions",
    "codec_routes",
]

CODEC_PATH = "/codec"
MAX_BODY_BYTES = 4 * 1024 * 1024
CODEC_THREADS = 2  # concurrent decode/encode requests in worker threads; more wait their turn
MAX_REVOKED = 10_000  # revoked, unexpired cookie values remembered (soonest expiry dropped first)
# The Web UI also sends Authorization-Extras (its ID token) when it passes its access token.
ALLOWED_HEADERS = ("Authorization", "Authorization-Extras", "Content-Type", "X-Namespace")
SESSION_COOKIE = "pylever_codec"
SESSION_TTL = timedelta(hours=8)
LOGIN_BODY_BYTES = 8 * 1024
LOGIN_ENDPOINT = f"POST {CODEC_PATH}/login"
_SESSION_KEY_LABEL = b"py-lever codec session v1"
# Set by proxies: with one of them the loopback peer may be a proxy serving anyone.
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")

log = logging.getLogger("pylever.edge.codec_server")


def _error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers or None
    )


def _bearer(request: Request) -> bytes | None:
    """The bearer token presented, or None when there is none (no guess to count)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token.encode("utf-8", errors="replace")


def _throttled(wait: int) -> JSONResponse:
    return _error(
        429,
        "too_many_attempts",
        f"too many wrong admin tokens from this address; retry in {wait} s",
        **{"Retry-After": str(wait)},
    )


class CodecSessions:
    """Stateless browser sessions: ``v1.<expiry>.<nonce>.<hex HMAC>``.

    The HMAC key is derived from the admin token, so a new token ends every
    session; the cookie holds no secret and nothing about the operator.
    :meth:`revoke` (logout) makes this instance refuse a value until it expires.
    """

    def __init__(
        self, admin_token: str, ttl: timedelta = SESSION_TTL, clock: Callable[[], float] = time.time
    ) -> None:
        if not admin_token:
            raise ValueError("sessions need a non-empty admin token")
        self._key = hmac.new(
            admin_token.encode("utf-8"), _SESSION_KEY_LABEL, hashlib.sha256
        ).digest()
        self.ttl_seconds = int(ttl.total_seconds())
        if self.ttl_seconds <= 0:
            raise ValueError("the session lifetime must be positive")
        self._clock = clock
        self._revoked: dict[str, int] = {}  # nonce -> expiry (unix seconds)

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode("ascii"), hashlib.sha256).hexdigest()

    def issue(self) -> tuple[str, int]:
        """A new cookie value and its expiry (unix seconds)."""
        expires = int(self._clock()) + self.ttl_seconds
        body = f"v1.{expires}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._mac(body)}", expires

    def expiry(self, value: str | None) -> int | None:
        """The expiry of a genuine, unexpired cookie value; None for anything else."""
        if not value or len(value) > 200 or not value.isascii():
            return None
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != "v1":
            return None
        version, expires, nonce, mac = parts
        if not hmac.compare_digest(self._mac(f"{version}.{expires}.{nonce}"), mac):
            return None
        if not expires.isdigit() or len(expires) > 12:
            return None
        if int(expires) <= self._clock():
            return None
        if nonce in self._revoked:
            return None
        return int(expires)

    def revoke(self, value: str | None) -> bool:
        """Refuse a genuine, unexpired cookie value from now until its expiry.

        Only values this key signed are remembered (a forged one is refused anyway),
        expired ones are pruned, and past ``MAX_REVOKED`` the soonest to expire is dropped.
        """
        expires = self.expiry(value)
        if expires is None or value is None:
            return False
        now = self._clock()
        for nonce, until in list(self._revoked.items()):
            if until <= now:
                del self._revoked[nonce]
        while len(self._revoked) >= MAX_REVOKED:
            del self._revoked[min(self._revoked, key=self._revoked.__getitem__)]
        self._revoked[value.split(".")[2]] = expires
        return True

    @property
    def revoked(self) -> int:
        """How many values are remembered as revoked."""
        return len(self._revoked)


def _parse_payloads(raw: bytes) -> Payloads | JSONResponse:
    try:
        body: Any = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, int digits
        return _error(400, "bad_request", "body is not valid JSON")
    if not isinstance(body, dict) or not isinstance(body.get("payloads"), list):
        return _error(400, "bad_request", 'body must be {"payloads": [...]}')
    if not all(isinstance(item, dict) for item in body["payloads"]):
        return _error(400, "bad_request", "each entry of payloads must be an object")
    try:
        return json_format.ParseDict(body, Payloads(), ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError):
        # Not echoed: protobuf's message may quote the offending value.
        return _error(
            400,
            "bad_request",
            "payloads are not Temporal Payload JSON (metadata values and data are base64)",
        )


# --- the operator's browser session -----------------------------------------------

_HTML_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # not no-referrer: with it Chrome sends "Origin: null" on the form POST, which we refuse
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>py-lever codec sign-in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem}}
input[type=password]{{width:100%;padding:.4rem;font:inherit}}button{{padding:.4rem 1rem;font:inherit}}
.err{{color:#b00020}}code{{background:#f3f3f3;padding:0 .2rem}}</style></head>
<body><h1>py-lever codec</h1>{body}
<h2>Temporal Web UI</h2>
<p>Open the UI's <b>Codec Server</b> settings (the glasses icon in the top bar), choose
<b>Use my browser setting and ignore Cluster-level setting</b>, set the endpoint to
<code>{endpoint}</code>, turn on <b>Include cross-origin credentials</b>, Apply, and reload
the workflow page. The UI must be on the same site as this endpoint (same host name).</p>
</body></html>
"""

_FORM = """{error}<form method="post" action="login">
<p><label for="token">Admin token (<code>PYLEVER_ADMIN_TOKEN</code>)</label><br>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus></p>
<p><button type="submit">Sign in</button></p></form>"""

_SIGNED_IN = """<p>Signed in: the Temporal UI in this browser can decode payloads until
<b>{until}</b> UTC.</p><form method="post" action="logout"><button type="submit">Sign out</button></form>"""


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == (
        "application/json"
    )


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _origin_ok(request: Request, origins: Sequence[str]) -> bool:
    """No ``Origin`` (not a browser, or a same-origin GET), ours, or a configured UI origin."""
    origin = request.headers.get("origin")
    return origin is None or origin == _own_origin(request) or origin in origins


def _loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or ::ffff:127.x.y.z; anything else (a name included) is not."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _local_ui(request: Request, origins: Sequence[str]) -> bool:
    """The Web UI in a browser on this machine: a UI ``Origin``, a loopback TCP peer and
    no proxy header (see "The demo" in the module's notes)."""
    origin = request.headers.get("origin")
    if origin is None or origin not in origins:
        return False
    if any(name in request.headers for name in _PROXY_HEADERS):
        return False
    return _loopback(request.client.host if request.client else None)


def _cookie_path(request: Request) -> str:
    """The codec mount's path, e.g. ``/codec`` (also behind a path prefix)."""
    return request.url.path.rsplit("/", 1)[0] or "/"


async def _read_limited(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        return None
    raw = bytearray()
    async for chunk in request.stream():
        raw.extend(chunk)
        if len(raw) > limit:
            return None
    return bytes(raw)


def _login_token(raw: bytes, as_json: bool) -> str | None:
    if as_json:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        token = body.get("token") if isinstance(body, dict) else None
        return token if isinstance(token, str) else None
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return None
    tokens = fields.get("token")
    return tokens[0] if tokens else None


def _session_routes(
    sessions: CodecSessions, expected: bytes, origins: Sequence[str], throttle: AdminThrottle
) -> list[BaseRoute]:
    def page(request: Request, body: str, status: int = 200) -> HTMLResponse:
        endpoint = f"{_own_origin(request)}{_cookie_path(request)}"
        return HTMLResponse(
            _PAGE.format(body=body, endpoint=escape(endpoint)),
            status_code=status,
            headers=_HTML_HEADERS,
        )

    def form(request: Request, error: str = "", status: int = 200) -> HTMLResponse:
        note = f'<p class="err">{escape(error)}</p>' if error else ""
        return page(request, _FORM.format(error=note), status)

    async def login_page(request: Request) -> Response:
        expires = sessions.expiry(request.cookies.get(SESSION_COOKIE))
        if expires is None:
            return form(request)
        until = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M")
        return page(request, _SIGNED_IN.format(until=until))

    async def login(request: Request) -> Response:
        as_json = _is_json(request)
        if not _origin_ok(request, origins):
            return _error(403, "forbidden_origin", "sign in from the API's own login page")
        raw = await _read_limited(request, LOGIN_BODY_BYTES)
        if raw is None:
            return _error(413, "payload_too_large", f"body over {LOGIN_BODY_BYTES} bytes")
        client = client_address(request)
        wait = throttle.retry_after(client, LOGIN_ENDPOINT)
        if wait is not None:  # before the token is looked at: a right one is refused too
            if as_json:
                return _throttled(wait)
            note = f"Too many wrong tokens from your address: try again in {wait} seconds."
            refused = form(request, note, 429)
            refused.headers["Retry-After"] = str(wait)
            return refused
        token = _login_token(raw, as_json)
        given = (token or "").strip().encode("utf-8", errors="replace")
        if not given or not hmac.compare_digest(given, expected):
            throttle.failed(client, LOGIN_ENDPOINT)
            if as_json:
                return _error(401, "unauthorized", "wrong admin token")
            return form(request, "That is not the admin token.", 401)
        value, expires = sessions.issue()
        response: Response
        if as_json:
            response = JSONResponse(
                {
                    "status": "signed_in",
                    "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
                },
                headers={"Cache-Control": "no-store"},
            )
        else:
            response = RedirectResponse("login", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=sessions.ttl_seconds,
            path=_cookie_path(request),
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="lax",
        )
        return response

    async def logout(request: Request) -> Response:
        if not _origin_ok(request, origins):
            return _error(403, "forbidden_origin", "sign out from the API's own login page")
        response: Response = (
            JSONResponse({"status": "signed_out"}, headers={"Cache-Control": "no-store"})
            if _is_json(request) or "application/json" in request.headers.get("accept", "")
            else RedirectResponse("login", status_code=303)
        )
        # Revoked here (this process) until it expires, even if a copy of it survives.
        sessions.revoke(request.cookies.get(SESSION_COOKIE))
        response.delete_cookie(
            SESSION_COOKIE,
            path=_cookie_path(request),
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="lax",
        )
        return response

    return [
        Route("/login", login_page, methods=["GET"], name="codec_login_page"),
        Route("/login", login, methods=["POST"], name="codec_login"),
        Route("/logout", logout, methods=["POST"], name="codec_logout"),
    ]


def _codec_work(codec: PayloadCodec, operation: str, raw: bytes) -> Response:
    """Parse, decode or encode, and render the answer: in a worker thread, on a loop of its own."""
    parsed = _parse_payloads(raw)
    if isinstance(parsed, JSONResponse):
        return parsed
    try:
        if operation == "decode":
            result = asyncio.run(codec.decode(parsed.payloads))
        else:
            result = asyncio.run(codec.encode(parsed.payloads))
    except Exception as exc:  # never a 500: the UI shows the message
        # CodecError names key ids, never keys or payload contents; another
        # codec's message might quote a payload, so only its type is shown.
        message = str(exc) if isinstance(exc, CodecError) else type(exc).__name__
        return _error(400, f"{operation}_failed", f"cannot {operation}: {message}")
    return JSONResponse({"payloads": [json_format.MessageToDict(p) for p in result]})


def _unauthorized() -> JSONResponse:
    return _error(
        401,
        "unauthorized",
        "missing or wrong bearer token (operators: sign in at /codec/login)",
        **{"WWW-Authenticate": "Bearer"},
    )


def codec_routes(
    codec: PayloadCodec,
    *,
    admin_token: str,
    cors_origins: Sequence[str],
    session_ttl: timedelta = SESSION_TTL,
    clock: Callable[[], float] = time.time,
    throttle: AdminThrottle | None = None,
    trust_local_ui: bool = False,
) -> list[BaseRoute]:
    """Routes serving ``POST /codec/decode`` and ``POST /codec/encode`` (with CORS), and the
    operator's browser session: ``GET``/``POST /codec/login``, ``POST /codec/logout``.

    ``throttle`` is shared with the API's other admin-token checks; without one these
    routes get their own. ``trust_local_ui`` (the demo only, never production): decode
    and encode also answer the Web UI on this machine without a token (module notes)."""
    if not admin_token:
        raise ValueError("codec endpoints need a non-empty admin token")
    if isinstance(cors_origins, str):
        raise TypeError("cors_origins must be a sequence of origins, not a single string")
    expected = admin_token.encode("utf-8")
    origins = tuple(cors_origins)
    sessions = CodecSessions(admin_token, session_ttl, clock)
    guard = throttle if throttle is not None else AdminThrottle()
    turns = asyncio.Semaphore(CODEC_THREADS)
    if trust_local_ui:
        log_event(
            log,
            f"codec trusts the local Web UI: {CODEC_PATH}/decode and /encode answer loopback "
            "requests from a UI origin without the admin token (demo only, never production)",
            logging.WARNING,
            ui_origins=list(origins),
        )

    def endpoint(operation: str):
        label = f"POST {CODEC_PATH}/{operation}"

        async def handle(request: Request) -> Response:
            if sessions.expiry(request.cookies.get(SESSION_COOKIE)) is not None:
                # A browser session (the bearer token, if any, is not looked at). JSON
                # forces a CORS preflight cross-origin.
                if not _origin_ok(request, origins):
                    return _error(403, "forbidden_origin", "origin not allowed")
                if not _is_json(request):
                    return _error(415, "unsupported_media_type", "send application/json")
            elif trust_local_ui and _local_ui(request, origins):
                # The demo's Web UI on this machine (no token): JSON only, as with a cookie.
                if not _is_json(request):
                    return _error(415, "unsupported_media_type", "send application/json")
            else:
                token = _bearer(request)
                if token is None:
                    return _unauthorized()
                client = client_address(request)
                wait = guard.retry_after(client, label)
                if wait is not None:  # before the comparison: a right token is refused too
                    return _throttled(wait)
                if not hmac.compare_digest(token, expected):
                    guard.failed(client, label)
                    return _unauthorized()
            declared = request.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                return _error(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
            raw = bytearray()
            async for chunk in request.stream():
                raw.extend(chunk)
                if len(raw) > MAX_BODY_BYTES:
                    return _error(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
            async with turns:  # off the event loop: the API keeps answering meanwhile
                return await asyncio.to_thread(_codec_work, codec, operation, bytes(raw))

        handle.__name__ = f"codec_{operation}"
        return handle

    router = Router(
        routes=[
            Route("/decode", endpoint("decode"), methods=["POST"]),
            Route("/encode", endpoint("encode"), methods=["POST"]),
            *_session_routes(sessions, expected, origins, guard),
        ]
    )
    app = CORSMiddleware(
        router,
        allow_origins=list(cors_origins),
        allow_methods=["POST", "OPTIONS"],
        allow_headers=list(ALLOWED_HEADERS),
        allow_credentials=True,
        max_age=600,
    )
    return [Mount(CODEC_PATH, app=app, name="codec")]

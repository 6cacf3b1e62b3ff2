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
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec

from pylever.codec import CodecError

__all__ = ["CODEC_PATH", "MAX_BODY_BYTES", "codec_routes"]

CODEC_PATH = "/codec"
MAX_BODY_BYTES = 16 * 1024 * 1024
# The Web UI also sends Authorization-Extras (its ID token) when it passes its access token.
ALLOWED_HEADERS = ("Authorization", "Authorization-Extras", "Content-Type", "X-Namespace")


def _error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers or None
    )


def _bearer_ok(request: Request, expected: bytes) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode("utf-8", errors="replace"), expected)


def _parse_payloads(raw: bytes) -> Payloads | JSONResponse:
    try:
        body: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
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


def codec_routes(
    codec: PayloadCodec, *, admin_token: str, cors_origins: Sequence[str]
) -> list[BaseRoute]:
    """Routes serving ``POST /codec/decode`` and ``POST /codec/encode`` (with CORS)."""
    if not admin_token:
        raise ValueError("codec endpoints need a non-empty admin token")
    if isinstance(cors_origins, str):
        raise TypeError("cors_origins must be a sequence of origins, not a single string")
    expected = admin_token.encode("utf-8")

    def endpoint(operation: str):
        async def handle(request: Request) -> Response:
            if not _bearer_ok(request, expected):
                return _error(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token",
                    **{"WWW-Authenticate": "Bearer"},
                )
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                return _error(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
            raw = bytearray()
            async for chunk in request.stream():
                raw.extend(chunk)
                if len(raw) > MAX_BODY_BYTES:
                    return _error(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
            parsed = _parse_payloads(bytes(raw))
            if isinstance(parsed, JSONResponse):
                return parsed
            try:
                if operation == "decode":
                    result = await codec.decode(parsed.payloads)
                else:
                    result = await codec.encode(parsed.payloads)
            except Exception as exc:  # never a 500: the UI shows the message
                # CodecError names key ids, never keys or payload contents; another
                # codec's message might quote a payload, so only its type is shown.
                message = str(exc) if isinstance(exc, CodecError) else type(exc).__name__
                return _error(400, f"{operation}_failed", f"cannot {operation}: {message}")
            return JSONResponse({"payloads": [json_format.MessageToDict(p) for p in result]})

        handle.__name__ = f"codec_{operation}"
        return handle

    router = Router(
        routes=[
            Route("/decode", endpoint("decode"), methods=["POST"]),
            Route("/encode", endpoint("encode"), methods=["POST"]),
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

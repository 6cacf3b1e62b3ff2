"""The codec session (tests/unit/test_codec_session.py) on the running stack's API."""

from __future__ import annotations

import json

import httpx
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from pylever.edge.codec_server import SESSION_COOKIE
from pylever.temporal.codec import AesGcmCodec
from tests.support.integration_stack import ADMIN_TOKEN as STACK_ADMIN_TOKEN
from tests.support.integration_stack import Stack
from tests.unit.test_codec_session import EMAIL, decode, json_payload


async def test_session_on_the_running_api(stack: Stack):
    """The stack's API: sign in with the form, decode with the cookie, nothing else opens."""
    codec = AesGcmCodec([bytes(range(32))])  # tests.support.integration_stack.PAYLOAD_KEY
    encrypted = await codec.encode([json_payload({"email": EMAIL})])
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as http:
        wrong = await http.post("/codec/login", data={"token": "nope"})
        assert wrong.status_code == 401
        assert (await decode(http, encrypted)).status_code == 401
        ok = await http.post("/codec/login", data={"token": STACK_ADMIN_TOKEN})
        assert ok.status_code == 303
        decoded = await decode(http, encrypted)
        assert decoded.status_code == 200
        [payload] = [json_format.ParseDict(p, Payload()) for p in decoded.json()["payloads"]]
        assert json.loads(payload.data) == {"email": EMAIL}
        # the codec session is not an admin session for anything else
        value = http.cookies[SESSION_COOKIE]
        status = await http.get(
            "/accounts/acme/candidates/some-opportunity",
            headers={"Cookie": f"{SESSION_COOKIE}={value}"},
        )
        assert status.status_code == 401
        await http.post("/codec/logout")
        assert (await decode(http, encrypted)).status_code == 401
        # revoked, not only cleared: a kept copy of the cookie is refused too
        kept = await decode(http, encrypted, Cookie=f"{SESSION_COOKIE}={value}")
        assert kept.status_code == 401

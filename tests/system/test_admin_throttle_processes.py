"""The admin-token throttle (tests/unit/test_admin_throttle.py) on ``python -m uvicorn
api:app`` as deployed; Temporal's address is a closed port."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from sandbox.devserver import free_port
from sandbox.launcher import PYTHON, ManagedProcess
from tests.integration.test_admin_throttle_api import assert_throttled, bearer
from tests.unit.test_admin_throttle import ADMIN_TOKEN, PAYLOAD_KEY

DEMO_CONFIG = (Path(__file__).resolve().parents[2] / "config" / "demo.toml").read_text()

# --- the real server --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def uvicorn_api(tmp_path: Path) -> AsyncIterator[tuple[str, ManagedProcess]]:
    """``python -m uvicorn api:app`` as deployed; Temporal's address is a closed port."""
    port = free_port()
    config = tmp_path / "pylever.toml"
    config.write_text(DEMO_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYLEVER_", "TEMPORAL_"))}
    env.update({
        "PYTHONUNBUFFERED": "1",
        "PYLEVER_CONFIG": str(config),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "PYLEVER_ADMIN_TOKEN": ADMIN_TOKEN,
        "PYLEVER_PAYLOAD_KEYS": base64.b64encode(PAYLOAD_KEY).decode(),
        "PY_API_KEY": "py-key", "PY_CALLBACK_SECRET": "py-callback-secret",
        "ACME_LEVER_API_KEY": "lever-key", "ACME_LEVER_STAGE_TOKEN": "stage-token",
        "ACME_LEVER_ARCHIVE_TOKEN": "archive-token",
    })  # fmt: skip
    proc = ManagedProcess(
        "api",
        [PYTHON, "-m", "uvicorn", "api:app", "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "api.log",
    )
    proc.spawn()
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            deadline = time.monotonic() + 30
            while True:
                assert proc.running, proc.log_tail()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, proc.log_tail()
                await asyncio.sleep(0.1)
        yield url, proc
    finally:
        await proc.stop(grace=5)


async def test_guessing_the_running_api_is_throttled(tmp_path: Path) -> None:
    async with (
        uvicorn_api(tmp_path) as (url, proc),
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        answers = await asyncio.gather(
            *(http.post("/codec/login", data={"token": f"guess-{n}"}) for n in range(40))
        )
        codes = sorted(r.status_code for r in answers)
        assert codes == [401] * 10 + [429] * 30, codes
        status = await http.get("/accounts/acme/candidates/opp", headers=bearer(ADMIN_TOKEN))
        assert_throttled(status)
        assert_throttled(await http.post("/codec/login", json={"token": ADMIN_TOKEN}))
        # uvicorn's defaults (--proxy-headers, --forwarded-allow-ips 127.0.0.1): the
        # address a trusted local proxy forwards is the client, with a budget of its own
        forwarded = await http.post(
            "/codec/login", json={"token": ADMIN_TOKEN}, headers={"X-Forwarded-For": "192.0.2.5"}
        )
        assert forwarded.status_code == 200
        await asyncio.sleep(0.5)
        log = proc.log_since_start()
        warnings = [
            json.loads(line) for line in log.splitlines()
            if line.startswith("{") and "admin token guesses throttled" in line
        ]  # fmt: skip
        assert len(warnings) == 1, log[-3000:]
        assert warnings[0]["level"] == "warning" and warnings[0]["client"] == "127.0.0.1"
        assert warnings[0]["endpoint"] == "POST /codec/login"
        assert ADMIN_TOKEN not in log and "guess-" not in log


async def test_a_large_encode_does_not_stall_the_running_api(tmp_path: Path) -> None:
    """Issue 11: an authenticated 16 MiB encode held every other request for 7.6 s."""
    payload = json_format.MessageToDict(
        Payload(metadata={"encoding": b"json/plain"}, data=b"x" * 60)
    )
    body = json.dumps({"payloads": [payload] * 29_900}).encode()
    assert 3.5 * 2**20 < len(body) <= 4 * 2**20
    async with (
        uvicorn_api(tmp_path) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        too_big = await http.post(
            "/codec/encode", content=b" " * (4 * 2**20 + 1), headers=bearer(ADMIN_TOKEN)
        )
        assert too_big.status_code == 413
        assert too_big.json()["error"]["code"] == "payload_too_large"

        encode = asyncio.create_task(
            http.post("/codec/encode", content=body, headers=bearer(ADMIN_TOKEN))
        )
        latencies: list[float] = []
        while not encode.done():
            started = time.perf_counter()
            assert (await http.get("/healthz")).status_code == 200
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)
        response = await encode
        assert response.status_code == 200
        assert len(response.json()["payloads"]) == 29_900
        assert len(latencies) >= 5, latencies
        assert max(latencies) < 0.25, sorted(latencies)[-5:]

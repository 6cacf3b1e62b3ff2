"""Stalled, slow, vanishing and oversize clients against the real API process.

Two processes of ``python -m uvicorn api:app``, the SPEC's command: one as deployed (with
``--http pylever.edge.http_server:TimedH11Protocol``, the header timeout), one with no flag
(the body limits live in the app and hold there too). Timeouts are shortened through
``PYLEVER_HEADER_TIMEOUT`` / ``PYLEVER_BODY_TIMEOUT``; Temporal is a closed port (none of
these requests gets that far).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pylever.edge.http_limits import seconds_from_env
from pylever.edge.http_server import UVICORN_HTTP
from pylever.edge.signatures import py_signature_header
from sandbox.devserver import free_port

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 1.0  # both the header and the body timeout, in seconds
WEBHOOK = "/webhooks/lever/acme"
CALLBACK_SECRET = "py-secret"
TWO_MIB = b'{"a": "' + b"x" * (2 * 1024 * 1024) + b'"}'


@dataclass
class Api:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.settimeout(TIMEOUT * 10)
        return sock

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def events(self, event: str) -> list[dict]:
        found = []
        for line in self.lines():
            if line.startswith("{") and (entry := json.loads(line)).get("event") == event:
                found.append(entry)
        return found

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def _start(tmp: Path, name: str, *flags: str, **extra_env: str) -> Api:
    port = free_port()
    config = tmp / f"{name}.toml"
    config.write_text(
        f"""
[service]
public_url = "http://127.0.0.1:{port}"
[py]
api_url = "http://127.0.0.1:{free_port()}"
api_key = "env:T_PY_KEY"
callback_secret = "env:T_PY_SECRET"
[[accounts]]
id = "acme"
lever_api_url = "http://127.0.0.1:{free_port()}/v1"
lever_api_key = "env:T_LEVER_KEY"
webhook_signature_tokens = ["env:T_LEVER_TOKEN"]
  [[accounts.triggers]]
  stage = "Py Assessment"
  default_test = "Python Basics"
"""
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYLEVER_", "TEMPORAL_", "UVICORN_"))
    }
    env.update({
        "PYTHONUNBUFFERED": "1",
        "PYLEVER_CONFIG": str(config),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "PYLEVER_ADMIN_TOKEN": "admin-token-for-limits",
        "PYLEVER_PAYLOAD_KEYS": base64.b64encode(b"k" * 32).decode(),
        "PYLEVER_HEADER_TIMEOUT": str(TIMEOUT),
        "PYLEVER_BODY_TIMEOUT": str(TIMEOUT),
        "T_PY_KEY": "py-key", "T_PY_SECRET": CALLBACK_SECRET,
        "T_LEVER_KEY": "lever-key", "T_LEVER_TOKEN": "lever-token",
        **extra_env,
    })  # fmt: skip
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api:app", "--host", "127.0.0.1",
             "--port", str(port), *flags],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    api = Api(port, proc, log)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return api
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the API did not start:\n{log.read_text()}")
        time.sleep(0.1)


def _stop(api: Api) -> None:
    api.proc.terminate()
    try:
        api.proc.wait(10)
    except subprocess.TimeoutExpired:
        api.proc.kill()
        api.proc.wait()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    api = _start(tmp_path_factory.mktemp("deployed"), "deployed", "--http", UVICORN_HTTP)
    yield api
    _stop(api)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    api = _start(tmp_path_factory.mktemp("plain"), "plain")
    yield api
    _stop(api)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def head(status_line: bytes, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    header, _, body = raw.partition(b"\r\n\r\n")
    first, *lines = header.decode("latin-1").split("\r\n")
    assert first.startswith(status_line.decode()), raw[:300]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(first.split()[1]), headers, body


def post_head(path: str, length: int, *extra: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n".encode()
        + b"".join(extra)
        + f"Content-Length: {length}\r\n\r\n".encode()
    )


# --- headers: only the deployed protocol can see them ------------------------------------------


def test_stalled_headers_get_408_and_the_connection_closes(deployed: Api) -> None:
    with deployed.connect() as sock:
        started = time.monotonic()
        sock.sendall(b"POST /webhooks/lever/acme HTTP/1.1\r\nHost: api\r\n")
        # A byte now and then does not restart the clock.
        for _ in range(int(TIMEOUT / 0.2) + 10):
            try:
                sock.sendall(b"X")
            except OSError:
                break
            time.sleep(0.2)
        raw = read_until_closed(sock)
        took = time.monotonic() - started
    _, headers, body = head(b"HTTP/1.1 408", raw)
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "timeout"
    assert TIMEOUT * 0.9 < took < TIMEOUT + 2.5
    assert deployed.events("request headers timed out")


def test_a_silent_connection_is_closed(deployed: Api) -> None:
    with deployed.connect() as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started < TIMEOUT + 2.5


def test_the_docker_image_way_needs_no_flag(tmp_path: Path) -> None:
    """The image sets UVICORN_HTTP (uvicorn's --http): the SPEC's command as it is."""
    api = _start(tmp_path, "env", UVICORN_HTTP=UVICORN_HTTP)
    try:
        with api.connect() as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            head(b"HTTP/1.1 408", read_until_closed(sock))
    finally:
        _stop(api)


def test_the_header_clock_restarts_only_after_a_response(deployed: Api) -> None:
    """Keep-alive: one full request, then a slow second one is cut like the first would be."""
    with deployed.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        started = time.monotonic()
        for _ in range(int(TIMEOUT / 0.2) + 10):
            try:
                sock.sendall(b"G")
            except OSError:
                break
            time.sleep(0.2)
        raw = read_until_closed(sock)
    head(b"HTTP/1.1 408", raw)
    assert time.monotonic() - started < TIMEOUT + 2.5


def test_many_stalled_clients_are_released(deployed: Api) -> None:
    before = deployed.descriptors()
    socks = [deployed.connect() for _ in range(300)]
    try:
        for sock in socks:
            sock.sendall(post_head(WEBHOOK, 100)[:-10])  # half the headers
        time.sleep(0.3)
        assert deployed.descriptors() >= before + 250
        for sock in socks:
            head(b"HTTP/1.1 408", read_until_closed(sock))
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 5
    while deployed.descriptors() > before + 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert deployed.descriptors() <= before + 5


# --- bodies: the app's limits, with and without the flag ------------------------------------


@pytest.mark.parametrize("which", ["deployed", "plain"])
@pytest.mark.parametrize("path", [WEBHOOK, "/callbacks/py", "/codec/login"])
def test_a_stalled_body_gets_408_and_the_connection_closes(
    request: pytest.FixtureRequest, which: str, path: str
) -> None:
    api: Api = request.getfixturevalue(which)
    with api.connect() as sock:
        started = time.monotonic()
        sock.sendall(post_head(path, 1000) + b'{"a": ')
        raw = read_until_closed(sock)
        took = time.monotonic() - started
    _, headers, body = head(b"HTTP/1.1 408", raw)
    assert headers["connection"] == "close"
    assert json.loads(body) == {
        "error": {"code": "timeout", "message": f"request body not received within {TIMEOUT:g} s"}
    }
    assert TIMEOUT * 0.9 < took < TIMEOUT + 2.5
    [entry] = [e for e in api.events("request body timed out") if e["path"] == path][-1:]
    assert entry["level"] == "warning" and entry["received"] == 6


@pytest.mark.parametrize("which", ["deployed", "plain"])
def test_a_disconnect_mid_body_is_one_short_line(
    request: pytest.FixtureRequest, which: str
) -> None:
    api: Api = request.getfixturevalue(which)
    before = len(api.lines())
    size_before = api.log.stat().st_size
    for i in range(100):
        with api.connect() as sock:
            sock.sendall(post_head(WEBHOOK if i % 2 else "/callbacks/py", 10_000) + b"{" * 500)
            time.sleep(0.005)
    time.sleep(0.5)
    new = api.lines()[before:]
    assert not [line for line in new if "Traceback" in line or "ERROR" in line or '"error"' in line]
    disconnects = [json.loads(line) for line in new if '"client disconnected"' in line]
    assert len(disconnects) == 100, new[-5:]
    assert {e["level"] for e in disconnects} == {"info"}
    assert all(len(json.dumps(e)) < 250 for e in disconnects)
    assert api.log.stat().st_size - size_before < 100 * 250


# --- oversize bodies: always the 413 -----------------------------------------------------------


def _slow_oversize(api: Api, path: str, close: bool) -> bytes:
    """Headers and 64 KiB, a pause (the API answers meanwhile), then the rest of 2 MiB."""
    extra = (b"Connection: close\r\n",) if close else ()
    with api.connect() as sock:
        sock.sendall(post_head(path, len(TWO_MIB), *extra) + TWO_MIB[:65536])
        time.sleep(0.05)
        try:
            sock.sendall(TWO_MIB[65536:])
            sock.shutdown(socket.SHUT_WR)
            return read_until_closed(sock)
        except OSError as exc:
            return repr(exc).encode()


@pytest.mark.parametrize("which", ["deployed", "plain"])
def test_every_oversize_request_gets_its_413(request: pytest.FixtureRequest, which: str) -> None:
    api: Api = request.getfixturevalue(which)
    answers = []
    for i in range(50):
        path = (WEBHOOK, "/callbacks/py", "/codec/login")[i % 3]
        raw = _slow_oversize(api, path, close=i % 2 == 0)
        answers.append(raw.split(b"\r\n", 1)[0])
    assert answers == [b"HTTP/1.1 413 Request Entity Too Large"] * 50

    async def with_httpx() -> list[int]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=30) as http:
            return [(await http.post(WEBHOOK, content=TWO_MIB)).status_code for _ in range(50)]

    assert asyncio.run(with_httpx()) == [413] * 50


def test_an_oversize_chunked_body_gets_its_413(plain: Api) -> None:
    for _ in range(10):
        with plain.connect() as sock:
            sock.sendall(
                f"POST {WEBHOOK} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            for start in range(0, len(TWO_MIB), 256 * 1024):
                piece = TWO_MIB[start : start + 256 * 1024]
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
            status, headers, body = head(b"HTTP/1.1 413", read_until_closed(sock))
        assert json.loads(body)["error"]["code"] == "too_large"


def test_the_callback_limits_hold_in_the_real_process(plain: Api) -> None:
    """A 401-digit score and a long report_url: 422, never a 500."""
    invitation = {"id": "inv_1", "status": "completed", "reference": "assessment:acme:o:s:t",
                  "completed_at": "2030-01-01T00:00:00Z"}  # fmt: skip
    cases = [
        ({"score": 10**400, "report_url": "https://py.example/r"}, "invalid_score"),
        ({"score": 50, "report_url": "https://py.example/" + "r" * 500_000}, "invalid_report_url"),
        ({"score": 50, "report_url": "https://user:pw@py.example/r"}, "invalid_report_url"),
    ]
    for fields, code in cases:
        raw = json.dumps(
            {"event": "invitation.completed", "invitation": {**invitation, **fields}}
        ).encode()
        response = httpx.post(
            f"http://127.0.0.1:{plain.port}/callbacks/py", content=raw, timeout=10,
            headers={"Py-Signature": py_signature_header(CALLBACK_SECRET, raw)},
        )  # fmt: skip
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code


def test_timeouts_from_the_environment() -> None:
    assert seconds_from_env({}, "PYLEVER_BODY_TIMEOUT", 10.0) == 10.0
    assert seconds_from_env({"PYLEVER_BODY_TIMEOUT": "2.5"}, "PYLEVER_BODY_TIMEOUT", 10.0) == 2.5
    for bad in ("0", "-1", "abc", "nan", "7200"):
        with pytest.raises(ValueError, match="PYLEVER_BODY_TIMEOUT"):
            seconds_from_env({"PYLEVER_BODY_TIMEOUT": bad}, "PYLEVER_BODY_TIMEOUT", 10.0)


def test_the_aborts_are_counted_in_metrics(deployed: Api) -> None:
    def counts() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{deployed.port}/metrics", timeout=10).text
        found = {}
        for line in text.splitlines():
            if line.startswith("pylever_http_aborted_total{"):
                name, value = line.rsplit(" ", 1)
                found[name.split('reason="')[1].split('"')[0]] = float(value)
        return found

    before = counts()
    with deployed.connect() as sock:  # a disconnect mid-body
        sock.sendall(post_head(WEBHOOK, 100) + b"{")
        time.sleep(0.1)
    with deployed.connect() as sock:  # a stalled body
        sock.sendall(post_head(WEBHOOK, 100) + b"{")
        read_until_closed(sock)
    with deployed.connect() as sock:  # stalled headers
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        read_until_closed(sock)
    after = counts()
    for reason in ("client_disconnect", "body_timeout", "header_timeout"):
        assert after[reason] >= before.get(reason, 0) + 1, (reason, before, after)

"""The Lever and Py sandboxes as processes (``python -m sandbox.lever``, ``python -m
sandbox.py``), as ``make run`` and sandbox/process_stack.py start them. Their APIs
are tested in-process in tests/unit/test_sandbox_lever.py and tests/unit/test_sandbox_py.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import httpx

from tests.unit import test_sandbox_lever as lever_tests
from tests.unit import test_sandbox_py as py_tests


async def test_the_lever_sandbox_command_line() -> None:
    port = lever_tests.free_port()
    env = {
        **os.environ,
        "LEVER_SANDBOX_API_KEY": lever_tests.API_KEY,
        "LEVER_SANDBOX_SIGNATURE_TOKEN": lever_tests.SIGNATURE_TOKEN,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandbox.lever", "--port", str(port),
        cwd=lever_tests.REPO_ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", auth=(lever_tests.API_KEY, "")
        ) as c:
            async with asyncio.timeout(20):
                while True:
                    try:
                        response = await c.get("/v1/stages")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
        assert response.status_code == 200
        assert any(s["text"] == "Py Assessment" for s in response.json()["data"])
    finally:
        proc.terminate()
        await proc.wait()


async def test_the_py_sandbox_command_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "PY_SANDBOX_API_KEY": py_tests.API_KEY,
        "PY_SANDBOX_CALLBACK_SECRET": py_tests.SECRET,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandbox.py", "--port", str(port),
        cwd=py_tests.REPO_ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        headers = {"Authorization": f"Bearer {py_tests.API_KEY}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as c:
            async with asyncio.timeout(20):
                while True:
                    try:
                        response = await c.get("/v1/tests")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
            inv = await py_tests.invite(c)
        assert response.status_code == 200
        assert inv["test_url"] == f"http://127.0.0.1:{port}/take/{inv['id']}"
    finally:
        proc.terminate()
        await proc.wait()

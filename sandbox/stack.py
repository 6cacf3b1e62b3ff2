"""``make run``: the whole stack in the foreground; Ctrl-C stops all of it.

Temporal dev server (SQLite under ``.data/``, Web UI on :8233), the Lever and Py
sandboxes when the config points at 127.0.0.1, the worker and the API on :8000.
Without ``PYLEVER_CONFIG`` it runs ``config/demo.toml`` with demo secrets.
Ports and the data folder can be moved (tests do): ``PYLEVER_API_PORT`` (8000),
``PYLEVER_TEMPORAL_PORT`` (7233), ``PYLEVER_UI_PORT`` (8233), ``PYLEVER_DATA_DIR``
(``.data``); the sandboxes listen where the config's URLs point.
The codec endpoint trusts the Web UI on this machine (``PYLEVER_CODEC_TRUST_LOCAL_UI=1``,
unless set otherwise), so the UI shows decoded payloads with no sign-in.
Every process is started by the launcher the tests and benchmarks use too
(sandbox/launcher.py; the dev server's command line: sandbox/devserver.py).
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
from pathlib import Path
from urllib.parse import urlparse

from pylever.config.environment import Settings
from pylever.config.file import ConfigError, load_config
from pylever.temporal.codec import generate_key
from sandbox.devserver import FAIRNESS_ARGS, dev_server_args, partition_args, wait_port
from sandbox.launcher import (
    ROOT,
    ForegroundStack,
    ManagedProcess,
    api_process,
    lever_sandbox_process,
    py_sandbox_process,
    worker_process,
)

DATA = ROOT / ".data"

DEMO_ENV = {
    "PY_API_KEY": "demo-py-api-key",
    "PY_CALLBACK_SECRET": "demo-py-callback-secret",
    "ACME_LEVER_API_KEY": "demo-lever-api-key",
    "ACME_LEVER_STAGE_TOKEN": "demo-lever-stage-token",
    "ACME_LEVER_ARCHIVE_TOKEN": "demo-lever-archive-token",
    "PYLEVER_ADMIN_TOKEN": "demo-admin-token",
}
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def _persistent_demo_key(data: Path) -> str:
    """One payload key kept under .data/ so earlier histories stay readable across runs."""
    path = data / "demo-payload-key"
    if not path.exists():
        path.write_text(generate_key())
        path.chmod(0o600)
    return path.read_text().strip()


def ui_env(env: dict[str, str], ui_port: int) -> None:
    """The dev UI's origins, and the codec's trust in them, unless ``env`` says otherwise.

    The dev server's UI sends no token and cannot be told to include the codec's session
    cookie, so the API (listening on 127.0.0.1 only) answers loopback codec requests from
    those origins without one. Demo only: production never sets it."""
    env.setdefault("PYLEVER_UI_ORIGINS", f"http://127.0.0.1:{ui_port},http://localhost:{ui_port}")
    env.setdefault("PYLEVER_CODEC_TRUST_LOCAL_UI", "1")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    env = dict(os.environ)
    data = Path(env.get("PYLEVER_DATA_DIR") or DATA)
    data.mkdir(parents=True, exist_ok=True)
    demo = not env.get("PYLEVER_CONFIG")
    if demo:
        env["PYLEVER_CONFIG"] = str(ROOT / "config" / "demo.toml")
        for key, value in DEMO_ENV.items():
            env.setdefault(key, value)
    env.setdefault("PYLEVER_PAYLOAD_KEYS", _persistent_demo_key(data))
    env.setdefault("PYLEVER_ADMIN_TOKEN", secrets.token_urlsafe(24))
    os.environ.update(env)  # for the secret references of the config below
    try:
        config = load_config(env["PYLEVER_CONFIG"])
    except ConfigError as exc:
        print(f"make run: configuration error: {exc}", file=sys.stderr)
        return 2

    api_port = int(env.get("PYLEVER_API_PORT", "8000"))
    temporal_port = int(env.get("PYLEVER_TEMPORAL_PORT", "7233"))
    ui_port = int(env.get("PYLEVER_UI_PORT", "8233"))
    env.setdefault("TEMPORAL_ADDRESS", f"127.0.0.1:{temporal_port}")
    ui_env(env, ui_port)

    stack = ForegroundStack()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)  # also when started with SIGINT ignored (e.g. from &)
    try:
        print("py-lever: starting the stack (Ctrl-C stops all of it)", flush=True)
        temporal = stack.start(
            ManagedProcess(
                "Temporal dev server",
                dev_server_args(
                    port=temporal_port,
                    ui_port=ui_port,
                    ui_codec_endpoint=f"http://127.0.0.1:{api_port}/codec",
                    db_filename=data / "temporal.db",
                    # One partition per task queue and each account's tasks served in turn
                    # (task-queue fairness), as deploy/dynamicconfig sets.
                    extra_args=[*partition_args(1), *FAIRNESS_ARGS],
                ),
                env,
            )
        )
        sandboxes: list[str] = []
        lever_urls = {urlparse(a.lever_api_url) for a in config.accounts}
        for url in sorted(lever_urls, key=lambda u: u.port or 0):
            if url.hostname in LOCAL_HOSTS and url.port:
                account = next(a for a in config.accounts if urlparse(a.lever_api_url) == url)
                stack.start(
                    lever_sandbox_process(
                        url.port,
                        webhook_url=f"http://127.0.0.1:{api_port}/webhooks/lever/{account.id}",
                        api_key=account.lever_api_key.get_secret_value(),
                        signature_token=account.signature_tokens()[0],
                        env=env,
                        name=f"Lever sandbox :{url.port}",
                    )
                )
                sandboxes.append(
                    f"Lever sandbox    http://127.0.0.1:{url.port}  (account {account.id})"
                )
        py_url = urlparse(config.py.api_url)
        if py_url.hostname in LOCAL_HOSTS and py_url.port:
            stack.start(
                py_sandbox_process(
                    py_url.port,
                    api_key=config.py.api_key.get_secret_value(),
                    callback_secret=config.py.callback_secret.get_secret_value(),
                    env=env,
                    name=f"Py sandbox :{py_url.port}",
                )
            )
            sandboxes.append(f"Py sandbox       http://127.0.0.1:{py_url.port}")
        wait_port(temporal_port, within=60, proc=temporal, name="Temporal dev server")
        stack.start(worker_process(env=env))
        api = stack.start(api_process(api_port, env=env, name="API"))
        wait_port(api_port, within=60, proc=api, name="API")
        lines = [
            "",
            "py-lever is running:",
            f"  API              http://127.0.0.1:{api_port}  (/healthz, /readyz, /metrics)",
            f'  Temporal UI      http://127.0.0.1:{ui_port}  (filter: PyStatus="invited")',
            (
                "  payloads in UI   decoded by the API's codec (it trusts this machine's UI)"
                if Settings.from_env(env).codec_trust_local_ui
                else f"  payloads in UI   sign in at http://127.0.0.1:{api_port}/codec/login"
                " with the admin token (use 127.0.0.1, not localhost)"
            ),
            f"  Temporal gRPC    127.0.0.1:{temporal_port}",
            *[f"  {s}" for s in sandboxes],
            f"  config           {env['PYLEVER_CONFIG']}",
        ]
        if demo:
            lines += [
                "",
                "Push demo candidates through (in another terminal):",
                "  .venv/bin/python -m sandbox.demo",
                "Status of one candidate:",
                f"  curl -H 'Authorization: Bearer {env['PYLEVER_ADMIN_TOKEN']}' "
                f"http://127.0.0.1:{api_port}/accounts/acme/candidates/<opportunity id>",
            ]
        print("\n".join(lines) + "\n", flush=True)
        stack.watch()
    except KeyboardInterrupt:
        print("\npy-lever: stopping", flush=True)
    except RuntimeError as exc:
        print(f"py-lever: {exc}; stopping", file=sys.stderr, flush=True)
        stack.stop()
        return 1
    stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The worker's Prometheus endpoint: py-lever's metrics and the Temporal SDK's on one port.

The Lever and Py calls of activities are counted in the worker process
(``prometheus_client`` default registry); the Temporal SDK (Rust core) keeps its
own metrics (task slots, polls, schedule-to-start latencies, ...) and can only
export them through its own Prometheus server or a buffer. So the SDK's exporter
listens on loopback only, and ``GET /metrics`` on ``PYLEVER_WORKER_METRICS_ADDRESS``
answers with both: the ``prometheus_client`` text followed by the SDK's text
(their metric names never collide: ``pylever_*``/``python_*``/``process_*``
versus ``temporal_*``). If the SDK's exporter does not answer, the endpoint still
serves py-lever's metrics and ``pylever_worker_sdk_metrics_up 0``.

Environment:
- ``PYLEVER_WORKER_METRICS_ADDRESS`` (``host:port``, e.g. ``0.0.0.0:9464``): off when unset.
- ``PYLEVER_WORKER_SDK_METRICS_ADDRESS`` (optional): where the SDK's exporter
  binds; default a free port on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

__all__ = ["WorkerMetrics", "parse_address", "serve_worker_metrics", "start_metrics_server"]

SDK_SCRAPE_TIMEOUT = 2.0


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a (host, port) pair; ValueError if it is not one."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render(registry: CollectorRegistry, sdk_url: str | None) -> bytes:
    """py-lever's metrics, then the SDK's (fetched now), then whether the SDK answered."""
    parts = [generate_latest(registry)]
    if sdk_url is None:
        return parts[0]
    try:
        with urllib.request.urlopen(sdk_url, timeout=SDK_SCRAPE_TIMEOUT) as response:
            sdk = response.read()
        up = 1
    except (urllib.error.URLError, OSError, ValueError):
        sdk, up = b"", 0
    if sdk:
        parts.append(sdk if sdk.endswith(b"\n") else sdk + b"\n")
    parts.append(
        b"# HELP pylever_worker_sdk_metrics_up Whether the Temporal SDK's metrics answered "
        b"this scrape.\n# TYPE pylever_worker_sdk_metrics_up gauge\n"
        + f"pylever_worker_sdk_metrics_up {up}\n".encode()
    )
    return b"".join(parts)


def start_metrics_server(
    host: str,
    port: int,
    *,
    sdk_url: str | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` (and ``GET /healthz``) from a daemon thread; ``shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, status, ctype = render(registry, sdk_url), 200, CONTENT_TYPE_PLAIN_0_0_4
            elif path == "/healthz":
                body, status, ctype = b'{"status": "ok"}', 200, "application/json"
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds are not worth a log line

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
    thread.start()
    return server


@dataclass
class WorkerMetrics:
    runtime: Runtime  # give it to Client.connect: the SDK's metrics are recorded there
    server: ThreadingHTTPServer
    address: tuple[str, int]  # where /metrics is served
    sdk_address: str  # where the SDK's own exporter listens (loopback by default)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_worker_metrics(environ: Mapping[str, str]) -> WorkerMetrics | None:
    """Start the combined endpoint when ``PYLEVER_WORKER_METRICS_ADDRESS`` is set."""
    address = environ.get("PYLEVER_WORKER_METRICS_ADDRESS")
    if not address:
        return None
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        raise ValueError(f"PYLEVER_WORKER_METRICS_ADDRESS: {exc}") from None
    sdk_address = environ.get("PYLEVER_WORKER_SDK_METRICS_ADDRESS") or (
        f"127.0.0.1:{_free_loopback_port()}"
    )
    try:
        sdk_host, sdk_port = parse_address(sdk_address)
    except ValueError as exc:
        raise ValueError(f"PYLEVER_WORKER_SDK_METRICS_ADDRESS: {exc}") from None
    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=sdk_address)))
    if sdk_host in ("0.0.0.0", "::"):
        sdk_host = "127.0.0.1"
    sdk_url = f"http://{f'[{sdk_host}]' if ':' in sdk_host else sdk_host}:{sdk_port}/metrics"
    server = start_metrics_server(host, port, sdk_url=sdk_url)
    return WorkerMetrics(runtime, server, server.server_address[:2], sdk_address)  # type: ignore[arg-type]

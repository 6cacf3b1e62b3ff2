"""The HTTP edge (SPEC section 3): Lever webhooks, Py callbacks, health, status, metrics.

It verifies, validates and hands over to Temporal; it never calls Lever or Py
inline, except the cached ``GET /stages`` that tells trigger stages apart.

Run: ``python -m uvicorn api:app --host 127.0.0.1 --port 8000`` with
``PYLEVER_CONFIG`` set. ``create_app`` builds an app for tests. Add
``--http pylever.edge.http_server:TimedH11Protocol`` (or set ``UVICORN_HTTP`` to it, as the
Docker image does) for the header timeout; body limits (``pylever.edge.http_limits``) need no flag.
"""

from typing import Any

from pylever.edge.app import app_from_env


def __getattr__(name: str) -> Any:
    # ``uvicorn api:app`` builds the app on first access; importing ``api`` in tests does not.
    if name == "app":
        app = app_from_env()
        globals()["app"] = app
        return app
    raise AttributeError(name)

"""Process environment (SPEC section 1), read once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    config_path: str | None = None
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = "py-lever"
    admin_token: str | None = field(default=None, repr=False)
    payload_keys: str | None = field(default=None, repr=False)
    ui_origins: tuple[str, ...] = ("http://127.0.0.1:8233", "http://localhost:8233")
    # GET /metrics (it names every account) asks for the admin token, as the status endpoint.
    metrics_require_admin: bool = False
    # The demo only (make run sets it; production never): /codec answers the Web UI on
    # this machine without the admin token (pylever.edge.codec_server, "The demo").
    codec_trust_local_ui: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        origins = env.get("PYLEVER_UI_ORIGINS")
        return cls(
            config_path=env.get("PYLEVER_CONFIG") or None,
            temporal_address=env.get("TEMPORAL_ADDRESS") or cls.temporal_address,
            temporal_namespace=env.get("TEMPORAL_NAMESPACE") or cls.temporal_namespace,
            task_queue=env.get("PYLEVER_TASK_QUEUE") or cls.task_queue,
            admin_token=env.get("PYLEVER_ADMIN_TOKEN") or None,
            payload_keys=env.get("PYLEVER_PAYLOAD_KEYS") or None,
            ui_origins=tuple(o.strip() for o in origins.split(",") if o.strip())
            if origins
            else cls.ui_origins,
            metrics_require_admin=_flag(env.get("PYLEVER_METRICS_REQUIRE_ADMIN")),
            codec_trust_local_ui=_explicitly_on(env.get("PYLEVER_CODEC_TRUST_LOCAL_UI")),
        )


_OFF = frozenset({"", "0", "false", "no", "off"})


def _flag(value: str | None) -> bool:
    """A switch: unset, empty, 0, false, no, off are off; any other value is on (so a
    misspelt value fails closed rather than leaving the endpoint open)."""
    return (value or "").strip().lower() not in _OFF


_ON = frozenset({"1", "true", "yes", "on"})


def _explicitly_on(value: str | None) -> bool:
    """A switch that opens something: only 1, true, yes, on turn it on (a misspelt value
    leaves it off, closed)."""
    return (value or "").strip().lower() in _ON

"""What every operator command shares: exit codes, the plain-text table, the Temporal
client with the payload codec, and the error that ends a command with a message."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

DEFAULT_API_URL = "http://127.0.0.1:8000"
EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


# --- output --------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with one space-padded column per header."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def when(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "-"
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return parsed.strftime("%Y-%m-%d %H:%M:%S") + ("Z" if parsed.utcoffset() is not None else "")


def text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class CommandError(Exception):
    """A problem that ends ``cancel`` with the exit code it carries."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


async def temporal_client(settings: Any) -> Any:
    """A Temporal client with the payload codec (``PYLEVER_PAYLOAD_KEYS``), or _CommandError."""
    from temporalio.client import Client

    from pylever.temporal.codec import PayloadKeyError, codec_from_env, data_converter

    try:
        codec = (
            codec_from_env({"PYLEVER_PAYLOAD_KEYS": settings.payload_keys})
            if settings.payload_keys
            else None
        )
    except (PayloadKeyError, ValueError) as exc:
        raise CommandError(f"configuration error: {exc}", EXIT_USAGE) from None
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=data_converter(codec),
        )
    except Exception as exc:
        raise CommandError(
            f"cannot reach Temporal at {settings.temporal_address}: {type(exc).__name__}",
            EXIT_PROBLEM,
        ) from None

"""Structured JSON logs: one object per line, emails masked, exceptions without tracebacks."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from pylever.ops.logs import JsonFormatter, configure_logging, log_event, redact

EMAIL = "ada.lovelace+test@example.co.uk"


class Capture:
    def __init__(self, logger: logging.Logger, stream: io.StringIO) -> None:
        self.logger = logger
        self.stream = stream

    def lines(self) -> list[str]:
        text = self.stream.getvalue()
        assert text.endswith("\n")
        return text[:-1].split("\n")

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def capture(request) -> Iterator[Capture]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"pylever.tests.{request.node.name}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield Capture(logger, stream)
    logger.handlers[:] = []
    logger.propagate = True


def test_one_json_object_per_line_with_standard_fields(capture):
    capture.logger.info("first")
    capture.logger.warning("second %s", "with args")
    capture.logger.debug("third")
    lines = capture.lines()
    assert len(lines) == 3
    entries = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) for e in entries)
    assert [e["event"] for e in entries] == ["first", "second with args", "third"]
    assert [e["level"] for e in entries] == ["info", "warning", "debug"]
    for entry in entries:
        assert entry["logger"] == capture.logger.name
        ts = datetime.fromisoformat(entry["ts"])
        assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0
    # only the four standard keys: LogRecord internals do not leak into the line
    assert set(entries[0]) == {"ts", "level", "logger", "event"}


def test_extra_fields_are_included(capture):
    capture.logger.info(
        "webhook accepted",
        extra={
            "account": "acme",
            "status": 202,
            "ratio": 0.5,
            "ok": True,
            "ids": ["a", "b"],
            "none": None,
        },
    )
    (entry,) = capture.entries()
    assert entry["event"] == "webhook accepted"
    assert entry["account"] == "acme"
    assert entry["status"] == 202
    assert entry["ratio"] == 0.5
    assert entry["ok"] is True
    assert entry["ids"] == ["a", "b"]
    assert entry["none"] is None


def test_log_event_helper_passes_fields_and_level(capture):
    log_event(capture.logger, "stage lookup failed", logging.WARNING, account="acme", error="boom")
    log_event(capture.logger, "started", workflow_id="assessment:acme:o:s")
    first, second = capture.entries()
    assert first == {
        **first,
        "event": "stage lookup failed",
        "level": "warning",
        "account": "acme",
        "error": "boom",
    }
    assert second["level"] == "info"
    assert second["workflow_id"] == "assessment:acme:o:s"


def test_non_json_values_are_stringified(capture):
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    capture.logger.info("odd", extra={"thing": Thing()})
    (entry,) = capture.entries()
    assert entry["thing"] == "a thing"


def test_newlines_in_message_stay_on_one_line(capture):
    capture.logger.info("line one\nline two", extra={"detail": "a\nb"})
    lines = capture.lines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["event"] == "line one\nline two"
    assert entry["detail"] == "a\nb"


def test_emails_masked_in_message_and_args(capture):
    capture.logger.info(f"inviting {EMAIL} now")
    capture.logger.info("inviting %s and %s", "Bob@Example.COM", "x.y@sub.domain.io")
    output = capture.stream.getvalue()
    assert EMAIL not in output
    assert "Bob@Example.COM" not in output
    assert "x.y@sub.domain.io" not in output
    first, second = capture.entries()
    assert first["event"] == "inviting [email] now"
    assert second["event"] == "inviting [email] and [email]"


def test_emails_masked_in_extra_string_fields(capture):
    capture.logger.info(
        "candidate", extra={"email": EMAIL, "note": f"reply to <{EMAIL}>", "account": "acme"}
    )
    output = capture.stream.getvalue()
    assert EMAIL not in output
    (entry,) = capture.entries()
    assert entry["email"] == "[email]"
    assert entry["note"] == "reply to <[email]>"
    assert entry["account"] == "acme"


def test_redact_leaves_other_text_alone():
    assert (
        redact("no address here, just @mentions and a@b")
        == "no address here, just @mentions and a@b"
    )
    assert redact(f"{EMAIL},{EMAIL}") == "[email],[email]"


def test_emails_masked_in_nested_extra_values(capture):
    capture.logger.info(
        "candidate", extra={"candidate": {"name": "Ada", "email": EMAIL}, "cc": [EMAIL]}
    )
    assert EMAIL not in capture.stream.getvalue()


def test_exception_rendered_without_traceback(capture):
    try:
        raise ValueError(f"cannot invite {EMAIL}")
    except ValueError:
        capture.logger.exception("invite failed", extra={"account": "acme"})
    lines = capture.lines()
    assert len(lines) == 1
    (entry,) = capture.entries()
    assert entry["level"] == "error"
    assert entry["event"] == "invite failed"
    assert entry["account"] == "acme"
    assert entry["error"] == "ValueError: cannot invite [email]"
    output = capture.stream.getvalue()
    assert "Traceback" not in output
    assert 'File "' not in output
    assert "test_logs.py" not in output
    assert EMAIL not in output


def test_exc_info_none_adds_no_error(capture):
    capture.logger.error("no exception here", exc_info=False)
    (entry,) = capture.entries()
    assert "error" not in entry


def test_configure_logging_installs_json_on_root():
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    httpx_level = logging.getLogger("httpx").level
    httpcore_level = logging.getLogger("httpcore").level
    try:
        configure_logging("DEBUG")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.DEBUG
        assert logging.getLogger("httpx").level == logging.WARNING
        assert logging.getLogger("httpcore").level == logging.WARNING
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        logging.getLogger("httpx").setLevel(httpx_level)
        logging.getLogger("httpcore").setLevel(httpcore_level)


def test_no_log_event_call_names_a_field_logging_reserves():
    """``log_event(..., created=...)`` raises KeyError inside ``logging`` (a LogRecord
    attribute), but only when the level is enabled: at INFO in production, not in tests.
    It once stopped the schedule writes after the sweep's log line. Every call, read from
    the source, uses only free names."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    reserved = set(vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None))) | {
        "message",
        "asctime",
    }
    offenders = []
    for path in [*root.glob("*.py"), *root.glob("pylever/**/*.py"), *root.glob("activities/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "log_event"
            ):
                offenders += [
                    f"{path.relative_to(root)}:{node.lineno} {kw.arg}"
                    for kw in node.keywords
                    if kw.arg in reserved
                ]
    assert offenders == []

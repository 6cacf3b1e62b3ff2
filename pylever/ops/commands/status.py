"""``cli.py status``: one candidate's assessments, from the API's status endpoint."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from pylever.ops.commands.common import (
    DEFAULT_API_URL,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    table,
    text,
    when,
)

# --- status --------------------------------------------------------------------------


def render_status(body: Mapping[str, Any]) -> str:
    listed = list(body.get("assessments") or [])
    rows = [r for r in listed if r.get("kind") != "commands"]  # commands: their own section
    head = (
        f"account {body.get('account_id')}  opportunity {body.get('opportunity_id')}  "
        f"{len(rows)} assessment{'' if len(rows) == 1 else 's'}"
    )
    commands = command_lines(listed)
    said = "\n\nrecruiter commands:\n" + "\n".join(commands) if commands else ""
    if not rows:
        return head + "\n(none: Temporal holds no assessment of this candidate)" + said
    headers = [
        "kind",
        "test",
        "status",
        "verdict",
        "score",
        "invitation",
        "sent",
        "next check",
        "started",
        "closed",
        "problem",
    ]
    cells = [
        [
            text(r.get("kind")),
            text(r.get("test")),
            text(r.get("status")),
            text(r.get("verdict")),
            text(r.get("score")),
            text(r.get("invitation_id")),
            when(r.get("sent_at")),
            when(r.get("next_check_at")),
            when(r.get("started_at")),
            when(r.get("closed_at")),
            text(r.get("last_error") or r.get("reason")),
        ]
        for r in rows
    ]
    ids = "\n".join(f"  {r.get('workflow_id')}" for r in listed)
    waits = [
        f"  {text(r.get('kind'))} {text(r.get('test'))}: {waiting_text(r['waiting'])}"
        for r in rows
        if isinstance(r.get("waiting"), Mapping)
    ]
    waiting = "\n\nretrying (running assessments):\n" + "\n".join(waits) if waits else ""
    return f"{head}\n\n{table(headers, cells)}{waiting}{said}\n\nworkflow ids (Temporal UI):\n{ids}"


def command_lines(rows: list[Mapping[str, Any]]) -> list[str]:
    """``  2026-11-30 10:00:01Z  Py - Resend: applied (Py sent the invitation email again)``,
    from the candidate's command runs (the outcomes there include those of invitations)."""
    lines = []
    for r in rows:
        if r.get("kind") != "commands":
            continue
        for o in r.get("outcomes") or []:
            if isinstance(o, Mapping):
                what = "applied" if o.get("applied") else "not applicable"
                lines.append(
                    f"  {when(o.get('at'))}  {text(o.get('command'))}: {what} ({text(o.get('detail'))})"
                )
    return lines


_SERVICES = {"lever": "Lever", "py": "Py"}


def waiting_text(waiting: Mapping[str, Any]) -> str:
    """``waiting for Lever since 2026-11-30 10:00 UTC (7 attempts), last answer: ...``"""
    activity = str(waiting.get("activity") or "")
    prefix = activity.split(".", 1)[0]
    text = f"waiting for {_SERVICES.get(prefix, activity or 'an activity')}"
    since = waiting.get("since")
    if isinstance(since, str) and since:
        try:
            parsed = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            text += f" since {since}"
        else:
            if parsed.utcoffset() is not None:
                parsed = parsed.astimezone(UTC)
            text += f" since {parsed.strftime('%Y-%m-%d %H:%M')} UTC"
    attempts = waiting.get("attempts")
    if isinstance(attempts, int) and not isinstance(attempts, bool):
        text += f" ({attempts} attempt{'' if attempts == 1 else 's'})"
    if waiting.get("last_error"):
        text += f", last answer: {waiting['last_error']}"
    return text


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    token = os.environ.get("PYLEVER_ADMIN_TOKEN")
    if not token:
        print("py-lever status: PYLEVER_ADMIN_TOKEN is not set", file=err)
        return EXIT_USAGE
    base = (os.environ.get("PYLEVER_API_URL") or DEFAULT_API_URL).rstrip("/")
    url = f"{base}/accounts/{quote(args.account, safe='')}/candidates/{quote(args.opportunity, safe='')}"
    try:
        response = httpx.get(
            url, headers={"Authorization": f"Bearer {token}"}, timeout=args.timeout
        )
    except httpx.HTTPError as exc:
        print(f"py-lever status: cannot reach the API at {base}: {type(exc).__name__}", file=err)
        return EXIT_PROBLEM
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        message = (
            f"{error.get('code')}: {error.get('message')}"
            if isinstance(error, dict)
            else response.reason_phrase
        )
        print(f"py-lever status: the API answered {response.status_code} {message}", file=err)
        return EXIT_PROBLEM
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True), file=out)
    else:
        print(render_status(body), file=out)
    return EXIT_OK

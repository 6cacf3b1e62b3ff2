"""Operator commands of py-lever.

    python cli.py check                          # the config against the real Lever and Py
    python cli.py status ACCOUNT OPPORTUNITY     # one candidate's assessments (via the API)
    python cli.py status ACCOUNT OPPORTUNITY --json

``check`` reads ``PYLEVER_CONFIG``; exit 0 when every check passes, 1 on any
problem, 2 when the configuration itself is unusable. ``status`` asks the API at
``PYLEVER_API_URL`` (default http://127.0.0.1:8000) with ``PYLEVER_ADMIN_TOKEN``;
exit 0 on an answer, 1 when the API refuses or cannot be reached, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

import httpx

if TYPE_CHECKING:
    from pylever.checks import CheckResult


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

    return "\n".join(
        [line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)]
    )


def _result_text(result: CheckResult) -> str:
    if result.outcome == "ok":
        return f"ok ({result.detail})" if result.detail else "ok"
    if result.outcome == "skipped":
        return f"skipped: {result.detail}"
    return f"PROBLEM: {result.detail}"


def _when(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "-"
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return parsed.strftime("%Y-%m-%d %H:%M:%S") + ("Z" if parsed.utcoffset() is not None else "")


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- check ---------------------------------------------------------------------------


def cmd_check(_: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pylever.checks import run_checks  # imported here: `status` does not need the clients
    from pylever.config import ConfigError, load_config_from_env

    try:
        config = load_config_from_env()
    except ConfigError as exc:
        print(f"py-lever check: configuration error: {exc}", file=err)
        return EXIT_USAGE
    results = asyncio.run(run_checks(config))
    print(
        table(
            ["account", "check", "target", "result"],
            [[r.account, r.check, r.target, _result_text(r)] for r in results],
        ),
        file=out,
    )
    problems = sum(1 for r in results if r.outcome == "problem")
    if problems:
        print(f"\n{problems} problem{'s' if problems > 1 else ''} in {len(results)} checks", file=out)
        return EXIT_PROBLEM
    print(f"\nall {len(results)} checks passed", file=out)
    return EXIT_OK


# --- status --------------------------------------------------------------------------


def render_status(body: Mapping[str, Any]) -> str:
    rows = list(body.get("assessments") or [])
    head = (
        f"account {body.get('account_id')}  opportunity {body.get('opportunity_id')}  "
        f"{len(rows)} assessment{'' if len(rows) == 1 else 's'}"
    )
    if not rows:
        return head + "\n(none: Temporal holds no assessment of this candidate)"
    headers = ["kind", "test", "status", "verdict", "score", "invitation", "sent", "next check",
               "started", "closed", "problem"]
    cells = [
        [
            _text(r.get("kind")),
            _text(r.get("test")),
            _text(r.get("status")),
            _text(r.get("verdict")),
            _text(r.get("score")),
            _text(r.get("invitation_id")),
            _when(r.get("sent_at")),
            _when(r.get("next_check_at")),
            _when(r.get("started_at")),
            _when(r.get("closed_at")),
            _text(r.get("last_error") or r.get("reason")),
        ]
        for r in rows
    ]
    ids = "\n".join(f"  {r.get('workflow_id')}" for r in rows)
    return f"{head}\n\n{table(headers, cells)}\n\nworkflow ids (Temporal UI):\n{ids}"


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    token = os.environ.get("PYLEVER_ADMIN_TOKEN")
    if not token:
        print("py-lever status: PYLEVER_ADMIN_TOKEN is not set", file=err)
        return EXIT_USAGE
    base = (os.environ.get("PYLEVER_API_URL") or DEFAULT_API_URL).rstrip("/")
    url = f"{base}/accounts/{quote(args.account, safe='')}/candidates/{quote(args.opportunity, safe='')}"
    try:
        response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=args.timeout)
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


# --- entry point ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python cli.py", description="py-lever operator commands")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="check the configuration (PYLEVER_CONFIG) against Lever and Py",
        description="Lever key, trigger and move_on_* stages, default tests and the Py key, "
        "for every account. Exit 1 on any problem, 2 on a bad configuration.",
    )
    check.set_defaults(handler=cmd_check)
    status = commands.add_parser(
        "status",
        help="a candidate's assessments, from the API (PYLEVER_API_URL, PYLEVER_ADMIN_TOKEN)",
    )
    status.add_argument("account", metavar="ACCOUNT", help="account id, as in the config")
    status.add_argument("opportunity", metavar="OPPORTUNITY", help="Lever opportunity id")
    status.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    status.add_argument("--timeout", type=float, default=15.0, help="seconds (default 15)")
    status.set_defaults(handler=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args, out, err))


if __name__ == "__main__":
    sys.exit(main())

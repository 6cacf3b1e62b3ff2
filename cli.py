"""Operator commands of py-lever.

    python cli.py check                          # the config against the real Lever and Py
    python cli.py status ACCOUNT OPPORTUNITY     # one candidate's assessments (via the API)
    python cli.py status ACCOUNT OPPORTUNITY --json
    python cli.py cancel ACCOUNT OPPORTUNITY [--stage STAGE]   # cancel running assessments
    python cli.py remove-account ACCOUNT [--yes]  # withdraw a removed account's assessments
    python cli.py backfill ACCOUNT [--stage S] [--since YYYY-MM-DD] [--dry-run | --yes]

``check`` reads ``PYLEVER_CONFIG``; exit 0 when every check passes, 1 on any
problem, 2 when the configuration itself is unusable. ``status`` asks the API at
``PYLEVER_API_URL`` (default http://127.0.0.1:8000) with ``PYLEVER_ADMIN_TOKEN``;
exit 0 on an answer, 1 when the API refuses or cannot be reached, 2 on a usage error.
``cancel`` cancels (never terminates) the candidate's assessment workflows by their
deterministic ids, talking to Temporal directly (``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``PYLEVER_PAYLOAD_KEYS``); exit 0 when at least one was
cancelled, 1 when none was running, 2 on a usage or configuration error. ``backfill``
invites candidates already waiting in a trigger stage (docs/operations.md). Each command
lives in ``pylever/ops/commands/``; this module is the parser.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from pylever.ops.commands.backfill import cmd_backfill, parse_since
from pylever.ops.commands.cancel import cmd_cancel, cmd_remove_account
from pylever.ops.commands.check import cmd_check
from pylever.ops.commands.status import cmd_status

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
    cancel = commands.add_parser(
        "cancel",
        help="cancel a candidate's running assessments in Temporal (cancel, not terminate)",
        description="Cancels the assessment workflows of the candidate (one per trigger stage "
        "of the account, or only --stage): each cancels its invitation at Py and clears the "
        "in-progress tags. Reads PYLEVER_CONFIG, TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE and "
        "PYLEVER_PAYLOAD_KEYS. Exit 0 when one was cancelled, 1 when none was running, "
        "2 on a usage or configuration error.",
    )
    cancel.add_argument("account", metavar="ACCOUNT", help="account id, as in the config")
    cancel.add_argument("opportunity", metavar="OPPORTUNITY", help="Lever opportunity id")
    cancel.add_argument(
        "--stage", metavar="STAGE",
        help="a stage id, or a trigger stage name of the account (default: every trigger stage)",
    )  # fmt: skip
    cancel.add_argument(
        "--wait", type=float, default=30.0, metavar="SECONDS",
        help="wait this long for the cancelled assessments to close (default 30; 0: do not wait)",
    )  # fmt: skip
    cancel.set_defaults(handler=cmd_cancel)
    remove = commands.add_parser(
        "remove-account",
        help="withdraw the running assessments of an account no longer in the configuration",
        description="For an account dropped from the file while the workers were down (a "
        "reload withdraws them by itself): cancels each running assessment's invitation at "
        "Py, writes nothing to Lever, ends them cancelled ('account removed from "
        "configuration'). Without --yes, only says how many would be withdrawn.",
    )
    remove.add_argument("account", metavar="ACCOUNT", help="the removed account's id")
    remove.add_argument("--yes", action="store_true", help="withdraw them")
    remove.set_defaults(handler=cmd_remove_account)
    backfill = commands.add_parser(
        "backfill",
        help="invite the candidates already waiting in a trigger stage (section 8)",
        description="Lists the account's candidates now in its trigger stage(s), not archived, "
        "who entered since --since (default: the account's sweep_lookback ago), with the test "
        "each would get, then starts their assessments the way a webhook does (rate-limited, "
        "behind webhook-driven work). Candidates already assessed are left alone, so running "
        "it twice sends nothing new; candidates without a configured test are reported, not "
        "invited. Without --yes or --dry-run it lists them and asks. Needs the workers.",
    )
    backfill.add_argument("account", metavar="ACCOUNT", help="account id, as in the config")
    backfill.add_argument(
        "--stage", metavar="STAGE", help="one trigger stage (name or id); default: all of them"
    )
    backfill.add_argument(
        "--since", metavar="YYYY-MM-DD", type=parse_since,
        help="entries on or after this day (UTC); default: sweep_lookback ago",
    )  # fmt: skip
    choice = backfill.add_mutually_exclusive_group()
    choice.add_argument("--dry-run", action="store_true", help="list them; send nothing")
    choice.add_argument("--yes", action="store_true", help="start them without asking")
    backfill.set_defaults(handler=cmd_backfill)
    return parser


def main(
    argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args, out, err))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: the Temporal client's runtime threads (cancel) can abort the
    # interpreter's finalization ("PyGILState_Release ... finalizing"), which turned
    # exit 1 into a crash now and then. Everything is written and flushed by now.
    os._exit(code)

"""``cli.py check``: the configuration against the real Lever and Py."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from pylever.ops.checks import CheckResult

from pylever.ops.commands.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    table,
)


def _result_text(result: CheckResult) -> str:
    if result.outcome == "ok":
        return f"ok ({result.detail})" if result.detail else "ok"
    if result.outcome == "skipped":
        return f"skipped: {result.detail}"
    return f"PROBLEM: {result.detail}"


# --- check ---------------------------------------------------------------------------


def cmd_check(_: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pylever.config.file import ConfigError, load_config_from_env
    from pylever.ops.checks import run_checks  # imported here: `status` does not need the clients

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
        print(
            f"\n{problems} problem{'s' if problems > 1 else ''} in {len(results)} checks", file=out
        )
        return EXIT_PROBLEM
    print(f"\nall {len(results)} checks passed", file=out)
    return EXIT_OK

"""``cli.py backfill``: the candidates already waiting in a trigger stage (section 8)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from pylever.ops.commands.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    CommandError,
    table,
    temporal_client,
)

# --- backfill ----------------------------------------------------------------------------


def parse_since(value: str) -> datetime:
    """``--since YYYY-MM-DD``: that day's start, UTC."""
    try:
        day = datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None
    return day.replace(tzinfo=UTC)


def progress_text(progress: Mapping[str, Any], *, width: int = 20) -> str:
    """One line of a backfill's progress; with a bar when the stage count is known."""
    stages, done = int(progress.get("stages") or 0), int(progress.get("stages_done") or 0)
    counts = (
        f"listed {progress.get('listed', 0)}, started {progress.get('started', 0)}, "
        f"already assessed {progress.get('assessed', 0)}, no test {progress.get('no_test', 0)}"
    )
    if not stages:
        return counts
    filled = round(width * min(done, stages) / stages)
    return f"[{'#' * filled}{'.' * (width - filled)}] stages {done}/{stages}: {counts}"


def _entered(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


_OUTCOMES = {
    "would_start": "would be invited",
    "started": "invited",
    "assessed": "already assessed",
    "no_test": "no test configured",
}


def backfill_table(result: Any) -> str:
    rows = [
        [
            c.name or "-",
            c.stage,
            _entered(c.entered_at_ms),
            ", ".join(c.tests) or "-",
            _OUTCOMES.get(c.outcome, c.outcome),
        ]
        for c in result.candidates
    ]
    return table(["name", "stage", "entered", "test", "outcome"], rows)


def backfill_summary(result: Any) -> str:
    since = result.since.strftime("%Y-%m-%d %H:%M") + " UTC"
    verb = "would be invited" if result.mode == "dry_run" else "invited"
    return (
        f"{result.listed} candidates in {len(result.stages)} trigger stage(s) since {since}: "
        f"{result.started} {verb}, {result.assessed} already assessed, "
        f"{result.no_test} without a test configured (not invited)"
    )


async def _backfill(args: argparse.Namespace, out: TextIO, ask: Callable[[str], str]) -> int:
    from pylever.config.environment import Settings
    from pylever.config.file import ConfigError, load_config_from_env
    from pylever.contracts.sweep import SweepMode
    from pylever.temporal.backfill import follow, start_backfill

    try:
        config = load_config_from_env()
    except ConfigError as exc:
        raise CommandError(f"configuration error: {exc}", EXIT_USAGE) from None
    if config.account(args.account) is None:
        raise CommandError(f"account {args.account!r} is not in the configuration", EXIT_USAGE)
    settings = Settings.from_env()
    client = await temporal_client(settings)
    terminal = out.isatty()

    async def run(mode: SweepMode) -> Any:
        handle = await start_backfill(
            client, settings.task_queue, args.account, mode, stage=args.stage, since=args.since
        )
        print(f"{mode.value}: workflow {handle.id}", file=out)

        def show(progress: Mapping[str, Any]) -> None:
            line = progress_text(progress)
            print(f"\r{line}" if terminal else f"progress: {line}", end="" if terminal else "\n",
                  file=out, flush=True)  # fmt: skip

        try:
            result = await follow(handle, show)
        except Exception as exc:
            raise CommandError(
                f"the {mode.value} failed: {error_text(exc)}", EXIT_PROBLEM
            ) from None
        if terminal:
            print(file=out)
        return result

    mode = SweepMode.BACKFILL if args.yes else SweepMode.DRY_RUN
    result = await run(mode)
    if result.candidates:
        print(backfill_table(result), file=out)
    print(backfill_summary(result), file=out)
    if args.yes or args.dry_run or not result.started:
        return EXIT_OK
    answer = ask(f"Invite these {result.started} candidates? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        print("nothing sent", file=out)
        return EXIT_OK
    result = await run(SweepMode.BACKFILL)
    print(backfill_summary(result), file=out)
    return EXIT_OK


def error_text(exc: BaseException) -> str:
    """The innermost message of a failed workflow (activity, application error)."""
    while getattr(exc, "cause", None) is not None:
        exc = exc.cause  # type: ignore[attr-defined]
    return str(exc) or type(exc).__name__


def cmd_backfill(
    args: argparse.Namespace, out: TextIO, err: TextIO, ask: Callable[[str], str] = input
) -> int:
    try:
        return asyncio.run(_backfill(args, out, ask))
    except CommandError as exc:
        print(f"py-lever backfill: {exc}", file=err)
        return exc.code
    except (EOFError, KeyboardInterrupt):
        print("\nnothing more sent (a started backfill goes on in Temporal)", file=err)
        return EXIT_PROBLEM

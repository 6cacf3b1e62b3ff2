"""Operator commands of py-lever.

    python cli.py check                          # the config against the real Lever and Py
    python cli.py status ACCOUNT OPPORTUNITY     # one candidate's assessments (via the API)
    python cli.py status ACCOUNT OPPORTUNITY --json
    python cli.py cancel ACCOUNT OPPORTUNITY [--stage STAGE]   # cancel running assessments

``check`` reads ``PYLEVER_CONFIG``; exit 0 when every check passes, 1 on any
problem, 2 when the configuration itself is unusable. ``status`` asks the API at
``PYLEVER_API_URL`` (default http://127.0.0.1:8000) with ``PYLEVER_ADMIN_TOKEN``;
exit 0 on an answer, 1 when the API refuses or cannot be reached, 2 on a usage error.
``cancel`` cancels (never terminates) the candidate's assessment workflows by their
deterministic ids, talking to Temporal directly (``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``PYLEVER_PAYLOAD_KEYS``); exit 0 when at least one was
cancelled, 1 when none was running, 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

import httpx

if TYPE_CHECKING:
    from pylever.ops.checks import CheckResult


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


# --- status --------------------------------------------------------------------------


def render_status(body: Mapping[str, Any]) -> str:
    rows = list(body.get("assessments") or [])
    head = (
        f"account {body.get('account_id')}  opportunity {body.get('opportunity_id')}  "
        f"{len(rows)} assessment{'' if len(rows) == 1 else 's'}"
    )
    if not rows:
        return head + "\n(none: Temporal holds no assessment of this candidate)"
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
    waits = [
        f"  {_text(r.get('kind'))} {_text(r.get('test'))}: {waiting_text(r['waiting'])}"
        for r in rows
        if isinstance(r.get("waiting"), Mapping)
    ]
    waiting = "\n\nretrying (running assessments):\n" + "\n".join(waits) if waits else ""
    return f"{head}\n\n{table(headers, cells)}{waiting}\n\nworkflow ids (Temporal UI):\n{ids}"


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


# --- cancel --------------------------------------------------------------------------


class _CommandError(Exception):
    """A problem that ends ``cancel`` with the exit code it carries."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


async def _cancel_stage_ids(account: Any, stage: str | None, err: TextIO) -> list[str]:
    """The trigger stage ids whose assessments ``cancel`` looks at."""
    from pylever.clients.lever import LeverClient
    from pylever.clients.triggers import TriggerMatcher, _looks_like_id
    from pylever.contracts.errors import ApiError, UnknownStageError

    configured = [t.stage for t in account.triggers]
    async with LeverClient(
        account.lever_api_url, account.lever_api_key.get_secret_value(), rate=0, max_attempts=3
    ) as lever:
        if stage is None:
            ids = await TriggerMatcher(account, lever).stage_ids()
            unresolved = [s for s in configured if not _looks_like_id(s) and s not in ids]
            if unresolved and len(ids) < len(configured):
                print(
                    f"py-lever cancel: warning: could not resolve trigger stage(s) "
                    f"{', '.join(repr(s) for s in unresolved)} through Lever's GET /stages",
                    file=err,
                )
            if not ids:
                raise _CommandError(
                    f"cannot resolve the trigger stages of account {account.id!r} through "
                    "Lever's GET /stages; name one with --stage STAGE_ID",
                    EXIT_PROBLEM,
                )
            return ids
        if stage not in configured:
            if _looks_like_id(stage):
                return [stage]  # any stage id: an assessment of a former trigger stage too
            raise _CommandError(
                f"{stage!r} is neither a stage id nor a trigger stage of account {account.id!r} "
                f"(configured: {', '.join(repr(s) for s in configured)})",
                EXIT_USAGE,
            )
        try:
            return [await lever.resolve_stage(stage)]
        except UnknownStageError:
            if _looks_like_id(stage):
                return [stage]
            raise _CommandError(
                f"trigger stage {stage!r} of account {account.id!r} is not listed by Lever's "
                "GET /stages",
                EXIT_PROBLEM,
            ) from None
        except ApiError as exc:
            if _looks_like_id(stage):
                return [stage]
            raise _CommandError(
                f"cannot resolve stage {stage!r} through Lever: {exc.summary}", EXIT_PROBLEM
            ) from None


async def _temporal(settings: Any) -> Any:
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
        raise _CommandError(f"configuration error: {exc}", EXIT_USAGE) from None
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=data_converter(codec),
        )
    except Exception as exc:
        raise _CommandError(
            f"cannot reach Temporal at {settings.temporal_address}: {type(exc).__name__}",
            EXIT_PROBLEM,
        ) from None


async def _cancel(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError, RPCStatusCode

    from pylever.config.environment import Settings
    from pylever.config.file import ConfigError, load_config_from_env
    from pylever.contracts import search_attributes as sa
    from workflows.decisions import assessment_workflow_id

    try:
        config = load_config_from_env()
    except ConfigError as exc:
        raise _CommandError(f"configuration error: {exc}", EXIT_USAGE) from None
    account = config.account(args.account)
    if account is None:
        known = ", ".join(a.id for a in config.accounts)
        raise _CommandError(f"unknown account {args.account!r} (configured: {known})", EXIT_USAGE)
    settings = Settings.from_env()
    stage_ids = await _cancel_stage_ids(account, args.stage, err)
    client = await _temporal(settings)

    cancelled: list[Any] = []
    for stage_id in stage_ids:
        workflow_id = assessment_workflow_id(account.id, args.opportunity, stage_id)
        handle = client.get_workflow_handle(workflow_id)
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                print(f"not found {workflow_id}", file=out)
                continue
            raise _CommandError(f"Temporal refused: {exc.message}", EXIT_PROBLEM) from None
        if description.status != WorkflowExecutionStatus.RUNNING:
            state = description.status.name.lower() if description.status else "closed"
            py_status = description.typed_search_attributes.get(sa.PY_STATUS)
            print(f"not running {workflow_id} ({state}, PyStatus {py_status or '-'})", file=out)
            continue
        run = client.get_workflow_handle(workflow_id, run_id=description.run_id)
        try:
            await run.cancel()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:  # it closed between describe and cancel
                print(f"not running {workflow_id} (closed just now)", file=out)
                continue
            raise _CommandError(f"Temporal refused: {exc.message}", EXIT_PROBLEM) from None
        print(f"cancelled {workflow_id}", file=out)
        cancelled.append(run)
    if not cancelled:
        print(
            f"py-lever cancel: no running assessment of opportunity {args.opportunity} "
            f"in account {account.id}",
            file=err,
        )
        return EXIT_PROBLEM
    if args.wait > 0:
        await _report_closed(cancelled, args.wait, out)
    return EXIT_OK


async def _report_closed(handles: Sequence[Any], within: float, out: TextIO) -> None:
    """Wait up to ``within`` seconds for each cancelled assessment to close; print how it ended."""
    from temporalio.client import WorkflowExecutionStatus

    from pylever.contracts import search_attributes as sa

    deadline = asyncio.get_running_loop().time() + within
    for handle in handles:
        while True:
            description = await handle.describe()
            if description.status != WorkflowExecutionStatus.RUNNING:
                state = description.status.name.lower() if description.status else "closed"
                py_status = description.typed_search_attributes.get(sa.PY_STATUS)
                print(f"closed {handle.id}: {state}, PyStatus {py_status or '-'}", file=out)
                break
            if asyncio.get_running_loop().time() > deadline:
                print(f"still closing after {within:g} s: {handle.id}", file=out)
                break
            await asyncio.sleep(0.5)


def cmd_cancel(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        return asyncio.run(_cancel(args, out, err))
    except _CommandError as exc:
        print(f"py-lever cancel: {exc}", file=err)
        return exc.code


async def _remove_account(args: argparse.Namespace, out: TextIO) -> int:
    from pylever.config.environment import Settings
    from pylever.config.file import ConfigError, load_config_from_env
    from pylever.temporal.gateway import Gateway
    from pylever.temporal.schedules import drop_sweep_schedule
    from pylever.temporal.unconfigured import unconfigured_accounts

    try:
        config = load_config_from_env()
    except ConfigError as exc:
        raise _CommandError(f"configuration error: {exc}", EXIT_USAGE) from None
    if config.account(args.account) is not None:
        raise _CommandError(
            f"account {args.account!r} is still in the configuration: remove it from the file "
            "and send SIGHUP to the api and the workers (docs/operations.md)",
            EXIT_USAGE,
        )
    settings = Settings.from_env()
    client = await _temporal(settings)
    running = await unconfigured_accounts(
        client, settings.task_queue, (a.id for a in config.accounts)
    )
    count = running.get(args.account, 0)
    if not args.yes:
        print(
            f"{count} running assessments of account {args.account!r} would be withdrawn "
            "(invitations cancelled at Py, nothing written to Lever); run again with --yes",
            file=out,
        )
        return EXIT_OK
    workflow_id = await Gateway(client, settings.task_queue).remove_account(args.account)
    print(f"withdrawing {count} running assessments: workflow {workflow_id}", file=out)
    if await drop_sweep_schedule(client, settings.task_queue, args.account):
        print("its sweep schedule is deleted", file=out)
    return EXIT_OK


def cmd_remove_account(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        return asyncio.run(_remove_account(args, out))
    except _CommandError as exc:
        print(f"py-lever remove-account: {exc}", file=err)
        return exc.code


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
        raise _CommandError(f"configuration error: {exc}", EXIT_USAGE) from None
    if config.account(args.account) is None:
        raise _CommandError(f"account {args.account!r} is not in the configuration", EXIT_USAGE)
    settings = Settings.from_env()
    client = await _temporal(settings)
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
            raise _CommandError(
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
    except _CommandError as exc:
        print(f"py-lever backfill: {exc}", file=err)
        return exc.code
    except (EOFError, KeyboardInterrupt):
        print("\nnothing more sent (a started backfill goes on in Temporal)", file=err)
        return EXIT_PROBLEM


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

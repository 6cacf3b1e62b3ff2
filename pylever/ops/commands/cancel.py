"""``cli.py cancel`` and ``cli.py remove-account``: cancelling in Temporal (never terminating)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any, TextIO

from pylever.ops.commands.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    CommandError,
    temporal_client,
)


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
                raise CommandError(
                    f"cannot resolve the trigger stages of account {account.id!r} through "
                    "Lever's GET /stages; name one with --stage STAGE_ID",
                    EXIT_PROBLEM,
                )
            return ids
        if stage not in configured:
            if _looks_like_id(stage):
                return [stage]  # any stage id: an assessment of a former trigger stage too
            raise CommandError(
                f"{stage!r} is neither a stage id nor a trigger stage of account {account.id!r} "
                f"(configured: {', '.join(repr(s) for s in configured)})",
                EXIT_USAGE,
            )
        try:
            return [await lever.resolve_stage(stage)]
        except UnknownStageError:
            if _looks_like_id(stage):
                return [stage]
            raise CommandError(
                f"trigger stage {stage!r} of account {account.id!r} is not listed by Lever's "
                "GET /stages",
                EXIT_PROBLEM,
            ) from None
        except ApiError as exc:
            if _looks_like_id(stage):
                return [stage]
            raise CommandError(
                f"cannot resolve stage {stage!r} through Lever: {exc.summary}", EXIT_PROBLEM
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
        raise CommandError(f"configuration error: {exc}", EXIT_USAGE) from None
    account = config.account(args.account)
    if account is None:
        known = ", ".join(a.id for a in config.accounts)
        raise CommandError(f"unknown account {args.account!r} (configured: {known})", EXIT_USAGE)
    settings = Settings.from_env()
    stage_ids = await _cancel_stage_ids(account, args.stage, err)
    client = await temporal_client(settings)

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
            raise CommandError(f"Temporal refused: {exc.message}", EXIT_PROBLEM) from None
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
            raise CommandError(f"Temporal refused: {exc.message}", EXIT_PROBLEM) from None
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
    except CommandError as exc:
        print(f"py-lever cancel: {exc}", file=err)
        return exc.code


async def _remove_account(args: argparse.Namespace, out: TextIO) -> int:
    from pylever.config.environment import Settings
    from pylever.config.file import ConfigError, load_config_from_env
    from pylever.temporal.gateway import Gateway
    from pylever.temporal.schedules import drop_command_schedule, drop_sweep_schedule
    from pylever.temporal.unconfigured import unconfigured_accounts

    try:
        config = load_config_from_env()
    except ConfigError as exc:
        raise CommandError(f"configuration error: {exc}", EXIT_USAGE) from None
    if config.account(args.account) is not None:
        raise CommandError(
            f"account {args.account!r} is still in the configuration: remove it from the file "
            "and send SIGHUP to the api and the workers (docs/operations.md)",
            EXIT_USAGE,
        )
    settings = Settings.from_env()
    client = await temporal_client(settings)
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
    if await drop_command_schedule(client, settings.task_queue, args.account):
        print("its command watch schedule is deleted", file=out)
    return EXIT_OK


def cmd_remove_account(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        return asyncio.run(_remove_account(args, out))
    except CommandError as exc:
        print(f"py-lever remove-account: {exc}", file=err)
        return exc.code

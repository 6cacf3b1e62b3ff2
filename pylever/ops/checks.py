"""Pre-flight checks of a configuration against the real Lever and Py (``cli.py check``).

For each account: the Lever key works (``GET /stages``), every trigger stage and
every ``move_on_pass`` / ``move_on_fail`` stage is the id or the exact name of a
listed stage, and every ``default_test`` is the exact name of a Py test. Once
for all accounts: the Py key works (``GET /v1/tests``).

The worker runs the same checks at start and logs each problem as a warning
(``log_check_problems``); ``cli.py check`` prints them as a table. Problems
carry the clients' error messages, which name method, path and status and never
a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pylever.clients.lever import LeverClient, Stage
from pylever.clients.py import PyClient, PyTest
from pylever.config.file import Account, AppConfig
from pylever.contracts.errors import ApiError, AuthError
from pylever.ops.logs import log_event

__all__ = [
    "ALL_ACCOUNTS",
    "CheckResult",
    "Outcome",
    "log_check_problems",
    "run_checks",
]

Outcome = Literal["ok", "problem", "skipped"]
ALL_ACCOUNTS = "*"  # the account column of checks that concern every account (the Py key)

# Outside activities the clients retry by themselves; a pre-flight check should not hang.
CHECK_ATTEMPTS = 2
CHECK_TIMEOUT = 10.0
CHECK_CONCURRENCY = 8  # accounts checked at once


@dataclass(frozen=True)
class CheckResult:
    account: str  # an account id, or ALL_ACCOUNTS
    check: str  # "lever key", "trigger stage", "move_on_pass stage", "default test", "py key", ...
    target: str  # what was checked: an endpoint, a stage name or id, a test name
    outcome: Outcome
    detail: str = ""  # the resolved id when ok, the problem otherwise

    @property
    def ok(self) -> bool:
        return self.outcome != "problem"


async def run_checks(
    config: AppConfig,
    *,
    lever_clients: Mapping[str, LeverClient] | None = None,
    py_client: PyClient | None = None,
) -> list[CheckResult]:
    """Every check, the Py key first, then each account in config order.

    Clients not given are built from the configuration (and closed again), a few
    accounts at a time: a thousand accounts never hold a thousand clients at once.
    """
    async with _py(config, py_client) as py:
        py_tests, py_results = await _check_py(py)
        gate = asyncio.Semaphore(CHECK_CONCURRENCY)

        async def check(account: Account) -> list[CheckResult]:
            async with gate, _lever(account, lever_clients) as lever:
                return await _check_account(account, lever, py_tests)

        per_account = await asyncio.gather(*(check(account) for account in config.accounts))
    return py_results + [result for results in per_account for result in results]


async def log_check_problems(
    config: AppConfig, logger: logging.Logger, **clients: object
) -> list[CheckResult]:
    """Run the checks and log each problem as a warning (used by the worker at start)."""
    try:
        results = await run_checks(config, **clients)  # type: ignore[arg-type]
    except Exception as exc:  # the checks must never stop the worker
        log_event(
            logger,
            "startup checks failed to run",
            logging.WARNING,
            error=f"{type(exc).__name__}: {exc}",
        )
        return []
    problems = [r for r in results if r.outcome == "problem"]
    for result in problems:
        log_event(
            logger,
            "startup check failed",
            logging.WARNING,
            account=result.account,
            check=result.check,
            target=result.target,
            problem=result.detail,
        )
    log_event(
        logger,
        "startup checks done",
        logging.WARNING if problems else logging.INFO,
        checks=len(results),
        problems=len(problems),
    )
    return results


# --- internals ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _lever(
    account: Account, given: Mapping[str, LeverClient] | None
) -> AsyncIterator[LeverClient]:
    if given is not None and account.id in given:
        yield given[account.id]
        return
    lever = LeverClient(
        account.lever_api_url,
        account.lever_api_key.get_secret_value(),
        max_attempts=CHECK_ATTEMPTS,
        timeout=CHECK_TIMEOUT,
    )
    try:
        yield lever
    finally:
        await lever.aclose()


@contextlib.asynccontextmanager
async def _py(config: AppConfig, given: PyClient | None) -> AsyncIterator[PyClient]:
    if given is not None:
        yield given
        return
    py = PyClient(
        config.py.api_url,
        config.py.api_key.get_secret_value(),
        max_attempts=CHECK_ATTEMPTS,
        timeout=CHECK_TIMEOUT,
    )
    try:
        yield py
    finally:
        await py.aclose()


def _problem(exc: Exception, service: str) -> str:
    if isinstance(exc, AuthError):
        return f"{service} rejected the API key ({exc.message})"
    if isinstance(exc, ApiError):
        return exc.message
    return f"{type(exc).__name__}: cannot reach {service}"


async def _check_py(py: PyClient) -> tuple[list[PyTest] | None, list[CheckResult]]:
    try:
        tests = await py.list_tests()
    except Exception as exc:
        return None, [
            CheckResult(ALL_ACCOUNTS, "py key", "GET /v1/tests", "problem", _problem(exc, "Py"))
        ]
    return tests, [
        CheckResult(ALL_ACCOUNTS, "py key", "GET /v1/tests", "ok", f"{len(tests)} tests")
    ]


def _resolve(stages: Sequence[Stage], name_or_id: str) -> str | None:
    """The id, as ``LeverClient.resolve_stage`` and the trigger matcher resolve it."""
    for stage in stages:
        if stage.id == name_or_id:
            return stage.id
    for stage in stages:
        if stage.text == name_or_id:
            return stage.id
    return None


async def _check_account(
    account: Account, lever: LeverClient, py_tests: list[PyTest] | None
) -> list[CheckResult]:
    results: list[CheckResult] = []
    stages: list[Stage] | None
    try:
        stages = await lever.list_stages()
    except Exception as exc:
        stages = None
        results.append(
            CheckResult(account.id, "lever key", "GET /stages", "problem", _problem(exc, "Lever"))
        )
    else:
        results.append(
            CheckResult(account.id, "lever key", "GET /stages", "ok", f"{len(stages)} stages")
        )

    stage_checks: list[tuple[str, str, str]] = []  # (check, target, where)
    for trigger in account.triggers:
        stage_checks.append(("trigger stage", trigger.stage, ""))
        for field in ("move_on_pass", "move_on_fail"):
            target = getattr(trigger, field)
            if target:
                stage_checks.append((f"{field} stage", target, f" (trigger {trigger.stage!r})"))
    for check, target, where in stage_checks:
        if stages is None:
            results.append(
                CheckResult(account.id, check, target, "skipped", "Lever stages not readable")
            )
            continue
        stage_id = _resolve(stages, target)
        if stage_id is None:
            results.append(
                CheckResult(
                    account.id,
                    check,
                    target,
                    "problem",
                    "neither the id nor the exact name of a stage in Lever's GET /stages" + where,
                )
            )
        else:
            results.append(
                CheckResult(account.id, check, target, "ok", "" if stage_id == target else stage_id)
            )

    names = {t.name: t.id for t in py_tests or ()}
    for trigger in account.triggers:
        if not trigger.default_test:
            continue
        if py_tests is None:
            results.append(
                CheckResult(
                    account.id,
                    "default test",
                    trigger.default_test,
                    "skipped",
                    "Py tests not readable",
                )
            )
        elif trigger.default_test in names:
            results.append(
                CheckResult(
                    account.id,
                    "default test",
                    trigger.default_test,
                    "ok",
                    names[trigger.default_test],
                )
            )
        else:
            results.append(
                CheckResult(
                    account.id,
                    "default test",
                    trigger.default_test,
                    "problem",
                    "no Py test has exactly this name in GET /v1/tests"
                    f" (trigger {trigger.stage!r})",
                )
            )
    return results

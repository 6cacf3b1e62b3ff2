"""Reloading the configuration file on ``SIGHUP`` (issue 12: onboarding without a restart).

``ConfigReloader`` re-reads the file a process started with and hands the old and
new configurations, with the accounts that changed, to the process's ``apply``
callback (the API swaps its accounts, the worker its Lever workers). A file that
does not validate changes nothing: the configuration in force is kept, one ERROR
line names the file, field and problem (the text of ``ConfigError``, as at start),
and ``pylever_config_reloads_total{result="failed"}`` counts it.

Reloads never overlap: a ``SIGHUP`` that arrives during a reload causes exactly
one more reload after it, however many arrive meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from pylever.config.file import Account, AppConfig, ConfigError, load_config
from pylever.ops import metrics
from pylever.ops.logs import log_event

log = logging.getLogger("pylever.config.reload")

Apply = Callable[[AppConfig, AppConfig, "AccountChanges"], Awaitable[None]]
_MAX_ERROR = 300  # characters of an apply failure's message in the log line


@dataclass(frozen=True)
class AccountChanges:
    """Account ids added, changed (same id, any field differs) and removed by a reload."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    @classmethod
    def between(cls, old: AppConfig, new: AppConfig) -> AccountChanges:
        """Compare account by account; secrets are compared by value (a rotated key is a change)."""
        before = {a.id: a for a in old.accounts}
        after = {a.id: a for a in new.accounts}
        return cls(
            added=tuple(i for i in after if i not in before),
            changed=tuple(
                i for i in after if i in before and _fields(before[i]) != _fields(after[i])
            ),
            removed=tuple(i for i in before if i not in after),
        )

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.changed or self.removed)


def _fields(account: Account) -> dict[str, Any]:
    """The account's fields with secret values revealed (for comparison only, never logged)."""
    return _reveal(account.model_dump())


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return ("secret", value.get_secret_value())
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_reveal(v) for v in value)
    return value


class ConfigReloader:
    """Re-reads ``path`` on demand (``reload``) or on ``SIGHUP`` (``install``).

    ``process`` names the process in the log lines and the metric's label
    (``api``, ``worker``). ``current`` is the configuration in force; it changes
    only after ``apply`` succeeded.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        process: str,
        current: AppConfig,
        apply: Apply,
    ) -> None:
        self.path = os.fspath(path)
        self.process = process
        self.current = current
        self._apply = apply
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_handler: Any = None
        self._task: asyncio.Task[None] | None = None  # the reloads SIGHUP asked for
        self._again = False  # a SIGHUP came during that task's reload
        for result in ("ok", "failed"):
            metrics.CONFIG_RELOADS.labels(process=process, result=result)
        metrics.CONFIG_LOADED.labels(process=process).set_to_current_time()

    async def reload(self) -> bool:
        """Read and validate the file, then apply it. True when the new configuration is in
        force; False (one ERROR line, metric ``failed``) when the old one stays."""
        async with self._lock:
            try:
                new = load_config(self.path)
            except ConfigError as exc:
                return self._failed(f"configuration error: {exc}")
            old = self.current
            changes = AccountChanges.between(old, new)
            try:
                await self._apply(old, new, changes)
            except Exception as exc:
                message = str(exc)[:_MAX_ERROR]
                return self._failed(f"configuration not applied: {type(exc).__name__}: {message}")
            self.current = new
            metrics.CONFIG_RELOADS.labels(process=self.process, result="ok").inc()
            metrics.CONFIG_LOADED.labels(process=self.process).set_to_current_time()
            log_event(
                log, "configuration reloaded", role=self.process, path=self.path,
                added=list(changes.added), changed=list(changes.changed),
                removed=list(changes.removed),
            )  # fmt: skip
            return True

    def _failed(self, event: str) -> bool:
        metrics.CONFIG_RELOADS.labels(process=self.process, result="failed").inc()
        log_event(
            log, f"{event}; keeping the configuration in force", logging.ERROR,
            role=self.process, path=self.path,
        )  # fmt: skip
        return False

    # --- SIGHUP ------------------------------------------------------------------------

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Reload on ``SIGHUP`` (from the main thread; ``loop``: the running one by default)."""
        self._loop = loop or asyncio.get_running_loop()
        self._previous_handler = signal.getsignal(signal.SIGHUP)
        self._loop.add_signal_handler(signal.SIGHUP, self._signalled)

    def _signalled(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True  # one more after the running one, however many come
            return
        assert self._loop is not None
        self._task = self._loop.create_task(self._reload_while_asked())

    async def _reload_while_asked(self) -> None:
        while True:
            self._again = False
            try:
                await self.reload()
            except Exception:  # reload reports its own failures; never lose the signal task
                log.exception("configuration reload crashed")
            if not self._again:
                return

    async def aclose(self) -> None:
        """Stop reacting to ``SIGHUP`` (the handler in force before ``install`` comes back)
        and wait for a reload under way."""
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
            with contextlib.suppress(ValueError, TypeError):  # not the main thread / unknown
                if self._previous_handler is not None:
                    signal.signal(signal.SIGHUP, self._previous_handler)
            self._loop = None
        task = self._task
        if task is not None:
            self._again = False
            await asyncio.gather(task, return_exceptions=True)
            self._task = None


__all__ = ["AccountChanges", "Apply", "ConfigReloader"]

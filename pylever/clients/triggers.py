"""Which trigger, if any, a Lever stage id belongs to.

Triggers are configured by stage name or id. Ids match without asking Lever;
names resolve through ``GET /stages``, cached per account and refreshed on a
miss at most once per ``refresh_interval`` (a renamed stage keeps working by
id, a new or renamed trigger stage is picked up within that interval).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

from pylever.clients.lever import LeverClient
from pylever.config.file import Account, AppConfig, Trigger
from pylever.contracts.errors import ApiError
from pylever.contracts.records import TriggerSettings
from pylever.ops.logs import log_event

log = logging.getLogger("pylever.clients.triggers")


class TriggerMatcher:
    def __init__(
        self,
        account: Account,
        client: LeverClient,
        *,
        refresh_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.account = account
        self._client = client
        self._interval = refresh_interval
        self._clock = clock
        self._by_id: dict[str, Trigger] = {t.stage: t for t in account.triggers}
        self._names = list(account.triggers)
        self._resolved: dict[str, Trigger] = {}
        self._refreshed_at: float | None = None
        self._lock = asyncio.Lock()

    async def match(self, stage_id: str) -> Trigger | None:
        trigger = self._by_id.get(stage_id) or self._resolved.get(stage_id)
        if trigger is not None:
            return trigger
        if not self._due():
            return None
        async with self._lock:
            if self._due():
                await self._refresh()
        return self._resolved.get(stage_id)

    async def stage_ids(self) -> list[str]:
        """Every stage id that is (or was, before a rename) one of the account's triggers.

        Names are resolved through ``GET /stages`` when due; when Lever does not answer,
        the ids known so far are returned (a withdrawal must not wait for Lever).
        """
        if len(self._resolved) < len(self._names) and self._due():
            try:
                async with self._lock:
                    if self._due():
                        await self._refresh()
            except ApiError as exc:
                log_event(
                    log,
                    "stage lookup failed",
                    logging.WARNING,
                    account=self.account.id,
                    error=exc.summary,
                )
        return sorted(
            {*(t.stage for t in self.account.triggers if _looks_like_id(t.stage)), *self._resolved}
        )

    def _due(self) -> bool:
        return self._refreshed_at is None or self._clock() - self._refreshed_at >= self._interval

    async def _refresh(self) -> None:
        stages = await self._client.list_stages()
        by_text: dict[str, str] = {}
        for stage in stages:
            by_text.setdefault(stage.text, stage.id)
        # Ids resolved earlier stay: a stage renamed in Lever keeps triggering by its id.
        resolved = dict(self._resolved)
        for trigger in self._names:
            stage_id = by_text.get(trigger.stage)
            if stage_id is not None:
                resolved[stage_id] = trigger
        ids = {stage.id for stage in stages}
        unknown = sorted(
            t.stage for t in self._names if t.stage not in by_text and t.stage not in ids
        )
        if unknown:
            log_event(
                log,
                "trigger stage not found in Lever",
                logging.WARNING,
                account=self.account.id,
                stages=unknown,
            )
        self._resolved = resolved
        self._refreshed_at = self._clock()


def _looks_like_id(stage: str) -> bool:
    """A configured stage that could be a Lever id (names have spaces or other characters)."""
    return bool(_LEVER_ID.fullmatch(stage))


_LEVER_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def trigger_settings(config: AppConfig, account: Account, trigger: Trigger) -> TriggerSettings:
    """The trigger's effective settings, snapshotted into the assessment when it starts."""
    pass_threshold, fail_threshold = account.thresholds(trigger)
    timing = config.timing(account, trigger)
    return TriggerSettings(
        stage=trigger.stage,
        default_test=trigger.default_test,
        pass_threshold=pass_threshold,
        fail_threshold=fail_threshold,
        move_on_pass=trigger.move_on_pass,
        move_on_fail=trigger.move_on_fail,
        reminders_seconds=tuple(int(r.total_seconds()) for r in timing.reminders),
        expire_after_seconds=int(timing.expire_after.total_seconds()),
    )

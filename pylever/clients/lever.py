"""Async Lever client: Basic auth, pagination, a cached stage list, tolerant models.

Lever answers ``{"data": ...}``; lists add ``hasNext`` and ``next``, and ``next``
goes back unchanged as ``offset`` (it is already percent-encoded, so it is sent
verbatim, not encoded again). Requests take tokens from a bucket shared by every
client of the same (base URL, key) in the process.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pylever.clients.http import ApiClient, ApiTransport, Params, Sleep
from pylever.clients.ratelimit import TokenBucket, bucket_for, bucket_key
from pylever.contracts.errors import UnknownStageError

LEVER_API_URL = "https://api.lever.co/v1"
SERVICE = "Lever"

__all__ = [
    "LEVER_API_URL",
    "Archived",
    "LeverClient",
    "Opportunity",
    "Stage",
    "StageChange",
]


# --- models ------------------------------------------------------------------


class _LeverModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Stage(_LeverModel):
    id: str  # built-in stages have ids like "lead-new", not UUIDs
    text: str = ""


class StageChange(_LeverModel):
    toStageId: str
    toStageIndex: int | None = None
    updatedAt: int | None = None  # epoch ms
    userId: str | None = None


class Archived(_LeverModel):
    reason: str | None = None
    archivedAt: int | None = None  # epoch ms


class Opportunity(_LeverModel):
    id: str
    name: str = Field(default="", repr=False)  # candidate data: kept out of reprs and logs
    emails: list[str] = Field(default_factory=list, repr=False)
    tags: list[str] = Field(default_factory=list)
    links: list[str] = Field(default_factory=list)
    stage: str | None = None
    archived: Archived | None = None
    stageChanges: list[StageChange] = Field(default_factory=list)
    lastAdvancedAt: int | None = None  # epoch ms of the last stage change

    @field_validator("name", mode="before")
    @classmethod
    def _null_name(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("emails", "tags", "links", "stageChanges", mode="before")
    @classmethod
    def _null_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("stage", mode="before")
    @classmethod
    def _expanded_stage(cls, value: Any) -> Any:
        # With ``expand=stage`` Lever sends the stage object instead of its id.
        return value.get("id") if isinstance(value, dict) else value

    @property
    def is_archived(self) -> bool:
        return self.archived is not None

    @property
    def primary_email(self) -> str | None:
        """The first non-empty email address, or None."""
        for address in self.emails:
            if address and address.strip():
                return address.strip()
        return None

    def entered_stage(self, stage_id: str) -> bool:
        """True when any of the stage changes went into ``stage_id``."""
        return any(change.toStageId == stage_id for change in self.stageChanges)


# --- client ------------------------------------------------------------------


class LeverClient(ApiClient):
    """``async with LeverClient(base_url, api_key) as lever: ...``

    ``api_key`` is required (it has a default only so ``base_url`` can keep its
    default in first position). ``rate <= 0`` disables the shared token bucket.
    Unknown stage names refresh the stage cache at most once per
    ``stage_refresh_interval`` seconds.
    """

    def __init__(
        self,
        base_url: str = LEVER_API_URL,
        api_key: str = "",
        *,
        rate: float = 10.0,
        burst: int = 20,
        max_attempts: int = 5,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        stage_refresh_interval: float = 30.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not api_key:
            raise ValueError("LeverClient needs an API key")
        base_url = base_url.rstrip("/")
        bucket: TokenBucket | None = None
        if rate > 0:
            bucket = bucket_for(bucket_key(base_url, api_key), rate, burst)
        encoded = base64.b64encode(f"{api_key}:".encode()).decode()
        self._http = ApiTransport(
            service=SERVICE,
            base_url=base_url,
            auth=httpx.BasicAuth(api_key, ""),
            secrets=(api_key, encoded),
            bucket=bucket,
            max_attempts=max_attempts,
            timeout=timeout,
            transport=transport,
            sleep=sleep,
        )
        self._stage_refresh_interval = stage_refresh_interval
        self._stages: dict[str, Stage] | None = None  # by id, in Lever's order
        self._stages_at = 0.0
        self._stages_lock = asyncio.Lock()

    # --- stages --------------------------------------------------------------

    async def list_stages(self) -> list[Stage]:
        return [
            self._http.parse(Stage, item, endpoint="GET /stages")
            async for item in self._pages("/stages", {})
        ]

    async def resolve_stage(self, name_or_id: str) -> str:
        """The id of the stage with this id, else with exactly this name.

        Raises ``UnknownStageError`` when ``GET /stages`` (refreshed on a miss,
        at most once per ``stage_refresh_interval``) does not list it.
        """
        stage_id = self._match_stage(await self._stage_cache(), name_or_id)
        if stage_id is None:
            stage_id = self._match_stage(await self._stage_cache(refresh=True), name_or_id)
        if stage_id is None:
            raise UnknownStageError(
                f"{SERVICE} stage {name_or_id!r} is neither the id nor the name "
                "of a stage listed by GET /stages",
                service=SERVICE,
            )
        return stage_id

    def stage_name(self, stage_id: str) -> str | None:
        """The cached name of a stage id (no request; None if not cached)."""
        stage = (self._stages or {}).get(stage_id)
        return stage.text if stage is not None else None

    async def _stage_cache(self, *, refresh: bool = False) -> dict[str, Stage]:
        async with self._stages_lock:
            stale = time.monotonic() - self._stages_at >= self._stage_refresh_interval
            if self._stages is None or (refresh and stale):
                stages = await self.list_stages()
                self._stages = {stage.id: stage for stage in stages}
                self._stages_at = time.monotonic()
            return self._stages

    @staticmethod
    def _match_stage(stages: Mapping[str, Stage], name_or_id: str) -> str | None:
        if name_or_id in stages:
            return name_or_id
        for stage in stages.values():
            if stage.text == name_or_id:
                return stage.id
        return None

    # --- opportunities -------------------------------------------------------

    async def get_opportunity(self, opportunity_id: str) -> Opportunity:
        return await self._opportunity("GET", opportunity_id, "")

    async def iter_opportunities(self, **params: Any) -> AsyncIterator[Opportunity]:
        """Every opportunity matching ``params`` (Lever's query parameters), page by page."""
        async for item in self._pages("/opportunities", params):
            yield self._http.parse(Opportunity, item, endpoint="GET /opportunities")

    async def opportunities_page(
        self, params: Params, offset: str | None = None
    ) -> tuple[list[Opportunity], str | None]:
        """One page of ``GET /opportunities`` (Lever's filters in ``params``) and the ``next``
        token to pass back as ``offset`` (None: the last page). One request: a caller that
        pages through an activity each makes one rate-limited call."""
        body = await self._http.request(
            "GET",
            "/opportunities",
            params=dict(params),
            verbatim_params={"offset": offset} if offset is not None else None,
        )
        page = self._http.parse(_Page, body, endpoint="GET /opportunities")
        items = [
            self._http.parse(Opportunity, item, endpoint="GET /opportunities") for item in page.data
        ]
        return items, page.next if page.hasNext and page.next else None

    async def add_tags(self, opportunity_id: str, tags: Sequence[str]) -> Opportunity:
        return await self._opportunity("POST", opportunity_id, "/addTags", {"tags": list(tags)})

    async def remove_tags(self, opportunity_id: str, tags: Sequence[str]) -> Opportunity:
        return await self._opportunity("POST", opportunity_id, "/removeTags", {"tags": list(tags)})

    async def add_links(self, opportunity_id: str, links: Sequence[str]) -> Opportunity:
        return await self._opportunity("POST", opportunity_id, "/addLinks", {"links": list(links)})

    async def move_to_stage(self, opportunity_id: str, stage_id: str) -> Opportunity:
        return await self._opportunity("PUT", opportunity_id, "/stage", {"stage": stage_id})

    # --- internals -----------------------------------------------------------

    async def _opportunity(
        self, method: str, opportunity_id: str, suffix: str, body: Any = None
    ) -> Opportunity:
        template = f"/opportunities/{{id}}{suffix}"
        data = await self._http.request(
            method,
            f"/opportunities/{quote(opportunity_id, safe='')}{suffix}",
            template=template,
            json=body,
            unwrap=True,
        )
        return self._http.parse(Opportunity, data, endpoint=f"{method} {template}")

    async def _pages(self, path: str, params: Params) -> AsyncIterator[Any]:
        """The items of every page; ``next`` goes back verbatim as ``offset``."""
        params = dict(params)
        offset = params.pop("offset", None)
        while True:
            body = await self._http.request(
                "GET",
                path,
                params=params,
                verbatim_params={"offset": str(offset)} if offset is not None else None,
            )
            page = self._http.parse(_Page, body, endpoint=f"GET {path}")
            for item in page.data:
                yield item
            if not page.hasNext or not page.next:
                return
            offset = page.next


class _Page(_LeverModel):
    data: list[Any]
    hasNext: bool | None = False
    next: str | None = None

"""Lever activities: each one makes exactly one Lever request.

They run on the account's own task queue (``decisions.lever_task_queue``), which
the worker rate-limits below Lever's 10 requests/s per key for the whole
deployment, however many worker processes poll it.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import activity_errors
from pylever.lever_client import LeverClient
from pylever.models import Candidate


class OpportunityRef(BaseModel):
    model_config = ConfigDict(frozen=True)
    account_id: str
    opportunity_id: str


class ReadCandidate(OpportunityRef):
    stage_id: str


class TagWrite(OpportunityRef):
    tags: tuple[str, ...]


class LinkWrite(OpportunityRef):
    links: tuple[str, ...]


class StageMove(OpportunityRef):
    stage: str  # a stage name or id, as configured


class LeverActivities:
    def __init__(self, clients: Mapping[str, LeverClient]) -> None:
        self._clients = dict(clients)

    def _client(self, account_id: str) -> LeverClient:
        try:
            return self._clients[account_id]
        except KeyError:
            raise ApplicationError(
                f"account {account_id!r} is not in this worker's configuration",
                type="UnknownAccount",
                non_retryable=True,
            ) from None

    @activity.defn(name="lever.read_candidate")
    async def read_candidate(self, req: ReadCandidate) -> Candidate:
        with activity_errors():
            opp = await self._client(req.account_id).get_opportunity(req.opportunity_id)
        return Candidate(
            opportunity_id=opp.id,
            name=opp.name,
            email=opp.primary_email,
            tags=tuple(opp.tags),
            entered_stage=opp.entered_stage(req.stage_id),
            archived=opp.is_archived,
            stage_entries=sum(1 for c in opp.stageChanges if c.toStageId == req.stage_id),
        )

    @activity.defn(name="lever.add_tags")
    async def add_tags(self, req: TagWrite) -> None:
        with activity_errors():
            await self._client(req.account_id).add_tags(req.opportunity_id, list(req.tags))

    @activity.defn(name="lever.remove_tags")
    async def remove_tags(self, req: TagWrite) -> None:
        with activity_errors():
            await self._client(req.account_id).remove_tags(req.opportunity_id, list(req.tags))

    @activity.defn(name="lever.add_links")
    async def add_links(self, req: LinkWrite) -> None:
        with activity_errors():
            await self._client(req.account_id).add_links(req.opportunity_id, list(req.links))

    @activity.defn(name="lever.move_to_stage")
    async def move_to_stage(self, req: StageMove) -> str:
        """Resolve the configured stage (cached ``GET /stages``) and move the candidate there."""
        client = self._client(req.account_id)
        with activity_errors():
            stage_id = await client.resolve_stage(req.stage)
            await client.move_to_stage(req.opportunity_id, stage_id)
        return stage_id

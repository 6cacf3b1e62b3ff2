"""Lever activities: each one makes exactly one Lever request.

They run on the shared Lever task queue (``decisions.lever_task_queue``), each
keyed by its account; the server holds every account below Lever's 10 requests/s
per key for the whole deployment (``pylever.temporal.lever_limits``), however many worker
processes poll it.

An account this worker does not know yet (added to the file, the worker not yet
sent SIGHUP) makes the worker re-read its configuration once (``on_unknown``)
before the call fails with ``UnknownAccount``.

An account whose Lever key is refused (401/403, e.g. while the customer rotates
it) shows it: a warning at most once a minute per account,
``pylever_lever_auth_refusals_total{account}`` per refused call, and
``pylever_lever_key_refused{account}`` at 1 until Lever accepts the key again.
The error still fails the activity as usual, so the workflow's retry policy
keeps retrying the Lever write until the key works.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import activity_errors
from pylever.clients.http import Params
from pylever.clients.lever import LeverClient
from pylever.contracts.activities import LeverActivity
from pylever.contracts.commands import (
    COMMAND_TAGS,
    CandidateTags,
    CommandedCandidate,
    CommandedPage,
    ListCommanded,
)
from pylever.contracts.errors import UNKNOWN_ACCOUNT, ApiError, AuthError
from pylever.contracts.records import (
    Candidate,
    LinkWrite,
    OpportunityRef,
    ReadCandidate,
    StageMove,
    TagWrite,
)
from pylever.contracts.sweep import LIST_PAGE_SIZE, ListWaiting, WaitingCandidate, WaitingPage
from pylever.ops.logs import log_event
from pylever.ops.metrics import LEVER_AUTH_REFUSALS, LEVER_KEY_REFUSED
from workflows.decisions import is_command_tag

log = logging.getLogger("pylever.activities.lever")

KEY_REFUSED_WARNING_INTERVAL = 60.0  # seconds between two warnings for the same account


def _key_accepted_by(exc: ApiError) -> bool:
    """Lever judged the request itself (400, 404, 409...): so it accepted the key."""
    return exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 403, 429)


class LeverClients(Protocol):
    """A mapping of account ids to clients, or ``pylever.clients.lever_accounts.LeverAccounts``."""

    def __iter__(self) -> Iterator[str]: ...

    def get(self, account_id: str, /) -> LeverClient | None: ...


class LeverActivities:
    def __init__(
        self,
        clients: LeverClients,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_unknown: Callable[[], Awaitable[object]] | None = None,
        removed: Callable[[str], bool] | None = None,
    ) -> None:
        self._clients = clients
        self._clock = clock
        self._on_unknown = on_unknown
        self._removed = removed  # accounts whose client is kept only for calls in flight
        self._refusal_warned_at: dict[str, float] = {}  # account -> clock() of its last warning
        self.watch(clients)

    def watch(self, account_ids: Iterable[str]) -> None:
        """The accounts' metric series exist (at 0) before their first call."""
        for account_id in account_ids:
            LEVER_AUTH_REFUSALS.labels(account=account_id)
            LEVER_KEY_REFUSED.labels(account=account_id).set(0)

    @contextmanager
    def _lever_calls(self, account_id: str) -> Iterator[None]:
        """``activity_errors()``, noting whether Lever refused or accepted the account's key."""
        with activity_errors():
            try:
                yield
            except AuthError as exc:
                self._key_refused(account_id, exc.status)
                raise  # unchanged: activity_errors() turns it into the usual AuthError failure
            except ApiError as exc:
                if _key_accepted_by(exc):
                    LEVER_KEY_REFUSED.labels(account=account_id).set(0)
                raise
        LEVER_KEY_REFUSED.labels(account=account_id).set(0)

    def _key_refused(self, account_id: str, status: int | None) -> None:
        LEVER_AUTH_REFUSALS.labels(account=account_id).inc()
        LEVER_KEY_REFUSED.labels(account=account_id).set(1)
        now = self._clock()
        last = self._refusal_warned_at.get(account_id)
        if last is not None and now - last < KEY_REFUSED_WARNING_INTERVAL:
            return
        self._refusal_warned_at[account_id] = now
        log_event(
            log,
            f"Lever refuses account {account_id!r}'s API key ({status}): put a valid key in "
            "lever_api_key and reload (SIGHUP) the worker; Lever writes are retried until it works",
            logging.WARNING,
            account=account_id,
            status=status,
            activity=activity.info().activity_type if activity.in_activity() else None,
        )

    async def _client(self, account_id: str) -> LeverClient:
        client = self._clients.get(account_id)
        if client is None and self._on_unknown is not None:
            await self._on_unknown()  # the file may name it already: re-read it (rate-limited)
            client = self._clients.get(account_id)
        if client is None:
            raise ApplicationError(
                f"account {account_id!r} is not in this worker's configuration",
                type=UNKNOWN_ACCOUNT,
                non_retryable=True,
            )
        return client

    @LeverActivity.read_candidate.implementation
    async def read_candidate(self, req: ReadCandidate) -> Candidate:
        if self._removed is not None and self._removed(req.account_id):
            # The first call of a new assessment: a removed customer gets no new invitations.
            raise ApplicationError(
                f"account {req.account_id!r} was removed from the configuration",
                type=UNKNOWN_ACCOUNT,
                non_retryable=True,
            )
        client = await self._client(req.account_id)
        with self._lever_calls(req.account_id):
            opp = await client.get_opportunity(req.opportunity_id)
        return Candidate(
            opportunity_id=opp.id,
            name=opp.name,
            email=opp.primary_email,
            tags=tuple(opp.tags),
            entered_stage=opp.entered_stage(req.stage_id),
            archived=opp.is_archived,
            stage_entries=sum(1 for c in opp.stageChanges if c.toStageId == req.stage_id),
        )

    @LeverActivity.opportunity_state.implementation
    async def opportunity_state(self, req: OpportunityRef) -> str:
        """``active``, ``archived``, or ``gone`` (Lever answers 404): what Lever says now.

        A withdrawal (archive, delete webhook) is carried out only when this confirms it:
        Lever's signature does not cover a webhook's ``data``.
        """
        client = await self._client(req.account_id)
        try:
            with self._lever_calls(req.account_id):
                opp = await client.get_opportunity(req.opportunity_id)
        except ApplicationError as exc:
            if exc.type == "NotFoundError":
                return "gone"
            raise
        return "archived" if opp.is_archived else "active"

    @LeverActivity.add_tags.implementation
    async def add_tags(self, req: TagWrite) -> None:
        client = await self._client(req.account_id)
        with self._lever_calls(req.account_id):
            await client.add_tags(req.opportunity_id, list(req.tags))

    @LeverActivity.remove_tags.implementation
    async def remove_tags(self, req: TagWrite) -> None:
        client = await self._client(req.account_id)
        with self._lever_calls(req.account_id):
            await client.remove_tags(req.opportunity_id, list(req.tags))

    @LeverActivity.add_links.implementation
    async def add_links(self, req: LinkWrite) -> None:
        client = await self._client(req.account_id)
        with self._lever_calls(req.account_id):
            await client.add_links(req.opportunity_id, list(req.links))

    @LeverActivity.move_to_stage.implementation
    async def move_to_stage(self, req: StageMove) -> str:
        """Resolve the configured stage (cached ``GET /stages``) and move the candidate there."""
        client = await self._client(req.account_id)
        with self._lever_calls(req.account_id):
            stage_id = await client.resolve_stage(req.stage)
            await client.move_to_stage(req.opportunity_id, stage_id)
        return stage_id

    @LeverActivity.list_waiting.implementation
    async def list_waiting(self, req: ListWaiting) -> WaitingPage:
        """One page of the opportunities now in the stage, not archived, whose last stage
        change is at or after ``since_ms`` (Lever's filters: one request)."""
        client = await self._client(req.account_id)
        params: Params = {
            "stage_id": req.stage_id,
            "archived": "false",
            "advanced_at_start": req.since_ms,
            "limit": LIST_PAGE_SIZE,
        }
        with self._lever_calls(req.account_id):
            opportunities, next_offset = await client.opportunities_page(params, req.offset)
        return WaitingPage(
            candidates=tuple(
                WaitingCandidate(
                    opportunity_id=opp.id,
                    name=opp.name,
                    entered_at_ms=opp.lastAdvancedAt,
                    tags=tuple(opp.tags),
                )
                # Lever filtered already; a page is checked again rather than trusted blindly.
                for opp in opportunities
                if opp.stage == req.stage_id and not opp.is_archived
            ),
            next_offset=next_offset,
        )

    @LeverActivity.list_commanded.implementation
    async def list_commanded(self, req: ListCommanded) -> CommandedPage:
        """One page of the account's opportunities carrying any command tag: one request
        (Lever's repeated ``tag`` filter matches any of them)."""
        client = await self._client(req.account_id)
        params: Params = {"tag": list(COMMAND_TAGS), "limit": LIST_PAGE_SIZE}
        with self._lever_calls(req.account_id):
            opportunities, next_offset = await client.opportunities_page(params, req.offset)
        return CommandedPage(
            candidates=tuple(
                CommandedCandidate(
                    opportunity_id=opp.id,
                    tags=tuple(t for t in opp.tags if is_command_tag(t)),
                )
                for opp in opportunities
                if any(is_command_tag(t) for t in opp.tags)
            ),
            next_offset=next_offset,
        )

    @LeverActivity.read_tags.implementation
    async def read_tags(self, req: OpportunityRef) -> CandidateTags:
        """The opportunity's tags now (a recruiter's command tags among them), archived or not."""
        client = await self._client(req.account_id)
        with self._lever_calls(req.account_id):
            opp = await client.get_opportunity(req.opportunity_id)
        return CandidateTags(tags=tuple(opp.tags), archived=opp.is_archived)

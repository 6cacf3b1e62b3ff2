"""Py activities over the Py client (SPEC section 5)."""

from __future__ import annotations

import math

from temporalio.exceptions import ApplicationError

from activities.errors import activity_errors
from pylever.clients.py import Invitation, PyClient
from pylever.contracts.activities import PyActivity
from pylever.contracts.errors import PY_CONTRACT_ERROR, ConflictError, NotFoundError
from pylever.contracts.records import (
    CreateInvitation,
    FindTests,
    InvitationRecord,
    report_url_problem,
)


def _contract_breaches(invitation: Invitation) -> list[str]:
    """What a completed invitation lacks of Py's contract: a score in 0..100, a report_url
    that is https, at most 2,048 characters and without user info (as api.validate_callback)."""
    if invitation.status != "completed":
        return []
    breaches = []
    score = invitation.score
    if score is None:
        breaches.append("without a score")
    elif (isinstance(score, float) and not math.isfinite(score)) or not 0 <= score <= 100:
        breaches.append("with a score outside 0..100")  # the value is the candidate's: not named
    if not invitation.report_url:
        breaches.append("without a report_url")
    elif problem := report_url_problem(invitation.report_url):
        breaches.append(f"with a report_url that {problem}")
    return breaches


def _record(invitation: Invitation) -> InvitationRecord:
    """The workflow's record of a Py invitation, validated here, where it enters.

    A completed invitation without a finite score in 0..100 or without a
    report_url breaks Py's contract: retrying cannot fix it, so it fails the
    activity for good (``PyContractError``). The message names the invitation
    id and what is missing, never candidate data.
    """
    breaches = _contract_breaches(invitation)
    if breaches:
        raise ApplicationError(
            f"Py contract error: invitation {invitation.id} is completed " + " and ".join(breaches),
            type=PY_CONTRACT_ERROR,
            non_retryable=True,
        )
    return InvitationRecord(
        id=invitation.id,
        status=invitation.status,
        score=invitation.score,
        report_url=invitation.report_url,
        completed_at=invitation.completed_at,
        created_at=invitation.created_at,
    )


class PyActivities:
    def __init__(self, client: PyClient, callback_url: str) -> None:
        self._client = client
        self._callback_url = callback_url

    @property
    def client(self) -> PyClient:
        return self._client

    def use(self, client: PyClient, callback_url: str) -> PyClient:
        """Calls from now on go through ``client`` (a reload); returns the one replaced."""
        previous, self._client, self._callback_url = self._client, client, callback_url
        return previous

    @PyActivity.find_tests.implementation
    async def find_tests(self, req: FindTests) -> dict[str, str]:
        """Map those of ``names`` that are Py tests to their ids (the catalogue is cached).

        Most candidate tags ("Referral", "Berlin") are no test's name: a missing name asks
        for a refresh, which the client grants at most once a minute per process
        (``PyClient.tests_by_name``), so a test created at Py is found within a minute
        while ordinary tags cost no catalogue reads.
        """
        with activity_errors():
            catalogue = await self._client.tests_by_name()
            if any(n not in catalogue for n in req.names):
                catalogue = await self._client.tests_by_name(refresh=True)
        return {n: catalogue[n].id for n in req.names if n in catalogue}

    @PyActivity.create_invitation.implementation
    async def create_invitation(self, req: CreateInvitation) -> InvitationRecord:
        with activity_errors():
            invitation = await self._client.create_invitation(
                test_id=req.test_id,
                name=req.candidate_name,
                email=req.candidate_email,
                reference=req.reference,
                callback_url=self._callback_url,
                idempotency_key=req.idempotency_key or req.reference,
            )
        return _record(invitation)

    @PyActivity.get_invitation.implementation
    async def get_invitation(self, invitation_id: str) -> InvitationRecord:
        with activity_errors():
            return _record(await self._client.get_invitation(invitation_id))

    @PyActivity.remind.implementation
    async def remind(self, invitation_id: str) -> bool:
        """False when Py no longer reminds (the invitation finished meanwhile)."""
        with activity_errors():
            try:
                await self._client.remind(invitation_id)
            except ConflictError:
                return False
        return True

    @PyActivity.cancel.implementation
    async def cancel(self, invitation_id: str) -> InvitationRecord | None:
        """Cancel at Py. A completed invitation (409) comes back as it is; a gone one as None."""
        with activity_errors():
            try:
                return _record(await self._client.cancel(invitation_id))
            except ConflictError:
                return _record(await self._client.get_invitation(invitation_id))
            except NotFoundError:
                return None

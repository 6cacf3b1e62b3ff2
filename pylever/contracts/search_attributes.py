"""Custom search attributes (SPEC section 6): the Web UI filters candidates by them."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

LEVER_ACCOUNT = SearchAttributeKey.for_keyword("LeverAccount")
LEVER_OPPORTUNITY_ID = SearchAttributeKey.for_keyword("LeverOpportunityId")
LEVER_STAGE_ID = SearchAttributeKey.for_keyword("LeverStageId")
PY_TEST = SearchAttributeKey.for_keyword("PyTest")
PY_STATUS = SearchAttributeKey.for_keyword("PyStatus")
PY_VERDICT = SearchAttributeKey.for_keyword("PyVerdict")
PY_SCORE = SearchAttributeKey.for_float("PyScore")

ALL = (
    LEVER_ACCOUNT,
    LEVER_OPPORTUNITY_ID,
    LEVER_STAGE_ID,
    PY_TEST,
    PY_STATUS,
    PY_VERDICT,
    PY_SCORE,
)


def quote(value: str) -> str:
    """A string literal for a visibility query."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def candidate_query(account_id: str, opportunity_id: str) -> str:
    return (
        f"{LEVER_ACCOUNT.name} = {quote(account_id)} AND "
        f"{LEVER_OPPORTUNITY_ID.name} = {quote(opportunity_id)}"
    )


def account_query(account_id: str) -> str:
    return f"{LEVER_ACCOUNT.name} = {quote(account_id)}"

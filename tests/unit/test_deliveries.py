"""The delivery ledger: a signed Lever token + triggeredAt is bound to its first body."""

from __future__ import annotations

import json

import pytest

from pylever.edge.deliveries import DeliveryLedger, body_digest


def delivery(
    opp: str = "opp-1",
    event: str = "candidateStageChange",
    token: str = "t" * 48,
    at: int = 1_700_000_000_000,
) -> dict:
    return {
        "token": token,
        "triggeredAt": at,
        "signature": "ab" * 32,
        "event": event,
        "data": {"opportunityId": opp, "toStageId": "stage-1"},
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_same_body_again_is_admitted_another_is_refused() -> None:
    ledger = DeliveryLedger()
    assert ledger.admit(delivery())
    assert ledger.admit(delivery())  # Lever's retry, an admin's rerun
    assert not ledger.admit(delivery(opp="someone-else"))
    assert not ledger.admit(delivery(event="candidateDeleted"))
    assert ledger.admit(delivery(at=1_700_000_000_001))  # another signed pair: a new delivery


def test_key_order_and_whitespace_do_not_matter() -> None:
    body = delivery()
    reordered = json.loads(json.dumps(dict(reversed(list(body.items()))), indent=3))
    assert body_digest(body) == body_digest(reordered)
    ledger = DeliveryLedger()
    assert ledger.admit(body) and ledger.admit(reordered)


def test_entries_expire_and_capacity_evicts_the_oldest() -> None:
    clock = Clock()
    ledger = DeliveryLedger(capacity=2, ttl_seconds=10, clock=clock)
    assert ledger.admit(delivery(token="a" * 48))
    clock.now = 11
    assert ledger.admit(delivery(token="a" * 48, opp="other"))  # expired: a fresh binding
    assert ledger.admit(delivery(token="b" * 48))
    assert ledger.admit(delivery(token="c" * 48))
    assert len(ledger) == 2  # "a" evicted, the oldest
    assert not ledger.admit(delivery(token="c" * 48, opp="other"))


def test_a_body_nested_too_deep_raises_for_the_caller_to_refuse() -> None:
    deep: object = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        DeliveryLedger().admit({**delivery(), "x": deep})


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        DeliveryLedger(capacity=0)
    with pytest.raises(ValueError):
        DeliveryLedger(ttl_seconds=0)

"""Wrong admin tokens are throttled per client address (pylever.edge.throttle).

Issue 11: ``/codec/login`` took 2,000 wrong tokens at 565/s, and the status endpoint's
bearer check likewise. Now a client has a budget of 10 wrong tokens refilling one per
6 s, shared by every admin-token check; past it, 429 ``too_many_attempts`` with
``Retry-After``, even for the right token, until the budget refills.
"""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from pylever.edge.throttle import AdminThrottle, client_key

ADMIN_TOKEN = "throttle-admin-token-8c2e51"
PAYLOAD_KEY = bytes(range(32))
STATUS = "GET /accounts/{account_id}/candidates/{opportunity_id}"
LOGIN = "POST /codec/login"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusals(endpoint: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "pylever_admin_auth_refusals_total", {"endpoint": endpoint, "outcome": outcome}
    )
    return value or 0.0


# --- the throttle itself -------------------------------------------------------------------


def test_ten_wrong_tokens_then_refused_until_one_refills() -> None:
    clock = Clock()
    throttle = AdminThrottle(clock=clock)
    for _ in range(10):
        assert throttle.retry_after("10.0.0.1", LOGIN) is None
        throttle.failed("10.0.0.1", LOGIN)
    assert throttle.retry_after("10.0.0.1", LOGIN) == 6
    assert throttle.retry_after("10.0.0.2", LOGIN) is None  # per client
    clock.now += 4.5
    assert throttle.retry_after("10.0.0.1", LOGIN) == 2  # 1.5 s left, rounded up
    clock.now += 1.5
    assert throttle.retry_after("10.0.0.1", LOGIN) is None  # one guess refilled
    throttle.failed("10.0.0.1", LOGIN)
    assert throttle.retry_after("10.0.0.1", LOGIN) == 6
    clock.now += 60
    for _ in range(10):  # refilled to the full budget, never more
        assert throttle.retry_after("10.0.0.1", LOGIN) is None
        throttle.failed("10.0.0.1", LOGIN)
    assert throttle.retry_after("10.0.0.1", LOGIN) == 6


def test_an_ipv6_client_is_one_client_per_64_and_mapped_ipv4_is_ipv4() -> None:
    """Otherwise one host with a /64 gets a fresh allowance from each of its addresses."""
    assert (
        client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == ("2001:db8:1:2::/64")
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("unknown") == "unknown"


def test_memory_is_bounded_oldest_client_forgotten_first() -> None:
    clock = Clock()
    throttle = AdminThrottle(budget=1, max_clients=3, clock=clock)
    for client in ("a", "b", "c"):
        throttle.failed(client, LOGIN)
        clock.now += 0.1
    throttle.failed("a", LOGIN)  # a is now the newest
    throttle.failed("d", LOGIN)
    assert len(throttle) == 3
    assert throttle.retry_after("b", LOGIN) is None  # forgotten: a full budget again
    assert throttle.retry_after("a", LOGIN) is not None
    assert throttle.retry_after("c", LOGIN) is not None
    assert throttle.retry_after("d", LOGIN) is not None
    for n in range(1000):
        throttle.failed(f"10.1.{n // 256}.{n % 256}", LOGIN)
    assert len(throttle) == 3


def test_one_warning_per_client_per_minute_and_metrics(caplog) -> None:
    clock = Clock()
    throttle = AdminThrottle(budget=2, clock=clock)
    bad, throttled = refusals(LOGIN, "bad_token"), refusals(LOGIN, "throttled")
    with caplog.at_level(logging.WARNING, logger="pylever.edge.throttle"):
        throttle.failed("10.0.0.9", LOGIN)
        throttle.failed("10.0.0.9", LOGIN)  # the budget is spent: the first line
        for _ in range(50):
            assert throttle.retry_after("10.0.0.9", LOGIN) is not None
        clock.now += 61
        throttle.failed("10.0.0.9", LOGIN)  # refilled (to the budget, 2): 1 left
        throttle.failed("10.0.0.9", LOGIN)  # spent again, a minute on: the second line
        for _ in range(5):
            assert throttle.retry_after("10.0.0.9", LOGIN) is not None  # no further line
    lines = [r for r in caplog.records if r.name == "pylever.edge.throttle"]
    assert [r.getMessage() for r in lines] == ["admin token guesses throttled"] * 2
    assert all(r.levelno == logging.WARNING for r in lines)
    assert lines[0].client == "10.0.0.9" and lines[0].endpoint == LOGIN  # type: ignore[attr-defined]
    assert lines[0].retry_after == 6 and lines[0].refused == 0  # type: ignore[attr-defined]
    assert lines[1].refused == 50  # type: ignore[attr-defined]
    assert refusals(LOGIN, "bad_token") == bad + 4
    assert refusals(LOGIN, "throttled") == throttled + 55


def test_settings_are_checked() -> None:
    for bad in ({"budget": 0}, {"refill_seconds": 0}, {"max_clients": 0}):
        with pytest.raises(ValueError):
            AdminThrottle(**bad)  # type: ignore[arg-type]

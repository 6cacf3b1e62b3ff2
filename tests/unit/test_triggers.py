"""Matching a Lever stage id to a trigger (pylever/clients/triggers.py) and a trigger's effective settings."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pylever.clients.lever import Stage
from pylever.clients.triggers import TriggerMatcher, trigger_settings
from pylever.config.file import Account, AppConfig, parse_config
from pylever.contracts.records import TriggerSettings

PY_ASSESSMENT_ID = "7c2690d8-6308-4ed9-ae2a-cbfe7db26593"
ONSITE_ID = "992f01a9-ee19-41d2-ae79-1040701b195c"
OTHER_ID = "0a1b2c3d-0000-4000-8000-000000000001"
NEW_ID = "0a1b2c3d-0000-4000-8000-000000000002"
INTERVAL = 60.0


class FakeLever:
    """Just enough of LeverClient: ``list_stages``, counting calls."""

    def __init__(self, stages: list[tuple[str, str]]) -> None:
        self.stages = list(stages)
        self.calls = 0
        self.fail_next = False

    async def list_stages(self) -> list[Stage]:
        self.calls += 1
        await asyncio.sleep(0)  # let concurrent callers interleave
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("Lever is down")
        return [Stage(id=stage_id, text=text) for stage_id, text in self.stages]

    def rename(self, stage_id: str, text: str) -> None:
        self.stages = [(i, text if i == stage_id else t) for i, t in self.stages]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_account(*triggers: dict[str, Any], **account: Any) -> Account:
    return Account.model_validate(
        {
            "id": "acme",
            "lever_api_key": "literal-lever-key",
            "webhook_signature_tokens": ["literal-token"],
            "triggers": list(triggers),
            **account,
        }
    )


def lever() -> FakeLever:
    return FakeLever(
        [
            ("lead-new", "New lead"),
            (PY_ASSESSMENT_ID, "Py Assessment"),
            (ONSITE_ID, "On-site interview"),
            (OTHER_ID, "Phone screen"),
        ]
    )


def matcher(account: Account, client: FakeLever, clock: Clock | None = None) -> TriggerMatcher:
    return TriggerMatcher(account, client, refresh_interval=INTERVAL, clock=clock or Clock())  # type: ignore[arg-type]


# --- by id -----------------------------------------------------------------------------


async def test_trigger_by_id_matches_without_calling_lever():
    account = make_account({"stage": PY_ASSESSMENT_ID, "default_test": "Python Basics"})
    client = lever()
    m = matcher(account, client)
    for _ in range(3):
        trigger = await m.match(PY_ASSESSMENT_ID)
        assert trigger is account.triggers[0]
    assert client.calls == 0


async def test_trigger_by_id_survives_rename_without_calling_lever():
    account = make_account({"stage": PY_ASSESSMENT_ID})
    client = lever()
    clock = Clock()
    m = matcher(account, client, clock)
    client.rename(PY_ASSESSMENT_ID, "Py Coding Test")
    clock.now += 10 * INTERVAL
    assert await m.match(PY_ASSESSMENT_ID) is account.triggers[0]
    assert client.calls == 0
    # and even after a refresh caused by some other stage
    assert await m.match(OTHER_ID) is None
    assert client.calls == 1
    assert await m.match(PY_ASSESSMENT_ID) is account.triggers[0]
    assert client.calls == 1


# --- by name -------------------------------------------------------------------------


async def test_trigger_by_name_resolves_once_then_is_cached():
    account = make_account(
        {"stage": "Py Assessment", "default_test": "Python Basics"},
        {"stage": "On-site interview", "default_test": "SQL"},
    )
    client = lever()
    m = matcher(account, client)

    assert await m.match(PY_ASSESSMENT_ID) is account.triggers[0]
    assert client.calls == 1
    assert await m.match(PY_ASSESSMENT_ID) is account.triggers[0]
    # the same refresh resolved every name
    assert await m.match(ONSITE_ID) is account.triggers[1]
    assert client.calls == 1


async def test_name_match_is_exact():
    account = make_account({"stage": "py assessment"})
    client = lever()
    m = matcher(account, client)
    assert await m.match(PY_ASSESSMENT_ID) is None
    assert client.calls == 1


async def test_cached_names_stay_cached_beyond_the_interval():
    account = make_account({"stage": "Py Assessment"})
    client = lever()
    clock = Clock()
    m = matcher(account, client, clock)
    assert await m.match(PY_ASSESSMENT_ID) is account.triggers[0]
    clock.now += 100 * INTERVAL
    assert await m.match(PY_ASSESSMENT_ID) is account.triggers[0]
    assert client.calls == 1  # hits never refresh


async def test_mixed_id_and_name_triggers():
    account = make_account({"stage": ONSITE_ID}, {"stage": "Py Assessment"})
    client = lever()
    m = matcher(account, client)
    assert await m.match(ONSITE_ID) is account.triggers[0]
    assert client.calls == 0
    assert await m.match(PY_ASSESSMENT_ID) is account.triggers[1]
    assert client.calls == 1


async def test_concurrent_misses_share_one_refresh():
    account = make_account({"stage": "Py Assessment"})
    client = lever()
    m = matcher(account, client)
    results = await asyncio.gather(*(m.match(PY_ASSESSMENT_ID) for _ in range(10)))
    assert all(r is account.triggers[0] for r in results)
    assert client.calls == 1


# --- misses ----------------------------------------------------------------------------


async def test_miss_refreshes_at_most_once_per_interval():
    account = make_account({"stage": "Py Assessment"})
    client = lever()
    clock = Clock()
    m = matcher(account, client, clock)

    assert await m.match(OTHER_ID) is None  # first miss: nothing cached yet, so ask Lever
    assert client.calls == 1
    for _ in range(5):
        assert await m.match(OTHER_ID) is None
        assert await m.match("lead-new") is None
    assert client.calls == 1

    clock.now += INTERVAL - 0.001
    assert await m.match(OTHER_ID) is None
    assert client.calls == 1

    clock.now += 0.001  # exactly one interval after the refresh
    assert await m.match(OTHER_ID) is None
    assert client.calls == 2
    assert await m.match(OTHER_ID) is None
    assert client.calls == 2


async def test_unknown_name_never_matches_and_is_not_hammered():
    account = make_account({"stage": "No Such Stage"})
    client = lever()
    clock = Clock()
    m = matcher(account, client, clock)
    for stage_id in (PY_ASSESSMENT_ID, ONSITE_ID, OTHER_ID, "lead-new"):
        assert await m.match(stage_id) is None
    assert client.calls == 1


async def test_new_stage_with_trigger_name_is_picked_up_after_the_interval():
    account = make_account({"stage": "Take-home"})
    client = lever()
    clock = Clock()
    m = matcher(account, client, clock)
    assert await m.match(NEW_ID) is None
    assert client.calls == 1

    client.stages.append((NEW_ID, "Take-home"))  # created in Lever after our refresh
    assert await m.match(NEW_ID) is None  # within the interval: not asked again
    assert client.calls == 1

    clock.now += INTERVAL
    assert await m.match(NEW_ID) is account.triggers[0]
    assert client.calls == 2


async def test_failed_refresh_propagates_and_is_retried_on_next_call():
    """api.py turns the error into a 503 so Lever retries; the retry must ask Lever again."""
    account = make_account({"stage": "Py Assessment"})
    client = lever()
    clock = Clock()
    m = matcher(account, client, clock)
    client.fail_next = True
    with pytest.raises(RuntimeError):
        await m.match(PY_ASSESSMENT_ID)
    assert client.calls == 1
    assert await m.match(PY_ASSESSMENT_ID) is account.triggers[0]
    assert client.calls == 2


# --- renamed stages ------------------------------------------------------------------------


async def test_renamed_stage_configured_by_name_keeps_matching_by_id():
    """SPEC section 2: a renamed stage keeps working by id, even for a trigger configured by name.

    Once the name resolved to an id, that id keeps triggering after Lever renames the stage and
    after later refreshes; a new stage that takes over the configured name matches as well.
    """
    account = make_account({"stage": "Py Assessment"})
    client = lever()
    clock = Clock()
    m = matcher(account, client, clock)
    assert await m.match(PY_ASSESSMENT_ID) is account.triggers[0]
    assert client.calls == 1

    client.rename(PY_ASSESSMENT_ID, "Py Coding Test")
    clock.now += 10 * INTERVAL
    assert await m.match(OTHER_ID) is None  # a miss after the interval refreshes...
    assert client.calls == 2
    assert await m.match(PY_ASSESSMENT_ID) is account.triggers[0]  # ...and the old id still matches

    client.stages.append((NEW_ID, "Py Assessment"))  # another stage takes over the name
    clock.now += INTERVAL
    assert await m.match(NEW_ID) is account.triggers[0]
    assert client.calls == 3


# --- trigger_settings ------------------------------------------------------------------------


def make_config(
    account_fields: dict[str, Any], triggers: list[dict[str, Any]], defaults: dict | None = None
) -> AppConfig:
    data: dict[str, Any] = {
        "service": {"public_url": "https://lever.py.example"},
        "py": {"api_url": "https://api.py.example", "api_key": "k", "callback_secret": "s"},
        "accounts": [
            {
                "id": "acme",
                "lever_api_key": "literal-lever-key",
                "webhook_signature_tokens": ["literal-token"],
                "triggers": triggers,
                **account_fields,
            }
        ],
    }
    if defaults is not None:
        data["defaults"] = defaults
    return parse_config(data)


def settings_for(config: AppConfig, stage: str) -> TriggerSettings:
    account = config.accounts[0]
    trigger = next(t for t in account.triggers if t.stage == stage)
    return trigger_settings(config, account, trigger)


def test_trigger_settings_from_spec_like_config():
    config = make_config(
        {"pass_threshold": 80, "fail_threshold": 40},
        [
            {
                "stage": "Py Assessment",
                "default_test": "Python Basics",
                "pass_threshold": 85,
                "fail_threshold": 50,
                "move_on_pass": "On-site interview",
                "move_on_fail": "",
            }
        ],
        {"reminders": ["2d", "5d"], "expire_after": "7d"},
    )
    assert settings_for(config, "Py Assessment") == TriggerSettings(
        stage="Py Assessment",
        default_test="Python Basics",
        pass_threshold=85,
        fail_threshold=50,
        move_on_pass="On-site interview",
        move_on_fail=None,
        reminders_seconds=(2 * 86400, 5 * 86400),
        expire_after_seconds=7 * 86400,
    )


def test_trigger_settings_threshold_precedence():
    config = make_config(
        {"pass_threshold": 80, "fail_threshold": 40},
        [
            {"stage": "own", "pass_threshold": 90, "fail_threshold": 60},
            {"stage": "pass only", "pass_threshold": 70},
            {"stage": "fail only", "fail_threshold": 20},
            {"stage": "inherit"},
        ],
    )
    pairs = {
        stage: (s.pass_threshold, s.fail_threshold)
        for stage in ("own", "pass only", "fail only", "inherit")
        for s in [settings_for(config, stage)]
    }
    assert pairs == {
        "own": (90, 60),
        "pass only": (70, 40),
        "fail only": (80, 20),
        "inherit": (80, 40),
    }


def test_trigger_settings_without_thresholds():
    config = make_config({}, [{"stage": "s"}])
    s = settings_for(config, "s")
    assert (s.pass_threshold, s.fail_threshold) == (None, None)
    assert s.default_test is None and s.move_on_pass is None and s.move_on_fail is None


def test_trigger_settings_timing_precedence():
    config = make_config(
        {"reminders": ["3h"], "expire_after": "3d"},
        [
            {"stage": "own", "reminders": ["90s", "15m"], "expire_after": "36h"},
            {"stage": "own expiry", "expire_after": "1d"},
            {"stage": "own reminders", "reminders": ["2d"]},
            {"stage": "inherit"},
        ],
        {"reminders": ["1d"], "expire_after": "10d"},
    )
    timing = {
        stage: (s.reminders_seconds, s.expire_after_seconds)
        for stage in ("own", "own expiry", "own reminders", "inherit")
        for s in [settings_for(config, stage)]
    }
    assert timing == {
        "own": ((90, 900), 36 * 3600),
        "own expiry": ((3 * 3600,), 86400),
        "own reminders": ((2 * 86400,), 3 * 86400),
        "inherit": ((3 * 3600,), 3 * 86400),
    }


def test_trigger_settings_timing_from_defaults_and_builtins():
    from_defaults = make_config({}, [{"stage": "s"}], {"reminders": ["1d"], "expire_after": "10d"})
    assert settings_for(from_defaults, "s").reminders_seconds == (86400,)
    assert settings_for(from_defaults, "s").expire_after_seconds == 10 * 86400

    builtin = make_config({}, [{"stage": "s"}])
    assert settings_for(builtin, "s").reminders_seconds == (2 * 86400, 5 * 86400)
    assert settings_for(builtin, "s").expire_after_seconds == 7 * 86400


def test_trigger_settings_are_json_round_trippable():
    config = make_config({"pass_threshold": 80}, [{"stage": "s", "default_test": "SQL"}])
    s = settings_for(config, "s")
    assert TriggerSettings.model_validate_json(s.model_dump_json()) == s

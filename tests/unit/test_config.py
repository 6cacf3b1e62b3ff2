"""The configuration file (SPEC section 2): loading, secrets, durations, validation messages.

Every rejected file must raise ``ConfigError`` whose message names the file, the
field and the problem, and never shows a secret's value.
"""

from __future__ import annotations

import copy
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pylever.config.file import (
    DEFAULT_LEVER_API_URL,
    AppConfig,
    ConfigError,
    SecretResolutionError,
    format_duration,
    load_config,
    load_config_from_env,
    parse_config,
    parse_duration,
    resolve_secret,
)
from sandbox.toml_writer import to_toml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SPEC_EXAMPLE = FIXTURES / "spec_example.toml"

# Values of the secrets; none of them may ever appear in an error message or a repr.
PY_API_KEY = "py-api-key-VALUE-1f3a9c"
PY_CALLBACK_SECRET = "py-callback-secret-VALUE-77e0"
ACME_KEY = "acme-lever-key-VALUE-5b21"
ACME_STAGE_TOKEN = "acme-stage-token-VALUE-c0ff"
ACME_ARCHIVE_TOKEN = "acme-archive-token-VALUE-beef"
ALL_SECRET_VALUES = (PY_API_KEY, PY_CALLBACK_SECRET, ACME_KEY, ACME_STAGE_TOKEN, ACME_ARCHIVE_TOKEN)

LITERAL_SECRET = "literal-secret-VALUE-9d4e2a"

ACCOUNT_LOC = "accounts[0] (acme)"


@pytest.fixture
def spec_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PY_API_KEY", PY_API_KEY)
    monkeypatch.setenv("PY_CALLBACK_SECRET", PY_CALLBACK_SECRET)
    monkeypatch.setenv("ACME_LEVER_API_KEY", ACME_KEY)
    monkeypatch.setenv("ACME_LEVER_STAGE_TOKEN", ACME_STAGE_TOKEN)
    monkeypatch.setenv("ACME_LEVER_ARCHIVE_TOKEN", ACME_ARCHIVE_TOKEN)


def base_config() -> dict[str, Any]:
    """A small valid config with literal secrets."""
    return {
        "service": {"public_url": "https://lever.py.example"},
        "py": {
            "api_url": "https://api.py.example",
            "api_key": LITERAL_SECRET,
            "callback_secret": "literal-callback-secret",
        },
        "accounts": [
            {
                "id": "acme",
                "lever_api_key": "literal-lever-key",
                "webhook_signature_tokens": ["literal-token-1"],
                "triggers": [{"stage": "Py Assessment"}],
            }
        ],
    }


def write(tmp_path: Path, data: dict[str, Any], name: str = "pylever.toml") -> Path:
    path = tmp_path / name
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def load(tmp_path: Path, data: dict[str, Any]) -> AppConfig:
    return load_config(write(tmp_path, data))


def load_error(tmp_path: Path, data: dict[str, Any]) -> tuple[str, Path]:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value), path


def test_toml_writer_round_trips():
    import tomllib

    data = base_config()
    data["accounts"][0]["triggers"].append({"stage": "Other", "pass_threshold": 70.5})
    data["defaults"] = {"reminders": ["1d"], "expire_after": "2d"}
    assert tomllib.loads(to_toml(data)) == data


# --- the SPEC example -------------------------------------------------------------


def test_spec_example_loads_completely(spec_env):
    config = load_config(SPEC_EXAMPLE)

    assert config.service.public_url == "https://lever.py.example"
    assert config.callback_url == "https://lever.py.example/callbacks/py"
    assert config.py.api_url == "https://api.py.example"
    assert config.py.api_key.get_secret_value() == PY_API_KEY
    assert config.py.callback_secret.get_secret_value() == PY_CALLBACK_SECRET

    assert config.defaults.reminders == (timedelta(days=2), timedelta(days=5))
    assert config.defaults.expire_after == timedelta(days=7)

    assert len(config.accounts) == 1
    account = config.accounts[0]
    assert config.account("acme") is account
    assert config.account("nope") is None
    assert account.id == "acme"
    assert account.lever_api_url == "https://api.lever.co/v1"
    assert account.lever_api_key.get_secret_value() == ACME_KEY
    assert account.signature_tokens() == [ACME_STAGE_TOKEN, ACME_ARCHIVE_TOKEN]
    assert (account.pass_threshold, account.fail_threshold) == (80, 40)

    assert len(account.triggers) == 1
    trigger = account.triggers[0]
    assert trigger.stage == "Py Assessment"
    assert trigger.default_test == "Python Basics"
    assert (trigger.pass_threshold, trigger.fail_threshold) == (85, 50)
    assert trigger.move_on_pass == "On-site interview"
    assert trigger.move_on_fail is None  # "" means "do not move"
    assert account.thresholds(trigger) == (85, 50)

    timing = config.timing(account, trigger)
    assert timing.reminders == (timedelta(days=2), timedelta(days=5))
    assert timing.expire_after == timedelta(days=7)


def test_spec_example_never_shows_secrets_in_repr_or_dump(spec_env):
    config = load_config(SPEC_EXAMPLE)
    for text in (repr(config), str(config), config.model_dump_json(), repr(config.accounts[0])):
        for secret in ALL_SECRET_VALUES:
            assert secret not in text


def test_spec_example_missing_env_var_names_file_field_and_variable(spec_env, monkeypatch):
    monkeypatch.delenv("ACME_LEVER_API_KEY")
    with pytest.raises(ConfigError) as info:
        load_config(SPEC_EXAMPLE)
    message = str(info.value)
    assert str(SPEC_EXAMPLE) in message
    assert f"{ACCOUNT_LOC}.lever_api_key" in message
    assert "ACME_LEVER_API_KEY" in message
    assert "not set" in message
    for secret in ALL_SECRET_VALUES:
        assert secret not in message


def test_missing_signature_token_env_var_names_the_list_position(spec_env, monkeypatch):
    monkeypatch.delenv("ACME_LEVER_ARCHIVE_TOKEN")
    with pytest.raises(ConfigError) as info:
        load_config(SPEC_EXAMPLE)
    message = str(info.value)
    assert f"{ACCOUNT_LOC}.webhook_signature_tokens[1]" in message
    assert "ACME_LEVER_ARCHIVE_TOKEN" in message
    for secret in ALL_SECRET_VALUES:
        assert secret not in message


def test_empty_env_var_is_rejected(spec_env, monkeypatch):
    monkeypatch.setenv("PY_CALLBACK_SECRET", "")
    with pytest.raises(ConfigError) as info:
        load_config(SPEC_EXAMPLE)
    message = str(info.value)
    assert "py.callback_secret" in message
    assert "PY_CALLBACK_SECRET" in message


# --- secrets ------------------------------------------------------------------------


def test_secret_literal_env_and_file(tmp_path, monkeypatch):
    secret_file = tmp_path / "lever.key"
    secret_file.write_text("  \n file-secret-VALUE \n\n", encoding="utf-8")
    monkeypatch.setenv("PYLEVER_TEST_TOKEN", "env-token-VALUE")
    data = base_config()
    data["accounts"][0]["lever_api_key"] = f"file:{secret_file}"
    data["accounts"][0]["webhook_signature_tokens"] = [
        "env:PYLEVER_TEST_TOKEN",
        "literal-token-VALUE",
        f"file:{secret_file}",
    ]
    config = load(tmp_path, data)
    account = config.accounts[0]
    assert account.lever_api_key.get_secret_value() == "file-secret-VALUE"  # stripped
    assert account.signature_tokens() == [
        "env-token-VALUE",
        "literal-token-VALUE",
        "file-secret-VALUE",
    ]
    assert config.py.api_key.get_secret_value() == LITERAL_SECRET
    for text in (repr(config), str(config), config.model_dump_json()):
        for secret in (
            "file-secret-VALUE",
            "env-token-VALUE",
            "literal-token-VALUE",
            LITERAL_SECRET,
        ):
            assert secret not in text


def test_resolve_secret_uses_given_environment():
    assert resolve_secret("env:X", {"X": "value"}).get_secret_value() == "value"
    with pytest.raises(SecretResolutionError, match="X"):
        resolve_secret("env:X", {})
    with pytest.raises(SecretResolutionError):
        resolve_secret("", {})
    with pytest.raises(SecretResolutionError):
        resolve_secret(12345, {})


def test_missing_secret_file_names_config_field_and_secret_path(tmp_path):
    missing = tmp_path / "no-such.key"
    data = base_config()
    data["accounts"][0]["lever_api_key"] = f"file:{missing}"
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert f"{ACCOUNT_LOC}.lever_api_key" in message
    assert str(missing) in message
    assert "cannot read" in message
    assert LITERAL_SECRET not in message


def test_empty_secret_file_is_rejected(tmp_path):
    empty = tmp_path / "empty.key"
    empty.write_text("  \n\t\n", encoding="utf-8")
    data = base_config()
    data["py"]["callback_secret"] = f"file:{empty}"
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert "py.callback_secret" in message
    assert str(empty) in message
    assert "empty" in message
    assert LITERAL_SECRET not in message


@pytest.mark.parametrize("bad", ["", 12345, ["a"]])
def test_bad_secret_value_is_rejected_without_echo(tmp_path, bad):
    data = base_config()
    data["accounts"][0]["lever_api_key"] = bad
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert f"{ACCOUNT_LOC}.lever_api_key" in message
    assert "12345" not in message
    assert LITERAL_SECRET not in message


def test_errors_elsewhere_never_echo_literal_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLEVER_TEST_TOKEN", "env-token-VALUE")
    data = base_config()
    account = data["accounts"][0]
    account["lever_api_key"] = LITERAL_SECRET
    account["webhook_signature_tokens"] = ["env:PYLEVER_TEST_TOKEN", "literal-token-VALUE"]
    account["pass_threshold"] = 150
    # a misspelled field that holds a secret: named, but its value is not shown
    account["lever_api_keyy"] = "misspelled-secret-VALUE"
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    for secret in (
        LITERAL_SECRET,
        "env-token-VALUE",
        "literal-token-VALUE",
        "misspelled-secret-VALUE",
    ):
        assert secret not in message


def test_misspelled_field_is_named(tmp_path):
    data = base_config()
    data["accounts"][0]["lever_api_keyy"] = "misspelled-secret-VALUE"
    message, _ = load_error(tmp_path, data)
    assert f"{ACCOUNT_LOC}.lever_api_keyy" in message
    assert "misspelled-secret-VALUE" not in message


def test_several_problems_are_counted(tmp_path):
    data = base_config()
    data["accounts"][0]["pass_threshold"] = 150
    data["accounts"][0]["fail_threshold"] = -5
    message, _ = load_error(tmp_path, data)
    assert "(and 1 more problem)" in message


# --- durations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("36h", timedelta(hours=36)),
        ("2d", timedelta(days=2)),
        ("15m", timedelta(minutes=15)),
        ("1s", timedelta(seconds=1)),
    ],
)
def test_good_durations(tmp_path, text, expected):
    assert parse_duration(text) == expected
    data = base_config()
    data["defaults"] = {"reminders": [], "expire_after": text}
    config = load(tmp_path, data)
    assert config.defaults.expire_after == expected
    assert (
        config.timing(config.accounts[0], config.accounts[0].triggers[0]).expire_after == expected
    )


@pytest.mark.parametrize("bad", ["2w", "1.5d", "-1d", "0s", "", "d2", "2", "d", "2 d d", "2D"])
def test_bad_durations_are_rejected_with_a_message(tmp_path, bad):
    with pytest.raises(ValueError) as direct:
        parse_duration(bad)
    assert str(direct.value)

    data = base_config()
    data["defaults"] = {"expire_after": bad}
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert "defaults.expire_after" in message
    assert "duration" in message


def test_zero_duration_message_says_why(tmp_path):
    data = base_config()
    data["accounts"][0]["expire_after"] = "0s"
    message, _ = load_error(tmp_path, data)
    assert f"{ACCOUNT_LOC}.expire_after" in message
    assert "longer than zero" in message


def test_bad_reminder_names_its_position(tmp_path):
    data = base_config()
    data["accounts"][0]["triggers"][0]["reminders"] = ["1d", "2w"]
    message, _ = load_error(tmp_path, data)
    assert f"{ACCOUNT_LOC}.triggers[0] (Py Assessment).reminders[1]" in message
    assert "'2w'" in message


def test_duration_must_be_a_string(tmp_path):
    data = base_config()
    data["defaults"] = {"expire_after": 7}
    message, _ = load_error(tmp_path, data)
    assert "defaults.expire_after" in message
    assert "string" in message


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["s", "m", "h", "d"]))
def test_duration_parse_property(n, unit):
    seconds = n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if seconds > 365 * 86400:
        with pytest.raises(ValueError, match="365 days"):
            parse_duration(f"{n}{unit}")
        return
    parsed = parse_duration(f"{n}{unit}")
    assert parsed == timedelta(seconds=seconds)
    assert parse_duration(format_duration(parsed)) == parsed


def test_huge_duration_is_a_config_error(tmp_path):
    data = base_config()
    data["defaults"] = {"expire_after": "1000000000d"}
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert "defaults.expire_after" in message


# --- thresholds ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["pass_threshold", "fail_threshold"])
@pytest.mark.parametrize("value", [-1, 101, 100.5, -0.01])
@pytest.mark.parametrize("level", ["account", "trigger"])
def test_threshold_out_of_range(tmp_path, field, value, level):
    data = base_config()
    account = data["accounts"][0]
    target = account if level == "account" else account["triggers"][0]
    target[field] = value
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    where = ACCOUNT_LOC if level == "account" else f"{ACCOUNT_LOC}.triggers[0] (Py Assessment)"
    assert f"{where}.{field}" in message
    bound = "less than or equal to 100" if value > 100 else "greater than or equal to 0"
    assert bound in message


def test_threshold_edges_0_and_100_are_accepted(tmp_path):
    data = base_config()
    data["accounts"][0].update(pass_threshold=100, fail_threshold=0)
    data["accounts"][0]["triggers"][0].update(pass_threshold=100, fail_threshold=0)
    config = load(tmp_path, data)
    account = config.accounts[0]
    assert account.thresholds(account.triggers[0]) == (100, 0)


@pytest.mark.parametrize(("pass_t", "fail_t"), [(50, 50), (40, 60), (0, 0), (100, 100)])
def test_fail_not_below_pass_rejected_at_account_level(tmp_path, pass_t, fail_t):
    data = base_config()
    data["accounts"][0].update(pass_threshold=pass_t, fail_threshold=fail_t)
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert f"{ACCOUNT_LOC}:" in message
    assert "fail_threshold" in message and "pass_threshold" in message
    assert "below" in message


@pytest.mark.parametrize(("pass_t", "fail_t"), [(50, 50), (40, 60)])
def test_fail_not_below_pass_rejected_at_trigger_level(tmp_path, pass_t, fail_t):
    data = base_config()
    data["accounts"][0]["triggers"][0].update(pass_threshold=pass_t, fail_threshold=fail_t)
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert f"{ACCOUNT_LOC}.triggers[0] (Py Assessment):" in message
    assert "below" in message


def test_effective_thresholds_mixed_across_levels_are_checked(tmp_path):
    data = base_config()
    data["accounts"][0].update(pass_threshold=80, fail_threshold=40)
    data["accounts"][0]["triggers"][0]["fail_threshold"] = 85
    message, _ = load_error(tmp_path, data)
    assert "below" in message


def test_account_thresholds_precedence(tmp_path):
    data = base_config()
    data["accounts"][0].update(pass_threshold=80, fail_threshold=40)
    data["accounts"][0]["triggers"] = [
        {"stage": "both", "pass_threshold": 90, "fail_threshold": 60},
        {"stage": "pass only", "pass_threshold": 70},
        {"stage": "fail only", "fail_threshold": 30},
        {"stage": "none"},
    ]
    account = load(tmp_path, data).accounts[0]
    by_stage = {t.stage: account.thresholds(t) for t in account.triggers}
    assert by_stage == {
        "both": (90, 60),
        "pass only": (70, 40),
        "fail only": (80, 30),
        "none": (80, 40),
    }


def test_no_thresholds_anywhere_gives_none(tmp_path):
    account = load(tmp_path, base_config()).accounts[0]
    assert account.thresholds(account.triggers[0]) == (None, None)


# --- accounts and triggers ------------------------------------------------------------


def test_duplicate_account_ids_rejected(tmp_path):
    data = base_config()
    data["accounts"].append(copy.deepcopy(data["accounts"][0]))
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert "'acme'" in message
    assert "twice" in message


def test_two_distinct_accounts_load(tmp_path):
    data = base_config()
    other = copy.deepcopy(data["accounts"][0])
    other["id"] = "globex"
    data["accounts"].append(other)
    config = load(tmp_path, data)
    assert [a.id for a in config.accounts] == ["acme", "globex"]
    assert config.account("globex") is config.accounts[1]


def test_duplicate_trigger_stage_rejected(tmp_path):
    data = base_config()
    data["accounts"][0]["triggers"].append({"stage": "Py Assessment", "default_test": "X"})
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert f"{ACCOUNT_LOC}:" in message
    assert "'Py Assessment'" in message
    assert "twice" in message


@pytest.mark.parametrize(
    "bad_id", ["", "ac me", "-acme", "_acme", "a/b", "acme.co", "é", "a" * 64, "acme:1"]
)
def test_invalid_account_id_rejected(tmp_path, bad_id):
    data = base_config()
    data["accounts"][0]["id"] = bad_id
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert ".id" in message
    assert "not a valid account id" in message


@pytest.mark.parametrize("good_id", ["a", "acme", "Acme_2-x", "9lives", "a" * 63])
def test_valid_account_ids(tmp_path, good_id):
    data = base_config()
    data["accounts"][0]["id"] = good_id
    assert load(tmp_path, data).accounts[0].id == good_id


def test_account_id_with_trailing_newline_rejected(tmp_path):
    data = base_config()
    data["accounts"][0]["id"] = "acme\n"
    message, _ = load_error(tmp_path, data)
    assert "not a valid account id" in message


@pytest.mark.parametrize("section", ["service", "py", "accounts"])
def test_missing_required_section(tmp_path, section):
    data = base_config()
    del data[section]
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert f"{section}: " in message
    assert "required" in message.lower()


@pytest.mark.parametrize(
    ("section", "field"),
    [("service", "public_url"), ("py", "api_url"), ("py", "api_key"), ("py", "callback_secret")],
)
def test_missing_required_field(tmp_path, section, field):
    data = base_config()
    del data[section][field]
    message, _ = load_error(tmp_path, data)
    assert f"{section}.{field}" in message
    assert "required" in message.lower()


@pytest.mark.parametrize("field", ["id", "lever_api_key", "webhook_signature_tokens", "triggers"])
def test_missing_required_account_field(tmp_path, field):
    data = base_config()
    del data["accounts"][0][field]
    message, _ = load_error(tmp_path, data)
    assert f".{field}" in message
    assert "required" in message.lower()


def test_empty_accounts_rejected(tmp_path):
    data = base_config()
    path = tmp_path / "c.toml"
    text = "accounts = []\n" + to_toml({k: v for k, v in data.items() if k != "accounts"})
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "accounts" in str(info.value)
    assert "at least 1" in str(info.value)


def test_empty_triggers_rejected(tmp_path):
    data = base_config()
    data["accounts"][0]["triggers"] = []
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert f"{ACCOUNT_LOC}.triggers" in message
    assert "at least 1" in message


def test_empty_signature_tokens_rejected(tmp_path):
    data = base_config()
    data["accounts"][0]["webhook_signature_tokens"] = []
    message, _ = load_error(tmp_path, data)
    assert f"{ACCOUNT_LOC}.webhook_signature_tokens" in message
    assert "at least 1" in message


def test_empty_trigger_stage_rejected(tmp_path):
    data = base_config()
    data["accounts"][0]["triggers"][0]["stage"] = ""
    message, _ = load_error(tmp_path, data)
    assert f"{ACCOUNT_LOC}.triggers[0].stage" in message


@pytest.mark.parametrize("field", ["move_on_fail", "move_on_pass", "default_test"])
@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_optional_trigger_strings_mean_none(tmp_path, field, blank):
    data = base_config()
    data["accounts"][0]["triggers"][0][field] = blank
    trigger = load(tmp_path, data).accounts[0].triggers[0]
    assert getattr(trigger, field) is None


def test_move_targets_kept(tmp_path):
    data = base_config()
    data["accounts"][0]["triggers"][0].update(move_on_pass="On-site", move_on_fail="Rejected")
    trigger = load(tmp_path, data).accounts[0].triggers[0]
    assert (trigger.move_on_pass, trigger.move_on_fail) == ("On-site", "Rejected")


def test_lever_api_url_default_and_trailing_slash(tmp_path):
    data = base_config()
    config = load(tmp_path, data)
    assert config.accounts[0].lever_api_url == DEFAULT_LEVER_API_URL
    data["accounts"][0]["lever_api_url"] = "http://127.0.0.1:8100/v1/"
    data["service"]["public_url"] = "https://lever.py.example/"
    config = load(tmp_path, data)
    assert config.accounts[0].lever_api_url == "http://127.0.0.1:8100/v1"
    assert config.callback_url == "https://lever.py.example/callbacks/py"


@pytest.mark.parametrize("bad_url", ["lever.py.example", "ftp://x", "https://", ""])
def test_bad_urls_rejected(tmp_path, bad_url):
    data = base_config()
    data["service"]["public_url"] = bad_url
    message, _ = load_error(tmp_path, data)
    assert "service.public_url" in message
    assert "URL" in message


# --- timing: reminders, expiry and their precedence -----------------------------------


def test_builtin_timing_when_nothing_is_configured(tmp_path):
    config = load(tmp_path, base_config())
    timing = config.timing(config.accounts[0], config.accounts[0].triggers[0])
    assert timing.reminders == (timedelta(days=2), timedelta(days=5))
    assert timing.expire_after == timedelta(days=7)


def test_timing_precedence_trigger_over_account_over_defaults(tmp_path):
    data = base_config()
    data["defaults"] = {"reminders": ["1d"], "expire_after": "10d"}
    account = data["accounts"][0]
    account["reminders"] = ["2h"]
    account["expire_after"] = "3d"
    account["triggers"] = [
        {"stage": "trigger sets both", "reminders": ["15m", "90s"], "expire_after": "36h"},
        {"stage": "trigger sets expiry", "expire_after": "1d"},
        {"stage": "trigger sets reminders", "reminders": ["2d"]},
        {"stage": "account decides"},
    ]
    other = copy.deepcopy(base_config()["accounts"][0])
    other["id"] = "globex"
    other["triggers"] = [{"stage": "defaults decide"}, {"stage": "no reminders", "reminders": []}]
    data["accounts"].append(other)
    config = load(tmp_path, data)

    def timing(account_index: int, stage: str) -> tuple[tuple[timedelta, ...], timedelta]:
        acct = config.accounts[account_index]
        trig = next(t for t in acct.triggers if t.stage == stage)
        result = config.timing(acct, trig)
        return result.reminders, result.expire_after

    h, d = timedelta(hours=1), timedelta(days=1)
    assert timing(0, "trigger sets both") == (
        (timedelta(minutes=15), timedelta(seconds=90)),
        36 * h,
    )
    assert timing(0, "trigger sets expiry") == ((2 * h,), d)
    assert timing(0, "trigger sets reminders") == ((2 * d,), 3 * d)
    assert timing(0, "account decides") == ((2 * h,), 3 * d)
    assert timing(1, "defaults decide") == ((d,), 10 * d)
    assert timing(1, "no reminders") == ((), 10 * d)


@pytest.mark.parametrize(
    ("where", "edit"),
    [
        (
            "defaults",
            lambda d: d.update(defaults={"reminders": ["2d", "7d"], "expire_after": "7d"}),
        ),
        ("defaults expiry", lambda d: d.update(defaults={"expire_after": "5d"})),  # built-in 5d
        ("account", lambda d: d["accounts"][0].update(expire_after="1d")),
        ("account reminders", lambda d: d["accounts"][0].update(reminders=["8d"])),
        ("trigger", lambda d: d["accounts"][0]["triggers"][0].update(expire_after="36h")),
        (
            "trigger reminders",
            lambda d: d["accounts"][0]["triggers"][0].update(
                reminders=["1h", "1d"], expire_after="24h"
            ),
        ),
        (
            "trigger expiry under account reminders",
            lambda d: (
                d["accounts"][0].update(reminders=["3d"]),
                d["accounts"][0]["triggers"][0].update(expire_after="2d"),
            ),
        ),
    ],
)
def test_reminders_must_come_before_expiry(tmp_path, where, edit):
    data = base_config()
    edit(data)
    message, path = load_error(tmp_path, data)
    assert str(path) in message
    assert "'acme'" in message and "'Py Assessment'" in message
    assert "is not before expire_after" in message


def test_reminder_just_before_expiry_is_fine(tmp_path):
    data = base_config()
    data["accounts"][0]["triggers"][0].update(reminders=["86399s"], expire_after="1d")
    config = load(tmp_path, data)
    timing = config.timing(config.accounts[0], config.accounts[0].triggers[0])
    assert timing.reminders == (timedelta(seconds=86399),)


def test_trigger_timing_fixes_bad_account_combination(tmp_path):
    """Only effective combinations are checked: the trigger's own reminders win."""
    data = base_config()
    data["accounts"][0]["expire_after"] = "1d"  # built-in reminders 2d, 5d would be late
    data["accounts"][0]["triggers"][0]["reminders"] = ["12h"]
    config = load(tmp_path, data)
    timing = config.timing(config.accounts[0], config.accounts[0].triggers[0])
    assert timing.reminders == (timedelta(hours=12),)
    assert timing.expire_after == timedelta(days=1)


# --- the file itself ----------------------------------------------------------------


def test_not_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[service\npublic_url = 'x'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[service]\npublic_url = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "pylever.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "cannot read" in str(info.value)


def test_directory_instead_of_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "cannot read" in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_names_the_path(tmp_path):
    path = write(tmp_path, base_config())
    path.chmod(0)
    try:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(path) in str(info.value)
    finally:
        path.chmod(0o600)


def test_parse_config_uses_source_in_messages():
    data = base_config()
    del data["py"]
    with pytest.raises(ConfigError, match=r"^inline\.toml: py: "):
        parse_config(data, source="inline.toml")


# --- PYLEVER_CONFIG -------------------------------------------------------------------


@pytest.mark.parametrize("environ", [{}, {"PYLEVER_CONFIG": ""}])
def test_load_config_from_env_without_variable(environ):
    with pytest.raises(ConfigError, match="PYLEVER_CONFIG"):
        load_config_from_env(environ)


def test_load_config_from_env_loads_the_named_file(spec_env):
    config = load_config_from_env({"PYLEVER_CONFIG": str(SPEC_EXAMPLE)})
    assert config.accounts[0].id == "acme"


def test_load_config_from_env_reads_os_environ_by_default(spec_env, monkeypatch):
    monkeypatch.setenv("PYLEVER_CONFIG", str(SPEC_EXAMPLE))
    assert load_config_from_env().accounts[0].id == "acme"
    monkeypatch.delenv("PYLEVER_CONFIG")
    with pytest.raises(ConfigError, match="PYLEVER_CONFIG"):
        load_config_from_env()


def test_load_config_from_env_missing_file(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config_from_env({"PYLEVER_CONFIG": str(missing)})
    assert str(missing) in str(info.value)


def test_sweep_settings_parse_with_off_and_defaults() -> None:
    base = {
        "service": {"public_url": "https://lever.py.example"},
        "py": {"api_url": "https://py.example", "api_key": "k", "callback_secret": "s"},
        "defaults": {"sweep_every": "1h", "sweep_lookback": "2d"},
        "accounts": [
            {"id": "a", "lever_api_key": "k", "webhook_signature_tokens": ["t"],
             "triggers": [{"stage": "S"}]},
            {"id": "b", "lever_api_key": "k", "webhook_signature_tokens": ["t"],
             "triggers": [{"stage": "S"}], "sweep_every": "off", "sweep_lookback": "1s"},
        ],
    }  # fmt: skip
    config = parse_config(base)
    a, b = (config.sweep(account) for account in config.accounts)
    assert (a.every, a.lookback) == (timedelta(hours=1), timedelta(days=2))
    assert (b.every, b.lookback) == (None, timedelta(seconds=1))
    del base["defaults"]
    plain = parse_config(base).sweep(parse_config(base).accounts[0])
    assert (plain.every, plain.lookback) == (timedelta(minutes=15), timedelta(days=3))


def test_command_settings_come_from_the_account_then_defaults() -> None:
    base = {
        "service": {"public_url": "https://lever.py.example"},
        "py": {"api_url": "https://py.example", "api_key": "k", "callback_secret": "s"},
        "defaults": {"commands_every": "30s", "extend_by": "1d"},
        "accounts": [
            {"id": "a", "lever_api_key": "k", "webhook_signature_tokens": ["t"],
             "triggers": [{"stage": "S"}], "extend_by": "12h"},
        ],
    }  # fmt: skip
    config = parse_config(base)
    commands = config.commands(config.accounts[0])
    assert (commands.every, commands.extend_by) == (timedelta(seconds=30), timedelta(hours=12))
    del base["defaults"]
    plain = parse_config(base)
    defaults = plain.commands(plain.accounts[0])
    assert (defaults.every, defaults.extend_by) == (timedelta(minutes=1), timedelta(hours=12))


def test_a_lookback_shorter_than_the_sweep_interval_is_refused() -> None:
    base = {
        "service": {"public_url": "https://lever.py.example"},
        "py": {"api_url": "https://py.example", "api_key": "k", "callback_secret": "s"},
        "defaults": {"sweep_every": "1h", "sweep_lookback": "30m"},
        "accounts": [{"id": "a", "lever_api_key": "k", "webhook_signature_tokens": ["t"],
                      "triggers": [{"stage": "S"}]}],
    }  # fmt: skip
    with pytest.raises(ConfigError, match="sweep_lookback 30m is shorter than sweep_every 1h"):
        parse_config(base)
    base["accounts"][0]["sweep_every"] = "off"  # type: ignore[index]
    parse_config(base)  # no sweep: no gap

"""The configuration file (SPEC section 2): TOML validated with pydantic.

- Secrets are ``"env:NAME"``, ``"file:PATH"`` or literals; they load into
  ``pydantic.SecretStr`` so ``repr`` and error messages never show them.
- Durations are a whole number and a unit (``s``, ``m``, ``h``, ``d``).
- ``reminders`` and ``expire_after`` come from the trigger, else the account,
  else ``[defaults]``; thresholds from the trigger, else the account.

``load_config(path)`` raises ``ConfigError`` with one message naming the file,
the field and the problem.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_LEVER_API_URL = "https://api.lever.co/v1"
DEFAULT_REMINDERS = ("2d", "5d")
DEFAULT_EXPIRE_AFTER = "7d"
DEFAULT_SWEEP_EVERY = "15m"
DEFAULT_SWEEP_LOOKBACK = "3d"
DEFAULT_COMMANDS_EVERY = "1m"
DEFAULT_EXTEND_BY = "3d"

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_DURATION_SECONDS = 365 * 86400
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message says where and why."""


class SecretResolutionError(ValueError):
    pass


def parse_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError('a duration is a string such as "90s", "36h" or "2d"')
    match = _DURATION.fullmatch(value)
    if not match:
        raise ValueError(
            f'{value!r} is not a duration: use a whole number and a unit s, m, h or d ("90s", "2d")'
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be longer than zero")
    if seconds > _MAX_DURATION_SECONDS:
        raise ValueError(f"{value!r} is longer than the 365 days a duration may last")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def resolve_secret(value: Any, environ: Mapping[str, str] | None = None) -> SecretStr:
    """Resolve ``env:NAME``, ``file:PATH`` or a literal. Errors never echo the value."""
    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        raise SecretResolutionError('a secret is a string: "env:NAME", "file:PATH" or a literal')
    environ = os.environ if environ is None else environ
    if value.startswith("env:"):
        name = value[4:]
        resolved = environ.get(name)
        if not resolved:
            raise SecretResolutionError(f"environment variable {name} is not set or empty")
        return SecretStr(resolved)
    if value.startswith("file:"):
        path = Path(value[5:]).expanduser()
        try:
            resolved = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretResolutionError(
                f"cannot read secret file {path}: {exc.strerror or type(exc).__name__}"
            ) from None
        if not resolved:
            raise SecretResolutionError(f"secret file {path} is empty")
        return SecretStr(resolved)
    if not value:
        raise SecretResolutionError("a secret must not be empty")
    return SecretStr(value)


Secret = Annotated[SecretStr, BeforeValidator(lambda v: resolve_secret(v))]
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Threshold = Annotated[float, Field(ge=0, le=100)]


def _check_thresholds(pass_threshold: float | None, fail_threshold: float | None) -> None:
    if pass_threshold is not None and fail_threshold is not None:
        if not fail_threshold < pass_threshold:
            raise ValueError(
                f"fail_threshold ({fail_threshold:g}) must be below pass_threshold "
                f"({pass_threshold:g})"
            )


def _check_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timing(_Model):
    """Reminder offsets and expiry, measured from when the invitation was sent."""

    reminders: tuple[Duration, ...] = tuple(parse_duration(d) for d in DEFAULT_REMINDERS)
    expire_after: Duration = parse_duration(DEFAULT_EXPIRE_AFTER)

    @model_validator(mode="after")
    def _reminders_before_expiry(self) -> Timing:
        for reminder in self.reminders:
            if reminder >= self.expire_after:
                raise ValueError(
                    f"reminder {format_duration(reminder)} is not before expire_after "
                    f"{format_duration(self.expire_after)}"
                )
        return self


def _sweep_every(value: Any) -> Any:
    if value == "off":
        return value
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f'{exc}, or "off"') from None


# A duration, or "off" (no sweep for the account).
SweepEvery = Annotated[timedelta | Literal["off"], BeforeValidator(_sweep_every)]
DEFAULT_SWEEP = parse_duration(DEFAULT_SWEEP_EVERY)
DEFAULT_LOOKBACK = parse_duration(DEFAULT_SWEEP_LOOKBACK)


@dataclass(frozen=True)
class Sweep:
    """An account's sweep (section 8): every ``every`` (None: off), entries within ``lookback``."""

    every: timedelta | None
    lookback: timedelta


DEFAULT_COMMANDS = parse_duration(DEFAULT_COMMANDS_EVERY)
DEFAULT_EXTEND = parse_duration(DEFAULT_EXTEND_BY)


@dataclass(frozen=True)
class Commands:
    """An account's recruiter commands (section 4): looked for every ``every``; one
    ``Py - Extend`` moves the expiry ``extend_by`` later."""

    every: timedelta
    extend_by: timedelta


class ServiceSettings(_Model):
    public_url: str

    _url = field_validator("public_url")(classmethod(lambda cls, v: _check_url(v)))


class PySettings(_Model):
    api_url: str
    api_key: Secret
    callback_secret: Secret

    _url = field_validator("api_url")(classmethod(lambda cls, v: _check_url(v)))


class Defaults(_Model):
    reminders: tuple[Duration, ...] | None = None
    expire_after: Duration | None = None
    sweep_every: SweepEvery | None = None
    sweep_lookback: Duration | None = None
    commands_every: Duration | None = None
    extend_by: Duration | None = None


class Trigger(_Model):
    stage: str = Field(min_length=1)
    default_test: str | None = None
    pass_threshold: Threshold | None = None
    fail_threshold: Threshold | None = None
    move_on_pass: str | None = None
    move_on_fail: str | None = None
    reminders: tuple[Duration, ...] | None = None
    expire_after: Duration | None = None

    @field_validator("default_test", "move_on_pass", "move_on_fail", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _thresholds(self) -> Trigger:
        _check_thresholds(self.pass_threshold, self.fail_threshold)
        return self


class Account(_Model):
    id: str
    lever_api_url: str = DEFAULT_LEVER_API_URL
    lever_api_key: Secret
    webhook_signature_tokens: tuple[Secret, ...] = Field(min_length=1)
    pass_threshold: Threshold | None = None
    fail_threshold: Threshold | None = None
    reminders: tuple[Duration, ...] | None = None
    expire_after: Duration | None = None
    lever_requests_per_second: float = Field(default=9.0, gt=0, le=10)
    sweep_every: SweepEvery | None = None
    sweep_lookback: Duration | None = None
    commands_every: Duration | None = None
    extend_by: Duration | None = None
    triggers: tuple[Trigger, ...] = Field(min_length=1)

    _url = field_validator("lever_api_url")(classmethod(lambda cls, v: _check_url(v)))

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ACCOUNT_ID.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a valid account id: letters, digits, '-' and '_', "
                "starting with a letter or digit, at most 63 characters"
            )
        return value

    @model_validator(mode="after")
    def _checks(self) -> Account:
        _check_thresholds(self.pass_threshold, self.fail_threshold)
        for trigger in self.triggers:
            try:
                _check_thresholds(*self.thresholds(trigger))
            except ValueError as exc:
                raise ValueError(
                    f"trigger {trigger.stage!r} with the account's thresholds: {exc}"
                ) from None
        stages = [t.stage for t in self.triggers]
        duplicates = sorted({s for s in stages if stages.count(s) > 1})
        if duplicates:
            raise ValueError(f"trigger stage {duplicates[0]!r} is listed twice")
        return self

    def thresholds(self, trigger: Trigger) -> tuple[float | None, float | None]:
        """(pass, fail) for a trigger: the trigger's own, else the account's."""
        pass_t = (
            trigger.pass_threshold if trigger.pass_threshold is not None else self.pass_threshold
        )
        fail_t = (
            trigger.fail_threshold if trigger.fail_threshold is not None else self.fail_threshold
        )
        return pass_t, fail_t

    def signature_tokens(self) -> list[str]:
        return [t.get_secret_value() for t in self.webhook_signature_tokens]


class AppConfig(_Model):
    service: ServiceSettings
    py: PySettings
    defaults: Defaults = Defaults()
    accounts: tuple[Account, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> AppConfig:
        ids = [a.id for a in self.accounts]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"account id {duplicates[0]!r} is used twice")
        # Validate every effective timing now, so a bad combination stops start-up.
        for account in self.accounts:
            for trigger in account.triggers:
                try:
                    self.timing(account, trigger)
                except ValidationError as exc:
                    problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(
                        f"account {account.id!r}, trigger {trigger.stage!r}: {problem}"
                    ) from None
            sweep = self.sweep(account)
            if sweep.every is not None and sweep.lookback < sweep.every:
                # Entries between two sweeps older than the lookback would never be seen.
                raise ValueError(
                    f"account {account.id!r}: sweep_lookback {format_duration(sweep.lookback)} "
                    f"is shorter than sweep_every {format_duration(sweep.every)}"
                )
        return self

    @property
    def callback_url(self) -> str:
        return f"{self.service.public_url}/callbacks/py"

    def account(self, account_id: str) -> Account | None:
        for account in self.accounts:
            if account.id == account_id:
                return account
        return None

    def sweep(self, account: Account) -> Sweep:
        """The account's reconciliation sweep: the account's settings, else ``[defaults]``."""
        every = _first(account.sweep_every, self.defaults.sweep_every, DEFAULT_SWEEP)
        lookback = _first(account.sweep_lookback, self.defaults.sweep_lookback, DEFAULT_LOOKBACK)
        return Sweep(every=None if every == "off" else every, lookback=lookback)

    def commands(self, account: Account) -> Commands:
        """How often the account's command tags are looked for, and what Extend adds."""
        return Commands(
            every=_first(account.commands_every, self.defaults.commands_every, DEFAULT_COMMANDS),
            extend_by=_first(account.extend_by, self.defaults.extend_by, DEFAULT_EXTEND),
        )

    def timing(self, account: Account, trigger: Trigger) -> Timing:
        def pick(field: str) -> Any:
            for source in (trigger, account, self.defaults):
                value = getattr(source, field)
                if value is not None:
                    return value
            return None

        values = {k: v for k in ("reminders", "expire_after") if (v := pick(k)) is not None}
        return Timing(**values)


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _location(loc: tuple[Any, ...], data: Mapping[str, Any]) -> str:
    """Render a pydantic error location the way the TOML file spells it."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            name = ""
            if isinstance(node, list) and 0 <= item < len(node) and isinstance(node[item], dict):
                element = node[item]
                name = element.get("id") or element.get("stage") or ""
            parts[-1] = (
                f"{parts[-1]}[{item}]" + (f" ({name})" if name else "") if parts else str(item)
            )
            node = node[item] if isinstance(node, list) and 0 <= item < len(node) else None
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def _real_errors(exc: ValidationError) -> list[Any]:
    """Errors without the echoes pydantic adds on parents ("too short" after a failed item)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    locs = [tuple(e["loc"]) for e in errors]

    def echoed(error: Any) -> bool:
        loc = tuple(error["loc"])
        return error["type"] == "too_short" and any(
            other != loc and other[: len(loc)] == loc for other in locs
        )

    return [e for e in errors if not echoed(e)] or errors


def parse_config(data: Mapping[str, Any], *, source: str = "<config>") -> AppConfig:
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        errors = _real_errors(exc)
        first = errors[0]
        message = first["msg"].removeprefix("Value error, ")
        where = _location(tuple(first["loc"]), data)
        more = len(errors) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(f"{source}: {where}: {message}{suffix}") from None


def load_config(path: str | os.PathLike[str]) -> AppConfig:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(path))


def load_config_or_exit(path: str | None, process: str) -> AppConfig:
    """For a process starting up: the config, or one clear line on stderr and exit 2."""
    try:
        if not path:
            raise ConfigError("PYLEVER_CONFIG is not set: name the configuration file")
        return load_config(path)
    except ConfigError as exc:
        print(f"py-lever {process}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def load_config_from_env(environ: Mapping[str, str] | None = None) -> AppConfig:
    environ = os.environ if environ is None else environ
    path = environ.get("PYLEVER_CONFIG")
    if not path:
        raise ConfigError("PYLEVER_CONFIG is not set: name the configuration file")
    return load_config(path)

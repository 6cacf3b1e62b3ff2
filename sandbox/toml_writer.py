"""A tiny TOML writer, so tests, benchmarks and the process stack state a configuration as
data (``tomllib`` only reads): ``to_toml`` for a whole document, ``toml_table`` for the
lines of one table, ``toml_value`` for one value."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_table(header: str, values: Mapping[str, Any]) -> list[str]:
    """``header`` (``[py]``, ``[[accounts]]``, ...) and its ``key = value`` lines, then a blank
    line; keys whose value is None are left out."""
    lines = [header]
    lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return lines + [""]


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _emit(table: Mapping[str, Any], path: str, out: list[str]) -> None:
    for key, value in table.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            out.append(f"{key} = {toml_value(value)}")
    for key, value in table.items():
        full = f"{path}.{key}" if path else key
        if isinstance(value, Mapping):
            out.append(f"\n[{full}]")
            _emit(value, full, out)
        elif _is_table_array(value):
            for item in value:
                out.append(f"\n[[{full}]]")
                _emit(item, full, out)


def to_toml(data: Mapping[str, Any]) -> str:
    """Keys, tables and arrays of tables (``[[accounts]]``, ``[[accounts.triggers]]``)."""
    out: list[str] = []
    _emit(data, "", out)
    return "\n".join(out) + "\n"

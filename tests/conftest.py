"""The test tiers, one folder each, marked by folder (pyproject's pytest ``markers``):

- ``unit``: no server at all (ASGI transports, fakes, pure functions);
- ``workflows``: a Temporal dev or time-skipping server with workers, or ``Replayer``; no
  HTTP stack;
- ``integration``: the whole stack in this process (tests/support/integration_stack.py,
  the session ``stack`` fixture in tests/integration/conftest.py, ``api.create_app``);
- ``system``: real processes (sandbox/process_stack.py, ``make run``, uvicorn and
  worker processes): faults, load, durability. Every system test is also ``slow``.

``make test-fast`` runs the first two, ``make test-quick`` all but ``slow``, ``make test``
all four.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "workflows", "integration", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            tier = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if tier not in TIERS:
            continue
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "system":
            item.add_marker(pytest.mark.slow)

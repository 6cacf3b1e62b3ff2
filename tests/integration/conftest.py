"""The integration tier's shared fixture: one whole py-lever stack per test session, in this
process (tests/support/integration_stack.py). Only tests under tests/integration use it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.integration_stack import Stack, running_stack


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[Stack]:
    async with running_stack() as s:
        yield s

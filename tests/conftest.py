"""Shared fixtures: one whole py-lever stack per test session (see tests/integration_stack.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration_stack import Stack, running_stack


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[Stack]:
    async with running_stack() as s:
        yield s

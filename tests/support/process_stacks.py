"""``ProcessStack`` (sandbox/process_stack.py) as the system tests start and end it.

A test's deployment is thrown away once the test is done: nothing reads its database or
waits for its processes to finish their work. ``process_stack`` ends them all at once
(the dev server SIGKILLed, which saves the second its graceful shutdown takes; the API
and the sandboxes stopped together) before ``ProcessStack.close`` runs and finds them
gone. Everything a test does with the stack (kills, stops, restarts) is unchanged.
Importing this starts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from sandbox.process_stack import ProcessStack


async def discard(stack: ProcessStack) -> None:
    """End every process of the stack at once; ``close()`` still runs after this."""
    await asyncio.gather(
        stack.kill_temporal(),
        *(worker.kill() for worker in stack.workers),
        *(proc.stop(grace=5) for proc in (stack.api, stack.lever, stack.py)),
    )


@contextlib.asynccontextmanager
async def process_stack(
    workdir: str | os.PathLike[str], **overrides: Any
) -> AsyncIterator[ProcessStack]:
    """``async with ProcessStack(workdir, **overrides)``, ended by ``discard``."""
    async with ProcessStack(workdir, **overrides) as stack:
        try:
            yield stack
        finally:
            await discard(stack)

"""``python worker.py`` with the account's Lever rate raised, for benchmark set-up only.

The configuration caps ``lever_requests_per_second`` at 10 (Lever's real limit),
and every Lever client of the process shares an in-process bucket of 10/s. To put
thousands of assessments into their waiting state faster than Lever would
allow, the waiting-at-scale benchmark runs this wrapper against a Lever sandbox
started with its own limit raised too (``StackOptions.lever_rate``/``lever_burst``,
the sandbox's ``--rate``/``--burst``). Everything else is
the production worker: the same workflows, activities, task queues, codec and
Temporal settings (``max_cached_workflows`` included). Nothing here is used
outside ``bench/``.

Environment: ``PYLEVER_BENCH_LEVER_RPS`` (every account's limit on the shared
Lever queue and its Lever clients' rate), plus what ``worker.py`` reads.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterable

import worker
from pylever.clients import lever as lever_client
from pylever.config.file import Account
from pylever.temporal import worker_process


def _raise_lever_rate(rate: float) -> None:
    apply_lever_limits = worker_process.apply_lever_limits
    bucket_for = lever_client.bucket_for

    async def limits(client, task_queue: str, accounts: Iterable[Account]):  # type: ignore[no-untyped-def]
        # Each account's fairness-key limit on the shared Lever queue.
        raised = [a.model_copy(update={"lever_requests_per_second": rate}) for a in accounts]
        return await apply_lever_limits(client, task_queue, raised)

    def bucket(key: str, _rate: float, burst: int):  # type: ignore[no-untyped-def]
        # Every Lever client of the process shares one bucket per key, reconfigured by
        # the latest client built (the start-up checks build one at 10/s): force the rate.
        return bucket_for(key, rate, max(burst, int(rate)))

    worker_process.apply_lever_limits = limits  # type: ignore[assignment]
    lever_client.bucket_for = bucket  # type: ignore[assignment]


if __name__ == "__main__":
    _raise_lever_rate(float(os.environ["PYLEVER_BENCH_LEVER_RPS"]))
    code = asyncio.run(worker.main())
    # worker.py exits through worker._exit (os._exit after flushing) where it has one.
    getattr(worker, "_exit", sys.exit)(code)

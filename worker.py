"""The Temporal worker: every workflow and activity of py-lever.

- main task queue (``PYLEVER_TASK_QUEUE``): the workflows, Py and Temporal activities;
- one shared Lever task queue (``<queue>-lever``) for every account's Lever
  activities, each keyed by its account; the server limits each account's rate
  there for all workers together (``pylever.temporal.lever_limits``), so an account stays
  under Lever's limit however many worker processes run, and serves the accounts
  in turn, so one account's backlog does not delay another's.

The worker's cost does not grow with the number of accounts: two task-queue
workers in all, and a Lever client made only for an account that has work
(``pylever.clients.lever_accounts``). ``SIGHUP`` re-reads the configuration
(``pylever.config.reload``): new accounts are served at once, changed ones get new
clients and limits, removed ones have their running assessments withdrawn.

Run: ``python worker.py`` with ``PYLEVER_CONFIG`` and ``PYLEVER_PAYLOAD_KEYS`` set.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from pylever.config.environment import Settings
from pylever.config.file import load_config_or_exit
from pylever.ops.logs import configure_logging, log_event
from pylever.temporal.codec import codec_from_env, data_converter
from pylever.temporal.worker_process import WorkerProcess, file_mtime
from pylever.temporal.workers import connect, register_search_attributes, sdk_runtime

log = logging.getLogger("pylever.worker")


async def main() -> int:
    configure_logging()
    # SIGHUP's default action ends the process: ignore it until the reloader takes it
    # over (connecting to Temporal may take a minute), and again once it lets go.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = Settings.from_env()
    loaded_mtime = file_mtime(settings.config_path or "")
    try:
        config = load_config_or_exit(settings.config_path, "worker")
        codec = codec_from_env({"PYLEVER_PAYLOAD_KEYS": settings.payload_keys or ""})
        runtime = sdk_runtime()
    except SystemExit as exc:
        return int(exc.code or 2)
    except ValueError as exc:  # PYLEVER_PAYLOAD_KEYS, PYLEVER_WORKER_METRICS_ADDRESS
        print(f"py-lever worker: configuration error: {exc}", file=sys.stderr)
        return 2

    client = await connect(settings, data_converter(codec), runtime)
    added = await register_search_attributes(client)
    if added:
        log_event(log, "registered search attributes", names=added)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    process = WorkerProcess(client, settings, config, loaded_mtime)
    try:
        await process.run(stop)
    finally:
        await process.workers.py.client.aclose()
    return 0


def _exit(code: int) -> None:
    """Exit without interpreter teardown once everything is shut down.

    The SDK's Rust threads can outlive ``asyncio.run`` and touch the GIL while
    CPython finalizes: "Fatal Python error: PyGILState_Release ... finalizing",
    SIGABRT, after a clean graceful shutdown (temporalio/sdk-python#300; seen in
    about one SIGTERM in ten here). ``os._exit`` keeps the exit code honest.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(asyncio.run(main()))

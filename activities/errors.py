"""Turn client errors into Temporal activity failures.

The failure message is the error's summary (service, endpoint, status, code);
the service's own words, which may echo a candidate's name or email, go into
the failure's details, which the payload codec encrypts.

Inside an activity the clients make one attempt (``max_attempts=1``) and
Temporal's retry policy does the backoff, so each Lever request is one
rate-limited activity task. The failure's ``type`` is the error class
(``AuthError``, ``NotFoundError``, ...): the workflow's retry policy decides
which types are final (``workflows.calls``), so one answer can be final for a
Py invitation and retried for days for a Lever write that must land (a 401
while a Lever key is rotated). A 429 asks Temporal to wait at least the time
the service named.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from temporalio.exceptions import ApplicationError

from pylever.contracts.errors import ApiError, RateLimitedError

DEFAULT_RATE_LIMIT_DELAY = timedelta(seconds=1)


@contextmanager
def activity_errors() -> Iterator[None]:
    try:
        yield
    except RateLimitedError as exc:
        delay = (
            timedelta(seconds=exc.retry_after)
            if exc.retry_after is not None
            else DEFAULT_RATE_LIMIT_DELAY
        )
        raise ApplicationError(
            exc.summary, exc.message, type=type(exc).__name__, next_retry_delay=delay
        ) from None
    except ApiError as exc:
        raise ApplicationError(exc.summary, exc.message, type=type(exc).__name__) from None

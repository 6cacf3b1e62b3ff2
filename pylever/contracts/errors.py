"""Typed errors of the Lever and Py clients (see docs/architecture.md for the mapping).

Messages name the service, method, path, status and the service's own code and
message: never a credential or a query string.
"""

from __future__ import annotations

from typing import Any

# Failure types of activity errors that are no client error class (an activity raises them
# as ApplicationError(type=...)); the workflows' retry policies name them.
UNKNOWN_ACCOUNT = "UnknownAccount"  # a call for an account the configuration does not name
PY_CONTRACT_ERROR = "PyContractError"  # a Py record that breaks the API's contract


class ApiError(Exception):
    """An answer from Lever or Py that is not a success, or no answer at all."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        status: int | None = None,
        code: str | None = None,
        summary: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.service = service
        self.status = status
        self.code = code
        # The message without the service's own words (which may echo candidate data):
        # what logs and workflow failure messages carry.
        self.summary = summary or message


class PermanentApiError(ApiError):
    """Retrying cannot fix it (4xx other than 429)."""


class BadRequestError(PermanentApiError):
    pass


class AuthError(PermanentApiError):
    pass


class NotFoundError(PermanentApiError):
    pass


class ConflictError(PermanentApiError):
    pass


class RetryableApiError(ApiError):
    """Transient: 5xx, 429, timeouts and network errors."""

    retryable = True


class RateLimitedError(RetryableApiError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class UnknownStageError(PermanentApiError):
    """A configured stage name or id that Lever's GET /stages does not list."""

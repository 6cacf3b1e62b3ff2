"""The request loop shared by the Lever and Py clients.

One ``ApiTransport`` wraps one ``httpx.AsyncClient``. ``request()``:

- takes a token from the rate-limit bucket (if any) before every attempt;
- maps answers to the errors of ``pylever.contracts.errors`` (docs/architecture.md);
- retries the retryable ones up to ``max_attempts`` with exponential backoff
  and full jitter, or after ``Retry-After`` seconds when the service names them;
- records one ``EXTERNAL_CALLS`` / ``EXTERNAL_LATENCY`` sample per attempt;
- returns the decoded JSON body, or its ``data`` when asked to unwrap.

Error messages read ``Lever GET /opportunities/{id} -> 404 NotFound: ...``: the
templated path, never a query string, and the configured secrets are scrubbed
from anything a server or the network layer said.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Self, TypeVar, cast
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from pylever.clients.ratelimit import TokenBucket
from pylever.contracts.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermanentApiError,
    RateLimitedError,
    RetryableApiError,
)
from pylever.ops.metrics import EXTERNAL_CALLS, EXTERNAL_LATENCY

__all__ = [
    "ApiTransport",
    "BearerAuth",
    "build_query",
    "error_class",
    "parse_retry_after",
]

Sleep = Callable[[float], Awaitable[None]]
Scalar = str | int | float | bool
Params = Mapping[str, Scalar | Sequence[Scalar] | None]
M = TypeVar("M", bound=BaseModel)

USER_AGENT = "py-lever"
MAX_DETAIL_CHARS = 300
REDACTED = "[redacted]"

_ERRORS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    422: BadRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitedError,
    500: RetryableApiError,
    502: RetryableApiError,
    503: RetryableApiError,
    504: RetryableApiError,
}

# Characters left as they are in a verbatim query value: everything that is
# legal in a query, "%" included, so an already percent-encoded token (Lever's
# ``next``) goes back byte-identical. "&", "#", spaces, quotes etc. are escaped.
_VERBATIM_SAFE = "!$'()*+,/:;=?@[]~%"


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>``; the token never shows in a repr."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def __repr__(self) -> str:
        return "BearerAuth(***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


def error_class(status: int) -> type[ApiError]:
    """The error raised for an HTTP status that is not a success."""
    if status in _ERRORS:
        return _ERRORS[status]
    if 400 <= status < 500 or status in (501, 505):
        return PermanentApiError
    if status >= 500:
        return RetryableApiError  # 507, 520-524 (proxies) and the like: transient
    return PermanentApiError  # 1xx/3xx: not something a retry changes


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def build_query(params: Params | None = None, verbatim: Mapping[str, str] | None = None) -> str:
    """A query string: ``params`` percent-encoded, ``verbatim`` values sent as given.

    Sequences repeat the parameter (``tag=a&tag=b``); ``None`` values are left
    out; booleans are ``true``/``false``.
    """
    pairs: list[str] = []
    for name, value in (params or {}).items():
        if value is None:
            continue
        values: Sequence[Scalar] = (
            value if isinstance(value, list | tuple) else [cast(Scalar, value)]
        )
        for item in values:
            pairs.append(f"{quote(name, safe='')}={quote(_text(item), safe='')}")
    for name, token in (verbatim or {}).items():
        pairs.append(f"{quote(name, safe='')}={quote(token, safe=_VERBATIM_SAFE)}")
    return "&".join(pairs)


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@functools.cache
def shared_tls() -> ssl.SSLContext:
    """One TLS context for every client of the process. httpx builds one per client by
    default, loading the CA bundle each time: about 0.8 MiB a client, so 800 MiB for
    the Lever clients of a thousand accounts; shared, the thousand cost 5 MiB."""
    return httpx.create_ssl_context()


class ApiTransport:
    """An ``httpx.AsyncClient`` plus the retry, error and metrics rules of both clients.

    ``max_attempts=1`` never retries (inside Temporal activities, where Temporal
    does). ``secrets`` are scrubbed from every error message.
    """

    def __init__(
        self,
        *,
        service: str,
        base_url: str,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        bucket: TokenBucket | None = None,
        max_attempts: int = 5,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.service = service
        self.max_attempts = max_attempts
        self._bucket = bucket
        self._secrets = tuple(s for s in secrets if s)
        self._sleep = sleep
        self._jitter = jitter
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=auth,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})},
            timeout=httpx.Timeout(timeout),
            transport=transport,
            verify=shared_tls(),
        )

    def __repr__(self) -> str:
        return f"ApiTransport(service={self.service!r}, base_url={str(self._client.base_url)!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        template: str | None = None,
        params: Params | None = None,
        verbatim_params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        unwrap: bool = False,
    ) -> Any:
        """Send until success or a final error; return the JSON body (``None`` if empty).

        ``path`` is the real path (ids quoted by the caller), ``template`` its
        low-cardinality form for messages and metrics (``/opportunities/{id}``).
        ``verbatim_params`` are appended to the query without re-encoding.
        With ``unwrap`` the body must be ``{"data": ...}`` and ``data`` is returned.
        """
        endpoint = f"{method} {template or path}"
        query = build_query(params, verbatim_params)
        url = f"{path}?{query}" if query else path
        attempt = 0
        while True:
            attempt += 1
            if self._bucket is not None:
                await self._bucket.acquire()
            started = time.perf_counter()
            retry_after: float | None = None
            try:
                response = await self._client.request(method, url, json=json, headers=headers)
            except httpx.TransportError as exc:
                self._observe(endpoint, "error", started)
                error = self._network_error(endpoint, exc)
            else:
                self._observe(endpoint, str(response.status_code), started)
                if response.is_success:
                    return self._decode(endpoint, response, unwrap)
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                error = self._http_error(endpoint, response, retry_after)
            if not error.retryable or attempt >= self.max_attempts:
                raise error
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            if delay > self._backoff_cap:
                raise error  # told to come back later than we are willing to wait here
            await self._sleep(delay)

    def parse(self, model: type[M], data: Any, *, endpoint: str) -> M:
        """Validate ``data`` as ``model``; a mismatch is a ``PermanentApiError``.

        The message lists the failing fields only, never the values (they may
        be candidate data).
        """
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors(
                    include_url=False, include_input=False, include_context=False
                )[:5]
            )
            raise PermanentApiError(
                f"{self.service} {endpoint} -> unexpected {model.__name__}: {problems}",
                service=self.service,
            ) from None

    # --- internals ---------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
        return self._jitter() * min(self._backoff_cap, self._backoff_base * 2.0 ** (attempt - 1))

    def _observe(self, endpoint: str, status: str, started: float) -> None:
        EXTERNAL_CALLS.labels(self.service, endpoint, status).inc()
        EXTERNAL_LATENCY.labels(self.service, endpoint).observe(time.perf_counter() - started)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = " ".join(text.split())
        if len(text) > MAX_DETAIL_CHARS:
            text = text[: MAX_DETAIL_CHARS - 3] + "..."
        return text

    def _network_error(self, endpoint: str, exc: httpx.TransportError) -> ApiError:
        detail = type(exc).__name__
        said = self._scrub(str(exc))
        if said:
            detail = f"{detail}: {said}"
        cls: type[ApiError] = RetryableApiError
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
            cls = PermanentApiError  # our own request is malformed: a retry sends it again
        return cls(f"{self.service} {endpoint} -> network error: {detail}", service=self.service)

    def _http_error(
        self, endpoint: str, response: httpx.Response, retry_after: float | None
    ) -> ApiError:
        status = response.status_code
        code, message = _error_details(response)
        code = self._scrub(code) if code else None
        message = self._scrub(message) if message else None
        summary = f"{self.service} {endpoint} -> {status}"
        if code:
            summary += f" {code}"
        if not code and not message:
            summary += f" {response.reason_phrase}".rstrip()
        text = f"{summary}: {message}" if message else summary
        cls = error_class(status)
        if cls is RateLimitedError:
            return RateLimitedError(
                text,
                retry_after=retry_after,
                service=self.service,
                status=status,
                code=code,
                summary=summary,
            )
        return cls(text, service=self.service, status=status, code=code, summary=summary)

    def _decode(self, endpoint: str, response: httpx.Response, unwrap: bool) -> Any:
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                raise PermanentApiError(
                    f"{self.service} {endpoint} -> {response.status_code}: response is not JSON",
                    service=self.service,
                    status=response.status_code,
                ) from None
        if not unwrap:
            return body
        if not isinstance(body, dict) or "data" not in body:
            raise PermanentApiError(
                f"{self.service} {endpoint} -> {response.status_code}: "
                'response has no {"data": ...} envelope',
                service=self.service,
                status=response.status_code,
            )
        return body["data"]


def _error_details(response: httpx.Response) -> tuple[str | None, str | None]:
    """``code`` and ``message`` from ``{"code","message"}``, ``{"error": {...}}`` or ``{"error": "..."}``."""
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    inner = body.get("error")
    if isinstance(inner, dict):
        body = inner
    elif isinstance(inner, str) and "message" not in body:
        body = {"code": body.get("code"), "message": inner}
    return _scalar(body.get("code")), _scalar(body.get("message"))


def _scalar(value: Any) -> str | None:
    if isinstance(value, str | int | float) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


class ApiClient:
    """What the Lever and Py clients share: an ``ApiTransport``, closing, a safe repr."""

    _http: ApiTransport

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._http!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

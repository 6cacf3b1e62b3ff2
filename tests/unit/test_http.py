"""The shared request loop: error mapping, retries, backoff, Retry-After, metrics, queries."""

from __future__ import annotations

import base64
import email.utils
import time
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pydantic import BaseModel

from pylever.clients.http import ApiTransport, BearerAuth, build_query, parse_retry_after
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

KEY = "lvr_secret_key_0123456789abcdef"
BASIC = base64.b64encode(f"{KEY}:".encode()).decode()
BASE = "https://lever.test/v1"
OK = {"data": {"id": "opp-1"}}


class Script:
    """A MockTransport handler that answers from a script and records every request.

    Each answer is an ``httpx.Response`` or an exception to raise; the last one repeats.
    """

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def api(script: Script, sleeps: Sleeps, **kwargs: Any) -> ApiTransport:
    kwargs.setdefault("service", "Lever")
    return ApiTransport(
        base_url=BASE,
        auth=httpx.BasicAuth(KEY, ""),
        secrets=(KEY, BASIC),
        transport=httpx.MockTransport(script),
        sleep=sleeps,
        **kwargs,
    )


def response(status: int, body: Any = None, **kwargs: Any) -> httpx.Response:
    if body is None:
        return httpx.Response(status, **kwargs)
    if isinstance(body, str | bytes):
        return httpx.Response(status, content=body, **kwargs)
    return httpx.Response(status, json=body, **kwargs)


# --- success ------------------------------------------------------------------


async def test_unwraps_the_data_envelope_only_when_asked() -> None:
    script, sleeps = Script(response(200, OK)), Sleeps()
    async with api(script, sleeps) as http:
        assert await http.request("GET", "/opportunities/opp-1", unwrap=True) == {"id": "opp-1"}
        assert await http.request("GET", "/opportunities/opp-1") == OK
    assert [r.url.path for r in script.requests] == ["/v1/opportunities/opp-1"] * 2
    assert sleeps.calls == []


async def test_sends_json_body_headers_and_auth() -> None:
    script, sleeps = Script(response(201, {"ok": True})), Sleeps()
    async with api(script, sleeps) as http:
        body = await http.request(
            "POST", "/opportunities/o/addTags", json={"tags": ["a"]}, headers={"X-Extra": "1"}
        )
    assert body == {"ok": True}
    sent = script.requests[0]
    assert sent.method == "POST"
    assert sent.headers["Authorization"] == f"Basic {BASIC}"
    assert sent.headers["X-Extra"] == "1"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.read() == b'{"tags":["a"]}'


async def test_empty_success_body_is_none() -> None:
    script = Script(response(202))
    async with api(script, Sleeps()) as http:
        assert await http.request("POST", "/v1/invitations/i/reminders") is None


@pytest.mark.parametrize(
    ("answer", "unwrap", "fragment"),
    [
        (response(200, "<html>oops</html>"), False, "-> 200: response is not JSON"),
        (response(200, {"id": "x"}), True, '-> 200: response has no {"data": ...} envelope'),
        (response(200, [1, 2]), True, "envelope"),
    ],
)
async def test_malformed_success_is_permanent(
    answer: httpx.Response, unwrap: bool, fragment: str
) -> None:
    script, sleeps = Script(answer), Sleeps()
    async with api(script, sleeps) as http:
        with pytest.raises(PermanentApiError) as info:
            await http.request("GET", "/stages", unwrap=unwrap)
    assert fragment in str(info.value)
    assert len(script.requests) == 1


# --- error mapping --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (400, BadRequestError, False),
        (422, BadRequestError, False),
        (401, AuthError, False),
        (403, AuthError, False),
        (404, NotFoundError, False),
        (409, ConflictError, False),
        (410, PermanentApiError, False),
        (418, PermanentApiError, False),
        (429, RateLimitedError, True),
        (500, RetryableApiError, True),
        (502, RetryableApiError, True),
        (503, RetryableApiError, True),
        (504, RetryableApiError, True),
    ],
)
async def test_status_mapping_and_retries(
    status: int, error: type[ApiError], retryable: bool
) -> None:
    script, sleeps = Script(response(status, {"code": "X", "message": "m"})), Sleeps()
    async with api(script, sleeps, max_attempts=3, jitter=lambda: 0.0) as http:
        with pytest.raises(ApiError) as info:
            await http.request("GET", "/stages")
    assert type(info.value) is error
    assert info.value.retryable is retryable
    assert info.value.status == status
    assert info.value.code == "X"
    assert info.value.service == "Lever"
    # permanent answers are sent once; retryable ones until max_attempts
    assert len(script.requests) == (3 if retryable else 1)
    assert len(sleeps.calls) == (2 if retryable else 0)


async def test_404_message_names_service_method_template_status_code_and_message() -> None:
    answer = response(404, {"code": "NotFound", "message": "opportunity not found"})
    script = Script(answer)
    async with api(script, Sleeps()) as http:
        with pytest.raises(NotFoundError) as info:
            await http.request(
                "GET",
                "/opportunities/2087af84-f146",
                template="/opportunities/{id}",
                params={"expand": "stage"},
            )
    assert str(info.value) == "Lever GET /opportunities/{id} -> 404 NotFound: opportunity not found"
    assert info.value.message == str(info.value)
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (  # Lever
            response(400, {"code": "BadRequest", "message": "tags must be a list"}),
            "Py POST /x -> 400 BadRequest: tags must be a list",
        ),
        (  # Py
            response(422, {"error": {"code": "invalid_email", "message": "email is invalid"}}),
            "Py POST /x -> 422 invalid_email: email is invalid",
        ),
        (response(409, {"error": "already completed"}), "Py POST /x -> 409: already completed"),
        (response(401, {"message": "no key"}), "Py POST /x -> 401: no key"),
        (response(403, ["not", "an", "object"]), "Py POST /x -> 403 Forbidden"),
        (response(400, "<html><h1>Bad</h1></html>"), "Py POST /x -> 400 Bad Request"),
        (response(404, b"\xff\xfe not utf-8"), "Py POST /x -> 404 Not Found"),
        (response(404, {"error": {"code": 7, "message": None}}), "Py POST /x -> 404 7"),
    ],
)
async def test_error_bodies_are_parsed_tolerantly(answer: httpx.Response, expected: str) -> None:
    async with api(Script(answer), Sleeps(), service="Py") as http:
        with pytest.raises(PermanentApiError) as info:
            await http.request("POST", "/x")
    assert str(info.value) == expected


async def test_long_or_multiline_server_messages_are_cut_to_one_short_line() -> None:
    answer = response(400, {"code": "Bad", "message": "line one\nline two " + "x" * 1000})
    async with api(Script(answer), Sleeps()) as http:
        with pytest.raises(BadRequestError) as info:
            await http.request("POST", "/x")
    message = str(info.value)
    assert "\n" not in message
    assert "line one line two" in message
    assert len(message) < 400


# --- retries --------------------------------------------------------------------


async def test_429_then_success_honours_retry_after() -> None:
    script = Script(response(429, {"code": "TooManyRequests"}, headers={"Retry-After": "2"}))
    script.answers.append(response(200, OK))
    sleeps = Sleeps()
    async with api(script, sleeps, jitter=lambda: 1.0) as http:
        assert await http.request("GET", "/stages", unwrap=True) == {"id": "opp-1"}
    assert len(script.requests) == 2
    assert sleeps.calls == [2.0]


async def test_429_without_retry_after_backs_off_with_full_jitter() -> None:
    script = Script(response(429), response(429), response(200, OK))
    sleeps = Sleeps()
    async with api(script, sleeps, jitter=lambda: 0.5) as http:
        await http.request("GET", "/stages")
    assert len(script.requests) == 3
    # jitter * min(cap, 0.5 * 2**(attempt-1))
    assert sleeps.calls == [0.25, 0.5]


async def test_retry_after_on_503_is_honoured_too() -> None:
    script = Script(response(503, headers={"Retry-After": "1.5"}), response(200, OK))
    sleeps = Sleeps()
    async with api(script, sleeps, jitter=lambda: 1.0) as http:
        await http.request("GET", "/stages")
    assert sleeps.calls == [1.5]


async def test_backoff_doubles_up_to_the_cap() -> None:
    script = Script(*[response(503)] * 6, response(200, OK))
    sleeps = Sleeps()
    http = api(script, sleeps, max_attempts=7, jitter=lambda: 1.0, backoff_cap=4.0)
    async with http:
        await http.request("GET", "/stages")
    assert sleeps.calls == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


async def test_jitter_is_real_by_default() -> None:
    script = Script(*[response(503)] * 4, response(200, OK))
    sleeps = Sleeps()
    async with api(script, sleeps) as http:
        await http.request("GET", "/stages")
    ceilings = [0.5, 1.0, 2.0, 4.0]
    assert all(0 <= d <= c for d, c in zip(sleeps.calls, ceilings, strict=True))
    assert len(set(sleeps.calls)) > 1


async def test_503_retried_until_success() -> None:
    script = Script(response(503), response(503), response(503), response(200, OK))
    sleeps = Sleeps()
    async with api(script, sleeps) as http:
        assert await http.request("GET", "/stages", unwrap=True) == {"id": "opp-1"}
    assert len(script.requests) == 4
    assert len(sleeps.calls) == 3


async def test_retryable_error_raised_after_max_attempts() -> None:
    script, sleeps = Script(response(503, {"code": "Unavailable"})), Sleeps()
    async with api(script, sleeps, max_attempts=3) as http:
        with pytest.raises(RetryableApiError) as info:
            await http.request("GET", "/stages")
    assert info.value.status == 503
    assert str(info.value) == "Lever GET /stages -> 503 Unavailable"
    assert len(script.requests) == 3
    assert len(sleeps.calls) == 2


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed connection"),
    ],
)
async def test_network_errors_and_timeouts_are_retried(exc: Exception) -> None:
    script, sleeps = Script(exc, response(200, OK)), Sleeps()
    async with api(script, sleeps) as http:
        assert await http.request("GET", "/stages", unwrap=True) == {"id": "opp-1"}
    assert len(script.requests) == 2
    assert len(sleeps.calls) == 1


async def test_network_error_after_max_attempts_is_retryable_api_error() -> None:
    script, sleeps = Script(httpx.ReadTimeout("timed out")), Sleeps()
    async with api(script, sleeps, max_attempts=2) as http:
        with pytest.raises(RetryableApiError) as info:
            await http.request("GET", "/stages", params={"offset": "abc"})
    assert str(info.value) == "Lever GET /stages -> network error: ReadTimeout: timed out"
    assert info.value.status is None
    assert info.value.__cause__ is None
    assert len(script.requests) == 2


async def test_a_malformed_request_of_ours_is_not_retried() -> None:
    script, sleeps = Script(httpx.LocalProtocolError("illegal header value")), Sleeps()
    async with api(script, sleeps) as http:
        with pytest.raises(PermanentApiError):
            await http.request("GET", "/stages")
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        response(503),
        response(429, headers={"Retry-After": "7"}),
        httpx.ConnectError("refused"),
    ],
)
async def test_max_attempts_one_raises_at_once(answer: httpx.Response | Exception) -> None:
    script, sleeps = Script(answer, response(200, OK)), Sleeps()
    async with api(script, sleeps, max_attempts=1) as http:
        with pytest.raises(RetryableApiError) as info:
            await http.request("GET", "/stages")
    assert len(script.requests) == 1
    assert sleeps.calls == []
    if isinstance(info.value, RateLimitedError):
        assert info.value.retry_after == 7.0


async def test_rate_limited_error_carries_retry_after_or_none() -> None:
    for headers, expected in (({"Retry-After": "3"}, 3.0), ({}, None)):
        script = Script(response(429, headers=headers))
        async with api(script, Sleeps(), max_attempts=1) as http:
            with pytest.raises(RateLimitedError) as info:
                await http.request("GET", "/stages")
        assert info.value.retry_after == expected


async def test_retry_after_longer_than_the_cap_is_raised_not_slept() -> None:
    script = Script(response(429, headers={"Retry-After": "120"}), response(200, OK))
    sleeps = Sleeps()
    async with api(script, sleeps) as http:
        with pytest.raises(RateLimitedError) as info:
            await http.request("GET", "/stages")
    assert info.value.retry_after == 120.0
    assert len(script.requests) == 1
    assert sleeps.calls == []


def test_invalid_max_attempts() -> None:
    with pytest.raises(ValueError):
        ApiTransport(service="Lever", base_url=BASE, max_attempts=0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    value = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = parse_retry_after(value)
    assert seconds is not None and 27 <= seconds <= 31


# --- rate limiting ----------------------------------------------------------------


class CountingBucket(TokenBucket):
    def __init__(self) -> None:
        super().__init__(rate=1000, burst=1000)
        self.acquired = 0

    async def acquire(self) -> None:
        self.acquired += 1
        await super().acquire()


async def test_bucket_is_acquired_before_every_attempt() -> None:
    script = Script(response(503), httpx.ConnectError("x"), response(429), response(200, OK))
    bucket = CountingBucket()
    async with api(script, Sleeps(), bucket=bucket) as http:
        await http.request("GET", "/stages")
    assert len(script.requests) == 4
    assert bucket.acquired == 4


# --- secrets ----------------------------------------------------------------------


async def test_messages_never_contain_credentials_or_query_strings() -> None:
    echo = f"invalid key {KEY} (Authorization: Basic {BASIC})"
    answers: list[httpx.Response | Exception] = [
        response(401, {"code": "Unauthorized", "message": echo}),
        response(400, {"error": {"code": KEY, "message": echo}}),
        response(503, echo),
        response(429, {"message": echo}),
        httpx.ConnectError(f"cannot reach https://{KEY}@lever.test/?offset=secret"),
    ]
    for answer in answers:
        async with api(Script(answer), Sleeps(), max_attempts=1) as http:
            with pytest.raises(ApiError) as info:
                await http.request(
                    "GET",
                    "/opportunities/o-1",
                    template="/opportunities/{id}",
                    params={"email": "jane@example.com"},
                    verbatim_params={"offset": "tok"},
                )
        text = f"{info.value} {info.value!r} {info.value.message} {info.value.code}"
        assert KEY not in text
        assert BASIC not in text
        assert "jane@example.com" not in text
        assert "offset=tok" not in text
        assert "o-1" not in text
        assert text.startswith("Lever GET /opportunities/{id} -> ")


def test_reprs_do_not_show_credentials() -> None:
    token_auth = BearerAuth(KEY)
    http = ApiTransport(service="Py", base_url=BASE, auth=token_auth, secrets=(KEY,))
    assert KEY not in repr(token_auth)
    assert KEY not in repr(http)


async def test_bearer_auth_header() -> None:
    script = Script(response(200, OK))
    http = ApiTransport(
        service="Py", base_url=BASE, auth=BearerAuth(KEY), transport=httpx.MockTransport(script)
    )
    async with http:
        await http.request("GET", "/v1/tests")
    assert script.requests[0].headers["Authorization"] == f"Bearer {KEY}"


# --- model parsing ------------------------------------------------------------------


class Thing(BaseModel):
    id: str
    score: float


def test_parse_mismatch_is_permanent_and_hides_values() -> None:
    http = ApiTransport(service="Py", base_url=BASE)
    with pytest.raises(PermanentApiError) as info:
        http.parse(Thing, {"id": "t", "score": "jane@example.com"}, endpoint="GET /things/{id}")
    assert str(info.value).startswith("Py GET /things/{id} -> unexpected Thing: score:")
    assert "jane@example.com" not in str(info.value)
    assert info.value.__cause__ is None
    assert http.parse(Thing, {"id": "t", "score": 1}, endpoint="GET /t") == Thing(id="t", score=1)


# --- metrics ----------------------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_every_attempt_with_templated_endpoint() -> None:
    endpoint = "PUT /opportunities/{id}/stage"
    calls = "pylever_external_calls_total"
    before = {
        status: sample(calls, service="MetricsTest", endpoint=endpoint, status=status)
        for status in ("503", "error", "200")
    }
    latency_before = sample(
        "pylever_external_call_duration_seconds_count", service="MetricsTest", endpoint=endpoint
    )
    script = Script(response(503), httpx.ConnectError("x"), response(200, OK))
    async with api(script, Sleeps(), service="MetricsTest") as http:
        await http.request(
            "PUT",
            "/opportunities/real-id-123/stage",
            template="/opportunities/{id}/stage",
            json={"stage": "s"},
        )
    for status in ("503", "error", "200"):
        after = sample(calls, service="MetricsTest", endpoint=endpoint, status=status)
        assert after == before[status] + 1
    latency_after = sample(
        "pylever_external_call_duration_seconds_count", service="MetricsTest", endpoint=endpoint
    )
    assert latency_after == latency_before + 3
    exposed = [
        s.labels["endpoint"]
        for metric in REGISTRY.collect()
        for s in metric.samples
        if s.labels.get("service") == "MetricsTest"
    ]
    assert exposed and all("real-id-123" not in e for e in exposed)


# --- query strings ------------------------------------------------------------------

LEVER_NEXT = "%5B1%2C1750233409740%2C%2248dd4e94-fea0-4f9a-be5f-95b1853cbbbe%22%5D"


def test_build_query() -> None:
    assert build_query() == ""
    assert build_query({"a": None}) == ""
    assert (
        build_query({"tag": ["Py - Pass", "a&b"], "archived": False, "n": 3, "e": "x+y@z"})
        == "tag=Py%20-%20Pass&tag=a%26b&archived=false&n=3&e=x%2By%40z"
    )
    assert (
        build_query({"stage_id": "s"}, {"offset": LEVER_NEXT}) == f"stage_id=s&offset={LEVER_NEXT}"
    )
    # a raw (not yet encoded) token is made safe, not split
    assert build_query(verbatim={"offset": 'a&b#c "d"'}) == "offset=a%26b%23c%20%22d%22"


async def test_verbatim_query_reaches_the_server_byte_identical() -> None:
    script = Script(response(200, OK))
    async with api(script, Sleeps()) as http:
        await http.request(
            "GET", "/opportunities", params={"tag": "a b"}, verbatim_params={"offset": LEVER_NEXT}
        )
    assert script.requests[0].url.query == f"tag=a%20b&offset={LEVER_NEXT}".encode()


@given(st.text())
def test_percent_encoded_tokens_go_back_unchanged(text: str) -> None:
    token = quote(text, safe="")
    query = build_query(verbatim={"offset": token})
    assert query == f"offset={token}"
    request = httpx.Request("GET", f"{BASE}/opportunities?{query}")
    assert request.url.query == query.encode()


@given(st.text().filter(lambda t: "%" not in t))
def test_raw_tokens_are_made_safe_and_decode_back(text: str) -> None:
    query = build_query(verbatim={"offset": text})
    name, _, value = query.partition("=")
    assert name == "offset"
    assert "&" not in value and "#" not in value and " " not in value
    assert unquote(value) == text

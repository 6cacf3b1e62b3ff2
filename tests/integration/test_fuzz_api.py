"""Hostile input at the two public endpoints: never a 500, never a stack trace, always the
``{"error": {"code", "message"}}`` shape on 4xx, never a secret in an answer.

Most examples go through an ASGI transport over ``api.create_app`` built on the running
stack's config and its real Temporal client (fast, and signed-valid requests still start
and signal real workflows); ``test_real_server_*`` sends the nastiest ones over a socket to
the stack's uvicorn. The last test pushes a candidate with unicode and control characters
in the name and tags through the whole pipeline.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylever.config.environment import Settings
from pylever.edge.signatures import lever_signature, py_signature_header, sign_lever_webhook
from sandbox.py import build_callback
from tests.support.integration_stack import (
    ADMIN_TOKEN,
    PAYLOAD_KEY,
    PY_ASSESSMENT_STAGE_ID,
    SECRETS,
    Stack,
)
from workflows.decisions import TAG_INVITED, TAG_PASS, TAG_STARTED

WEBHOOK = "/webhooks/lever/acme"
CALLBACK = "/callbacks/py"
LEVER_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # used with fullmatch, like api.py
SECRET_VALUES = [*SECRETS.values(), ADMIN_TOKEN, base64.b64encode(PAYLOAD_KEY).decode()]

FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Examples that reach Temporal (starts, signals): fewer.
TEMPORAL = settings(FAST, max_examples=60)


# --- the app under test -----------------------------------------------------------------


class _Unexpected(logging.Handler):
    """Collects the API's "unexpected error" records: a 500 by another name."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    from pylever.edge.app import create_app

    settings_ = Settings(
        task_queue=stack.task_queue,
        admin_token=ADMIN_TOKEN,
        payload_keys=base64.b64encode(PAYLOAD_KEY).decode(),
    )
    app = create_app(stack.config, settings_, client=stack.client)
    errors = _Unexpected()
    logger = logging.getLogger("pylever.api")
    logger.addHandler(errors)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=transport, base_url="http://api.test", timeout=30
            ) as client:
                client.unexpected = errors  # type: ignore[attr-defined]
                yield client
    finally:
        logger.removeHandler(errors)


def check(response: httpx.Response, *allowed: int) -> Any:
    """The invariants of every answer; returns the JSON body."""
    text = response.text
    assert response.status_code < 500, (response.status_code, text[:500])
    assert "Traceback" not in text and 'File "' not in text, text[:500]
    for secret in SECRET_VALUES:
        assert secret not in text
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body, dict) and set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message"}, body
        assert isinstance(body["error"]["code"], str) and body["error"]["code"]
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if allowed:
        assert response.status_code in allowed, (response.status_code, text[:500])
    return body


async def post(api: httpx.AsyncClient, path: str, raw: bytes, **headers: str) -> httpx.Response:
    records: list[logging.LogRecord] = api.unexpected.records  # type: ignore[attr-defined]
    before = len(records)
    response = await api.post(
        path, content=raw, headers={"Content-Type": "application/json", **headers}
    )
    new = records[before:]
    assert not new, [(r.getMessage(), getattr(r, "error_type", None)) for r in new]
    return response


def signed_callback(body: bytes, secret: str = SECRETS["callback_secret"]) -> dict[str, str]:
    return {"Py-Signature": py_signature_header(secret, body)}


# --- strategies ---------------------------------------------------------------------------

# Huge integers cannot go through json.dumps (3.11 limits int->str at 4300 digits), so they
# travel as placeholders and are spliced into the text afterwards.
_HUGE = {
    f"\x00huge{i}\x00": digits
    for i, digits in enumerate(
        ["9" * 4299, "9" * 4301, "-" + "1" * 6000, "1" + "0" * 400, "18446744073709551616"]
    )
}

lone_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
nasty_chars = st.sampled_from(
    list("\x00\x07\x1b\x7f\u0085\u2028\u2029\u202e\u200b\ufeff\uffff:/\\\"'<>&%{}")
    + ["🚀", "é", "ü", "中", "\U0010ffff", "\r", "\n", "\t"]
)
nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.one_of(nasty_chars, st.characters()), max_size=60),
    st.lists(nasty_chars, min_size=1, max_size=8).map("".join),
    # lone surrogates: legal JSON escapes that cannot be encoded again (a 400)
    st.lists(st.one_of(nasty_chars, lone_surrogates), min_size=1, max_size=4)
    .filter(lambda chars: any(0xD800 <= ord(c) <= 0xDFFF for c in chars))
    .map("".join),
    st.sampled_from(
        [
            "",
            " ",
            "a:b:c",
            "../../etc/passwd",
            "%00",
            "<script>alert(1)</script>",
            "x" * 10_000,
            "é" * 5_000,
            "${jndi:ldap://x}",
            "' OR 1=1 --",
            "null",
            "0",
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.floats(),  # nan and infinities too: json.dumps writes NaN / Infinity
    nasty_text,
    st.sampled_from(list(_HUGE)),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(nasty_text, inner, max_size=5),
    ),
    max_leaves=25,
)


def encode(value: Any, raw_utf8: bool = False) -> bytes:
    """JSON bytes; with ``raw_utf8`` non-ASCII is written as UTF-8 (lone surrogates as
    CESU-style bytes, which are not UTF-8), else as \\u escapes."""
    text = json.dumps(value, ensure_ascii=not raw_utf8)
    for marker, digits in _HUGE.items():
        text = text.replace(json.dumps(marker, ensure_ascii=not raw_utf8), digits)
    return text.encode("utf-8", errors="surrogatepass")


def _no_constants(name: str) -> Any:
    raise ValueError(name)


def is_interoperable_json(raw: bytes) -> bool:
    """RFC 8259 JSON the service can use: UTF-8, no NaN/Infinity, no lone surrogates,
    integers Python reads (at most 4300 digits)."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        return False
    return True


# --- arbitrary bytes and arbitrary JSON --------------------------------------------------


@FAST
@given(raw=st.binary(max_size=2048), path=st.sampled_from([WEBHOOK, CALLBACK]))
async def test_arbitrary_bytes(api, raw, path):
    body = check(await post(api, path, raw))
    if path == WEBHOOK:
        assert body.get("status") != "started"


@FAST
@given(value=json_values, raw_utf8=st.booleans(), path=st.sampled_from([WEBHOOK, CALLBACK]))
async def test_arbitrary_json(api, value, raw_utf8, path):
    raw = encode(value, raw_utf8)
    response = await post(api, path, raw)
    if path == CALLBACK:
        check(response, 401)  # the signature is checked before the body is read as JSON
    elif is_interoperable_json(raw) and isinstance(value, dict):
        check(response, 401)  # unsigned
    else:
        assert check(response, 400)["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("path", [WEBHOOK, CALLBACK])
@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"data": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b"[" * 200_000,  # unterminated
        b'{"x": [' + b'{"y": [' * 5_000 + b"]}" * 5_000 + b"]}",
    ],
    ids=["arrays", "objects", "in-data", "unterminated", "mixed"],
)
async def test_very_deep_nesting_is_a_400_not_a_crash(api, path, raw):
    if path == CALLBACK:
        check(await post(api, path, raw, **signed_callback(raw)), 400)
    else:
        check(await post(api, path, raw), 400)


async def test_oversized_bodies_are_413(api):
    big = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    for path in (WEBHOOK, CALLBACK):
        check(await post(api, path, big, **signed_callback(big)), 413)
        # a lying Content-Length: the stream decides
        check(await post(api, path, big, **{"Content-Length": "10"}), 413)
    # "²".isdigit() is true but int("²") fails
    response = await api.post(
        WEBHOOK, content=b"{}", headers=[(b"Content-Length", b"\xb2"), (b"Content-Length", b"2")]
    )
    check(response, 400, 401)


# --- Lever webhooks: wrong types, valid signatures over hostile data ------------------------

wrong = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), scalars, max_size=3),
)


@FAST
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            "triggeredAt": wrong,
            "event": wrong,
            "token": wrong,
            "signature": wrong,
            "data": wrong,
        },
    )
)
async def test_webhook_fields_of_every_wrong_type(api, fields):
    body = check(await post(api, WEBHOOK, encode(fields)), 400, 401)
    assert body["error"]["code"] in {"bad_signature", "invalid_json"}


@FAST
@given(
    triggered_at=st.one_of(
        st.text(max_size=20),
        st.floats(),
        st.booleans(),
        st.none(),
        st.lists(st.integers()),
        st.sampled_from([-1, 0, 2**64, 10**100]),
    ),
    token=st.one_of(st.integers(), st.floats(), st.text(), st.lists(st.text())),
    signature=st.one_of(st.integers(), st.floats(), st.text(), st.none()),
)
async def test_webhook_signature_fields_of_wrong_types(api, triggered_at, token, signature):
    """Whatever the types, an unsigned delivery is a 401 (or 400 for unencodable text)."""
    body = {
        "triggeredAt": triggered_at,
        "event": "candidateStageChange",
        "token": token,
        "signature": signature,
        "data": {"opportunityId": "opp", "toStageId": "stage"},
    }
    check(await post(api, WEBHOOK, encode(body)), 400, 401)


async def test_unsigned_event_names_cannot_flood_or_split_the_log(api):
    from pylever.ops.logs import JsonFormatter

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("pylever.api")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        event = 'x\u2028{"level": "error", "event": "forged"}\x85\r\n' * 10_000
        body = {"event": event, "token": "t", "signature": "s", "triggeredAt": 1, "data": {}}
        check(await post(api, WEBHOOK, encode(body, raw_utf8=True)), 401)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    output = buffer.getvalue()
    assert output.count("\n") == 1 and len(output.splitlines()) == 1, output[:300]
    assert len(output) < 1000
    assert json.loads(output)["lever_event"].startswith("'x\\u2028")


def hostile_id() -> st.SearchStrategy[str]:
    valid = st.from_regex(LEVER_ID, fullmatch=True)
    return st.one_of(
        nasty_text,
        valid,
        valid,
        st.sampled_from(["a:b", "x" * 10_240, "opp\n", "opp\x00", "ope\u0301n", "١٢٣", "a b"]),
    )


@TEMPORAL
@given(
    event=st.sampled_from(
        ["candidateStageChange", "candidateArchiveChange", "candidateDeleted", "candidateHired"]
    ),
    opportunity=hostile_id(),
    stage=st.one_of(
        hostile_id(),
        st.just(PY_ASSESSMENT_STAGE_ID),
        st.just(PY_ASSESSMENT_STAGE_ID),
        st.just("lead-new"),
    ),
    extra=st.one_of(st.just({}), st.dictionaries(nasty_text, json_values, max_size=3)),
    to_archived=st.one_of(st.none(), st.booleans(), st.booleans(), json_values),
    token=st.sampled_from([SECRETS["acme_token"], SECRETS["acme_token_2"]]),
    raw_utf8=st.booleans(),
)
async def test_signed_webhooks_with_hostile_data(
    api, event, opportunity, stage, extra, to_archived, token, raw_utf8
):
    """Signed with the real tokens, so they pass the signature and reach validation;
    well-formed ids start (or withdraw) real workflows."""
    data = {**extra, "opportunityId": opportunity, "toStageId": stage, "toArchived": to_archived}
    raw = encode(sign_lever_webhook(token, event, data), raw_utf8)
    response = await post(api, WEBHOOK, raw)
    body = check(response, 200, 202, 400)
    if not is_interoperable_json(raw):
        assert body["error"]["code"] == "invalid_json"
        return
    opportunity_ok = bool(LEVER_ID.fullmatch(opportunity))
    if event == "candidateHired":
        assert body["status"] == "ignored"
    elif event == "candidateStageChange":
        if not opportunity_ok or not LEVER_ID.fullmatch(stage):
            assert response.status_code == 400
            assert body["error"]["code"] == "invalid_webhook"
        elif stage == PY_ASSESSMENT_STAGE_ID:
            assert response.status_code == 202, body
            assert body["status"] in {"started", "already_running", "already_done"}
            assert body["workflow_id"] == f"assessment:acme:{opportunity}:{stage}"
        else:
            assert body["status"] == "ignored"
    elif not opportunity_ok:
        assert response.status_code == 400
    elif event == "candidateArchiveChange" and not to_archived:
        assert body["status"] == "ignored"
    else:
        assert response.status_code == 202 and body["status"] == "withdrawing"


@settings(FAST, max_examples=15)
@given(
    opportunity=st.from_regex(LEVER_ID, fullmatch=True),
    extra=st.dictionaries(
        st.text(alphabet=nasty_chars, max_size=5),
        st.text(alphabet=nasty_chars, max_size=50),
        max_size=3,
    ),
    raw_utf8=st.booleans(),
)
async def test_signed_stage_changes_start_real_workflows(
    api, stack: Stack, opportunity, extra, raw_utf8
):
    """Generated (valid) ids and unicode extras: a real start in Temporal, under that id."""
    data = {**extra, "opportunityId": opportunity, "toStageId": PY_ASSESSMENT_STAGE_ID}
    raw = encode(sign_lever_webhook(SECRETS["acme_token"], "candidateStageChange", data), raw_utf8)
    body = check(await post(api, WEBHOOK, raw), 202)
    assert body["workflow_id"] == f"assessment:acme:{opportunity}:{PY_ASSESSMENT_STAGE_ID}"
    description = await stack.client.get_workflow_handle(body["workflow_id"]).describe()
    assert description.workflow_type == "AssessmentWorkflow"


async def test_signed_start_really_reaches_temporal(api, stack: Stack):
    """A hostile-looking but valid id: started once, then reused; the workflow exists."""
    opportunity = f"fuzz-{time.monotonic_ns()}"
    raw = encode(
        sign_lever_webhook(
            SECRETS["acme_token"],
            "candidateStageChange",
            {"opportunityId": opportunity, "toStageId": PY_ASSESSMENT_STAGE_ID, "x": "\u202e"},
        )
    )
    first = check(await post(api, WEBHOOK, raw), 202)
    assert first["status"] == "started"
    again = check(await post(api, WEBHOOK, raw), 202)
    assert again["status"] in {"already_running", "already_done"}
    description = await stack.client.get_workflow_handle(first["workflow_id"]).describe()
    assert description.workflow_type == "AssessmentWorkflow"


def test_signature_check_survives_unencodable_tokens():
    from pylever.edge.signatures import verify_lever_webhook

    good = sign_lever_webhook("key", "e", {})
    assert verify_lever_webhook(good, ["key"])
    for token in ("\ud800", "a\udfff"):
        assert not verify_lever_webhook({**good, "token": token}, ["key"])
    assert not verify_lever_webhook({**good, "triggeredAt": "\ud800"}, ["key"])
    assert not verify_lever_webhook({**good, "signature": "é" * 64}, ["key"])
    assert lever_signature("key", good["token"], good["triggeredAt"]) == good["signature"]


# --- Py callbacks --------------------------------------------------------------------------

valid_t = str(int(time.time()))
py_headers = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(min_codepoint=0x80, max_codepoint=0x2FFF), max_size=40).map(
        lambda s: f"t={valid_t},v1={s}"
    ),
    st.integers().map(lambda t: f"t={t},v1={'0' * 64}"),
    st.integers(min_value=10**12, max_value=10**40).map(lambda t: f"t={t},v1=ab"),
    st.integers(min_value=1, max_value=500).map(lambda n: f"t={valid_t}," + ",v1=ab" * n),
    st.integers(min_value=1, max_value=500).map(lambda n: "t=1," * n + "v1=ab"),
    st.sampled_from(
        [
            "",
            ",",
            "=",
            "t",
            "v1",
            "t=,v1=",
            f"t={valid_t}",
            "v1=" + "0" * 64,
            f"t={valid_t},v1",
            f"t {valid_t},v1 ab",
            f"t={valid_t};v1=ab",
            "t=-5,v1=ab",
            f"t=+{valid_t},v1=ab",
            f"t={valid_t}.0,v1=ab",
            "t=0x10,v1=ab",
            "t=١٢٣,v1=ab",
            f"T={valid_t},V1=ab",
            f"t={valid_t},t={valid_t},v1=ab",
            " " * 1000,
            "t=" + "9" * 5000 + ",v1=ab",
            f"t={valid_t},v1=" + "a" * 100_000,
        ]
    ),
)


@FAST
@given(header=py_headers, raw=st.one_of(st.binary(max_size=200), json_values.map(encode)))
async def test_malformed_py_signatures_are_401(api, header, raw):
    # headers travel as bytes: non-latin-1 text arrives as its UTF-8 bytes read as latin-1
    response = await api.post(
        CALLBACK, content=raw, headers=[(b"Py-Signature", header.encode("utf-8", "surrogatepass"))]
    )
    body = check(response, 401)
    assert body["error"]["code"] == "bad_signature"


async def test_stale_future_and_wrong_key_signatures_are_401(api):
    raw = b'{"event": "invitation.started", "invitation": {}}'
    now = int(time.time())
    cases = [
        py_signature_header(SECRETS["callback_secret"], raw, timestamp=now - 301),
        py_signature_header(SECRETS["callback_secret"], raw, timestamp=now + 301),
        py_signature_header("another-secret", raw),
        py_signature_header(SECRETS["callback_secret"], raw + b" "),
        py_signature_header(SECRETS["callback_secret"], raw).upper(),
    ]
    for header in cases:
        check(await post(api, CALLBACK, raw, **{"Py-Signature": header}), 401)
    check(await post(api, CALLBACK, raw), 401)  # no header at all


_part = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True)
# Well-formed references to assessments that do not exist: 404, through Temporal.
well_formed_reference = st.tuples(_part, _part, _part, _part).map(
    lambda p: f"assessment:{p[0]}:{p[1]}:{p[2]}:{p[3]}"
)
statuses = st.sampled_from(["invited", "started", "completed", "expired", "cancelled"])
events = st.sampled_from(["invitation.started", "invitation.completed", "invitation.expired"])
# Long and odd report URLs: the limit is https, at most 2,048 characters, no user info.
_url_tails = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("/?#@:%.-_~!$&'()*+,;=[]\\ \t\n\x00<>\"")),
        st.characters(max_codepoint=0x7F),
        nasty_chars,
    ),
    max_size=40,
)
odd_report_urls = st.one_of(
    st.builds(lambda scheme, tail: scheme + tail,
              st.sampled_from(["https://", "HTTPS://", "http://", "https:", "//", "ftp://", ""]),
              _url_tails),
    st.builds(lambda user, host: f"https://{user}@{host}/r", nasty_text, _part),
    st.integers(2040, 2060).map(lambda n: "https://py.example/" + "r" * (n - 19)),
    st.sampled_from([
        "https://py.example/" + "r" * 100_000,
        "https://user:pass@py.example/r/1",
        "https://user@py.example/r/1",
        "https://@py.example/r/1",
        "https://py.example\\@evil.example/r",
        "https://py.example:443@evil.example/r",
        "https://py.example:99999999/r",
        "https://[::1]/r", "https://127.0.0.1:8443/r?x=1#y",
        "https://py.example/r\u2028", "https://py.example/\u202er",
        "https://py.example./r", "https://-py.example/r", "https://py..example/r",
    ]),
)  # fmt: skip
report_urls = st.one_of(
    st.sampled_from(
        ["https://py.example/r/1", "https://x\n", "javascript:alert(1)", "https://é/\u202e"]
    ),
    odd_report_urls,
    nasty_text,
    wrong,
)
scores = st.one_of(
    st.integers(0, 100),
    st.floats(0, 100),
    st.floats(),
    st.integers(),
    wrong,
    st.sampled_from(list(_HUGE)),
)

# Right shape, hostile values: these pass validation or fail it field by field.
shaped_invitations = st.fixed_dictionaries(
    {
        "id": st.one_of(nasty_text, st.from_regex(r"inv_[a-z0-9]{1,24}", fullmatch=True)),
        "status": statuses,
        "reference": st.one_of(
            well_formed_reference,
            well_formed_reference,
            st.builds(lambda s: f"assessment:a:b:c:{s}", nasty_text),
        ),
    },
    optional={
        "score": scores,
        "report_url": report_urls,
        "completed_at": st.one_of(st.sampled_from(["2025-01-01T00:00:00Z", "yesterday"]), wrong),
        "candidate": json_values,
        "test_url": nasty_text,
    },
)
# Anything in any field.
any_invitations = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(nasty_text, wrong),
        "status": st.one_of(statuses, wrong),
        "reference": st.one_of(well_formed_reference, nasty_text, wrong),
        "score": scores,
        "report_url": report_urls,
        "completed_at": wrong,
    },
)


def signed_py_body(event: Any, invitation: Any) -> tuple[bytes, dict[str, str]]:
    """``sandbox.py.build_callback``, unless a huge integer has to be spliced in first."""
    raw, headers = build_callback(SECRETS["callback_secret"], event, invitation)
    spliced = encode({"event": event, "invitation": invitation})
    if spliced != raw:
        return spliced, signed_callback(spliced)
    return raw, headers


@TEMPORAL
@given(
    body=st.one_of(
        st.tuples(events, shaped_invitations),
        st.tuples(events, shaped_invitations),
        st.tuples(st.one_of(events, wrong), st.one_of(any_invitations, wrong)),
    )
)
async def test_signed_callbacks_with_hostile_bodies(api, body):
    """Signed with the real secret: validation answers 400/422, a well-formed reference to
    no assessment is looked up in Temporal (404); never a 202 here, never a 500."""
    event, invitation = body
    raw, headers = signed_py_body(event, invitation)
    answer = check(await post(api, CALLBACK, raw, **headers), 400, 404, 422)
    if answer["error"]["code"] == "not_found":
        assert isinstance(invitation, dict) and isinstance(invitation.get("reference"), str)


def _acceptable_report_url(url: str) -> bool:
    """The limit, checked independently of api.py: https, <= 2,048 characters, a host, no
    user info, nothing a URL may not contain unescaped."""
    if len(url) > 2048 or not url.isascii() or any(c in url for c in ' \t\r\n\x00<>"\\'):
        return False
    if not url.isprintable():
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme.lower() == "https"
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and (port is None or 0 <= port <= 99999)
    )


@TEMPORAL
@given(report_url=st.one_of(odd_report_urls, nasty_text), score=st.one_of(st.integers(0, 100)))
async def test_completed_callbacks_keep_the_report_url_limit(api, report_url, score):
    """Only an https URL of at most 2,048 characters without user info gets past validation
    (to Temporal, which does not know the reference: 404); anything else is a 422."""
    invitation = {"id": "inv_1", "status": "completed", "score": score,
                  "reference": f"assessment:acme:nobody-{time.monotonic_ns()}:st:tst",
                  "report_url": report_url}  # fmt: skip
    raw, headers = signed_py_body("invitation.completed", invitation)
    answer = check(await post(api, CALLBACK, raw, **headers), 400, 404, 413, 422)
    if answer.get("error", {}).get("code") == "not_found":  # accepted by validation
        assert _acceptable_report_url(report_url), report_url
    elif report_url and not _acceptable_report_url(report_url):
        assert answer["error"]["code"] in {"invalid_report_url", "invalid_json", "too_large"}


async def test_completed_callbacks_at_the_new_limits(api):
    """Huge integer scores are a 422, not a 500; report URLs are https, <= 2,048, no user info."""
    base = {"id": "inv_1", "status": "completed", "score": 50,
            "report_url": "https://py.example/r/1"}  # fmt: skip
    huge = {"1" + "0" * 400: "invalid_score", "-" + "9" * 401: "invalid_score",
            "9" * 4299: "invalid_score", "101": "invalid_score", "1e400": "invalid_score"}  # fmt: skip
    for digits, code in huge.items():
        reference = f"assessment:acme:nobody-{time.monotonic_ns()}:st:tst"
        raw = encode(
            {
                "event": "invitation.completed",
                "invitation": {**base, "reference": reference, "score": "\x00score\x00"},
            }
        )
        raw = raw.replace(b'"\\u0000score\\u0000"', digits.encode())  # fmt: skip
        assert digits.encode() in raw
        body = check(await post(api, CALLBACK, raw, **signed_callback(raw)), 422)
        assert body["error"]["code"] == code, digits
    urls = {
        "https://py.example/" + "r" * 2029: "not_found",  # 2,048 characters
        "https://py.example/" + "r" * 2030: "invalid_report_url",  # 2,049
        "https://py.example/" + "r" * 1_000_000: "invalid_report_url",
        "http://py.example/r/1": "invalid_report_url",
        "https://user:pass@py.example/r/1": "invalid_report_url",
        "https://user@py.example/r/1": "invalid_report_url",
        "https://py.example\\@evil.example/r": "invalid_report_url",
        "https://py.example/r/1 x": "invalid_report_url",
        "https://py.example/r@1?x=1#y": "not_found",
    }
    for url, code in urls.items():
        reference = f"assessment:acme:nobody-{time.monotonic_ns()}:st:tst"
        raw = encode({"event": "invitation.completed",
                      "invitation": {**base, "reference": reference, "report_url": url}})  # fmt: skip
        body = check(await post(api, CALLBACK, raw, **signed_callback(raw)), 404, 422)
        assert body["error"]["code"] == code, url[:80]


async def test_signed_well_formed_callbacks_reach_temporal_and_404(api):
    for event, extra in [
        ("invitation.started", {}),
        ("invitation.expired", {}),
        ("invitation.completed", {"score": 50, "report_url": "https://py.example/r/1"}),
    ]:
        invitation = {
            "id": "inv_\u202e\x07",
            "status": "started",
            "reference": f"assessment:acme:nobody-{time.monotonic_ns()}:st:tst",
            **extra,
        }
        raw, headers = build_callback(SECRETS["callback_secret"], event, invitation)
        body = check(await post(api, CALLBACK, raw, **headers), 404)
        assert body["error"]["code"] == "not_found"


async def test_completed_callback_with_a_newline_after_the_report_url_is_422(api):
    invitation = {
        "id": "inv_1",
        "status": "completed",
        "score": 90,
        "reference": "assessment:acme:o:s:t",
        "report_url": "https://py.example/r\n",
    }
    raw, headers = build_callback(SECRETS["callback_secret"], "invitation.completed", invitation)
    body = check(await post(api, CALLBACK, raw, **headers), 422)
    assert body["error"]["code"] == "invalid_report_url"


# --- the real server (uvicorn, h11) -----------------------------------------------------------


async def test_real_server_survives_the_nastiest_requests(stack: Stack):
    surrogate_body = b'{"triggeredAt": 1, "token": "\\ud800", "signature": "00", "data": {}}'
    signed_surrogate = encode(
        {
            "event": "invitation.started",
            "invitation": {"id": "\ud800", "status": "started", "reference": "assessment:a:b:c:d"},
        }
    )
    cases: list[tuple[str, bytes, dict[str, Any], set[int]]] = [
        (WEBHOOK, surrogate_body, {}, {400}),
        (WEBHOOK, b"[" * 100_000 + b"]" * 100_000, {}, {400}),
        (CALLBACK, signed_surrogate, signed_callback(signed_surrogate), {400}),
        (CALLBACK, b"{}", {"Py-Signature": "t=١٢٣,v1=é".encode()}, {401}),
        (CALLBACK, b"{}", {"Py-Signature": b"\xff\xfe\x00"[:2]}, {401}),
        ("/webhooks/lever/%E2%80%AE%00", b"{}", {}, {404}),
        ("/webhooks/lever/" + "a" * 5000, b"{}", {}, {404}),
        ("/codec/decode", b"[" * 100_000, {"Authorization": f"Bearer {ADMIN_TOKEN}"}, {400}),
    ]
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        for path, raw, headers, allowed in cases:
            response = await http.post(
                path, content=raw, headers={"Content-Type": "application/json", **headers}
            )
            check(response, *allowed)
        # Lever's "Verify Connection" still works after all that
        verify = encode(sign_lever_webhook(SECRETS["acme_token"], "candidateStageChange", {}))
        check(await http.post(WEBHOOK, content=verify), 200)


# --- unicode through the whole pipeline -------------------------------------------------------

NAME = "Zoë \u202e<script>\x07 Ω 中文 🚀"
TAGS = ("🚀 Senior 💻", "Python Basics", "naïve\u200b tag", "a:b:c", "\u202eRTL")


async def test_unicode_name_and_tags_flow_through_the_pipeline(stack: Stack):
    opp = stack.candidate(NAME, "zoe.unicode@example.com", tags=TAGS)
    attempt = await stack.move(opp, "Py Assessment")
    assert attempt.status == 202, attempt.body
    await stack.wait_tag(opp, TAG_INVITED)
    invitation = await stack.invitation(opp)
    assert invitation["candidate"] == {"name": NAME, "email": "zoe.unicode@example.com"}
    assert invitation["test_id"] == "tst_python_basics"

    await stack.py.start(invitation["id"])
    await stack.wait_tag(opp, TAG_STARTED)
    _, callback = await stack.py.complete(invitation["id"], 85)
    assert callback is not None and callback.status == 202, callback.body
    result = await stack.result(attempt.body["workflow_id"])
    assert result.status == "completed"
    [child] = result.invitations
    assert child.verdict == "pass" and child.score == 85

    tags = stack.tags(opp)
    for tag in TAGS:
        assert tags.count(tag) == 1, (tag, tags)
    assert TAG_PASS in tags and TAG_INVITED not in tags and TAG_STARTED not in tags
    assert stack.lever.opportunity(opp)["name"] == NAME

    # the operator's view of it (admin token), in clear through the API
    status = await stack.http.get(
        f"{stack.api_url}/accounts/acme/candidates/{opp}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert status.status_code == 200
    rows = status.json()["assessments"]
    assert {r["status"] for r in rows} == {"completed"}
    assert any(r["verdict"] == "pass" and r["test"] == "Python Basics" for r in rows)


def test_strategy_helpers_are_sound():
    assert encode({"a": list(_HUGE)[0]}) == b'{"a": ' + _HUGE[list(_HUGE)[0]].encode() + b"}"
    assert encode("\ud800") == b'"\\ud800"'
    assert encode("\ud800", raw_utf8=True) == b'"\xed\xa0\x80"'

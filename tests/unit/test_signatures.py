"""Lever webhook and Py callback signatures (SPEC section 3), checked against an independent HMAC."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pylever.edge.signatures import (
    PY_SIGNATURE_TOLERANCE_SECONDS,
    PySignatureError,
    lever_signature,
    py_signature_header,
    sign_lever_webhook,
    verify_lever_webhook,
    verify_py_signature,
)

LEVER_SAMPLE = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "lever-samples"
    / "webhook-candidateStageChange.docs.json"
)

STAGE_TOKEN = "stage-signature-token-for-tests"
ARCHIVE_TOKEN = "archive-signature-token-for-tests"
TOKEN = "be58f711f349c7780e4579cd7c63341ac6f881e4dccc3154"  # 48 chars, like Lever's
TRIGGERED_AT = 1431454330072


def independent_lever_hmac(key: str, token: str, triggered_at: int) -> str:
    return hmac.new(
        key.encode("utf-8"), (token + str(triggered_at)).encode("utf-8"), hashlib.sha256
    ).hexdigest()


def independent_py_hmac(secret: str, t: int, body: bytes) -> str:
    return hmac.new(
        secret.encode("utf-8"), str(t).encode() + b"." + body, hashlib.sha256
    ).hexdigest()


def signed_body(key: str = STAGE_TOKEN, **overrides) -> dict:
    body = sign_lever_webhook(
        key,
        "candidateStageChange",
        {"opportunityId": "opp-1", "toStageId": "stage-1"},
        triggered_at=TRIGGERED_AT,
        token=TOKEN,
    )
    body.update(overrides)
    return body


# --- Lever ----------------------------------------------------------------------------


def test_lever_signature_matches_independent_hmac():
    expected = independent_lever_hmac(STAGE_TOKEN, TOKEN, TRIGGERED_AT)
    assert lever_signature(STAGE_TOKEN, TOKEN, TRIGGERED_AT) == expected
    assert lever_signature(STAGE_TOKEN, TOKEN, str(TRIGGERED_AT)) == expected
    assert len(expected) == 64


@given(
    key=st.text(min_size=1, max_size=60),
    token=st.text(alphabet="0123456789abcdef", min_size=48, max_size=48),
    triggered_at=st.integers(min_value=0, max_value=2**53),
)
def test_lever_signature_property(key, token, triggered_at):
    assert lever_signature(key, token, triggered_at) == independent_lever_hmac(
        key, token, triggered_at
    )
    body = sign_lever_webhook(
        key, "candidateStageChange", {}, triggered_at=triggered_at, token=token
    )
    assert verify_lever_webhook(body, [key])


def test_sign_lever_webhook_shape():
    before = int(time.time() * 1000)
    body = sign_lever_webhook(STAGE_TOKEN, "candidateStageChange", {"opportunityId": "opp-1"})
    after = int(time.time() * 1000)
    assert set(body) == {"triggeredAt", "event", "data", "token", "signature"}
    assert body["event"] == "candidateStageChange"
    assert body["data"] == {"opportunityId": "opp-1"}
    assert before <= body["triggeredAt"] <= after
    assert len(body["token"]) == 48
    assert body["signature"] == independent_lever_hmac(
        STAGE_TOKEN, body["token"], body["triggeredAt"]
    )
    json.dumps(body)  # serialisable as Lever sends it


def test_verify_accepts_the_right_token():
    assert verify_lever_webhook(signed_body(), [STAGE_TOKEN]) is True


def test_verify_accepts_any_of_several_tokens():
    tokens = ["old-rotated-token", STAGE_TOKEN, ARCHIVE_TOKEN]
    assert verify_lever_webhook(signed_body(STAGE_TOKEN), tokens)
    assert verify_lever_webhook(signed_body(ARCHIVE_TOKEN), tokens)
    assert verify_lever_webhook(signed_body(ARCHIVE_TOKEN), iter(tokens))  # any iterable


def test_verify_rotation_new_token_prepended():
    old, new = "token-v1", "token-v2"
    assert verify_lever_webhook(signed_body(old), [new, old])
    assert verify_lever_webhook(signed_body(new), [new, old])
    assert not verify_lever_webhook(signed_body(old), [new])


def test_verify_rejects_wrong_token_and_no_tokens():
    assert verify_lever_webhook(signed_body(), ["some-other-token"]) is False
    assert verify_lever_webhook(signed_body(), []) is False


def test_verify_rejects_tampered_triggered_at():
    assert not verify_lever_webhook(signed_body(triggeredAt=TRIGGERED_AT + 1), [STAGE_TOKEN])
    assert not verify_lever_webhook(signed_body(triggeredAt=f"{TRIGGERED_AT}0"), [STAGE_TOKEN])


def test_verify_accepts_triggered_at_as_string_with_same_digits():
    assert verify_lever_webhook(signed_body(triggeredAt=str(TRIGGERED_AT)), [STAGE_TOKEN])


def test_verify_rejects_tampered_token():
    tampered = TOKEN[:-1] + ("5" if TOKEN[-1] != "5" else "6")
    assert not verify_lever_webhook(signed_body(token=tampered), [STAGE_TOKEN])


def test_verify_rejects_tampered_signature():
    body = signed_body()
    sig = body["signature"]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert not verify_lever_webhook({**body, "signature": flipped}, [STAGE_TOKEN])
    assert not verify_lever_webhook({**body, "signature": sig.upper()}, [STAGE_TOKEN])
    assert not verify_lever_webhook({**body, "signature": sig[:-2]}, [STAGE_TOKEN])
    assert not verify_lever_webhook({**body, "signature": ""}, [STAGE_TOKEN])


def test_signature_does_not_cover_data():
    """Lever's signature covers token + triggeredAt only (why the workflow re-reads Lever)."""
    body = signed_body()
    body["data"] = {"opportunityId": "someone-else", "toStageId": "stage-2"}
    assert verify_lever_webhook(body, [STAGE_TOKEN])


@pytest.mark.parametrize("bad", [None, 123, b"abc", ["x"], {"a": 1}, "ünïcode-signature"])
def test_verify_rejects_non_string_or_non_ascii_signature(bad):
    assert verify_lever_webhook(signed_body(signature=bad), [STAGE_TOKEN]) is False


@pytest.mark.parametrize("field", ["token", "signature", "triggeredAt"])
def test_verify_rejects_missing_fields(field):
    body = signed_body()
    del body[field]
    assert verify_lever_webhook(body, [STAGE_TOKEN]) is False


@pytest.mark.parametrize("bad", [True, False, None, 1431454330072.0, [TRIGGERED_AT], {"t": 1}])
def test_verify_rejects_bad_triggered_at_types(bad):
    assert verify_lever_webhook(signed_body(triggeredAt=bad), [STAGE_TOKEN]) is False


def test_verify_rejects_bool_triggered_at_even_when_signed_as_its_digits():
    # str(True) would be "True"; a body that signs "True"/"1" must still be refused
    key = STAGE_TOKEN
    for value, text in ((True, "True"), (True, "1"), (False, "False"), (False, "0")):
        body = {
            "token": TOKEN,
            "triggeredAt": value,
            "signature": hmac.new(
                key.encode(), (TOKEN + text).encode(), hashlib.sha256
            ).hexdigest(),
        }
        assert verify_lever_webhook(body, [key]) is False


@pytest.mark.parametrize("bad_token", [None, 123, ["x"]])
def test_verify_rejects_non_string_token(bad_token):
    assert verify_lever_webhook(signed_body(token=bad_token), [STAGE_TOKEN]) is False


def test_lever_published_example():
    sample = json.loads(LEVER_SAMPLE.read_text(encoding="utf-8"))
    # Signed by Lever with a key we do not have: a made-up key must not verify it.
    assert verify_lever_webhook(sample, ["made-up-signature-token"]) is False
    assert verify_lever_webhook(sample, [STAGE_TOKEN, ARCHIVE_TOKEN]) is False

    # Re-signing its token + triggeredAt with a test key gives the independent HMAC, and verifies.
    test_key = "test-key-for-the-published-sample"
    expected = independent_lever_hmac(test_key, sample["token"], sample["triggeredAt"])
    assert lever_signature(test_key, sample["token"], sample["triggeredAt"]) == expected
    assert verify_lever_webhook({**sample, "signature": expected}, ["other", test_key]) is True
    # The published signature has the same shape as ours.
    assert len(sample["signature"]) == len(expected) == 64
    assert int(sample["signature"], 16) >= 0


# --- Py -----------------------------------------------------------------------------

SECRET = "py-callback-secret-for-tests"
BODY = json.dumps(
    {"event": "invitation.completed", "invitation": {"id": "inv_1", "score": 91}}
).encode()
NOW = 1_760_000_000


def test_py_header_format_matches_independent_hmac():
    header = py_signature_header(SECRET, BODY, timestamp=NOW)
    assert header == f"t={NOW},v1={independent_py_hmac(SECRET, NOW, BODY)}"


def test_py_round_trip():
    header = py_signature_header(SECRET, BODY, timestamp=NOW)
    assert verify_py_signature(header, BODY, SECRET, now=NOW) is None


def test_py_round_trip_with_real_clock():
    verify_py_signature(py_signature_header(SECRET, BODY), BODY, SECRET)


def test_py_independently_built_header_verifies():
    header = f"t={NOW}, v1={independent_py_hmac(SECRET, NOW, BODY)}"  # a space after the comma
    verify_py_signature(header, BODY, SECRET, now=NOW)


@pytest.mark.parametrize(
    "age", [PY_SIGNATURE_TOLERANCE_SECONDS, -PY_SIGNATURE_TOLERANCE_SECONDS, 0, 1, -1]
)
def test_py_within_tolerance_accepted(age):
    header = py_signature_header(SECRET, BODY, timestamp=NOW - age)
    verify_py_signature(header, BODY, SECRET, now=NOW)


@pytest.mark.parametrize("age", [301, 3600, -301, -3600])
def test_py_stale_or_future_rejected(age):
    assert PY_SIGNATURE_TOLERANCE_SECONDS == 300
    header = py_signature_header(SECRET, BODY, timestamp=NOW - age)
    with pytest.raises(PySignatureError, match="stale"):
        verify_py_signature(header, BODY, SECRET, now=NOW)


def test_py_stale_check_uses_real_clock_by_default():
    header = py_signature_header(SECRET, BODY, timestamp=int(time.time()) - 301)
    with pytest.raises(PySignatureError, match="stale"):
        verify_py_signature(header, BODY, SECRET)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        f"t=abc,v1={'0' * 64}",
        "v1=only",
        f"v1={'0' * 64}",
        "t=1",
        f"t={NOW}",
        f"t={NOW},t={NOW},v1=GOOD",
        f"t={NOW},t={NOW + 1},v1=GOOD",
        "garbage",
        f"t={NOW};v1=GOOD",
        f"t=-{NOW},v1=GOOD",
        f"t={NOW}.5,v1=GOOD",
        "t=,v1=GOOD",
        "t=١٧٦٠٠٠٠٠٠٠,v1=GOOD",  # non-ASCII digits
        "t=1" + "0" * 20 + ",v1=GOOD",
        ",",
    ],
)
def test_py_malformed_headers_rejected(header):
    good = independent_py_hmac(SECRET, NOW, BODY)
    if header is not None:
        header = header.replace("GOOD", good)
    with pytest.raises(PySignatureError):
        verify_py_signature(header, BODY, SECRET, now=NOW)


def test_py_duplicate_t_rejected_even_if_signature_is_right():
    good = independent_py_hmac(SECRET, NOW, BODY)
    with pytest.raises(PySignatureError, match="malformed"):
        verify_py_signature(f"t={NOW},t={NOW},v1={good}", BODY, SECRET, now=NOW)


def test_py_tampered_body_rejected():
    header = py_signature_header(SECRET, BODY, timestamp=NOW)
    with pytest.raises(PySignatureError, match="does not match"):
        verify_py_signature(header, BODY.replace(b"91", b"99"), SECRET, now=NOW)
    with pytest.raises(PySignatureError):
        verify_py_signature(header, BODY + b" ", SECRET, now=NOW)


def test_py_wrong_secret_rejected():
    header = py_signature_header("another-secret", BODY, timestamp=NOW)
    with pytest.raises(PySignatureError, match="does not match"):
        verify_py_signature(header, BODY, SECRET, now=NOW)


def test_py_tampered_timestamp_rejected():
    good = independent_py_hmac(SECRET, NOW, BODY)
    with pytest.raises(PySignatureError, match="does not match"):
        verify_py_signature(f"t={NOW + 1},v1={good}", BODY, SECRET, now=NOW)


def test_py_multiple_v1_one_right_accepted():
    good = independent_py_hmac(SECRET, NOW, BODY)
    wrong = independent_py_hmac("rotated-out-secret", NOW, BODY)
    verify_py_signature(f"t={NOW},v1={wrong},v1={good}", BODY, SECRET, now=NOW)
    verify_py_signature(f"t={NOW},v1={good},v1={wrong}", BODY, SECRET, now=NOW)
    verify_py_signature(f"t={NOW},v1=ünïcode,v1={good}", BODY, SECRET, now=NOW)
    # unknown schemes are ignored
    verify_py_signature(f"t={NOW},v0=whatever,v1={good}", BODY, SECRET, now=NOW)


def test_py_multiple_v1_none_right_rejected():
    wrong = independent_py_hmac("rotated-out-secret", NOW, BODY)
    with pytest.raises(PySignatureError):
        verify_py_signature(f"t={NOW},v1={wrong},v1={'0' * 64},v1=", BODY, SECRET, now=NOW)


def test_py_error_never_echoes_secret_or_signature():
    good = independent_py_hmac(SECRET, NOW, BODY)
    for header in (f"t={NOW + 1},v1={good}", f"t={NOW - 1000},v1={good}", f"t=x,v1={good}"):
        with pytest.raises(PySignatureError) as info:
            verify_py_signature(header, BODY, SECRET, now=NOW)
        assert SECRET not in str(info.value)
        assert good not in str(info.value)

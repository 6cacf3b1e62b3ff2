"""AES-GCM payload codec, key parsing, and the remote codec HTTP endpoints."""

from __future__ import annotations

import base64
import json

import httpx
import pydantic
import pytest
from google.protobuf import json_format
from starlette.applications import Starlette
from temporalio.api.common.v1 import Payload
from temporalio.converter import DefaultFailureConverterWithEncodedAttributes

from pylever.edge.codec_server import codec_routes
from pylever.temporal.codec import (
    ENCODING,
    KEY_ID_METADATA,
    PAYLOAD_KEYS_ENV,
    AesGcmCodec,
    CodecError,
    PayloadKeyError,
    codec_from_env,
    data_converter,
    generate_key,
    key_id,
    parse_keys,
)

EMAIL = "ada.lovelace@example.com"
NAME = "Ada Lovelace"
KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
ADMIN_TOKEN = "admin-token-for-tests"
UI_ORIGIN = "http://localhost:8080"


def json_payload(obj: object) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(obj).encode())


def secret_forms(key: bytes) -> list[str]:
    """Ways a key could leak into a message."""
    return [key.hex(), base64.b64encode(key).decode(), repr(key)]


# --- the codec ---------------------------------------------------------------


async def test_round_trip_restores_payloads_exactly():
    codec = AesGcmCodec([KEY_A])
    originals = [
        json_payload({"name": NAME, "email": EMAIL}),
        Payload(metadata={"encoding": b"binary/null"}),
        Payload(
            metadata={"encoding": b"binary/plain", "x-extra": b"\x00\xff"}, data=b"\x01" * 5000
        ),
    ]
    encoded = await codec.encode(originals)
    assert len(encoded) == len(originals)
    assert await codec.decode(encoded) == originals


async def test_encrypted_payload_shape_and_no_plaintext():
    codec = AesGcmCodec([KEY_A])
    original = json_payload({"name": NAME, "email": EMAIL})
    [encrypted] = await codec.encode([original])

    assert encrypted.metadata["encoding"] == ENCODING
    assert encrypted.metadata[KEY_ID_METADATA] == key_id(KEY_A).encode()
    assert set(encrypted.metadata) == {"encoding", KEY_ID_METADATA}
    # nonce (12) + ciphertext of the serialized payload + GCM tag (16)
    assert len(encrypted.data) == 12 + len(original.SerializeToString()) + 16
    wire = encrypted.SerializeToString()
    for clear in (EMAIL, NAME, "ada.lovelace", "json/plain"):
        assert clear.encode() not in wire


async def test_nonce_is_random_per_payload():
    codec = AesGcmCodec([KEY_A])
    payload = json_payload({"email": EMAIL})
    first, second = await codec.encode([payload, payload])
    assert first.data != second.data
    assert first.data[:12] != second.data[:12]


def test_key_id_is_short_stable_fingerprint_not_the_key():
    kid = key_id(KEY_A)
    assert kid == key_id(bytes(KEY_A))
    assert len(kid) == 8 and all(c in "0123456789abcdef" for c in kid)
    assert kid != key_id(KEY_B)
    for form in secret_forms(KEY_A):
        assert kid not in form  # a hash, not a piece of the key
    assert AesGcmCodec([KEY_A]).key_id == kid


async def test_key_rotation_by_prepending():
    old = AesGcmCodec([KEY_A])
    old_ciphertext = await old.encode([json_payload({"email": EMAIL})])

    rotated = AesGcmCodec([KEY_B, KEY_A])
    assert rotated.key_id == key_id(KEY_B)
    assert rotated.key_ids == (key_id(KEY_B), key_id(KEY_A))
    # old history still reads
    assert await rotated.decode(old_ciphertext) == [json_payload({"email": EMAIL})]
    # new payloads use the new key
    [fresh] = await rotated.encode([json_payload({"email": EMAIL})])
    assert fresh.metadata[KEY_ID_METADATA] == key_id(KEY_B).encode()
    # ... which the old process cannot read: an error naming the key id
    with pytest.raises(CodecError, match=key_id(KEY_B)):
        await old.decode([fresh])


async def test_unknown_key_id_error_names_id_without_key_material():
    writer = AesGcmCodec([KEY_B])
    reader = AesGcmCodec([KEY_A])
    encrypted = await writer.encode([json_payload({"email": EMAIL})])
    with pytest.raises(CodecError) as info:
        await reader.decode(encrypted)
    message = str(info.value)
    assert key_id(KEY_B) in message
    assert "unknown key id" in message
    for key in (KEY_A, KEY_B):
        for form in secret_forms(key):
            assert form not in message
    assert EMAIL not in message


async def test_tampered_ciphertext_and_moved_key_id_fail_authentication():
    codec = AesGcmCodec([KEY_A, KEY_B])
    [encrypted] = await codec.encode([json_payload({"email": EMAIL})])

    flipped = Payload()
    flipped.CopyFrom(encrypted)
    flipped.data = encrypted.data[:-1] + bytes([encrypted.data[-1] ^ 1])
    with pytest.raises(CodecError, match="failed authentication"):
        await codec.decode([flipped])

    # the key id is associated data: relabelling it does not decrypt
    moved = Payload()
    moved.CopyFrom(encrypted)
    moved.metadata[KEY_ID_METADATA] = key_id(KEY_B).encode()
    with pytest.raises(CodecError):
        await codec.decode([moved])

    short = Payload(metadata=dict(encrypted.metadata), data=b"\x00" * 5)
    with pytest.raises(CodecError, match="too short"):
        await codec.decode([short])

    no_id = Payload(metadata={"encoding": ENCODING}, data=encrypted.data)
    with pytest.raises(CodecError, match=KEY_ID_METADATA):
        await codec.decode([no_id])


async def test_plain_payloads_pass_through_decode():
    codec = AesGcmCodec([KEY_A])
    plain = [
        json_payload({"email": EMAIL}),
        Payload(metadata={"encoding": b"binary/null"}),
        Payload(data=b"no metadata at all"),
    ]
    assert await codec.decode(plain) == plain
    # mixed histories: some encrypted, some not
    [encrypted] = await codec.encode([plain[0]])
    assert await codec.decode([encrypted, plain[1]]) == [plain[0], plain[1]]


def test_constructor_rejects_bad_keys():
    with pytest.raises(PayloadKeyError):
        AesGcmCodec([])
    with pytest.raises(PayloadKeyError, match="key 2 of 2"):
        AesGcmCodec([KEY_A, b"short"])
    with pytest.raises(TypeError):
        AesGcmCodec(KEY_A)  # type: ignore[arg-type]
    # the same key twice is harmless
    assert AesGcmCodec([KEY_A, KEY_A]).key_ids == (key_id(KEY_A),)


# --- keys from the environment -------------------------------------------------


def test_generate_key_is_base64_of_32_bytes():
    key = generate_key()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert generate_key() != key
    assert parse_keys(key) == [base64.b64decode(key)]


def test_parse_keys_accepts_comma_separated_with_spaces():
    a, b = base64.b64encode(KEY_A).decode(), base64.b64encode(KEY_B).decode()
    assert parse_keys(f"{a}, {b}") == [KEY_A, KEY_B]
    assert parse_keys(f" {a} ") == [KEY_A]


@pytest.mark.parametrize(
    ("value", "position", "problem"),
    [
        ("{good},not*base64!", "entry 2 of 2", "not valid standard base64"),
        ("{good},{good},{short}", "entry 3 of 3", "decodes to 16 bytes"),
        ("{long}", "entry 1 of 1", "decodes to 48 bytes"),
        ("{good},,{good}", "entry 2 of 3", "empty"),
        ("{good},", "entry 2 of 2", "empty"),
        ("{urlsafe}", "entry 1 of 1", "not valid standard base64"),
    ],
)
def test_parse_keys_errors_name_position_and_never_echo(value, position, problem):
    good = base64.b64encode(KEY_A).decode()
    short = base64.b64encode(b"s" * 16).decode()
    long = base64.b64encode(b"L" * 48).decode()
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode()  # has - and _
    value = value.format(good=good, short=short, long=long, urlsafe=urlsafe)
    with pytest.raises(PayloadKeyError) as info:
        parse_keys(value)
    message = str(info.value)
    assert position in message
    assert problem in message
    assert PAYLOAD_KEYS_ENV in message
    for part in value.split(","):
        if part.strip():
            assert part.strip() not in message


@pytest.mark.parametrize("value", ["", "   ", ","])
def test_parse_keys_empty(value):
    with pytest.raises(PayloadKeyError, match="empty"):
        parse_keys(value)


def test_codec_from_env():
    a, b = base64.b64encode(KEY_A).decode(), base64.b64encode(KEY_B).decode()
    codec = codec_from_env({PAYLOAD_KEYS_ENV: f"{b},{a}"})
    assert codec.key_ids == (key_id(KEY_B), key_id(KEY_A))
    for environ in ({}, {PAYLOAD_KEYS_ENV: ""}, {PAYLOAD_KEYS_ENV: "  "}):
        with pytest.raises(PayloadKeyError, match=f"{PAYLOAD_KEYS_ENV} is not set"):
            codec_from_env(environ)
    with pytest.raises(PayloadKeyError, match="entry 1 of 1"):
        codec_from_env({PAYLOAD_KEYS_ENV: "c2hvcnQ="})


# --- through Temporal's data converter ----------------------------------------------


class Candidate(pydantic.BaseModel):
    name: str
    email: str
    opportunity_id: str
    score: float | None = None


async def test_data_converter_end_to_end_with_pydantic_model():
    codec = AesGcmCodec([KEY_A])
    converter = data_converter(codec)
    assert converter.payload_codec is codec
    value = Candidate(name=NAME, email=EMAIL, opportunity_id="opp-1", score=87.5)

    payloads = await converter.encode([value, "plain string", 42])
    assert all(p.metadata["encoding"] == ENCODING for p in payloads)
    assert EMAIL.encode() not in b"".join(p.SerializeToString() for p in payloads)

    decoded = await converter.decode(payloads, [Candidate, str, int])
    assert decoded == [value, "plain string", 42]

    # without a codec the same converter reads nothing encrypted, and writes plain JSON
    plain = data_converter(None)
    assert plain.payload_codec is None
    [clear] = await plain.encode([value])
    assert clear.metadata["encoding"] == b"json/plain"
    # histories written before the codec was enabled still read with it
    assert await converter.decode([clear], [Candidate]) == [value]


async def test_data_converter_can_encode_failure_messages():
    codec = AesGcmCodec([KEY_A])
    # on by default with a codec (failure messages can echo candidate data), off without one
    assert isinstance(
        data_converter(codec).failure_converter, DefaultFailureConverterWithEncodedAttributes
    )
    assert not isinstance(
        data_converter(None).failure_converter, DefaultFailureConverterWithEncodedAttributes
    )
    assert not isinstance(
        data_converter(codec, encode_failure_attributes=False).failure_converter,
        DefaultFailureConverterWithEncodedAttributes,
    )
    converter = data_converter(codec, encode_failure_attributes=True)
    assert isinstance(converter.failure_converter, DefaultFailureConverterWithEncodedAttributes)
    assert converter.payload_codec is codec


# --- the HTTP codec endpoints -----------------------------------------------------------


@pytest.fixture
def codec() -> AesGcmCodec:
    return AesGcmCodec([KEY_A])


@pytest.fixture
async def client(codec):
    app = Starlette(routes=codec_routes(codec, admin_token=ADMIN_TOKEN, cors_origins=[UI_ORIGIN]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        yield http


AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def as_json(payloads: list[Payload]) -> dict:
    return {"payloads": [json_format.MessageToDict(p) for p in payloads]}


def from_json(body: dict) -> list[Payload]:
    return [json_format.ParseDict(p, Payload()) for p in body["payloads"]]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": "Bearer "},
        {"Authorization": ADMIN_TOKEN},
    ],
)
@pytest.mark.parametrize("operation", ["decode", "encode"])
async def test_codec_endpoints_require_the_admin_token(client, headers, operation):
    response = await client.post(f"/codec/{operation}", json={"payloads": []}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert ADMIN_TOKEN not in response.text


async def test_decode_of_encode_returns_the_original_payloads(client, codec):
    originals = [
        json_payload({"name": NAME, "email": EMAIL}),
        Payload(metadata={"encoding": b"binary/null"}),
    ]
    headers = {**AUTH, "X-Namespace": "default"}

    encoded = await client.post("/codec/encode", json=as_json(originals), headers=headers)
    assert encoded.status_code == 200
    assert encoded.headers["content-type"].startswith("application/json")
    assert EMAIL not in encoded.text
    encrypted = from_json(encoded.json())
    assert [p.metadata["encoding"] for p in encrypted] == [ENCODING, ENCODING]
    # what the endpoint encrypts, the worker's codec decrypts
    assert await codec.decode(encrypted) == originals

    decoded = await client.post("/codec/decode", json=encoded.json(), headers=headers)
    assert decoded.status_code == 200
    assert from_json(decoded.json()) == originals
    assert decoded.json() == as_json(originals)


async def test_decode_of_worker_ciphertext_and_plain_payloads(client, codec):
    originals = [json_payload({"email": EMAIL}), json_payload("already plain")]
    mixed = [*(await codec.encode(originals[:1])), originals[1]]
    response = await client.post("/codec/decode", json=as_json(mixed), headers=AUTH)
    assert response.status_code == 200
    assert from_json(response.json()) == originals


async def test_empty_payload_list(client):
    response = await client.post("/codec/decode", json={"payloads": []}, headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"payloads": []}


async def test_decode_with_unknown_key_is_a_400_naming_the_key_id(client):
    foreign = await AesGcmCodec([KEY_B]).encode([json_payload({"email": EMAIL})])
    response = await client.post("/codec/decode", json=as_json(foreign), headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "decode_failed"
    assert key_id(KEY_B) in error["message"]
    for key in (KEY_A, KEY_B):
        for form in secret_forms(key):
            assert form not in response.text


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b'{"payloads": "x"}',
        b'{"payloads": [1]}',
        b'{"nope": []}',
        b'{"payloads": [{"data": "***not base64***"}]}',
        b'{"payloads": [{"metadata": "x"}]}',
        b'{"payloads": [{"metadata": {"encoding": 5}}]}',
        b"",
    ],
)
async def test_malformed_bodies_are_400(client, content):
    for operation in ("decode", "encode"):
        response = await client.post(
            f"/codec/{operation}",
            content=content,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert response.status_code == 400, (operation, content, response.text)
        assert response.json()["error"]["code"] == "bad_request"
        assert "***not base64***" not in response.text


async def test_only_post_is_served(client):
    response = await client.get("/codec/decode", headers=AUTH)
    assert response.status_code == 405
    response = await client.post("/codec/other", json={"payloads": []}, headers=AUTH)
    assert response.status_code == 404


async def test_cors_preflight_from_the_ui_origin(client):
    response = await client.options(
        "/codec/decode",
        headers={
            "Origin": UI_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-namespace",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == UI_ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "x-namespace"} <= allowed


async def test_cors_preflight_from_another_origin_is_refused(client):
    response = await client.options(
        "/codec/decode",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_cors_headers_on_actual_responses(client):
    ok = await client.post(
        "/codec/encode", json={"payloads": []}, headers={**AUTH, "Origin": UI_ORIGIN}
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == UI_ORIGIN
    # a 401 is readable by the UI too, so it can tell the operator
    denied = await client.post(
        "/codec/encode", json={"payloads": []}, headers={"Origin": UI_ORIGIN}
    )
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == UI_ORIGIN
    other = await client.post(
        "/codec/encode", json={"payloads": []}, headers={**AUTH, "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers


def test_codec_routes_refuse_an_empty_token(codec):
    with pytest.raises(ValueError):
        codec_routes(codec, admin_token="", cors_origins=[UI_ORIGIN])
    with pytest.raises(TypeError):
        codec_routes(codec, admin_token=ADMIN_TOKEN, cors_origins=UI_ORIGIN)


async def test_oversized_body_is_413(client, monkeypatch):
    import pylever.edge.codec_server as codec_server

    monkeypatch.setattr(codec_server, "MAX_BODY_BYTES", 100)
    body = as_json([json_payload({"email": EMAIL, "pad": "x" * 200})])
    response = await client.post("/codec/encode", json=body, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_bodies_over_4_mib_are_413_declared_or_streamed(client):
    """Issue 11: the limit was 16 MiB, and a 16 MiB encode held the event loop for 7.6 s."""
    import pylever.edge.codec_server as codec_server

    assert codec_server.MAX_BODY_BYTES == 4 * 1024 * 1024
    over = b" " * (4 * 1024 * 1024 + 1)

    async def chunks():
        for start in range(0, len(over), 256 * 1024):
            yield over[start : start + 256 * 1024]

    for path in ("/codec/encode", "/codec/decode"):
        for content in (over, chunks()):  # with Content-Length, and chunked without it
            response = await client.post(path, content=content, headers=AUTH)
            assert response.status_code == 413, (path, response.text)
            assert response.json()["error"]["code"] == "payload_too_large"
    # at the limit it is read (and then is not JSON)
    response = await client.post("/codec/encode", content=over[:-1], headers=AUTH)
    assert response.status_code == 400


async def test_a_large_encode_runs_off_the_event_loop(client):
    """While 4 MiB of small payloads are encoded, the loop keeps turning."""
    import asyncio
    import gc
    import time

    one = json_format.MessageToDict(Payload(metadata={"encoding": b"json/plain"}, data=b"x" * 60))
    body = json.dumps({"payloads": [one] * 29_900}).encode()
    assert len(body) <= 4 * 1024 * 1024
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    # A full collection of a heap the whole suite has grown stalls any loop for a few
    # hundred ms: the test is about the encode, so the collector waits until it is done.
    gc.collect()
    gc.disable()
    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        response = await client.post("/codec/encode", content=body, headers=AUTH)
    finally:
        ticking.cancel()
        gc.enable()
    took = time.perf_counter() - started
    assert response.status_code == 200
    assert len(response.json()["payloads"]) == 29_900
    assert took > 0.2  # long enough for the gaps to tell
    # the longest stall: one C call (json.loads of the body), never the whole encode
    assert gaps, f"the event loop did not turn once in {took:.2f} s"
    assert max(gaps) < min(0.15, took / 2), (took, sorted(gaps)[-3:])


async def test_a_failing_foreign_codec_is_a_400_without_its_message():
    class Broken(AesGcmCodec):
        async def decode(self, payloads):
            raise RuntimeError(f"cannot read {EMAIL}")

    app = Starlette(
        routes=codec_routes(Broken([KEY_A]), admin_token=ADMIN_TOKEN, cors_origins=[UI_ORIGIN])
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api.test"
    ) as http:
        response = await http.post("/codec/decode", json={"payloads": []}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "decode_failed"
    assert "RuntimeError" in response.text and EMAIL not in response.text

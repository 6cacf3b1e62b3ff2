"""AES-GCM payload codec: candidate names and emails never reach Temporal in clear text.

Every payload the SDK sends to the server (workflow and activity inputs and
results, signals, queries, memos, failures' details, user metadata such as
summaries) passes through :class:`AesGcmCodec`. An encrypted payload is::

    metadata: encoding = b"binary/encrypted", encryption-key-id = <key id>
    data:     12-byte random nonce + AES-GCM(serialized original Payload)

with the key id as associated data, so a payload cannot be moved to another
key id without failing authentication. The key id is a short fingerprint of
the key (first 8 hex digits of its SHA-256), never the key itself.

Keys come from ``PYLEVER_PAYLOAD_KEYS``: comma-separated standard base64, each
32 bytes. The first key encrypts, every key decrypts, so a key is rotated by
prepending the new one and dropping the old one only once no retained history
uses it. Payloads that were never encrypted are passed through ``decode``
untouched, so histories written before the codec was enabled still read.

Make a key: ``python -c "from pylever.temporal.codec import generate_key; print(generate_key())"``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

__all__ = [
    "ENCODING",
    "KEY_ID_METADATA",
    "KEY_SIZE",
    "NONCE_SIZE",
    "PAYLOAD_KEYS_ENV",
    "AesGcmCodec",
    "CodecError",
    "PayloadKeyError",
    "codec_from_env",
    "data_converter",
    "generate_key",
    "key_id",
    "parse_keys",
]

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
KEY_SIZE = 32
NONCE_SIZE = 12
PAYLOAD_KEYS_ENV = "PYLEVER_PAYLOAD_KEYS"


class CodecError(ValueError):
    """An encrypted payload cannot be decrypted (unknown key id, tampering, bad shape)."""


class PayloadKeyError(ValueError):
    """A payload key setting is missing or malformed. The message never contains key material."""


def key_id(key: bytes) -> str:
    """Stable short fingerprint of a key: the first 8 hex digits of SHA-256(key)."""
    return hashlib.sha256(key).hexdigest()[:8]


def generate_key() -> str:
    """A new random key, as standard base64 of 32 bytes (one entry of PYLEVER_PAYLOAD_KEYS)."""
    return base64.b64encode(AESGCM.generate_key(bit_length=KEY_SIZE * 8)).decode("ascii")


class AesGcmCodec(PayloadCodec):
    """Encrypts every payload with the first key; decrypts with whichever key the payload names."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if isinstance(keys, bytes | bytearray):
            raise TypeError("keys must be a sequence of keys, not a single bytes value")
        if not keys:
            raise PayloadKeyError("at least one payload key is required")
        ciphers: dict[str, AESGCM] = {}
        fingerprints: dict[str, bytes] = {}
        for position, key in enumerate(keys, start=1):
            if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
                size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
                raise PayloadKeyError(
                    f"payload key {position} of {len(keys)} must be {KEY_SIZE} bytes, got {size}"
                )
            kid = key_id(bytes(key))
            if kid in fingerprints:
                if fingerprints[kid] != bytes(key):  # pragma: no cover - 2^-32 odds
                    raise PayloadKeyError(
                        f"payload key {position} of {len(keys)} has the same key id {kid} "
                        "as an earlier, different key; generate another key"
                    )
                continue  # the same key listed twice is harmless
            fingerprints[kid] = bytes(key)
            ciphers[kid] = AESGCM(bytes(key))
        self._ciphers = ciphers
        self._encrypt_id = key_id(bytes(keys[0]))

    @property
    def key_id(self) -> str:
        """Key id of the encrypting (first) key."""
        return self._encrypt_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Key ids of every key that can decrypt, encrypting key first."""
        return tuple(self._ciphers)

    def encrypt(self, payload: Payload) -> Payload:
        kid = self._encrypt_id
        nonce = os.urandom(NONCE_SIZE)
        ciphertext = self._ciphers[kid].encrypt(nonce, payload.SerializeToString(), kid.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: kid.encode()},
            data=nonce + ciphertext,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """Decrypt one payload; a payload that is not ``binary/encrypted`` is returned as is."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        raw_id = payload.metadata.get(KEY_ID_METADATA)
        if not raw_id:
            raise CodecError(f"encrypted payload has no {KEY_ID_METADATA} metadata")
        kid = raw_id.decode("utf-8", errors="replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            known = ", ".join(self._ciphers)
            raise CodecError(
                f"payload was encrypted with unknown key id {kid!r} (this process has key ids: "
                f"{known}); add that key to {PAYLOAD_KEYS_ENV}"
            )
        data = payload.data
        if len(data) <= NONCE_SIZE:
            raise CodecError(f"encrypted payload with key id {kid!r} is too short")
        try:
            plaintext = cipher.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], kid.encode())
        except InvalidTag:
            raise CodecError(
                f"encrypted payload with key id {kid!r} failed authentication "
                "(corrupted, tampered with, or a different key with the same id)"
            ) from None
        original = Payload()
        try:
            original.ParseFromString(plaintext)
        except Exception as exc:  # protobuf DecodeError
            raise CodecError(
                f"decrypted payload with key id {kid!r} is not a Payload: {type(exc).__name__}"
            ) from None
        return original

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]


def parse_keys(value: str) -> list[bytes]:
    """Parse ``PYLEVER_PAYLOAD_KEYS``: comma-separated standard base64, each 32 bytes.

    Errors name the 1-based position of the bad entry and never repeat the value.
    """
    if value is None or not value.strip():
        raise PayloadKeyError(f"{PAYLOAD_KEYS_ENV} is empty: give at least one base64 key")
    parts = [part.strip() for part in value.split(",")]
    total = len(parts)
    keys: list[bytes] = []
    for position, part in enumerate(parts, start=1):
        where = f"{PAYLOAD_KEYS_ENV} entry {position} of {total}"
        if not part:
            raise PayloadKeyError(f"{where} is empty (stray comma?)")
        try:
            key = base64.b64decode(part.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise PayloadKeyError(f"{where} is not valid standard base64") from None
        if len(key) != KEY_SIZE:
            raise PayloadKeyError(
                f"{where} decodes to {len(key)} bytes; an AES-256 key must be {KEY_SIZE} bytes"
            )
        keys.append(key)
    return keys


def codec_from_env(environ: Mapping[str, str] = os.environ) -> AesGcmCodec:
    """Build the codec from ``PYLEVER_PAYLOAD_KEYS``; a missing or bad value raises PayloadKeyError."""
    value = environ.get(PAYLOAD_KEYS_ENV, "")
    if not value.strip():
        raise PayloadKeyError(
            f"{PAYLOAD_KEYS_ENV} is not set: it must hold comma-separated base64 32-byte keys "
            '(make one with: python -c "from pylever.temporal.codec import generate_key; '
            'print(generate_key())")'
        )
    return AesGcmCodec(parse_keys(value))


def data_converter(
    codec: PayloadCodec | None, *, encode_failure_attributes: bool | None = None
) -> DataConverter:
    """The pydantic data converter with ``codec`` as payload codec (None: no encryption).

    Use the same converter on every client, worker and Replayer. Failure messages
    and stack traces are not payloads: they are encrypted too when
    ``encode_failure_attributes`` is true, which is the default whenever there is
    a codec, because an external service's error text can echo candidate data
    (Py's 422 quoting an email). History then says "Encoded failure"; the Web UI
    and ``temporal --codec-endpoint`` show the message through the codec endpoint.
    Any converter reads both forms, so mixed deployments and old histories work.
    Still, never put a candidate's name or email in an exception message.
    """
    if encode_failure_attributes is None:
        encode_failure_attributes = codec is not None
    converter = dataclasses.replace(pydantic_data_converter, payload_codec=codec)
    if encode_failure_attributes:
        converter = dataclasses.replace(
            converter, failure_converter_class=DefaultFailureConverterWithEncodedAttributes
        )
    return converter

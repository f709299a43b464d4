"""Keep raw bearer tokens off the topics: sealing (CLI path) and attestation (HTTP ingress path).

Sealed token (``Credential.sealed_token``), version 1::

    0x01 || ephemeral X25519 public key (32) || nonce (12) || ChaCha20-Poly1305 ciphertext+tag

The key is HKDF-SHA256 over the X25519 shared secret (salt = ephemeral || recipient public key).
The associated data is the request id, so a sealed token cannot be moved to another request;
an approver's token is bound to the whole verdict instead (``verdict_binding``: request id,
verdict, statement SHA-256, comment, event id), so a copied approval is no denial.

Attestation (``Credential.attestation_signature``), version 2::

    0x02 || issued_at (8) || expires_at (8) || Ed25519 signature (64)

times as big-endian microseconds since the epoch; the signature is by the ingress's key over
the canonical JSON array ``["querytrail-attestation-v2", request_id, token_sha256, claims_json,
sql_sha256, issued_at, expires_at]``. An expired attestation is refused, so a request replayed
after the worker's dedupe window cannot be decided again. Key ids: ``querytrail.keys``.

Key files are PEM; each public half sits next to its private key as ``<stem>.pub.pem``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from querytrail.keys import KeyFileError, ensure_keypair, key_id, load_private, load_public, public_path
from querytrail.settings import Settings

__all__ = [
    "AttestationExpired",
    "SealingError",
    "attestation_message",
    "attestation_times",
    "ensure_keys",
    "ingress_signing_key_path",
    "key_id",
    "load_attestation_private_key",
    "load_attestation_public_key",
    "load_sealing_private_key",
    "load_sealing_public_key",
    "public_path",
    "seal_token",
    "sealing_key_path",
    "sha256_hex",
    "sign_attestation",
    "token_sha256",
    "unseal_token",
    "verdict_binding",
    "verify_attestation",
]

log = logging.getLogger(__name__)

_VERSION = b"\x01"
_INFO = b"querytrail token seal v1"
_ATTESTATION_TAG = "querytrail-attestation-v2"
_ATTESTATION_VERSION = b"\x02"
_VERDICT_TAG = "querytrail-verdict-v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class SealingError(Exception):
    """A sealed token or an attestation could not be opened or verified."""


class AttestationExpired(SealingError):
    """A genuine attestation whose validity ended: a late replay of an old request."""


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def token_sha256(token: str) -> str:
    """Hex SHA-256 of a raw token: the only form of the token that is ever stored."""
    return sha256_hex(token.strip())


def _derive(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_INFO)
    return hkdf.derive(shared)


def verdict_binding(
    request_id: str, verdict: str, statement_sha256: str, comment: str | None, event_id: str
) -> bytes:
    """What an approver's sealed token is bound to: everything a verdict decides.

    Used as the seal's associated data, so a sealed approval copied from the topic cannot be
    re-sent as a denial, for another statement, with another comment or as another event.
    """
    fields = [_VERDICT_TAG, request_id, verdict, statement_sha256, comment, event_id]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def seal_token(
    token: str, recipient: X25519PublicKey, request_id: str, binding: bytes | None = None
) -> bytes:
    """Seal ``token`` so only the holder of the worker's X25519 private key opens it, for this
    request (and, for a verdict, this ``binding``: ``verdict_binding``)."""
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(*_RAW)
    key = _derive(eph.exchange(recipient), eph_pub, recipient.public_bytes(*_RAW))
    nonce = os.urandom(12)
    aad = binding if binding is not None else request_id.encode("utf-8")
    ct = ChaCha20Poly1305(key).encrypt(nonce, token.strip().encode("utf-8"), aad)
    return _VERSION + eph_pub + nonce + ct


def unseal_token(
    sealed: bytes, private_key: X25519PrivateKey, request_id: str, binding: bytes | None = None
) -> str:
    """Open a sealed token; raises SealingError when it is malformed, tampered, for another
    request or (``binding``) sealed for other verdict fields."""
    if len(sealed) < 1 + 32 + 12 + 16 or sealed[:1] != _VERSION:
        raise SealingError("sealed token is malformed or of an unknown version")
    eph_pub, nonce, ct = sealed[1:33], sealed[33:45], sealed[45:]
    aad = binding if binding is not None else request_id.encode("utf-8")
    try:
        peer = X25519PublicKey.from_public_bytes(eph_pub)
        recipient_pub = private_key.public_key().public_bytes(*_RAW)
        key = _derive(private_key.exchange(peer), eph_pub, recipient_pub)
        plain = ChaCha20Poly1305(key).decrypt(nonce, ct, aad)
    except (InvalidTag, ValueError) as exc:
        raise SealingError("sealed token does not open with this key for this request") from exc
    return plain.decode("utf-8")


def attestation_message(
    request_id: str, token_sha: str, claims_json: str, sql_sha256: str, issued_at_us: int, expires_at_us: int
) -> bytes:
    """The exact bytes the ingress signs (a JSON array, so no field can bleed into another)."""
    fields = [_ATTESTATION_TAG, request_id, token_sha, claims_json, sql_sha256, issued_at_us, expires_at_us]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def sign_attestation(
    key: Ed25519PrivateKey,
    *,
    request_id: str,
    token_sha256: str,
    claims_json: str,
    sql: str,
    issued_at: datetime | None = None,
    ttl_s: float = 900.0,
) -> bytes:
    """The attestation blob: ``0x02 || issued_at (8, big-endian µs) || expires_at (8) || Ed25519``.

    ``issued_at`` defaults to now; the attestation expires ``ttl_s`` seconds later.
    """
    iat = _micros(issued_at or datetime.now(UTC))
    exp = iat + int(ttl_s * 1_000_000)
    signature = key.sign(
        attestation_message(request_id, token_sha256, claims_json, sha256_hex(sql), iat, exp)
    )
    return (
        _ATTESTATION_VERSION
        + iat.to_bytes(8, "big", signed=True)
        + exp.to_bytes(8, "big", signed=True)
        + signature
    )


def attestation_times(blob: bytes) -> tuple[datetime, datetime]:
    """(issued_at, expires_at) an attestation blob carries; SealingError when it carries none."""
    if len(blob) != 1 + 8 + 8 + 64 or blob[:1] != _ATTESTATION_VERSION:
        raise SealingError("attestation of an unknown version (no issue time and expiry)")
    iat = int.from_bytes(blob[1:9], "big", signed=True)
    exp = int.from_bytes(blob[9:17], "big", signed=True)
    return _EPOCH + timedelta(microseconds=iat), _EPOCH + timedelta(microseconds=exp)


def verify_attestation(
    public_key: Ed25519PublicKey,
    signature: bytes,
    *,
    request_id: str,
    token_sha256: str,
    claims_json: str,
    sql: str | None = None,
    sql_sha256: str | None = None,
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """(issued_at, expires_at) when ``signature`` is the ingress's attestation over these
    fields and has not expired at ``now`` (default: the current time); SealingError otherwise."""
    issued_at, expires_at = attestation_times(signature)
    digest = sql_sha256 if sql_sha256 is not None else sha256_hex(sql or "")
    message = attestation_message(
        request_id, token_sha256, claims_json, digest, _micros(issued_at), _micros(expires_at)
    )
    try:
        public_key.verify(signature[17:], message)
    except InvalidSignature as exc:
        raise SealingError("attestation signature does not verify") from exc
    now = now or datetime.now(UTC)
    if now >= expires_at:
        raise AttestationExpired(f"attestation expired at {expires_at.isoformat()}")
    return issued_at, expires_at


# --- key files (querytrail.keys holds the one implementation) ------------------------------


def sealing_key_path(settings: Settings) -> Path:
    return settings.key_path("token_sealing_key")


def ingress_signing_key_path(settings: Settings) -> Path:
    return settings.key_path("ingress_signing_key")


def ensure_keys(settings: Settings) -> list[Path]:
    """Create the missing dev key pairs (token sealing X25519, ingress attestation Ed25519)."""
    created: list[Path] = []
    for path, factory in (
        (sealing_key_path(settings), X25519PrivateKey.generate),
        (ingress_signing_key_path(settings), Ed25519PrivateKey.generate),
    ):
        if ensure_keypair(path, factory):
            created.append(path)
    return created


def _load_private(path: Path, kind: Any) -> Any:
    try:
        return load_private(path, kind)
    except KeyFileError as exc:
        raise SealingError(str(exc)) from None


def _load_public(path: Path, kind: Any) -> Any:
    try:
        return load_public(path, kind)
    except KeyFileError as exc:
        raise SealingError(str(exc)) from None


def load_sealing_private_key(settings: Settings) -> X25519PrivateKey:
    """The worker's X25519 key (only the worker reads it)."""
    return _load_private(sealing_key_path(settings), X25519PrivateKey)


def load_sealing_public_key(settings: Settings) -> X25519PublicKey:
    """The public half the CI client seals tokens to."""
    return _load_public(public_path(sealing_key_path(settings)), X25519PublicKey)


def load_attestation_private_key(settings: Settings) -> Ed25519PrivateKey:
    """The HTTP ingress's signing key (only the ingress reads it)."""
    return _load_private(ingress_signing_key_path(settings), Ed25519PrivateKey)


def load_attestation_public_key(settings: Settings) -> Ed25519PublicKey:
    """The public half the worker verifies attestations with."""
    return _load_public(public_path(ingress_signing_key_path(settings)), Ed25519PublicKey)

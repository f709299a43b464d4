"""Keep raw bearer tokens off the topics: sealing (CLI path) and attestation (HTTP ingress path).

Sealed token (``Credential.sealed_token``), version 1::

    0x01 || ephemeral X25519 public key (32) || nonce (12) || ChaCha20-Poly1305 ciphertext+tag

The key is HKDF-SHA256 over the X25519 shared secret (salt = ephemeral || recipient public key).
The associated data is the request id, so a sealed token cannot be moved to another request.

Attestation (``Credential.attestation_signature``): Ed25519 by the ingress's key over the
canonical JSON array ``["querytrail-attestation-v1", request_id, token_sha256, claims_json,
sql_sha256]``. The key id is the first 16 hex characters of SHA-256 of the raw public key.

Key files are PEM; each public half sits next to its private key as ``<stem>.pub.pem``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from querytrail.settings import Settings

__all__ = [
    "SealingError",
    "attestation_message",
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
    "verify_attestation",
]

log = logging.getLogger(__name__)

_VERSION = b"\x01"
_INFO = b"querytrail token seal v1"
_ATTESTATION_TAG = "querytrail-attestation-v1"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class SealingError(Exception):
    """A sealed token or an attestation could not be opened or verified."""


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def token_sha256(token: str) -> str:
    """Hex SHA-256 of a raw token: the only form of the token that is ever stored."""
    return sha256_hex(token.strip())


def key_id(public_key: Ed25519PublicKey | X25519PublicKey) -> str:
    return hashlib.sha256(public_key.public_bytes(*_RAW)).hexdigest()[:16]


def _derive(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_INFO)
    return hkdf.derive(shared)


def seal_token(token: str, recipient: X25519PublicKey, request_id: str) -> bytes:
    """Seal ``token`` so only the holder of the worker's X25519 private key opens it, for this request."""
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(*_RAW)
    key = _derive(eph.exchange(recipient), eph_pub, recipient.public_bytes(*_RAW))
    nonce = os.urandom(12)
    ct = ChaCha20Poly1305(key).encrypt(nonce, token.strip().encode("utf-8"), request_id.encode("utf-8"))
    return _VERSION + eph_pub + nonce + ct


def unseal_token(sealed: bytes, private_key: X25519PrivateKey, request_id: str) -> str:
    """Open a sealed token; raises SealingError when it is malformed, tampered or for another request."""
    if len(sealed) < 1 + 32 + 12 + 16 or sealed[:1] != _VERSION:
        raise SealingError("sealed token is malformed or of an unknown version")
    eph_pub, nonce, ct = sealed[1:33], sealed[33:45], sealed[45:]
    try:
        peer = X25519PublicKey.from_public_bytes(eph_pub)
        recipient_pub = private_key.public_key().public_bytes(*_RAW)
        key = _derive(private_key.exchange(peer), eph_pub, recipient_pub)
        plain = ChaCha20Poly1305(key).decrypt(nonce, ct, request_id.encode("utf-8"))
    except (InvalidTag, ValueError) as exc:
        raise SealingError("sealed token does not open with this key for this request") from exc
    return plain.decode("utf-8")


def attestation_message(request_id: str, token_sha: str, claims_json: str, sql_sha256: str) -> bytes:
    """The exact bytes the ingress signs (a JSON array, so no field can bleed into another)."""
    fields = [_ATTESTATION_TAG, request_id, token_sha, claims_json, sql_sha256]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_attestation(
    key: Ed25519PrivateKey, *, request_id: str, token_sha256: str, claims_json: str, sql: str
) -> bytes:
    return key.sign(attestation_message(request_id, token_sha256, claims_json, sha256_hex(sql)))


def verify_attestation(
    public_key: Ed25519PublicKey,
    signature: bytes,
    *,
    request_id: str,
    token_sha256: str,
    claims_json: str,
    sql: str | None = None,
    sql_sha256: str | None = None,
) -> None:
    """Raise SealingError unless ``signature`` is the ingress's signature over these fields."""
    digest = sql_sha256 if sql_sha256 is not None else sha256_hex(sql or "")
    try:
        public_key.verify(signature, attestation_message(request_id, token_sha256, claims_json, digest))
    except InvalidSignature as exc:
        raise SealingError("attestation signature does not verify") from exc


# --- key files -------------------------------------------------------------------------------


def public_path(private_path: Path) -> Path:
    """``keys/foo.pem`` -> ``keys/foo.pub.pem``."""
    name = private_path.name.removesuffix(".pem")
    return private_path.with_name(f"{name}.pub.pem")


def sealing_key_path(settings: Settings) -> Path:
    return settings.key_path("token_sealing_key")


def ingress_signing_key_path(settings: Settings) -> Path:
    return settings.key_path("ingress_signing_key")


def _write_pair(path: Path, private_pem: bytes, public_pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path(path).write_bytes(public_pem)


def _pems(key: X25519PrivateKey | Ed25519PrivateKey) -> tuple[bytes, bytes]:
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def ensure_keys(settings: Settings) -> list[Path]:
    """Create the missing dev key pairs (token sealing X25519, ingress attestation Ed25519)."""
    created: list[Path] = []
    for path, factory in (
        (sealing_key_path(settings), X25519PrivateKey.generate),
        (ingress_signing_key_path(settings), Ed25519PrivateKey.generate),
    ):
        if path.exists():
            if not public_path(path).exists():  # recover the public half from the private key
                _, public_pem = _pems(_load_private(path, type(factory())))
                public_path(path).write_bytes(public_pem)
            continue
        private_pem, public_pem = _pems(factory())
        _write_pair(path, private_pem, public_pem)
        log.info("created key pair %s (public half %s)", path, public_path(path))
        created.append(path)
    return created


def _load_private(path: Path, kind: Any) -> Any:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, kind):
        raise SealingError(f"{path} does not hold a {kind.__name__}")
    return key


def _load_public(path: Path, kind: Any) -> Any:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, kind):
        raise SealingError(f"{path} does not hold a {kind.__name__}")
    return key


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

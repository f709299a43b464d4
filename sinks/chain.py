"""The per-(topic, partition) hash chain and the Ed25519-signed chain heads.

``chain_hash = sha256(prev_chain_hash || sha256(avro))``; the first ``prev`` is 32 zero bytes.
Every sink commit signs the head of each chain it holds (in the spirit of CloudTrail's digest
files), binding the table, the topic-partition, the last offset and the head hash, so rows cannot
be dropped, forged or re-chained without the sink's private key. Pure code: no Kafka, no Iceberg.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "GENESIS",
    "Head",
    "Signer",
    "Verifier",
    "chain_hashes",
    "chain_step",
    "ensure_keypair",
    "head_message",
    "key_id",
    "load_signer",
    "load_verifier",
    "tp_key",
]

GENESIS = b"\x00" * 32


def chain_step(prev: bytes, avro_sha256: bytes) -> bytes:
    """One link: ``sha256(prev || sha256(avro))``."""
    return hashlib.sha256(prev + avro_sha256).digest()


def chain_hashes(avros: Iterable[bytes], prev: bytes = GENESIS) -> list[bytes]:
    """The chain hashes of consecutive records of one partition, starting after ``prev``."""
    out = []
    for avro in avros:
        prev = chain_step(prev, hashlib.sha256(avro).digest())
        out.append(prev)
    return out


def tp_key(topic: str, partition: int) -> str:
    """The summary key of a topic-partition: ``topic:partition``."""
    return f"{topic}:{partition}"


@dataclass(frozen=True)
class Head:
    """The signed head of one chain: its last offset and chain hash."""

    offset: int
    hash: str  # hex
    sig: str  # base64 Ed25519 over head_message(...)

    def to_json(self) -> dict[str, object]:
        return {"offset": self.offset, "hash": self.hash, "sig": self.sig}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Head:
        return cls(offset=int(str(data["offset"])), hash=str(data["hash"]), sig=str(data["sig"]))


def head_message(table_uuid: str, tp: str, offset: int, head_hex: str) -> bytes:
    """What is signed for a head: binds the table, the chain, its position and its hash."""
    return json.dumps(
        {"table": table_uuid, "tp": tp, "offset": offset, "hash": head_hex},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """Signs chain heads with the sink's private key (read only by the sink)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.key_id = key_id(private.public_key())

    def sign_head(self, table_uuid: str, tp: str, offset: int, head: bytes) -> Head:
        message = head_message(table_uuid, tp, offset, head.hex())
        sig = base64.b64encode(self._private.sign(message)).decode()
        return Head(offset=offset, hash=head.hex(), sig=sig)

    def sign_bytes(self, message: bytes) -> str:
        """A base64 Ed25519 signature over ``message`` (the witness lines)."""
        return base64.b64encode(self._private.sign(message)).decode()


class Verifier:
    """Checks signed heads with the sink's public key."""

    def __init__(self, public: Ed25519PublicKey) -> None:
        self._public = public
        self.key_id = key_id(public)

    def check(self, table_uuid: str, tp: str, head: Head) -> bool:
        try:
            self._public.verify(
                base64.b64decode(head.sig), head_message(table_uuid, tp, head.offset, head.hash)
            )
        except (InvalidSignature, ValueError):
            return False
        return True

    def check_bytes(self, message: bytes, sig: str) -> bool:
        try:
            self._public.verify(base64.b64decode(sig), message)
        except (InvalidSignature, ValueError):
            return False
        return True


def ensure_keypair(private_path: Path, public_path: Path) -> None:
    """Create the local stack's chain key pair when missing (private key mode 0600)."""
    if private_path.exists():
        if not public_path.exists():
            _write_public(load_signer(private_path)._private.public_key(), public_path)
        return
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    _write_public(key.public_key(), public_path)


def _write_public(public: Ed25519PublicKey, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def load_signer(path: Path) -> Signer:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return Signer(key)


def load_verifier(path: Path) -> Verifier:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return Verifier(key)

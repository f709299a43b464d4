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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from querytrail import keys

__all__ = [
    "GENESIS",
    "Head",
    "HeadSigner",
    "HeadVerifier",
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
    return keys.key_id(public)


class HeadSigner:
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


class HeadVerifier:
    """Checks signed heads with the sink's public key, and with older keys kept after a rotation.

    ``add`` trusts another key (sinks/keyring.py adds those a signed handover links to this
    one). With a ``kid`` a signature is checked with that key only; ``used`` collects the key
    ids that verified something.
    """

    def __init__(self, public: Ed25519PublicKey) -> None:
        self._public = public
        self.key_id = key_id(public)
        self._keys: dict[str, Ed25519PublicKey] = {self.key_id: public}
        self.used: set[str] = set()

    def add(self, public: Ed25519PublicKey) -> str:
        kid = key_id(public)
        self._keys[kid] = public
        return kid

    def knows(self, kid: str) -> bool:
        return kid in self._keys

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def check(self, table_uuid: str, tp: str, head: Head, kid: str | None = None) -> bool:
        return self.check_bytes(head_message(table_uuid, tp, head.offset, head.hash), head.sig, kid)

    def check_bytes(self, message: bytes, sig: str, kid: str | None = None) -> bool:
        """True when ``sig`` is a signature over ``message`` by key ``kid`` (None: any kept key)."""
        if kid is not None:
            candidates = [(kid, self._keys[kid])] if kid in self._keys else []
        else:
            candidates = sorted(self._keys.items(), key=lambda kv: kv[0] != self.key_id)
        try:
            raw = base64.b64decode(sig)
        except ValueError:
            return False
        for name, public in candidates:
            try:
                public.verify(raw, message)
            except (InvalidSignature, ValueError):
                continue
            self.used.add(name)
            return True
        return False


def ensure_keypair(private_path: Path, public_path: Path) -> None:
    """Create the local stack's chain key pair when missing (private key mode 0600).

    The public half goes to ``public_path`` (``chain_verify_key_path``), which need not be the
    ``<stem>.pub.pem`` next to the private key; creation and loading are querytrail.keys'.
    """
    keys.ensure_keypair(private_path)
    if not public_path.exists():
        public_path.parent.mkdir(parents=True, exist_ok=True)
        public_path.write_bytes(keys.public_pem(load_signer(private_path)._private))


def load_signer(path: Path) -> HeadSigner:
    try:
        return HeadSigner(keys.load_private(path, Ed25519PrivateKey))
    except keys.KeyFileError as exc:
        raise ValueError(str(exc)) from None


def load_verifier(path: Path) -> HeadVerifier:
    try:
        return HeadVerifier(keys.load_public(path, Ed25519PublicKey))
    except keys.KeyFileError as exc:
        raise ValueError(str(exc)) from None

"""Signed execution authorisations: canonical bytes, Ed25519 sign and verify, freshness.

Anyone able to write to the executions topic could otherwise run SQL with querytrail's
credentials, so the worker signs every ExecutionAuthorized with a key only it reads and the
executor runs nothing whose signature or freshness it cannot verify. Single use (the nonce)
is the executor ledger's job: it is the only place that remembers what already ran.

The signed bytes are canonical JSON (sorted keys, no whitespace, UTF-8) over every field that
decides what runs and where: request id, event id, statement and its hash, the masking plan,
the target, the caps, expiry and nonce, and the QUERY_TAG and cost estimate when present (they
are left out when absent, so an authorisation signed before they existed still verifies).
Anything not signed cannot change what runs.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from querytrail.keys import KeyFileError, ensure_keypair, key_id, load_private, load_public, public_pem
from schemas.events import (
    ExecutionAuthorized,
    MaskedColumn,
    Target,
    VerifiedIdentity,
    envelope,
)

__all__ = [
    "AuthzError",
    "Signer",
    "Verifier",
    "canonical_bytes",
    "key_id_for",
    "load_or_create_signing_key",
    "make_authorization",
    "statement_sha256",
]

_DOMAIN = "querytrail.ExecutionAuthorized.v1"


class AuthzError(Exception):
    """An authorisation the executor must refuse; ``code`` is the QueryRejected reason_code."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


def statement_sha256(statement: str) -> str:
    """Hex SHA-256 of the exact statement text (UTF-8) that would run."""
    return hashlib.sha256(statement.encode("utf-8")).hexdigest()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(value: datetime) -> int:
    # integer microseconds since the epoch: exactly what Avro timestamp-micros round-trips
    # (float timestamps could differ by one after a round trip and break the signature)
    return (value - _EPOCH) // timedelta(microseconds=1)


def canonical_bytes(auth: Any) -> bytes:
    """The bytes signed for an ExecutionAuthorized (every field except signature)."""
    target = auth.target
    body = {
        "domain": _DOMAIN,
        "event_id": auth.event_id,
        "request_id": auth.request_id,
        "statement": auth.statement,
        "statement_sha256": auth.statement_sha256,
        "masked_columns": [[m.output, m.source, m.classification, m.mask] for m in auth.masked_columns],
        "target": [target.profile, target.database, target.schema, target.warehouse, target.role],
        "max_rows": auth.max_rows,
        "timeout_s": auth.timeout_s,
        "expires_at": _ts(auth.expires_at),
        "nonce": auth.nonce,
        "key_id": auth.key_id,
    }
    for optional in ("query_tag", "estimated_bytes"):
        value = getattr(auth, optional, None)
        if value is not None:
            body[optional] = value
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """A short stable id: the first 16 hex digits of SHA-256 over the raw public key."""
    return key_id(public_key)


@dataclass(frozen=True)
class Signer:
    """The worker's signing key."""

    private_key: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id_for(self.private_key.public_key())

    @classmethod
    def from_pem(cls, path: Path) -> Signer:
        try:
            return cls(load_private(path, Ed25519PrivateKey))
        except KeyFileError as exc:
            raise ValueError(str(exc)) from None

    def public_pem(self) -> bytes:
        return public_pem(self.private_key)

    def sign(self, auth: ExecutionAuthorized) -> ExecutionAuthorized:
        """Return ``auth`` with key_id and signature set (a new frozen event)."""
        unsigned = replace(auth, key_id=self.key_id, signature=b"")
        return replace(unsigned, signature=self.private_key.sign(canonical_bytes(unsigned)))


class Verifier:
    """The executor's view: trusted public keys by key id (several during rotation)."""

    def __init__(self, keys: list[Ed25519PublicKey], *, max_age_s: float = 900.0) -> None:
        self._keys = {key_id_for(k): k for k in keys}
        self.max_age = timedelta(seconds=max_age_s)

    @classmethod
    def from_pem_files(cls, paths: list[Path], *, max_age_s: float = 900.0) -> Verifier:
        keys: list[Ed25519PublicKey] = []
        for path in paths:
            try:
                keys.append(load_public(path, Ed25519PublicKey))
            except KeyFileError as exc:
                raise ValueError(str(exc)) from None
        return cls(keys, max_age_s=max_age_s)

    def verify(self, auth: Any, now: datetime) -> None:
        """Raise AuthzError unless ``auth`` is signed by a trusted key, consistent and fresh."""
        key = self._keys.get(auth.key_id)
        if key is None:
            raise AuthzError("unknown_key", f"authorisation signed by unknown key {auth.key_id!r}")
        try:
            key.verify(auth.signature, canonical_bytes(auth))
        except InvalidSignature:
            raise AuthzError("bad_signature", "authorisation signature does not verify") from None
        if statement_sha256(auth.statement) != auth.statement_sha256:
            raise AuthzError("hash_mismatch", "statement does not match its signed hash")
        if now >= auth.expires_at:
            raise AuthzError("expired", f"authorisation expired at {auth.expires_at.isoformat()}")
        if now - auth.occurred_at > self.max_age:
            raise AuthzError("too_old", "authorisation is older than the executor's maximum age")


def load_or_create_signing_key(private_path: Path, public_path: Path | None = None) -> Signer:
    """Load the worker's Ed25519 key, creating it (0600) and its public half on first use.

    Only the local stack relies on creation; production provisions the key out of band.
    """
    ensure_keypair(private_path)
    signer = Signer.from_pem(private_path)
    if public_path is not None and not public_path.exists():
        public_path.parent.mkdir(parents=True, exist_ok=True)
        public_path.write_bytes(signer.public_pem())
    return signer


def make_authorization(
    signer: Signer,
    *,
    request_id: str,
    session_id: str | None,
    statement: str,
    masked_columns: tuple[MaskedColumn, ...],
    target: Target,
    max_rows: int,
    timeout_s: int,
    requester: VerifiedIdentity | None,
    now: datetime,
    ttl_s: float,
    query_tag: str | None = None,
    estimated_bytes: int | None = None,
) -> ExecutionAuthorized:
    """A signed ExecutionAuthorized for one statement, valid for ``ttl_s`` seconds from ``now``."""
    unsigned = ExecutionAuthorized(
        **envelope(request_id, "worker", at=now, session_id=session_id),
        statement=statement,
        statement_sha256=statement_sha256(statement),
        masked_columns=masked_columns,
        target=target,
        max_rows=max_rows,
        timeout_s=timeout_s,
        expires_at=now + timedelta(seconds=ttl_s),
        nonce=secrets.token_hex(16),
        key_id=signer.key_id,
        signature=b"",
        requester=requester,
        query_tag=query_tag,
        estimated_bytes=estimated_bytes,
    )
    signed: ExecutionAuthorized = signer.sign(unsigned)
    return signed

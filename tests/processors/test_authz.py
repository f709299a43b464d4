"""Signed authorisations: round trip through the Avro codec, tamper detection, freshness."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from processors.decision.authz import (
    AuthzError,
    Signer,
    Verifier,
    load_or_create_signing_key,
    make_authorization,
)
from schemas.codec import EventCodec
from schemas.events import ExecutionAuthorized, MaskedColumn, Target, utcnow


def _auth(signer: Signer, **kw: object) -> ExecutionAuthorized:
    args: dict[str, object] = {
        "request_id": "r-1",
        "session_id": None,
        "statement": "SELECT 1",
        "masked_columns": (
            MaskedColumn(output="EMAIL", source="A.B.C.EMAIL", classification="pii.email", mask="email"),
        ),
        "target": Target(profile="analytics", database="ANALYTICS"),
        "max_rows": 10,
        "timeout_s": 5,
        "requester": None,
        "now": utcnow(),
        "ttl_s": 60,
    }
    args.update(kw)
    return make_authorization(signer, **args)  # type: ignore[arg-type]


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def test_signature_survives_the_codec(signer: Signer) -> None:
    auth = _auth(signer)
    codec = EventCodec()
    decoded = codec.decode(codec.encode(auth))
    assert isinstance(decoded, ExecutionAuthorized)
    Verifier([signer.private_key.public_key()]).verify(decoded, utcnow())


@pytest.mark.parametrize(
    "change",
    [
        {"statement": "DROP TABLE X"},
        {"request_id": "r-2"},
        {"max_rows": 1_000_000},
        {"target": Target(profile="prod")},
        {"masked_columns": ()},
        {"nonce": "other"},
    ],
)
def test_any_signed_field_change_is_refused(signer: Signer, change: dict[str, object]) -> None:
    tampered = replace(_auth(signer), **change)  # type: ignore[arg-type]
    with pytest.raises(AuthzError) as exc:
        Verifier([signer.private_key.public_key()]).verify(tampered, utcnow())
    assert exc.value.code == "bad_signature"


def test_unknown_key_expired_and_too_old(signer: Signer) -> None:
    other = Signer(Ed25519PrivateKey.generate())
    with pytest.raises(AuthzError, match="unknown_key"):
        Verifier([other.private_key.public_key()]).verify(_auth(signer), utcnow())
    verifier = Verifier([signer.private_key.public_key()], max_age_s=30)
    with pytest.raises(AuthzError, match="expired"):
        verifier.verify(_auth(signer, ttl_s=1), utcnow() + timedelta(seconds=2))
    with pytest.raises(AuthzError, match="too_old"):
        verifier.verify(_auth(signer, now=utcnow() - timedelta(seconds=60), ttl_s=600), utcnow())


def test_forged_statement_with_matching_hash_still_needs_the_key(signer: Signer) -> None:
    forger = Signer(Ed25519PrivateKey.generate())
    forged = replace(_auth(forger), key_id=signer.key_id)
    with pytest.raises(AuthzError, match="bad_signature"):
        Verifier([signer.private_key.public_key()]).verify(forged, utcnow())


def test_key_file_created_once_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "authz.pem"
    pub = tmp_path / "keys" / "authz.pub.pem"
    first = load_or_create_signing_key(path, pub)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_signing_key(path, pub).key_id == first.key_id
    assert Verifier.from_pem_files([pub]).verify(_auth(first), utcnow()) is None

"""The worker re-derives an attested identity from the signed claims.

The HTTP ingress signs claims_json, not the structured fields beside it, so anyone able to
write the requests topic could otherwise keep a genuine signature and add a group.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from processors.decision.requests import CredentialError
from processors.worker.credentials import CredentialChecker
from querytrail import devissuer
from querytrail.identity import TokenVerifier
from querytrail.sealing import ensure_keys, key_id, load_attestation_private_key, sign_attestation
from querytrail.settings import Settings
from schemas.events import Credential


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(home=tmp_path, identity={"dev_issuer_enabled": True})
    ensure_keys(s)
    return s


def _attested(settings: Settings, sql: str) -> tuple[CredentialChecker, Credential]:
    token = devissuer.mint_token(settings, sub="ci-bot", groups=["ci"])
    verifier = TokenVerifier.from_settings(settings)
    verified = verifier.verify(token).to_verified()
    key = load_attestation_private_key(settings)
    sig = sign_attestation(
        key, request_id="r1", token_sha256=verified.token_sha256, claims_json=verified.claims_json, sql=sql
    )
    checker = CredentialChecker(verifier, None, {key_id(key.public_key()): key.public_key()})
    cred = Credential(
        token_sha256=verified.token_sha256,
        attested=verified,
        attestation_signature=sig,
        attestation_key_id=key_id(key.public_key()),
    )
    return checker, cred


def test_genuine_attestation_passes_with_the_signed_groups(settings: Settings) -> None:
    checker, cred = _attested(settings, "select 1")
    ident = checker.check("r1", cred, sql="select 1")
    assert (ident.subject, tuple(ident.groups)) == ("ci-bot", ("ci",))


@pytest.mark.parametrize(
    "change",
    [
        {"groups": ("ci", "data-security")},
        {"subject": "dana"},
        {"service_account": True},
        {"actor": "someone-else"},
    ],
)
def test_edited_attested_fields_are_refused(settings: Settings, change: dict[str, object]) -> None:
    checker, cred = _attested(settings, "select 1")
    assert cred.attested is not None
    forged = dataclasses.replace(cred, attested=dataclasses.replace(cred.attested, **change))
    with pytest.raises(CredentialError) as info:
        checker.check("r1", forged, sql="select 1")
    assert info.value.code == "bad_attestation"

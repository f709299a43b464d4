"""Token sealing, ingress attestation, credential verification for the worker, and the dev issuer."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import ValidationError

from querytrail import devissuer
from querytrail.credentials import CredentialVerifier
from querytrail.identity import IdentityError, TokenVerifier
from querytrail.sealing import (
    SealingError,
    ensure_keys,
    key_id,
    load_attestation_private_key,
    load_sealing_private_key,
    load_sealing_public_key,
    public_path,
    seal_token,
    sign_attestation,
    token_sha256,
    unseal_token,
    verify_attestation,
)
from querytrail.settings import Settings
from schemas.events import ClientContext, Credential, Target

TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjaS1ib3QifQ.c2lnbmF0dXJl"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(home=tmp_path, identity={"dev_issuer_enabled": True})
    ensure_keys(s)
    return s


def test_seal_roundtrip_and_binding_to_request() -> None:
    worker = X25519PrivateKey.generate()
    sealed = seal_token(TOKEN, worker.public_key(), "req-1")
    assert TOKEN.encode() not in sealed and b"c2lnbmF0dXJl" not in sealed
    assert unseal_token(sealed, worker, "req-1") == TOKEN
    assert seal_token(TOKEN, worker.public_key(), "req-1") != sealed  # fresh ephemeral key each time
    with pytest.raises(SealingError):
        unseal_token(sealed, worker, "req-2")  # moved to another request
    with pytest.raises(SealingError):
        unseal_token(sealed, X25519PrivateKey.generate(), "req-1")  # not the worker's key
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(SealingError):
        unseal_token(bytes(tampered), worker, "req-1")
    with pytest.raises(SealingError):
        unseal_token(b"\x02" + sealed[1:], worker, "req-1")
    with pytest.raises(SealingError):
        unseal_token(b"\x01short", worker, "req-1")


def test_attestation_covers_every_field() -> None:
    key = Ed25519PrivateKey.generate()
    fields = {"request_id": "r1", "token_sha256": "ab" * 32, "claims_json": '{"sub":"a"}'}
    sig = sign_attestation(key, sql="select 1", **fields)
    verify_attestation(key.public_key(), sig, sql="select 1", **fields)
    for name, value in [("request_id", "r2"), ("token_sha256", "cd" * 32), ("claims_json", '{"sub":"b"}')]:
        with pytest.raises(SealingError):
            verify_attestation(key.public_key(), sig, sql="select 1", **{**fields, name: value})
    with pytest.raises(SealingError):
        verify_attestation(key.public_key(), sig, sql="select 2", **fields)
    with pytest.raises(SealingError):
        verify_attestation(Ed25519PrivateKey.generate().public_key(), sig, sql="select 1", **fields)


def test_ensure_keys_creates_private_keys_owner_only(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    created = ensure_keys(s)
    assert len(created) == 2
    for path in created:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert public_path(path).exists() and public_path(path).name.endswith(".pub.pem")
    assert ensure_keys(s) == []  # idempotent: existing keys are kept
    worker = load_sealing_private_key(s)
    sealed = seal_token(TOKEN, load_sealing_public_key(s), "r")
    assert unseal_token(sealed, worker, "r") == TOKEN


def test_production_never_trusts_the_dev_issuer(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="dev_issuer_enabled"):
        Settings(home=tmp_path, environment="production", identity={"dev_issuer_enabled": True})
    prod = Settings(home=tmp_path, environment="production")
    with pytest.raises(ValueError, match="production"):
        devissuer.mint_token(prod, sub="ci-bot")
    local = Settings(home=tmp_path)
    token = devissuer.mint_token(local, sub="ci-bot")
    # Without dev_issuer_enabled nobody trusts it, local or production.
    for s in (local, prod):
        with pytest.raises(IdentityError) as info:
            TokenVerifier.from_settings(s).verify(token)
        assert info.value.code == "unknown_issuer"


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_dev_tokens_verify(settings: Settings, alg: str) -> None:
    token = devissuer.mint_token(
        settings, sub="ci-bot", groups=["ci"], claims={"repository": "acme/etl"}, ttl_s=600, alg=alg
    )
    ident = TokenVerifier.from_settings(settings).verify(token)
    assert (ident.subject, ident.groups, ident.repository) == ("ci-bot", ("ci",), "acme/etl")
    assert ident.issuer == settings.identity.dev_issuer_url
    assert (settings.keys_dir / f"dev-issuer-{alg.lower()}.pem").exists()
    jwks = devissuer.jwks_document(settings)
    assert all("d" not in k for k in jwks["keys"])  # only public halves are published


def test_service_account_claim(settings: Settings) -> None:
    v = TokenVerifier.from_settings(settings)
    assert v.verify(
        devissuer.mint_token(settings, sub="bot", claims={"service_account": True})
    ).service_account
    assert not v.verify(
        devissuer.mint_token(settings, sub="me", claims={"service_account": "false"})
    ).service_account
    assert not v.verify(devissuer.mint_token(settings, sub="me")).service_account


def test_parse_duration() -> None:
    assert [devissuer.parse_duration(t) for t in ("90", "30s", "10m", "2h", "1d")] == [
        90,
        30,
        600,
        7200,
        86400,
    ]
    with pytest.raises(ValueError):
        devissuer.parse_duration("ten minutes")


def _credential_verifier(settings: Settings) -> CredentialVerifier:
    return CredentialVerifier.from_settings(settings)


def test_credential_sealed_path(settings: Settings) -> None:
    token = devissuer.mint_token(settings, sub="ci-bot", groups=["ci"])
    cred = Credential(
        sealed_token=seal_token(token, load_sealing_public_key(settings), "r1"),
        token_sha256=token_sha256(token),
    )
    cv = _credential_verifier(settings)
    assert cv.verify(cred, request_id="r1").subject == "ci-bot"
    with pytest.raises(IdentityError) as info:
        cv.verify(cred, request_id="r2")
    assert info.value.code == "bad_seal"
    with pytest.raises(IdentityError) as info:
        cv.verify(dataclasses.replace(cred, token_sha256="00" * 32), request_id="r1")
    assert info.value.code == "malformed"
    expired = devissuer.mint_token(settings, sub="ci-bot", ttl_s=1, now=1_000_000)
    stale = Credential(
        sealed_token=seal_token(expired, load_sealing_public_key(settings), "r3"),
        token_sha256=token_sha256(expired),
    )
    with pytest.raises(IdentityError) as info:
        cv.verify(stale, request_id="r3")
    assert info.value.code == "expired"


def test_credential_attested_path(settings: Settings) -> None:
    token = devissuer.mint_token(settings, sub="ci-bot", groups=["ci"])
    ident = TokenVerifier.from_settings(settings).verify(token)
    verified = ident.to_verified()
    key = load_attestation_private_key(settings)
    sig = sign_attestation(
        key,
        request_id="r1",
        token_sha256=ident.token_sha256,
        claims_json=verified.claims_json,
        sql="select 1",
    )
    cred = Credential(
        token_sha256=ident.token_sha256,
        attested=verified,
        attestation_signature=sig,
        attestation_key_id=key_id(key.public_key()),
    )
    cv = _credential_verifier(settings)
    assert cv.verify(cred, request_id="r1", sql="select 1").groups == ("ci",)

    def code(c: Credential, request_id: str = "r1", sql: str = "select 1") -> str:
        with pytest.raises(IdentityError) as info:
            cv.verify(c, request_id=request_id, sql=sql)
        return info.value.code

    assert code(cred, sql="delete from t") == "bad_attestation"  # another statement
    assert code(cred, request_id="r9") == "bad_attestation"
    forged = dataclasses.replace(verified, subject="admin", groups=("auditor",))
    assert code(dataclasses.replace(cred, attested=forged)) == "bad_attestation"
    assert code(dataclasses.replace(cred, attestation_key_id="0" * 16)) == "bad_attestation"
    both = dataclasses.replace(cred, sealed_token=b"\x01" + b"x" * 80)
    assert code(both) == "malformed"
    assert code(Credential(token_sha256="aa")) == "malformed"


def test_event_types_hold_no_token(settings: Settings) -> None:
    # The request event built by the client carries the sealed token and a hash only.
    from ingress.client import QueryClient

    token = devissuer.mint_token(settings, sub="ci-bot")
    event = QueryClient(settings).build_request(
        request_id="r1",
        prompt="p",
        sql="select 1",
        model="m",
        token=token,
        target=Target(profile="analytics"),
        context=ClientContext(extra={}),
    )
    from schemas.codec import EventCodec

    data = EventCodec().encode(event)
    assert token.encode() not in data
    for part in token.split("."):
        assert part.encode() not in data
    assert event.credential.token_sha256 == token_sha256(token)

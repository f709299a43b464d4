"""OIDC verification against a real local issuer server with real signed tokens from two issuers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from querytrail.identity import IdentityError, TokenVerifier
from querytrail.settings import IssuerSettings
from tests.ingress.ingress_oidc import Issuer, IssuerServer, SigningKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _verifier(*issuers: IssuerSettings, interval: float = 60.0, leeway: float = 30.0) -> TokenVerifier:
    return TokenVerifier(issuers, leeway_s=leeway, min_refetch_interval_s=interval, http_timeout_s=2.0)


@pytest.fixture
def corp(issuer_server: IssuerServer) -> Issuer:
    return issuer_server.add("corp", "RS256", "ES256")


@pytest.fixture
def gha(issuer_server: IssuerServer) -> Issuer:
    return issuer_server.add("gha", "EdDSA")


@pytest.fixture
def verifier(corp: Issuer, gha: Issuer) -> TokenVerifier:
    return _verifier(
        IssuerSettings(issuer=corp.url, groups_claim="roles"),
        IssuerSettings(issuer=gha.url, service_account=True, groups_claim="groups"),
    )


def _code(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(IdentityError) as info:
        verifier.verify(token)
    assert not token or token not in str(info.value)  # the reason never echoes the token
    return info.value.code


def test_valid_tokens_from_two_issuers(verifier: TokenVerifier, corp: Issuer, gha: Issuer) -> None:
    rs = corp.mint(corp.keys[0], sub="alice", roles=["analyst", "auditor"])
    ident = verifier.verify(rs)
    assert (ident.subject, ident.issuer, ident.groups) == ("alice", corp.url, ("analyst", "auditor"))
    assert not ident.service_account
    assert ident.token_sha256 == hashlib.sha256(rs.encode()).hexdigest()

    es = corp.mint(corp.keys[1], sub="bob", roles="ops data")
    assert verifier.verify(es).groups == ("ops", "data")

    token = gha.mint(
        sub="repo:acme/etl:ref:refs/heads/main",
        groups=["ci"],
        repository="acme/etl",
        workflow="nightly",
        ref="refs/heads/main",
        run_id="4242",
        sha="abc123",
        actor="octocat",
    )
    ident = verifier.verify(token)
    assert ident.issuer == gha.url and ident.service_account
    assert (ident.repository, ident.workflow, ident.ref, ident.run_id, ident.sha, ident.actor) == (
        "acme/etl",
        "nightly",
        "refs/heads/main",
        "4242",
        "abc123",
        "octocat",
    )
    verified = ident.to_verified()
    assert verified.subject == "repo:acme/etl:ref:refs/heads/main"
    assert json.loads(verified.claims_json)["repository"] == "acme/etl"
    assert verified.claims_json == json.dumps(
        json.loads(verified.claims_json), sort_keys=True, separators=(",", ":")
    )
    assert token not in verified.claims_json


def test_claim_map_per_issuer(issuer_server: IssuerServer) -> None:
    gitlab = issuer_server.add("gitlab", "RS256")
    v = _verifier(
        IssuerSettings(
            issuer=gitlab.url,
            claim_map={"repository": "project_path", "run_id": "pipeline_id", "actor": "user_login"},
        )
    )
    ident = v.verify(gitlab.mint(project_path="acme/etl", pipeline_id=77, user_login="dev"))
    assert (ident.repository, ident.run_id, ident.actor) == ("acme/etl", "77", "dev")


def test_expired_and_leeway(verifier: TokenVerifier, corp: Issuer) -> None:
    now = time.time()
    assert _code(verifier, corp.mint(now=now - 400, ttl=300)) == "expired"
    verifier.verify(corp.mint(now=now - 310, ttl=300))  # 10 s past exp, inside the 30 s leeway


def test_not_yet_valid(verifier: TokenVerifier, corp: Issuer) -> None:
    assert _code(verifier, corp.mint(now=time.time() + 600)) == "not_yet_valid"


def test_wrong_audience(verifier: TokenVerifier, corp: Issuer) -> None:
    assert _code(verifier, corp.mint(aud="someone-else")) == "wrong_audience"


def test_wrong_issuer(verifier: TokenVerifier, issuer_server: IssuerServer) -> None:
    rogue = issuer_server.add("rogue", "RS256")
    assert _code(verifier, rogue.mint()) == "unknown_issuer"
    assert issuer_server.jwks_hits(rogue) == 0  # an untrusted issuer's keys are never fetched


def test_tampered_payload(verifier: TokenVerifier, corp: Issuer) -> None:
    header, payload, sig = corp.mint(sub="alice").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "admin"
    forged = ".".join([header, _b64(json.dumps(claims).encode()), sig])
    assert _code(verifier, forged) == "bad_signature"


def test_signature_by_unknown_key(verifier: TokenVerifier, corp: Issuer) -> None:
    outsider = SigningKey.new("RS256")
    # Claims a published kid but is signed by another key.
    assert _code(verifier, corp.mint(outsider, kid=corp.keys[0].kid)) == "bad_signature"
    # Names a kid the issuer never published.
    assert _code(verifier, corp.mint(outsider)) == "unknown_key"


def test_alg_none_refused(verifier: TokenVerifier, corp: Issuer) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": corp.keys[0].kid}).encode())
    payload = _b64(
        json.dumps(
            {
                "iss": corp.url,
                "sub": "admin",
                "aud": "querytrail",
                "iat": int(time.time()),
                "exp": int(time.time()) + 300,
            }
        ).encode()
    )
    assert _code(verifier, f"{header}.{payload}.") == "disallowed_algorithm"


def test_hs256_with_public_key_as_secret_refused(verifier: TokenVerifier, corp: Issuer) -> None:
    public_pem = (
        corp.keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": corp.keys[0].kid}).encode())
    payload = _b64(
        json.dumps(
            {
                "iss": corp.url,
                "sub": "admin",
                "aud": "querytrail",
                "iat": int(time.time()),
                "exp": int(time.time()) + 300,
            }
        ).encode()
    )
    signing_input = f"{header}.{payload}".encode()
    sig = _b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
    assert _code(verifier, f"{header}.{payload}.{sig}") == "disallowed_algorithm"


def test_algorithm_not_allowed_for_issuer(corp: Issuer) -> None:
    v = _verifier(IssuerSettings(issuer=corp.url, algorithms=["ES256"]))
    assert _code(v, corp.mint(corp.keys[0])) == "disallowed_algorithm"
    v.verify(corp.mint(corp.keys[1]))


def test_key_of_another_algorithm_is_not_used(verifier: TokenVerifier, corp: Issuer) -> None:
    # An ES256 token that names the RSA key's kid: the RSA key is not a key for ES256.
    assert _code(verifier, corp.mint(corp.keys[1], kid=corp.keys[0].kid)) == "unknown_key"


def test_missing_claim_and_malformed(verifier: TokenVerifier, corp: Issuer) -> None:
    assert _code(verifier, corp.mint(drop=("sub",))) == "missing_claim"
    assert _code(verifier, corp.mint(drop=("exp",))) == "missing_claim"
    assert _code(verifier, "not-a-token") == "malformed"
    assert _code(verifier, "a.b.c") == "malformed"
    assert _code(verifier, "") == "missing_token"


def test_discovery_then_cache(issuer_server: IssuerServer, verifier: TokenVerifier, corp: Issuer) -> None:
    for _ in range(5):
        verifier.verify(corp.mint())
    assert issuer_server.discovery_hits(corp) == 1
    assert issuer_server.jwks_hits(corp) == 1


def test_configured_jwks_uri_skips_discovery(issuer_server: IssuerServer, corp: Issuer) -> None:
    v = _verifier(IssuerSettings(issuer=corp.url, jwks_uri=f"{corp.url}/jwks.json"))
    v.verify(corp.mint())
    assert issuer_server.discovery_hits(corp) == 0 and issuer_server.jwks_hits(corp) == 1


def test_unreachable_issuer(corp: Issuer) -> None:
    v = _verifier(IssuerSettings(issuer="http://127.0.0.1:9/nowhere"))
    token = jwt.encode(
        {
            "iss": "http://127.0.0.1:9/nowhere",
            "sub": "x",
            "aud": "querytrail",
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
        },
        corp.keys[0].private,
        algorithm="RS256",
        headers={"kid": "k"},
    )
    assert _code(v, token) == "issuer_unavailable"


def test_key_rotation_accepted_after_one_refetch(issuer_server: IssuerServer, corp: Issuer) -> None:
    v = _verifier(IssuerSettings(issuer=corp.url), interval=0.3)
    v.verify(corp.mint())
    assert issuer_server.jwks_hits(corp) == 1
    new = SigningKey.new("ES256")
    corp.keys = [new]  # the issuer rotates: the old keys are gone
    time.sleep(0.35)
    ident = v.verify(corp.mint(new, sub="after-rotation"))
    assert ident.subject == "after-rotation"
    assert issuer_server.jwks_hits(corp) == 2


@pytest.mark.slow
def test_flood_of_unknown_kids_fetches_at_most_once_per_interval(
    issuer_server: IssuerServer, corp: Issuer
) -> None:
    interval = 1.0
    v = _verifier(IssuerSettings(issuer=corp.url), interval=interval)
    v.verify(corp.mint())
    assert issuer_server.jwks_hits(corp) == 1
    attacker = SigningKey.new("RS256")
    codes: list[str] = []

    def flood() -> None:
        for _ in range(25):
            try:
                v.verify(corp.mint(attacker, kid=uuid.uuid4().hex))
            except IdentityError as err:
                codes.append(err.code)

    for round_no in (1, 2):
        time.sleep(interval + 0.05)
        threads = [threading.Thread(target=flood) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # 100 unknown kids in well under one interval: exactly one more fetch per round.
        assert issuer_server.jwks_hits(corp) == 1 + round_no
    assert len(codes) == 200 and set(codes) == {"unknown_key"}
    v.verify(corp.mint())  # genuine tokens still pass

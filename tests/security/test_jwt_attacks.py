"""JWT attack tokens against the HTTP ingress and the Kafka path (token sealed to the worker).

Each is refused with its specific reason and recorded as QueryRejected (stage identity, the
token's SHA-256, never the token). Tokens are really signed: with the dev issuer's own key where
the attack needs a genuine signature, with an attacker's key otherwise. A jku/x5u header points at
a real attacker HTTP server, which must never be contacted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.events import ClientContext, QueryRejected, Target
from tests.reliability.reliability_stack import Stack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SQL = "SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 1"


class _AttackerServer:
    """Serves an attacker's JWKS/certificate and counts every request it gets."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        hits = self.hits = [0]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits[0] += 1
                body = json.dumps(jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    sig = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{_b64(sig)}"


def attack_tokens(stack: Stack, attacker_url: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (token, accepted refusal codes)."""
    from querytrail.devissuer import jwks_document

    settings = stack.settings
    pem = (settings.keys_dir / "dev-issuer-eddsa.pem").read_bytes()
    real = serialization.load_pem_private_key(pem, password=None)
    jwk = next(k for k in jwks_document(settings)["keys"] if k["alg"] == "EdDSA")
    kid = jwk["kid"]
    public_pem = real.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    attacker = Ed25519PrivateKey.generate()
    now = int(time.time())
    iss = settings.identity.dev_issuer_url.rstrip("/")
    claims = {
        "iss": iss, "sub": "mallory", "aud": "querytrail", "iat": now, "nbf": now, "exp": now + 600,
        "jti": str(uuid.uuid4()), "groups": ["ci", "data-security"],
    }  # fmt: skip

    def signed(key: Any = real, headers: dict[str, Any] | None = None, **changes: Any) -> str:
        payload = {**claims, "jti": str(uuid.uuid4()), **changes}
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": kid, **(headers or {})})

    genuine = signed()
    head, _payload, sig = genuine.split(".")
    tampered_payload = _b64(
        json.dumps({**claims, "sub": "alice", "groups": ["data-security", "admin"]}).encode()
    )
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    return {
        "alg_none": (_compact({"alg": "none", "typ": "JWT"}, claims), {"disallowed_algorithm"}),
        "alg_none_with_kid": (_compact({"alg": "None", "kid": kid}, claims), {"disallowed_algorithm"}),
        "hs256_public_pem_as_secret": (
            _compact(hs_header, claims, lambda m: hmac.new(public_pem, m, hashlib.sha256).digest()),
            {"disallowed_algorithm"},
        ),
        "hs256_jwk_x_as_secret": (
            _compact(hs_header, claims, lambda m: hmac.new(jwk["x"].encode(), m, hashlib.sha256).digest()),
            {"disallowed_algorithm"},
        ),
        "expired": (signed(iat=now - 7200, nbf=now - 7200, exp=now - 3600), {"expired"}),
        "not_yet_valid": (signed(nbf=now + 3600, iat=now, exp=now + 7200), {"not_yet_valid"}),
        "wrong_audience": (signed(aud="someone-else"), {"wrong_audience"}),
        "unknown_issuer": (signed(iss="https://evil.example/issuer"), {"unknown_issuer"}),
        "no_expiry": (signed(exp=None), {"missing_claim"}),
        "tampered_payload": (f"{head}.{tampered_payload}.{sig}", {"bad_signature"}),
        "signature_stripped": (f"{head}.{_payload}.", {"bad_signature", "malformed"}),
        "kid_path_traversal": (signed(headers={"kid": "../../../../etc/passwd"}), {"unknown_key"}),
        "kid_sql_injection": (signed(headers={"kid": "x' UNION SELECT 'k"}), {"unknown_key"}),
        "jku_to_attacker_keys": (
            signed(attacker, headers={"kid": "attacker-1", "jku": f"{attacker_url}/jwks.json"}),
            {"unknown_key"},
        ),
        "x5u_with_real_kid": (
            signed(attacker, headers={"x5u": f"{attacker_url}/cert.pem", "jwk": {"kty": "OKP"}}),
            {"bad_signature"},
        ),
        "attacker_key_real_kid": (signed(attacker), {"bad_signature"}),
        "huge": (signed(padding="A" * 40_000), {"malformed"}),
        "not_a_jwt": ("definitely-not-a-token", {"malformed"}),
    }


@pytest.fixture(scope="module")
def attacker(stack: Stack) -> Iterator[_AttackerServer]:
    attacker_key = Ed25519PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(attacker_key.public_key()))
    server = _AttackerServer({"keys": [{**jwk, "kid": "attacker-1", "alg": "EdDSA"}]})
    yield server
    server.close()


def _sha(token: str) -> str:
    from querytrail.sealing import token_sha256

    return token_sha256(token)


def test_attack_tokens_are_refused_over_http_and_recorded(stack: Stack, attacker: _AttackerServer) -> None:
    tokens = attack_tokens(stack, attacker.url)
    stack.minted.extend(t for t, _ in tokens.values())
    refused: dict[str, tuple[str, str]] = {}
    for name, (token, codes) in tokens.items():
        status, body = stack.post_query(token, SQL)
        assert status == 401, (name, status, body)
        assert body["error"] in codes, (name, body)
        assert token not in json.dumps(body)
        refused[body["request_id"]] = (name, body["error"])
    rejected = wait_for(stack, "results", lambda e: isinstance(e, QueryRejected) and e.request_id in refused,
                        timeout=60, count=len(refused))  # fmt: skip
    by_rid = {e.request_id: e for e in rejected}
    assert len(rejected) == len(refused)  # each recorded once
    for rid, (name, code) in refused.items():
        event = by_rid[rid]
        assert (event.stage, event.reason_code) == ("identity", code), name
        assert event.token_sha256 == _sha(tokens[name][0]), name
        assert event.identity is None, name  # nothing of an unverified caller counts as identity
    assert attacker.hits == [0], "a jku/x5u header was followed"


def test_attack_tokens_are_refused_on_the_kafka_path_and_recorded(
    stack: Stack, attacker: _AttackerServer
) -> None:
    from ingress.client import QueryClient

    tokens = attack_tokens(stack, attacker.url)
    stack.minted.extend(t for t, _ in tokens.values())
    client = QueryClient(stack.settings)
    subs = {}
    for name, (token, _codes) in tokens.items():
        subs[name] = client.submit(
            token=token, request_id=f"req-{uuid.uuid4()}", prompt=f"attack {name}", sql=SQL, model="m",
            target=Target(profile="analytics"), context=ClientContext(),
        )  # fmt: skip
    try:
        for name, sub in subs.items():
            outcome = sub.wait(60)
            assert outcome.status == "rejected", (name, outcome.to_json())
            assert outcome.rejected["stage"] == "identity", (name, outcome.rejected)
            assert outcome.rejected["reason_code"] in tokens[name][1], (name, outcome.rejected)
            assert outcome.decision is None  # nothing is decided for an unverified caller
    finally:
        for sub in subs.values():
            sub.close()
    rids = {sub.request_id: name for name, sub in subs.items()}
    rejected = wait_for(stack, "results", lambda e: isinstance(e, QueryRejected) and e.request_id in rids,
                        timeout=30, count=len(rids))  # fmt: skip
    assert len(rejected) == len(rids)
    for event in rejected:
        assert event.token_sha256 == _sha(tokens[rids[event.request_id]][0])
    assert attacker.hits == [0], "a jku/x5u header was followed"

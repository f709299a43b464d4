"""A real local OIDC issuer server (stdlib http.server in a thread) and signing keys, for the ingress tests."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

_GEN = {
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": Ed25519PrivateKey.generate,
}
_ALGO = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}


@dataclass
class SigningKey:
    alg: str
    kid: str
    private: Any

    @classmethod
    def new(cls, alg: str) -> SigningKey:
        return cls(alg=alg, kid=f"{alg.lower()}-{uuid.uuid4().hex[:8]}", private=_GEN[alg]())

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = _ALGO[self.alg].to_jwk(self.private.public_key(), as_dict=True)
        data.update(kid=self.kid, alg=self.alg, use="sig")
        return data


@dataclass
class Issuer:
    """One issuer served under ``/<name>`` by the server; its key set can be swapped (rotation)."""

    name: str
    url: str
    keys: list[SigningKey] = field(default_factory=list)

    def mint(
        self,
        key: SigningKey | None = None,
        *,
        aud: str = "querytrail",
        ttl: int = 300,
        now: float | None = None,
        kid: str | None = None,
        drop: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        key = key or self.keys[0]
        issued = int(now if now is not None else time.time())
        payload: dict[str, Any] = {
            "iss": self.url,
            "sub": "ci-bot",
            "aud": aud,
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl,
            **claims,
        }
        for name in drop:
            payload.pop(name, None)
        return jwt.encode(payload, key.private, algorithm=key.alg, headers={"kid": kid or key.kid})


class IssuerServer:
    """Serves discovery documents and key sets for several issuers, counting every request."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.issuers: dict[str, Issuer] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] += 1
                name, _, rest = self.path.lstrip("/").partition("/")
                issuer = server.issuers.get(name)
                if issuer is None:
                    self.send_error(404)
                    return
                if rest == ".well-known/openid-configuration":
                    body: dict[str, Any] = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks.json"}
                elif rest == "jwks.json":
                    body = {"keys": [k.jwk() for k in issuer.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, name: str, *algs: str) -> Issuer:
        issuer = Issuer(name=name, url=f"{self.base}/{name}", keys=[SigningKey.new(a) for a in algs])
        self.issuers[name] = issuer
        return issuer

    def jwks_hits(self, issuer: Issuer) -> int:
        return self.hits[f"/{issuer.name}/jwks.json"]

    def discovery_hits(self, issuer: Issuer) -> int:
        return self.hits[f"/{issuer.name}/.well-known/openid-configuration"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

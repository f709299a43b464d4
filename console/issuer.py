"""The console's SAML bridge issuer: short-lived EdDSA tokens for users who signed in with SAML.

A SAML assertion is not a bearer token the worker can verify, so after the console has verified
the IdP's signed assertion it mints, per verdict, a JWT valid for ``ttl_s`` (2 minutes) naming
the same subject and groups, signed with its own Ed25519 key (``keys/console-saml-issuer.pem``,
created and read through ``querytrail.keys``). The worker accepts it only because the operator
lists this issuer in ``identity.issuers`` with the console's JWKS URL: the trust this adds is
that whoever holds that key can approve as any member of any approver group (docs/console.md).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from querytrail.keys import ensure_keypair, key_id, load_private

__all__ = ["AUDIENCE", "KEY_FILE", "ConsoleIssuer"]

KEY_FILE = "console-saml-issuer.pem"
AUDIENCE = "querytrail-console-saml"


class ConsoleIssuer:
    """Mints the SAML bridge tokens and publishes their public key as a JWKS."""

    def __init__(self, keys_dir: Path, issuer_url: str, *, ttl_s: int = 120) -> None:
        path = keys_dir / KEY_FILE
        ensure_keypair(path)
        self._key: Ed25519PrivateKey = load_private(path)
        self.issuer = issuer_url.rstrip("/")
        self.kid = "console-" + key_id(self._key.public_key())
        self.ttl_s = ttl_s

    def jwks(self) -> dict[str, Any]:
        jwk = OKPAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update(kid=self.kid, alg="EdDSA", use="sig")
        return {"keys": [jwk]}

    def mint(self, subject: str, groups: tuple[str, ...], extra: dict[str, Any] | None = None) -> str:
        """A token for one verdict: the SAML subject and groups, ``ttl_s`` seconds."""
        now = int(time.time())
        claims: dict[str, Any] = {
            **(extra or {}),
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": subject,
            "groups": list(groups),
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_s,
            "jti": str(uuid.uuid4()),
            "amr": ["saml"],
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self.kid})

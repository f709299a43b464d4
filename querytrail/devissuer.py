"""The dev issuer: a local key pair that mints tokens for the local stack (never trusted in production).

Keys live under ``settings.home/keys`` (``dev-issuer-eddsa.pem``, ``dev-issuer-es256.pem``) and
are created on first use. The issuer URL is ``settings.identity.dev_issuer_url``; the HTTP
ingress serves its discovery document and JWKS there only when ``dev_issuer_enabled``.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from querytrail.jwks import StaticJwksSource
from querytrail.sealing import sha256_hex
from querytrail.settings import IssuerSettings, Settings

__all__ = [
    "DEV_ALGORITHMS",
    "discovery_document",
    "issuer_settings",
    "jwks_document",
    "local_source",
    "mint_token",
    "parse_duration",
]

DEV_ALGORITHMS = ("EdDSA", "ES256")
_FILES = {"EdDSA": "dev-issuer-eddsa.pem", "ES256": "dev-issuer-es256.pem"}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")

DevKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def parse_duration(text: str) -> int:
    """``90``, ``30s``, ``10m``, ``2h``, ``1d`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 10m, 2h)")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _key_path(settings: Settings, alg: str) -> Path:
    return settings.keys_dir / _FILES[alg]


def _load_or_create(settings: Settings, alg: str) -> DevKey:
    path = _key_path(settings, alg)
    if not path.exists():
        key: DevKey = (
            Ed25519PrivateKey.generate() if alg == "EdDSA" else ec.generate_private_key(ec.SECP256R1())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} does not hold a dev issuer key")
    return loaded


def _kid(key: DevKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "dev-" + sha256_hex(der)[:16]


def _jwk(key: DevKey, alg: str) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    jwk.update(kid=_kid(key), alg=alg, use="sig")
    return jwk


def jwks_document(settings: Settings) -> dict[str, Any]:
    """The dev issuer's public keys (keys are created when missing)."""
    return {"keys": [_jwk(_load_or_create(settings, alg), alg) for alg in DEV_ALGORITHMS]}


def discovery_document(settings: Settings) -> dict[str, Any]:
    url = settings.identity.dev_issuer_url.rstrip("/")
    return {
        "issuer": url,
        "jwks_uri": f"{url}/jwks.json",
        "id_token_signing_alg_values_supported": list(DEV_ALGORITHMS),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "claims_supported": ["sub", "aud", "exp", "iat", "nbf", "iss", "jti", "groups", "repository"],
    }


def issuer_settings(settings: Settings) -> IssuerSettings:
    """How the verifier trusts the dev issuer (only when dev_issuer_enabled)."""
    url = settings.identity.dev_issuer_url.rstrip("/")
    return IssuerSettings(
        issuer=url,
        audience="querytrail",
        jwks_uri=f"{url}/jwks.json",
        algorithms=list(DEV_ALGORITHMS),
        service_account_claim="service_account",
    )


def local_source(settings: Settings) -> StaticJwksSource:
    """The dev JWKS read from the key files: the worker needs no running ingress to verify."""
    return StaticJwksSource(lambda: jwks_document(settings))


def mint_token(
    settings: Settings,
    *,
    sub: str,
    groups: Sequence[str] = (),
    claims: Mapping[str, Any] | None = None,
    ttl_s: int = 600,
    audience: str = "querytrail",
    alg: str = "EdDSA",
    now: float | None = None,
) -> str:
    """A token signed by the dev issuer's key."""
    if settings.environment == "production":
        raise ValueError("the dev issuer does not mint tokens in production")
    if alg not in DEV_ALGORITHMS:
        raise ValueError(f"the dev issuer signs with {' or '.join(DEV_ALGORITHMS)}, not {alg}")
    key = _load_or_create(settings, alg)
    issued = int(now if now is not None else time.time())
    payload: dict[str, Any] = dict(claims or {})
    payload.update(
        iss=settings.identity.dev_issuer_url.rstrip("/"),
        sub=sub,
        aud=audience,
        iat=issued,
        nbf=issued,
        exp=issued + ttl_s,
        jti=str(uuid.uuid4()),
    )
    if groups:
        payload["groups"] = list(groups)
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": _kid(key)})

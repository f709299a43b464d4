"""Verify an event's ``Credential`` (for the worker and approvals): sealed token or ingress attestation.

``CredentialVerifier.verify(credential, request_id=..., sql=...) -> Identity`` raising
``IdentityError``. Besides the identity codes: ``bad_seal`` (the sealed token does not open
for this request with the worker key), ``bad_attestation`` (unknown ingress key or a signature
that does not cover these fields), and ``malformed`` (neither or both proofs, or a
token_sha256 that does not match the token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from querytrail.identity import Identity, IdentityError, TokenVerifier, map_claims
from querytrail.sealing import (
    AttestationExpired,
    SealingError,
    key_id,
    load_attestation_public_key,
    load_sealing_private_key,
    token_sha256,
    unseal_token,
    verify_attestation,
)
from querytrail.settings import Settings

__all__ = ["CredentialVerifier", "identity_from_verified"]

log = logging.getLogger(__name__)


def identity_from_verified(verified: Any) -> Identity:
    """An Identity rebuilt from a ``VerifiedIdentity`` (claims from its canonical claims_json)."""
    claims = json.loads(verified.claims_json)

    def ci(name: str) -> str | None:
        value = claims.get(name)
        return None if value is None or isinstance(value, dict | list) else str(value)

    return Identity(
        subject=verified.subject,
        issuer=verified.issuer,
        groups=tuple(verified.groups),
        service_account=verified.service_account,
        actor=verified.actor,
        repository=ci("repository"),
        workflow=ci("workflow"),
        ref=ci("ref"),
        run_id=ci("run_id"),
        sha=ci("sha"),
        claims=claims,
        token_sha256=verified.token_sha256,
    )


class CredentialVerifier:
    """Holds the worker's unsealing key, the trusted ingress keys and a TokenVerifier."""

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        sealing_key: X25519PrivateKey | None,
        ingress_keys: Mapping[str, Ed25519PublicKey],
    ) -> None:
        self.verifier = verifier
        self._sealing_key = sealing_key
        self._ingress_keys = dict(ingress_keys)

    @classmethod
    def from_settings(cls, settings: Settings, verifier: TokenVerifier | None = None) -> CredentialVerifier:
        """Reads the sealing private key and the ingress public key when their files exist."""
        try:
            sealing: X25519PrivateKey | None = load_sealing_private_key(settings)
        except FileNotFoundError:
            log.warning("no token sealing key: sealed credentials will be refused")
            sealing = None
        keys: dict[str, Ed25519PublicKey] = {}
        try:
            public = load_attestation_public_key(settings)
            keys[key_id(public)] = public
        except FileNotFoundError:
            log.warning("no ingress public key: attested credentials will be refused")
        return cls(verifier or TokenVerifier.from_settings(settings), sealing_key=sealing, ingress_keys=keys)

    def verify(
        self,
        credential: Any,
        *,
        request_id: str,
        sql: str | None = None,
        sql_sha256: str | None = None,
        binding: bytes | None = None,
    ) -> Identity:
        """The verified caller behind ``credential`` for this request and statement.

        ``binding``: what a sealed token must be bound to besides the request (a verdict's
        ``sealing.verdict_binding``); a token sealed for other fields does not open.
        """
        sealed, attested = credential.sealed_token, credential.attested
        if (sealed is None) == (attested is None):
            raise IdentityError("malformed", "a credential carries exactly one of sealed_token or attested")
        if sealed is not None:
            return self._verify_sealed(sealed, credential.token_sha256, request_id, binding)
        if binding is not None:  # no attested verdicts: an approver proves itself with its own token
            raise IdentityError("malformed", "a verdict's credential must be the approver's sealed token")
        return self._verify_attested(credential, request_id, sql, sql_sha256)

    def _verify_sealed(
        self, sealed: bytes, claimed_sha: str, request_id: str, binding: bytes | None = None
    ) -> Identity:
        if self._sealing_key is None:
            raise IdentityError("bad_seal", "this worker holds no token sealing key")
        try:
            token = unseal_token(sealed, self._sealing_key, request_id, binding)
        except SealingError as exc:
            raise IdentityError("bad_seal", str(exc)) from None
        if token_sha256(token) != claimed_sha:
            raise IdentityError("malformed", "token_sha256 does not match the sealed token")
        return self.verifier.verify(token)

    def _verify_attested(
        self, credential: Any, request_id: str, sql: str | None, sql_sha256: str | None
    ) -> Identity:
        attested = credential.attested
        public = self._ingress_keys.get(credential.attestation_key_id or "")
        if public is None or credential.attestation_signature is None:
            raise IdentityError("bad_attestation", "attestation by an unknown ingress key")
        if attested.token_sha256 != credential.token_sha256:
            raise IdentityError("malformed", "attested token_sha256 differs from the credential's")
        try:
            verify_attestation(
                public,
                credential.attestation_signature,
                request_id=request_id,
                token_sha256=credential.token_sha256,
                claims_json=attested.claims_json,
                sql=sql,
                sql_sha256=sql_sha256,
            )
        except AttestationExpired as exc:
            raise IdentityError("attestation_expired", str(exc)) from None
        except SealingError as exc:
            raise IdentityError("bad_attestation", str(exc)) from None
        # The signature covers claims_json only, so the structured fields are re-derived from
        # the claims with this side's issuer settings and must agree.
        issuer = self.verifier.issuer_settings(attested.issuer)
        if issuer is None:
            raise IdentityError("unknown_issuer", f"issuer {attested.issuer!r} is not trusted")
        identity = map_claims(json.loads(attested.claims_json), issuer, credential.token_sha256)
        if (
            identity.subject,
            identity.issuer,
            tuple(identity.groups),
            identity.service_account,
            identity.actor,
        ) != (
            attested.subject,
            attested.issuer,
            tuple(attested.groups),
            attested.service_account,
            attested.actor,
        ):
            raise IdentityError("bad_attestation", "attested identity fields disagree with its claims")
        return identity

"""The worker's credential check: a Credential in, a VerifiedIdentity or a CredentialError out.

I/O (JWKS fetches, key files) happens here, at the worker's edge, so the decision core it feeds
(``processors.decision.requests``) stays pure.
"""

from __future__ import annotations

from typing import Any

from processors.decision.requests import CredentialError
from querytrail.credentials import CredentialVerifier
from querytrail.identity import IdentityError
from schemas.events import Credential, VerifiedIdentity

__all__ = ["CredentialChecker"]


class CredentialChecker:
    """Turns a Credential into a VerifiedIdentity (I/O: JWKS, keys) or a CredentialError.

    A thin adapter over ``querytrail.credentials.CredentialVerifier``, the one place that unseals
    tokens and checks ingress attestations (re-deriving the identity from the signed claims),
    so the HTTP path and the Kafka path can never disagree on who a caller is.
    """

    def __init__(self, token_verifier: Any, sealing_key: Any, attestation_keys: dict[str, Any]) -> None:
        self._verifier = CredentialVerifier(
            token_verifier, sealing_key=sealing_key, ingress_keys=attestation_keys
        )

    def check(
        self,
        request_id: str,
        credential: Credential,
        *,
        sql: str | None = None,
        sql_sha256: str | None = None,
        binding: bytes | None = None,
    ) -> VerifiedIdentity:
        try:
            identity = self._verifier.verify(
                credential, request_id=request_id, sql=sql, sql_sha256=sql_sha256, binding=binding
            )
        except IdentityError as exc:
            raise CredentialError(exc.code, exc.message) from None
        except ValueError as exc:  # claims_json that is not JSON
            raise CredentialError("malformed", f"credential could not be read: {exc}") from None
        verified: VerifiedIdentity = identity.to_verified()
        return verified

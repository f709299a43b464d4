"""OIDC bearer-token verification: trusted issuers, JWKS keys, an algorithm allow-list, claims.

``TokenVerifier.verify(token) -> Identity`` or ``IdentityError(code, message)``. Codes:
expired, not_yet_valid, wrong_audience, unknown_issuer, bad_signature, unknown_key,
disallowed_algorithm, missing_claim, malformed, and issuer_unavailable (the issuer's keys
could not be fetched: not the caller's fault, still refused).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt
from jwt import exceptions as jwt_exc

from querytrail.jwks import HttpJwksSource, JwksCache, JwksSource, JwksUnavailable
from querytrail.sealing import token_sha256 as _token_sha256
from querytrail.settings import IssuerSettings, Settings

if TYPE_CHECKING:
    from schemas.events import VerifiedIdentity

__all__ = [
    "ALLOWED_ALGORITHMS",
    "IDENTITY_ERROR_CODES",
    "Identity",
    "IdentityError",
    "TokenVerifier",
    "canonical_json",
    "map_claims",
]

log = logging.getLogger(__name__)

# Asymmetric only: HS256 would let anyone holding the issuer's *public* key mint tokens.
ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
IDENTITY_ERROR_CODES = (
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "unknown_issuer",
    "bad_signature",
    "unknown_key",
    "disallowed_algorithm",
    "missing_claim",
    "malformed",
    "issuer_unavailable",
    "missing_token",
    "bad_seal",
    "bad_attestation",
)
_MAX_TOKEN_CHARS = 16_384
_CI_FIELDS = ("repository", "workflow", "ref", "run_id", "sha")


class IdentityError(Exception):
    """A token was refused; ``code`` is one of IDENTITY_ERROR_CODES. Never carries the token."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def canonical_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@dataclass(frozen=True, kw_only=True)
class Identity:
    """A caller querytrail verified itself."""

    subject: str
    issuer: str
    groups: tuple[str, ...] = ()
    service_account: bool = False
    actor: str | None = None
    repository: str | None = None
    workflow: str | None = None
    ref: str | None = None
    run_id: str | None = None
    sha: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    token_sha256: str = ""

    @property
    def claims_json(self) -> str:
        return canonical_json(self.claims)

    def to_verified(self) -> VerifiedIdentity:
        """As ``schemas.events.VerifiedIdentity`` (claims canonical, only the token's hash)."""
        from schemas.events import VerifiedIdentity

        return VerifiedIdentity(
            subject=self.subject,
            issuer=self.issuer,
            groups=tuple(self.groups),
            service_account=self.service_account,
            actor=self.actor,
            claims_json=self.claims_json,
            token_sha256=self.token_sha256,
        )


def _as_str(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _groups(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # some IdPs send one space- or comma-separated string
        return tuple(g for g in value.replace(",", " ").split() if g)
    if isinstance(value, list | tuple):
        return tuple(str(g) for g in value)
    return ()


def map_claims(claims: Mapping[str, Any], issuer: IssuerSettings, token_sha: str) -> Identity:
    """Map verified claims to an Identity following the issuer's claim settings."""
    claim_map = dict(getattr(issuer, "claim_map", {}) or {})
    subject = claims.get(claim_map.get("subject", issuer.subject_claim))
    if not isinstance(subject, str) or not subject:
        raise IdentityError("missing_claim", f"token has no subject claim {issuer.subject_claim!r}")
    ci: dict[str, str | None] = {}
    for name in _CI_FIELDS:
        claim = claim_map.get(name, name)
        ci[name] = _as_str(claims.get(claim)) if claim in issuer.ci_claims or name in claim_map else None
    actor = _as_str(claims.get(claim_map.get("actor", "actor")))
    act = claims.get("act")  # RFC 8693 delegation: the acting party
    if actor is None and isinstance(act, dict):
        actor = _as_str(act.get("sub"))
    marker = claims.get(issuer.service_account_claim) if issuer.service_account_claim else None
    # A string "false" is truthy in Python but means no in a claim.
    if isinstance(marker, str):
        marker = marker.strip().lower() not in ("", "0", "false", "no")
    service_account = issuer.service_account or bool(marker)
    return Identity(
        subject=subject,
        issuer=str(claims.get("iss", issuer.issuer)),
        groups=_groups(claims.get(claim_map.get("groups", issuer.groups_claim))),
        service_account=service_account,
        actor=actor,
        claims=dict(claims),
        token_sha256=token_sha,
        **ci,
    )


_CLAIM_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt_exc.ExpiredSignatureError, "expired"),
    (jwt_exc.ImmatureSignatureError, "not_yet_valid"),
    (jwt_exc.InvalidAudienceError, "wrong_audience"),
    (jwt_exc.InvalidIssuerError, "unknown_issuer"),
    (jwt_exc.MissingRequiredClaimError, "missing_claim"),
    (jwt_exc.InvalidSignatureError, "bad_signature"),
    (jwt_exc.InvalidKeyError, "bad_signature"),
    (jwt_exc.InvalidAlgorithmError, "disallowed_algorithm"),
    (jwt_exc.PyJWTError, "malformed"),
)


class TokenVerifier:
    """Verifies bearer tokens against several trusted issuers at once. Thread-safe."""

    def __init__(
        self,
        issuers: Sequence[IssuerSettings],
        *,
        leeway_s: float = 30.0,
        cache_ttl_s: float = 3600.0,
        min_refetch_interval_s: float = 60.0,
        http_timeout_s: float = 5.0,
        sources: Mapping[str, JwksSource] | None = None,
    ) -> None:
        self._issuers = {i.issuer: i for i in issuers}
        self._leeway = leeway_s
        self._caches: dict[str, JwksCache] = {}
        for iss in issuers:
            source = (sources or {}).get(iss.issuer) or HttpJwksSource(
                iss.issuer, iss.jwks_uri, timeout_s=http_timeout_s
            )
            self._caches[iss.issuer] = JwksCache(
                source, ttl_s=cache_ttl_s, min_refetch_interval_s=min_refetch_interval_s
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """The configured issuers, plus the dev issuer when (and only when) it is enabled."""
        ident = settings.identity
        issuers = list(ident.issuers)
        sources: dict[str, JwksSource] = {}
        if ident.dev_issuer_enabled:
            if settings.environment == "production":
                raise ValueError("the dev issuer is never trusted in production")
            from querytrail import devissuer

            dev = devissuer.issuer_settings(settings)
            issuers = [i for i in issuers if i.issuer != dev.issuer] + [dev]
            sources[dev.issuer] = devissuer.local_source(settings)
        return cls(
            issuers,
            leeway_s=ident.leeway_s,
            cache_ttl_s=ident.jwks_cache_ttl_s,
            min_refetch_interval_s=ident.jwks_min_refetch_interval_s,
            http_timeout_s=ident.http_timeout_s,
            sources=sources,
        )

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._issuers)

    def issuer_settings(self, issuer: str) -> IssuerSettings | None:
        """The settings of a trusted issuer, or None."""
        return self._issuers.get(issuer)

    def cache(self, issuer: str) -> JwksCache:
        return self._caches[issuer]

    def verify(self, token: str) -> Identity:
        """Verify ``token``; raise IdentityError with the specific reason otherwise."""
        token = (token or "").strip()
        if not token:
            raise IdentityError("missing_token", "no bearer token presented")
        if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
            raise IdentityError("malformed", "not a compact JWS")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt_exc.PyJWTError as exc:
            raise IdentityError("malformed", f"cannot decode token: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise IdentityError("disallowed_algorithm", f"algorithm {alg!r} is not allowed")
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise IdentityError("missing_claim", "token has no 'iss' claim")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise IdentityError("unknown_issuer", f"issuer {iss!r} is not trusted")
        if alg not in issuer.algorithms:
            raise IdentityError("disallowed_algorithm", f"algorithm {alg} is not allowed for {iss}")
        kid = header.get("kid")
        try:
            key = self._caches[iss].get(kid if isinstance(kid, str) else None, alg)
        except JwksUnavailable as exc:
            raise IdentityError("issuer_unavailable", f"keys of {iss} unavailable: {exc}") from None
        if key is None:
            raise IdentityError("unknown_key", f"no {alg} key {kid!r} in the key set of {iss}")
        required = sorted({*issuer.required_claims, "iss", "aud", "exp"})
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=self._leeway,
                options={"require": required, "verify_iat": True},
            )
        except jwt_exc.PyJWTError as exc:
            for kind, code in _CLAIM_ERRORS:
                if isinstance(exc, kind):
                    raise IdentityError(code, str(exc)) from None
            raise  # unreachable: PyJWTError is the last entry
        identity = map_claims(claims, issuer, _token_sha256(token))
        log.debug("verified subject %s of %s", identity.subject, identity.issuer)
        return identity

"""OIDC sign-in: authorization code with PKCE (S256) through authlib, ID token verified by querytrail.

The ID token is verified with ``querytrail.identity.TokenVerifier`` built from the same settings the
worker uses, so the console signs in exactly the identities the worker will accept an approval
from, with the same claim-to-identity mapping (groups included). The access token (audience
``querytrail``, as the worker's issuer settings require) is what the console later seals into
the approver's verdict (``ingress.verdicts.send_verdict``); the ID token (audience: the
console's client id) is checked for this sign-in's nonce and the same subject.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client

__all__ = ["OidcError", "OidcLogin"]

_PENDING_TTL_S = 600.0  # a sign-in left on the IdP's page longer than this starts over


class OidcError(Exception):
    """Sign-in refused; the message is safe to show (it never carries a token)."""


class OidcLogin:
    """Starts and finishes one OIDC sign-in; pending sign-ins are kept server-side by state."""

    def __init__(
        self, issuer: str, client_id: str, redirect_uri: str, verifier: Any, timeout_s: float = 10.0
    ) -> None:
        if verifier.issuer_settings(issuer) is None:
            raise ValueError(
                f"the console's OIDC issuer {issuer} is not a trusted issuer (identity.issuers): the worker "
                "would refuse every approval signed in through it"
            )
        self.issuer = issuer
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self._verifier = verifier
        self._timeout = timeout_s
        self._meta: dict[str, Any] | None = None
        self._id_tokens: Any = None
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[str, str, float]] = {}  # state -> (nonce, code_verifier, started)

    async def metadata(self) -> dict[str, Any]:
        if self._meta is None:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                resp = await client.get(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
                resp.raise_for_status()
                meta = resp.json()
            if meta.get("issuer") != self.issuer:
                raise OidcError("the IdP's discovery document names another issuer")
            self._meta = meta
        return self._meta

    async def begin(self) -> tuple[str, str]:
        """(authorization URL, state): the browser goes to the URL; the state binds it to its cookie."""
        meta = await self.metadata()
        state, nonce, code_verifier = (secrets.token_urlsafe(32) for _ in range(3))
        now = time.time()
        with self._lock:
            self._pending = {k: v for k, v in self._pending.items() if now - v[2] < _PENDING_TTL_S}
            self._pending[state] = (nonce, code_verifier, now)
        client = AsyncOAuth2Client(
            client_id=self.client_id,
            redirect_uri=self.redirect_uri,
            scope="openid profile",
            code_challenge_method="S256",
        )
        url, _ = client.create_authorization_url(
            meta["authorization_endpoint"], state=state, nonce=nonce, code_verifier=code_verifier
        )
        return url, state

    async def finish(self, state: str, code: str) -> tuple[Any, str, float]:
        """(Identity, ID token, its expiry) for a callback whose state this console issued."""
        with self._lock:
            pending = self._pending.pop(state, None)  # a state is good for one callback only
        if pending is None or time.time() - pending[2] >= _PENDING_TTL_S:
            raise OidcError("this sign-in is unknown or too old; sign in again")
        nonce, code_verifier, _ = pending
        meta = await self.metadata()
        async with AsyncOAuth2Client(
            client_id=self.client_id,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="none",  # noqa: S106 - a public client: PKCE is the proof
            timeout=self._timeout,
        ) as client:
            try:
                token = await client.fetch_token(
                    meta["token_endpoint"], code=code, code_verifier=code_verifier
                )
            except Exception as exc:
                raise OidcError(f"the IdP refused the authorization code ({type(exc).__name__})") from None
        id_token, access_token = token.get("id_token"), token.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str):
            raise OidcError("the IdP returned no ID token or no access token")
        from querytrail.identity import IdentityError

        try:
            identity = self._verifier.verify(access_token)
            id_claims = self._id_verifier().verify(id_token).claims
        except IdentityError as exc:
            raise OidcError(f"the IdP's token was refused: {exc.code}") from None
        if id_claims.get("nonce") != nonce:
            raise OidcError("the ID token's nonce does not match this sign-in")
        if id_claims.get("sub") != identity.claims.get("sub"):
            raise OidcError("the ID token and the access token name different users")
        return identity, access_token, float(identity.claims["exp"])

    def _id_verifier(self) -> Any:
        from querytrail.identity import TokenVerifier

        trusted = self._verifier.issuer_settings(self.issuer)
        if self._id_tokens is None:
            self._id_tokens = TokenVerifier([trusted.model_copy(update={"audience": self.client_id})])
        return self._id_tokens

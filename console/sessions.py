"""Server-side sessions behind a signed, HttpOnly, SameSite cookie, and their CSRF tokens.

The cookie carries only a random session id signed with itsdangerous (a per-process secret, so
a console restart signs everyone out); who the user is, their groups, their IdP token and the
CSRF token stay in this process. A session ends at the earliest of its absolute lifetime
(``session_ttl_s``) and its IdP token's expiry: the console never holds an identity the worker
would no longer accept.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

__all__ = ["COOKIE", "Session", "SessionStore"]

COOKIE = "qt_console"


@dataclass
class Session:
    """A signed-in user."""

    sid: str
    identity: Any  # querytrail.identity.Identity, mapped from the IdP's claims or attributes
    via: str  # "oidc" or "saml"
    expires_at: float  # wall-clock seconds
    token: str | None = None  # the OIDC ID token (never logged, never rendered)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def name(self) -> str:
        claims = self.identity.claims or {}
        return str(claims.get("preferred_username") or claims.get("name") or self.identity.subject)

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf.encode(), str(presented).encode())


class SessionStore:
    """Sessions by id. Thread-safe; expired sessions are dropped when looked up."""

    def __init__(self, secret: str | None = None, ttl_s: float = 900.0) -> None:
        self.ttl_s = ttl_s
        self._signer = URLSafeSerializer(secret or secrets.token_urlsafe(32), salt="querytrail-console")
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def create(
        self, identity: Any, via: str, *, token: str | None = None, token_exp: float | None = None
    ) -> Session:
        expires = time.time() + self.ttl_s
        if token_exp is not None:
            expires = min(expires, token_exp)
        session = Session(
            sid=secrets.token_urlsafe(32), identity=identity, via=via, expires_at=expires, token=token
        )
        with self._lock:
            self._sessions[session.sid] = session
        return session

    def cookie_value(self, session: Session) -> str:
        return str(self._signer.dumps(session.sid))

    def from_cookie(self, value: str | None) -> Session | None:
        if not value:
            return None
        try:
            sid = self._signer.loads(value)
        except BadSignature:
            return None
        with self._lock:
            session = self._sessions.get(str(sid))
            if session is not None and session.expires_at <= time.time():
                del self._sessions[session.sid]
                return None
        return session

    def drop(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def sign(self, value: str) -> str:
        """A signed value for the short-lived sign-in cookie (binds a login to this browser)."""
        return str(self._signer.dumps(value))

    def unsign(self, value: str | None) -> str | None:
        if not value:
            return None
        try:
            return str(self._signer.loads(value))
        except BadSignature:
            return None

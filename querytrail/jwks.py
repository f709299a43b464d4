"""JWKS discovery and caching, with one rate-limited refetch when a token names an unknown key.

Why rate-limited: an attacker can mint tokens with random ``kid`` values; each unknown kid
must not become a request to the issuer. At most one fetch happens per
``min_refetch_interval_s``, however many unknown kids arrive, so key rotation is picked up
within one interval and a flood costs the issuer nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx
from jwt import PyJWK
from jwt.exceptions import PyJWTError

__all__ = ["HttpJwksSource", "JwksCache", "JwksSource", "JwksUnavailable", "StaticJwksSource"]

log = logging.getLogger(__name__)


class JwksUnavailable(Exception):
    """The issuer's discovery document or key set could not be fetched or parsed."""


class JwksSource(Protocol):
    """Where an issuer's key set comes from."""

    def fetch(self) -> dict[str, Any]: ...


class HttpJwksSource:
    """Discovers ``jwks_uri`` from ``{issuer}/.well-known/openid-configuration`` (unless configured)."""

    def __init__(self, issuer: str, jwks_uri: str | None = None, *, timeout_s: float = 5.0) -> None:
        self.issuer = issuer
        self._jwks_uri = jwks_uri
        self._timeout = timeout_s

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            resp = httpx.get(url, timeout=self._timeout, follow_redirects=False)
            resp.raise_for_status()
            data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise JwksUnavailable(f"cannot fetch {url}: {exc}") from exc
        if not isinstance(data, dict):
            raise JwksUnavailable(f"{url} did not return a JSON object")
        return data

    def jwks_uri(self) -> str:
        if self._jwks_uri is None:
            doc = self._get_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
            # A discovery document for another issuer would let that issuer's keys sign for this one.
            if doc.get("issuer", "").rstrip("/") != self.issuer.rstrip("/"):
                raise JwksUnavailable(
                    f"discovery document of {self.issuer} names issuer {doc.get('issuer')!r}"
                )
            uri = doc.get("jwks_uri")
            if not isinstance(uri, str) or not uri:
                raise JwksUnavailable(f"discovery document of {self.issuer} has no jwks_uri")
            self._jwks_uri = uri
        return self._jwks_uri

    def fetch(self) -> dict[str, Any]:
        return self._get_json(self.jwks_uri())


class StaticJwksSource:
    """A key set produced locally (the dev issuer's key file); no network."""

    def __init__(self, loader: Callable[[], dict[str, Any]]) -> None:
        self._loader = loader

    def fetch(self) -> dict[str, Any]:
        return self._loader()


class JwksCache:
    """Thread-safe cache of one issuer's keys by kid."""

    def __init__(
        self,
        source: JwksSource,
        *,
        ttl_s: float = 3600.0,
        min_refetch_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._ttl = ttl_s
        self._min_interval = min_refetch_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self.fetch_count = 0

    def _refresh(self) -> None:
        """Fetch the key set (caller holds the lock)."""
        self._attempted_at = self._clock()
        self.fetch_count += 1
        doc = self._source.fetch()
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise JwksUnavailable("key set has no 'keys' list")
        by_kid: dict[str, dict[str, Any]] = {}
        for i, jwk in enumerate(keys):
            if isinstance(jwk, dict) and jwk.get("use", "sig") == "sig":
                by_kid[str(jwk.get("kid", f"#{i}"))] = jwk
        self._keys = by_kid
        self._fetched_at = self._attempted_at
        log.info("fetched key set: %d signing keys", len(by_kid))

    def _may_refetch(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._min_interval

    def get(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key for ``kid`` (or the only key when the token names none), or None when unknown.

        Raises JwksUnavailable when no key set could ever be fetched.
        """
        with self._lock:
            stale = self._fetched_at is None or self._clock() - self._fetched_at >= self._ttl
            if stale and self._may_refetch():
                try:
                    self._refresh()
                except JwksUnavailable:
                    if self._fetched_at is None:
                        raise
                    log.warning("key set refresh failed; keeping the cached keys", exc_info=True)
            jwk = self._lookup(kid)
            if jwk is None and self._may_refetch():
                log.info("unknown kid %r: refetching the key set once", kid)
                self._refresh()
                jwk = self._lookup(kid)
            if jwk is None and self._fetched_at is None:
                raise JwksUnavailable("no key set fetched yet")
        # A key published for another algorithm (or key type) is not a key for this token.
        if jwk is None or jwk.get("alg", alg) != alg:
            return None
        try:
            return PyJWK(jwk, algorithm=alg)
        except PyJWTError:
            return None

    def _lookup(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

"""What the ingress's HTTP routes and its MCP server share: the bearer token, refusals, who may read.

Both front doors refuse a bad token the same way (401 with the reason, 503 when the issuer's keys
could not be fetched), limit how many refusals one client address gets recorded, and let a caller
read back only its own requests unless it is an auditor.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from querytrail.identity import Identity, IdentityError

__all__ = ["RefusalLimiter", "bearer_token", "error_response", "may_read", "refused"]


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def refused(err: IdentityError, **extra: Any) -> JSONResponse:
    """401 with the specific reason (503 when the issuer's keys could not be fetched: retry later)."""
    if err.code == "issuer_unavailable":
        return error_response(503, err.code, err.message, **extra)
    resp = error_response(401, err.code, err.message, **extra)
    resp.headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{err.code}"'
    return resp


def bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class RefusalLimiter:
    """Per client address, how many refused (401) callers are recorded a minute (token bucket).

    Every refusal is otherwise a QueryRejected on the results topic: a flood of bad tokens would
    fill the log; past the limit the caller gets 429 and nothing is published (it is logged).
    """

    def __init__(self, per_minute: int, max_clients: int = 10_000) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._max = max_clients
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(client, (self._burst, now))
            tokens = min(self._burst, tokens + (now - at) * self._rate)
            if len(self._buckets) >= self._max and client not in self._buckets:
                self._buckets = {c: b for c, b in self._buckets.items() if b[0] < self._burst}
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                return False
            self._buckets[client] = (tokens - 1.0, now)
            return True


def may_read(identity: Identity, requester: tuple[str, str] | None, auditors: list[str]) -> bool:
    if set(identity.groups) & set(auditors):
        return True
    return requester == (identity.issuer, identity.subject)

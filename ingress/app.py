"""The HTTP ingress: an ASGI (Starlette) app that verifies callers and publishes their requests.

Routes: POST /v1/queries, GET /v1/queries/{id}?wait=N, POST /v1/actions, GET /healthz,
GET /readyz, GET /openapi.json, the MCP server at /mcp (ingress.mcp_server) with its RFC 9728
metadata, and the dev issuer's discovery/JWKS when it is enabled.
Errors are ``{"error": code, "message": text}``. The bearer token and the Authorization
header are never logged, published or echoed: only the token's SHA-256 travels.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ingress.api import (
    ApiError,
    build_action,
    build_query,
    openapi_document,
    read_json_body,
)
from ingress.identity import Identity, IdentityError, TokenVerifier
from ingress.indexer import OutcomeIndexer
from ingress.outcomes import OutcomeIndex
from ingress.sealing import key_id, load_attestation_private_key, token_sha256
from querytrail.keys import event_signer
from querytrail.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def _refused(err: IdentityError, **extra: Any) -> JSONResponse:
    """401 with the specific reason (503 when the issuer's keys could not be fetched: retry later)."""
    if err.code == "issuer_unavailable":
        return _error(503, err.code, err.message, **extra)
    resp = _error(401, err.code, err.message, **extra)
    resp.headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{err.code}"'
    return resp


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class _Ingress:
    """Everything the handlers share: settings, verifier, producer, codec, outcome index."""

    def __init__(self, settings: Settings, verifier: TokenVerifier | None) -> None:
        from schemas.codec import EventCodec

        self.settings = settings
        self.verifier = verifier or TokenVerifier.from_settings(settings)
        self.codec = EventCodec(settings.kafka.schema_registry_url)
        self.signing_key = load_attestation_private_key(settings)
        self.key_id = key_id(self.signing_key.public_key())
        self.event_signer = event_signer(settings, "ingress")  # signs every record it publishes
        prefix = settings.kafka.topic_prefix
        self.topics = {s: f"{prefix}.{s}" for s in ("requests", "results", "actions", "decisions")}
        self.index = OutcomeIndex(settings.ingress.index_max_requests)
        self.idempotency_secret = _idempotency_secret(self.signing_key)
        self.refusals = RefusalLimiter(_REFUSALS_PER_MINUTE)
        self.indexer = OutcomeIndexer(settings, self.index, self.codec)
        self.producer: Any = None

    def start(self) -> None:
        from infra.producer import make_producer

        timeout_ms = int(self.settings.ingress.publish_timeout_s * 1000)
        self.producer = make_producer(self.settings.kafka, **{"message.timeout.ms": timeout_ms})
        self.indexer.start()

    def stop(self) -> None:
        self.indexer.stop()
        if self.producer is not None:
            self.producer.flush(5.0)
        self.indexer.join(timeout=5.0)

    def publish(self, topic: str, event: Any) -> None:
        """Produce one event and wait for its delivery report; ApiError 503 when it is not acknowledged."""
        from confluent_kafka import KafkaException

        from infra.producer import KafkaUnavailableError, produce_sync
        from schemas.codec import key_for

        value = self.codec.encode(event)
        name = self.topics[topic]
        try:
            produce_sync(
                self.producer,
                name,
                value,
                key=key_for(event),
                timeout=self.settings.ingress.publish_timeout_s + 2.0,
                headers=self.event_signer.headers(name, value) if self.event_signer else None,
            )
        except (KafkaUnavailableError, KafkaException, BufferError) as exc:
            log.error(
                "publishing %s failed: %s", event.event_type, exc, extra={"request_id": event.request_id}
            )
            raise ApiError(
                503, "kafka_unavailable", "the event log is unreachable; nothing was recorded"
            ) from None

    async def authenticate(self, request: Request) -> Identity:
        return await run_in_threadpool(self.verifier.verify, _bearer(request))

    def reject_identity(self, request_id: str, token: str, err: IdentityError) -> None:
        """Record a refused caller in the audit log (never the token, only its hash)."""
        from schemas.events import QueryRejected, new_event_id, producer, utcnow

        event = QueryRejected(
            event_id=new_event_id(),
            request_id=request_id,
            occurred_at=utcnow(),
            producer=producer("ingress"),
            stage="identity",
            reason_code=err.code,
            reason=err.message,
            token_sha256=token_sha256(token) if token else None,
        )
        self.publish("results", event)


_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
_REFUSALS_PER_MINUTE = 60  # recorded 401s per client address; past it: 429, nothing published


def _idempotency_secret(signing_key: Any) -> bytes:
    """A secret every ingress replica derives alike from the attestation key, and nobody else."""
    from cryptography.hazmat.primitives import serialization

    raw = signing_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return hmac.new(raw, b"querytrail idempotency request ids v1", hashlib.sha256).digest()


def idempotent_request_id(secret: bytes, issuer: str, subject: str, key: str) -> str:
    """The request id of a caller's Idempotency-Key: the same for every retry, per caller.

    Keyed with the ingress's secret over the caller's *verified* issuer and subject, so nobody
    can compute another caller's id and take it first on the Kafka path.
    """
    digest = hmac.new(secret, f"{issuer}\n{subject}\n{key}".encode(), hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def body_fingerprint(body: dict[str, Any]) -> str:
    """SHA-256 of a request body's canonical JSON: what an Idempotency-Key retry must repeat."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


def _state(request: Request) -> _Ingress:
    state: _Ingress = request.app.state.ingress
    return state


async def post_query(request: Request) -> JSONResponse:
    from schemas.events import new_event_id

    ing = _state(request)
    request_id = new_event_id()
    token = _bearer(request)
    try:
        identity = await ing.authenticate(request)
    except IdentityError as err:
        client = request.client.host if request.client else "unknown"
        if err.code != "issuer_unavailable" and not ing.refusals.allow(client):
            log.warning("refused caller not recorded (rate limit of %s): %s", client, err.code)
            resp = _error(429, "too_many_refusals", "too many refused requests from this address")
            resp.headers["Retry-After"] = "60"
            return resp
        log.info("refused caller: %s", err.code, extra={"request_id": request_id})
        await run_in_threadpool(ing.reject_identity, request_id, token, err)
        return _refused(err, request_id=request_id)
    key = request.headers.get("idempotency-key")
    if key is not None:
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            return _error(400, "bad_idempotency_key", "Idempotency-Key: 1-200 printable ASCII characters")
        # A retry (the 202 was lost: a timeout, a restarted ingress) gets the same request id,
        # so the worker decides it once; scoped to the caller, so keys never collide across callers.
        request_id = idempotent_request_id(ing.idempotency_secret, identity.issuer, identity.subject, key)
    body = await read_json_body(request, ing.settings.ingress.max_body_bytes)
    fingerprint = body_fingerprint(body) if key is not None else None
    if fingerprint is not None and ing.index.fingerprint_conflicts(request_id, fingerprint):
        log.warning("Idempotency-Key reused with another body", extra={"request_id": request_id})
        return _error(409, "idempotency_key_reused", "this Idempotency-Key was sent before with another body")
    event = build_query(
        body,
        request_id=request_id,
        identity=identity,
        settings=ing.settings,
        signing_key=ing.signing_key,
        key_id=ing.key_id,
    )
    await run_in_threadpool(ing.publish, "requests", event)
    ing.index.note_request(request_id, (identity.issuer, identity.subject), fingerprint)
    log.info("accepted request from %s", identity.subject, extra={"request_id": request_id})
    return JSONResponse({"request_id": request_id, "status": "accepted"}, status_code=202)


def _may_read(identity: Identity, requester: tuple[str, str] | None, auditors: list[str]) -> bool:
    if set(identity.groups) & set(auditors):
        return True
    return requester == (identity.issuer, identity.subject)


async def get_query(request: Request) -> JSONResponse:
    ing = _state(request)
    request_id = request.path_params["request_id"]
    try:
        identity = await ing.authenticate(request)
    except IdentityError as err:
        return _refused(err)
    try:
        wait = float(request.query_params.get("wait", "0"))
    except ValueError:
        return _error(400, "bad_request", "wait must be a number of seconds")
    deadline = time.monotonic() + max(0.0, min(wait, ing.settings.ingress.max_wait_s))
    auditors = ing.settings.ingress.auditor_groups
    while True:
        snap = ing.index.get(request_id)
        if snap is not None and snap["requester"] is not None:
            if not _may_read(identity, snap["requester"], auditors):
                return _error(403, "forbidden", "this request belongs to another caller")
            if snap["terminal"]:
                return JSONResponse(snap["body"])
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    if snap is None or (snap["requester"] is None and not _may_read(identity, None, auditors)):
        return _error(404, "not_found", f"no outcome known for request {request_id}")
    return JSONResponse(snap["body"])


async def post_action(request: Request) -> JSONResponse:
    ing = _state(request)
    try:
        identity = await ing.authenticate(request)
    except IdentityError as err:
        return _refused(err)
    body = await read_json_body(request, ing.settings.ingress.max_body_bytes)
    event = build_action(body, identity=identity)
    # the ownership rule of GET: only the requester (or an auditor) reports on a known request
    snap = ing.index.get(event.request_id)
    auditors = ing.settings.ingress.auditor_groups
    if snap is None or (snap["requester"] is None and not _may_read(identity, None, auditors)):
        return _error(404, "not_found", f"no request {event.request_id} known")
    if snap["requester"] is not None and not _may_read(identity, snap["requester"], auditors):
        return _error(403, "forbidden", "this request belongs to another caller")
    await run_in_threadpool(ing.publish, "actions", event)
    log.info("action reported by %s", identity.subject, extra={"request_id": event.request_id})
    return JSONResponse({"request_id": event.request_id, "event_id": event.event_id}, status_code=202)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    ing = _state(request)

    def probe() -> bool:
        try:
            ing.producer.list_topics(timeout=2.0)
            return True
        except Exception:  # KafkaException or a transport error: not ready either way
            return False

    if not await run_in_threadpool(probe):
        return _error(503, "kafka_unavailable", "Kafka is unreachable")
    return JSONResponse({"status": "ready", "outcome_index": ing.indexer.assigned.is_set()})


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())


async def dev_discovery(request: Request) -> JSONResponse:
    from ingress import devissuer

    return JSONResponse(devissuer.discovery_document(_state(request).settings))


async def dev_jwks(request: Request) -> JSONResponse:
    from ingress import devissuer

    return JSONResponse(await run_in_threadpool(devissuer.jwks_document, _state(request).settings))


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _error(exc.status, exc.code, exc.message)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(exc.status_code, code, str(exc.detail))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal_error", "internal error")


def create_app(settings: Settings, *, verifier: TokenVerifier | None = None) -> Starlette:
    """The ingress app; the producer and the outcome index start with the app's lifespan."""
    from ingress.mcp_server import McpMount

    ingress = _Ingress(settings, verifier)
    mcp = McpMount(ingress)  # /mcp: the MCP server over streamable HTTP (docs/mcp.md)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(ingress.start)
        try:
            async with mcp.running():
                yield
        finally:
            await run_in_threadpool(ingress.stop)

    routes = [
        Route("/v1/queries", post_query, methods=["POST"]),
        Route("/v1/queries/{request_id}", get_query, methods=["GET"]),
        Route("/v1/actions", post_action, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *mcp.routes,
    ]
    if settings.identity.dev_issuer_enabled:
        prefix = "/" + settings.identity.dev_issuer_url.split("://", 1)[-1].partition("/")[2].strip("/")
        routes += [
            Route(f"{prefix}/.well-known/openid-configuration", dev_discovery, methods=["GET"]),
            Route(f"{prefix}/jwks.json", dev_jwks, methods=["GET"]),
        ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.ingress = ingress
    return app

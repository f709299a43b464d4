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
from ingress.http_auth import RefusalLimiter, bearer_token, error_response, may_read, refused
from ingress.indexer import OutcomeIndexer
from ingress.outcomes import OutcomeIndex
from querytrail.identity import Identity, IdentityError, TokenVerifier
from querytrail.keys import event_signer
from querytrail.sealing import key_id, load_attestation_private_key, token_sha256
from querytrail.settings import Settings
from schemas.events import envelope
from schemas.topics import topic_names

__all__ = ["create_app"]

log = logging.getLogger(__name__)


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
        names = topic_names(settings.kafka.topic_prefix)
        self.topics = {s: names[s] for s in ("requests", "results", "actions", "decisions")}
        self.index = OutcomeIndex(settings.ingress.index_max_requests)
        self.idempotency_secret = _idempotency_secret(self.signing_key)
        self.refusals = RefusalLimiter(_REFUSALS_PER_MINUTE)
        self.indexer = OutcomeIndexer(settings, self.index, self.codec)
        self.producer: Any = None

    def start(self) -> None:
        from querytrail.kafka_clients import make_producer

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

        from querytrail.kafka_clients import KafkaUnavailableError, produce_sync
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
        return await run_in_threadpool(self.verifier.verify, bearer_token(request))

    def reject_identity(self, request_id: str, token: str, err: IdentityError) -> None:
        """Record a refused caller in the audit log (never the token, only its hash)."""
        from schemas.events import QueryRejected

        event = QueryRejected(
            **envelope(request_id, "ingress"),
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


def _state(request: Request) -> _Ingress:
    state: _Ingress = request.app.state.ingress
    return state


async def post_query(request: Request) -> JSONResponse:
    from schemas.events import new_event_id

    ing = _state(request)
    request_id = new_event_id()
    token = bearer_token(request)
    try:
        identity = await ing.authenticate(request)
    except IdentityError as err:
        client = request.client.host if request.client else "unknown"
        if err.code != "issuer_unavailable" and not ing.refusals.allow(client):
            log.warning("refused caller not recorded (rate limit of %s): %s", client, err.code)
            resp = error_response(429, "too_many_refusals", "too many refused requests from this address")
            resp.headers["Retry-After"] = "60"
            return resp
        log.info("refused caller: %s", err.code, extra={"request_id": request_id})
        await run_in_threadpool(ing.reject_identity, request_id, token, err)
        return refused(err, request_id=request_id)
    key = request.headers.get("idempotency-key")
    if key is not None:
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            return error_response(
                400, "bad_idempotency_key", "Idempotency-Key: 1-200 printable ASCII characters"
            )
        # A retry (the 202 was lost: a timeout, a restarted ingress) gets the same request id,
        # so the worker decides it once; scoped to the caller, so keys never collide across callers.
        request_id = idempotent_request_id(ing.idempotency_secret, identity.issuer, identity.subject, key)
    body = await read_json_body(request, ing.settings.ingress.max_body_bytes)
    fingerprint = body_fingerprint(body) if key is not None else None
    if fingerprint is not None and ing.index.fingerprint_conflicts(request_id, fingerprint):
        log.warning("Idempotency-Key reused with another body", extra={"request_id": request_id})
        return error_response(
            409, "idempotency_key_reused", "this Idempotency-Key was sent before with another body"
        )
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


async def get_query(request: Request) -> JSONResponse:
    ing = _state(request)
    request_id = request.path_params["request_id"]
    try:
        identity = await ing.authenticate(request)
    except IdentityError as err:
        return refused(err)
    try:
        wait = float(request.query_params.get("wait", "0"))
    except ValueError:
        return error_response(400, "bad_request", "wait must be a number of seconds")
    deadline = time.monotonic() + max(0.0, min(wait, ing.settings.ingress.max_wait_s))
    auditors = ing.settings.ingress.auditor_groups
    while True:
        snap = ing.index.get(request_id)
        if snap is not None and snap["requester"] is not None:
            if not may_read(identity, snap["requester"], auditors):
                return error_response(403, "forbidden", "this request belongs to another caller")
            if snap["terminal"]:
                return JSONResponse(snap["body"])
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    if snap is None or (snap["requester"] is None and not may_read(identity, None, auditors)):
        return error_response(404, "not_found", f"no outcome known for request {request_id}")
    return JSONResponse(snap["body"])


async def post_action(request: Request) -> JSONResponse:
    ing = _state(request)
    try:
        identity = await ing.authenticate(request)
    except IdentityError as err:
        return refused(err)
    body = await read_json_body(request, ing.settings.ingress.max_body_bytes)
    event = build_action(body, identity=identity)
    # the ownership rule of GET: only the requester (or an auditor) reports on a known request
    snap = ing.index.get(event.request_id)
    auditors = ing.settings.ingress.auditor_groups
    if snap is None or (snap["requester"] is None and not may_read(identity, None, auditors)):
        return error_response(404, "not_found", f"no request {event.request_id} known")
    if snap["requester"] is not None and not may_read(identity, snap["requester"], auditors):
        return error_response(403, "forbidden", "this request belongs to another caller")
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
        return error_response(503, "kafka_unavailable", "Kafka is unreachable")
    return JSONResponse({"status": "ready", "outcome_index": ing.indexer.assigned.is_set()})


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())


async def dev_discovery(request: Request) -> JSONResponse:
    from querytrail import devissuer

    return JSONResponse(devissuer.discovery_document(_state(request).settings))


async def dev_jwks(request: Request) -> JSONResponse:
    from querytrail import devissuer

    return JSONResponse(await run_in_threadpool(devissuer.jwks_document, _state(request).settings))


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error")


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

"""Request bodies of the HTTP ingress: bounded reading, validation, the events they become, OpenAPI.

Pure except for reading the request stream; the handlers in ``ingress.app`` do the I/O.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import ClientDisconnect, Request

from querytrail.identity import Identity
from querytrail.sealing import sign_attestation
from querytrail.settings import Settings
from schemas.events import envelope

if TYPE_CHECKING:
    from schemas.events import ClientContext, DownstreamActionReported, Target

__all__ = ["ApiError", "build_action", "build_query", "openapi_document", "read_json_body"]

_CONTEXT_FIELDS = ("ci_provider", "repository", "workflow", "run_id", "commit", "ref", "actor")
_TARGET_FIELDS = ("profile", "database", "schema", "warehouse", "role")


class ApiError(Exception):
    """An HTTP error answered as ``{"error": code, "message": message}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


async def _discard(chunks: Any, budget: int) -> None:
    """Read and drop what is left of a rejected body, up to ``budget`` bytes.

    Answering 413 and closing while the client is still sending makes most clients see a
    broken pipe or a reset instead of the answer (a CI run did). Draining a bounded amount, as
    a proxy's lingering close does, lets the answer reach them; past the budget we close anyway.
    """
    try:
        async for chunk in chunks:
            budget -= len(chunk)
            if budget < 0:
                return
    except ClientDisconnect:
        return


async def read_json_body(request: Request, limit: int) -> dict[str, Any]:
    """The JSON object body; 413 as soon as more than ``limit`` bytes arrive (not after buffering)."""
    too_large = ApiError(413, "body_too_large", f"request body exceeds {limit} bytes")
    drain = max(4 * limit, 8 * 1024 * 1024)  # read and dropped after a 413, then the connection closes
    stream = request.stream()
    header = request.headers.get("content-length")
    declared = int(header) if header is not None and header.isdigit() else None
    if declared is not None and declared > limit:
        if declared <= drain:
            await _discard(stream, drain)
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                await _discard(stream, drain - size)
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "client disconnected while sending the body") from None
    try:
        body = json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    _check_values(body)
    return body


_MAX_DEPTH = 32
_INT64 = (-(2**63), 2**63 - 1)


def _check_values(body: Any) -> None:
    """422 for what JSON allows but the events cannot carry: lone surrogates (no UTF-8),
    integers beyond int64 (Avro ``long``), nesting deeper than ``_MAX_DEPTH``."""
    stack: list[tuple[Any, int]] = [(body, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise ApiError(422, "invalid_request", f"the body is nested deeper than {_MAX_DEPTH} levels")
        if isinstance(value, str):
            _utf8(value)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if not _INT64[0] <= value <= _INT64[1]:
                raise ApiError(422, "invalid_request", "an integer is outside the 64-bit range")
        elif isinstance(value, dict):
            for k, v in value.items():
                _utf8(k)
                stack.append((v, depth + 1))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            422, "invalid_request", "a string holds a lone surrogate (not valid Unicode)"
        ) from None


def _str(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ApiError(422, "invalid_request", f"'{name}' must be a non-empty string")
    return value


def _target(raw: Any, settings: Settings) -> Target:
    from schemas.events import Target

    if raw is None:
        raw = settings.default_target
    if isinstance(raw, str):
        raw = {"profile": raw}
    if not isinstance(raw, dict) or set(raw) - set(_TARGET_FIELDS):
        raise ApiError(
            422, "invalid_request", f"'target' must be a profile name or an object of {_TARGET_FIELDS}"
        )
    profile = _str(raw, "profile")
    for name in _TARGET_FIELDS[1:]:
        _str(raw, name, required=False)
    if settings.snowflake_profiles and profile not in settings.snowflake_profiles:
        raise ApiError(422, "unknown_target", f"no Snowflake profile named {profile!r}")
    return Target(profile=profile or "", **{k: raw.get(k) for k in _TARGET_FIELDS[1:]})


def _context(raw: Any, identity: Identity) -> ClientContext:
    from schemas.events import ClientContext

    raw = raw if raw is not None else {}
    if not isinstance(raw, dict) or not all(isinstance(v, str | int) for v in raw.values()):
        raise ApiError(422, "invalid_request", "'context' must be an object of strings")
    # ``caller.*`` is reserved for what _context keeps apart below: a caller cannot set it
    values = {k: str(v) for k, v in raw.items() if not k.startswith("caller.")}
    known = {k: values.pop(k, None) for k in _CONTEXT_FIELDS}
    # Verified claims win: the caller's own value, where it differs, is kept apart in ``extra``
    # under ``caller.<name>`` (never in the columns and reports that name the verified one).
    verified = {
        "repository": identity.repository,
        "workflow": identity.workflow,
        "run_id": identity.run_id,
        "commit": identity.sha,
        "ref": identity.ref,
        "actor": identity.actor,
    }
    for name, value in verified.items():
        given = known[name]
        if value is not None and given is not None and given != value:
            values[f"caller.{name}"] = given
        known[name] = value or given
    return ClientContext(**known, extra=values)


def build_query(
    body: dict[str, Any],
    *,
    request_id: str,
    identity: Identity,
    settings: Settings,
    signing_key: Ed25519PrivateKey,
    key_id: str,
) -> Any:
    """A QueryRequested carrying the attested identity (never the token)."""
    from schemas.events import Credential, QueryRequested, utcnow

    prompt, sql, model = _str(body, "prompt"), _str(body, "sql"), _str(body, "model")
    assert prompt is not None and sql is not None and model is not None
    if len(prompt.encode("utf-8")) > settings.limits.max_prompt_bytes:
        raise ApiError(413, "prompt_too_large", f"prompt exceeds {settings.limits.max_prompt_bytes} bytes")
    if len(sql.encode("utf-8")) > settings.limits.max_sql_bytes:
        raise ApiError(413, "sql_too_large", f"sql exceeds {settings.limits.max_sql_bytes} bytes")
    max_rows = body.get("max_rows")
    if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1):
        raise ApiError(422, "invalid_request", "'max_rows' must be a positive integer")
    session_id = _str(body, "session_id", required=False)
    verified = identity.to_verified()
    now = utcnow()
    signature = sign_attestation(
        signing_key,
        request_id=request_id,
        token_sha256=identity.token_sha256,
        claims_json=verified.claims_json,
        sql=sql,
        issued_at=now,
        ttl_s=settings.signing.attestation_ttl_s,
    )
    return QueryRequested(
        **envelope(request_id, "ingress", at=now, session_id=session_id),
        prompt=prompt,
        model=model,
        sql=sql,
        target=_target(body.get("target"), settings),
        context=_context(body.get("context"), identity),
        credential=Credential(
            sealed_token=None,
            token_sha256=identity.token_sha256,
            attested=verified,
            attestation_signature=signature,
            attestation_key_id=key_id,
        ),
        max_rows=max_rows,
    )


def build_action(body: dict[str, Any], *, identity: Identity) -> DownstreamActionReported:
    """A DownstreamActionReported by the verified caller."""
    from schemas.events import DownstreamActionReported

    request_id, action, system = _str(body, "request_id"), _str(body, "action"), _str(body, "system")
    details = body.get("details", {})
    if not isinstance(details, dict):
        raise ApiError(422, "invalid_request", "'details' must be an object")
    row_count = body.get("row_count")
    if row_count is not None and (
        not isinstance(row_count, int) or isinstance(row_count, bool) or row_count < 0
    ):
        raise ApiError(422, "invalid_request", "'row_count' must be a non-negative integer")
    return DownstreamActionReported(
        **envelope(request_id or "", "ingress"),
        action=action or "",
        system=system or "",
        details_json=json.dumps(details, sort_keys=True, separators=(",", ":")),
        row_count=row_count,
        reporter=identity.to_verified(),
    )


_ERR = {"$ref": "#/components/schemas/Error"}


def _responses(*codes: int, ok: tuple[int, str] = (200, "OK")) -> dict[str, Any]:
    out: dict[str, Any] = {str(ok[0]): {"description": ok[1]}}
    for code in codes:
        out[str(code)] = {"description": "error", "content": {"application/json": {"schema": _ERR}}}
    return out


def openapi_document() -> dict[str, Any]:
    """The hand-written OpenAPI 3.1 description of the ingress."""
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    target = {
        "oneOf": [
            {"type": "string"},
            {
                "type": "object",
                "properties": {f: {"type": "string"} for f in _TARGET_FIELDS},
                "required": ["profile"],
            },
        ]
    }
    query = {
        "type": "object",
        "required": ["prompt", "sql", "model"],
        "properties": {
            "prompt": {"type": "string"},
            "sql": {"type": "string"},
            "model": {"type": "string"},
            "target": target,
            "context": {"type": "object", "additionalProperties": {"type": "string"}},
            "max_rows": {"type": "integer", "minimum": 1},
            "session_id": {"type": "string"},
        },
    }
    action = {
        "type": "object",
        "required": ["request_id", "action", "system"],
        "properties": {
            "request_id": {"type": "string"},
            "action": {"type": "string"},
            "system": {"type": "string"},
            "details": {"type": "object"},
            "row_count": {"type": "integer", "minimum": 0},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "querytrail ingress", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                },
                "Query": query,
                "Action": action,
            },
        },
        "paths": {
            "/v1/queries": {
                "post": {
                    "summary": "Submit AI-generated SQL with its prompt",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "1-200 printable ASCII characters; a retry with the same key "
                            "(same caller) gets the same request_id and is decided once; the same key "
                            "with another body answers 409",
                            "schema": {"type": "string", "maxLength": 200},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Query"}}},
                    },
                    "responses": _responses(
                        400, 401, 409, 413, 422, 429, 503, ok=(202, "accepted: {request_id}")
                    ),
                }
            },
            "/v1/queries/{request_id}": {
                "get": {
                    "summary": "Outcome of a request (long poll with ?wait=seconds)",
                    "security": bearer,
                    "parameters": [
                        {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0}},
                    ],
                    "responses": _responses(400, 401, 403, 404),
                }
            },
            "/v1/actions": {
                "post": {
                    "summary": "Report what a downstream system did with a result",
                    "security": bearer,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Action"}}},
                    },
                    "responses": _responses(400, 401, 403, 404, 413, 422, 503, ok=(202, "recorded")),
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": _responses()}},
            "/readyz": {"get": {"summary": "Readiness (Kafka reachable)", "responses": _responses(503)}},
        },
    }

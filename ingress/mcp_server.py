"""querytrail's MCP server, served by the ingress at ``/mcp`` (streamable HTTP).

The server is a client of querytrail like any other: it holds no Snowflake credentials. A
``run_query`` call goes down the ingress's own submit path (the verified identity attested,
the event signed, published to ``<prefix>.requests``), so every call is a request in the audit
log, with the agent's intent as the prompt and the MCP client on the request's context. The
bearer token of every HTTP request is verified as ``POST /v1/queries`` verifies it; RFC 9728
protected-resource metadata names the trusted issuers. ``ingress.mcp_stdio`` forwards a local
agent's stdio session here. See docs/mcp.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import mcp_types as types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ingress.api import ApiError, build_query
from ingress.mcp_tools import (
    TOOLS,
    Caller,
    ToolError,
    error_result,
    ok_result,
    shape_outcome,
    validate,
)
from querytrail.identity import Identity, IdentityError

__all__ = ["McpBackend", "McpMount", "build_server", "protected_resource_metadata"]

log = logging.getLogger(__name__)

_IDENTITY_SCOPE_KEY = "querytrail.identity"
_WAITING = ("awaiting_approval", "completed", "denied", "rejected", "failed")  # run_query returns on these
_POLL_S = 0.02


class McpBackend:
    """What the tools do, in the ingress process: submit, read outcomes, policy and catalog views."""

    def __init__(self, ingress: Any) -> None:
        from ingress.http_auth import RefusalLimiter

        self.ing = ingress
        self.settings = ingress.settings
        self.limits = ingress.settings.mcp
        self.rate = RefusalLimiter(self.limits.calls_per_minute)
        self._runtime: Any = None
        self._runtime_lock = threading.Lock()

    # -- policy and catalog (the worker's own loaders, read-only) --------------------------------

    def _views(self) -> tuple[Any, Any]:
        """(policy, catalog) as the worker sees them; reloaded when due."""
        with self._runtime_lock:
            if self._runtime is None:
                from processors.worker.runtime import WorkerRuntime

                self._runtime = WorkerRuntime(self.settings)
            rt = self._runtime
            if not rt.maybe_reload_policy():
                raise ToolError("policy_unavailable", "no valid policy is loaded; try again later")
            rt.reload_catalog_if_due()
            return rt.policy, rt.catalog

    def masks(self) -> dict[str, str]:
        try:
            policy, catalog = self._views()
        except ToolError:
            return {}
        from processors.decision.policy.classifier import masks_for

        return masks_for(policy, catalog)

    def check(self, identity: Identity, sql: str, database: str | None, schema: str | None) -> dict[str, Any]:
        from processors.decision.requests import identity_claims
        from processors.decision.statement import evaluate

        policy, catalog = self._views()
        decision = evaluate(
            sql, identity_claims(identity.to_verified()), catalog, policy, datetime.now(UTC),
            database=database, schema=schema,
        )  # fmt: skip
        out = decision.to_json()
        if decision.approval is not None:
            out["approval"] = {
                "approver_groups": list(decision.approval.approvers),
                "min_approvals": decision.approval.min_approvals,
                "ttl_s": decision.approval.ttl_s,
                "rule": decision.approval.rule_id,
            }
        return out

    def tables(self, identity: Identity) -> list[dict[str, Any]]:
        """Every catalog table with each column's classification and the mask this caller gets."""
        from processors.decision.policy import grant_matches
        from processors.decision.policy.classifier import PolicyClassifier, masks_for
        from processors.decision.requests import identity_claims

        policy, catalog = self._views()
        claims = identity_claims(identity.to_verified())
        classifier, masks = PolicyClassifier(policy, catalog), masks_for(policy, catalog)
        grants = [g for g in policy.unmask if grant_matches(g, claims.groups, claims.claims)]
        out = []
        for name in sorted(catalog.tables):
            table = catalog.tables[name]
            cols = []
            for col in table.columns:
                cls = classifier.column_classification(f"{name}.{col.name}")
                entry: dict[str, Any] = {"name": col.name, "type": col.type, "classification": cls}
                if cls is not None:
                    grant = next((g for g in grants if cls in g.classifications), None)
                    entry["mask"] = "none" if grant else masks.get(cls, "redact")
                    if grant is not None:
                        entry["released_by"] = f"{grant.id}: {grant.reason}"
                cols.append(entry)
            out.append({"name": name, "row_count": table.row_count, "bytes": table.bytes, "columns": cols})
        return out

    # -- requests ----------------------------------------------------------------------------------

    async def submit(self, caller: Caller, args: dict[str, Any]) -> str:
        """run_query's request, down the ingress's own submit path (attested, signed, published)."""
        from schemas.events import new_event_id

        ing = self.ing
        identity: Identity = caller.identity
        target: dict[str, Any] = {"profile": self.settings.default_target}
        for key in ("database", "schema"):
            if key in args:
                target[key] = args[key]
        context = {
            "ci_provider": "mcp",
            "mcp.client": caller.client_name,
            "mcp.client_version": caller.client_version,
            "mcp.transport": caller.transport,
            **caller.extra,
        }
        body: dict[str, Any] = {
            "prompt": args["intent"],
            "sql": args["sql"],
            "model": caller.model or "unknown",
            "target": target,
            "context": context,
            "max_rows": args.get("max_rows", self.limits.default_max_rows),
        }
        if caller.session_id:
            body["session_id"] = caller.session_id
        request_id = new_event_id()
        try:
            event = build_query(
                body,
                request_id=request_id,
                identity=identity,
                settings=self.settings,
                signing_key=ing.signing_key,
                key_id=ing.key_id,
            )
            await run_in_threadpool(ing.publish, "requests", event)
        except ApiError as exc:
            raise ToolError(exc.code, exc.message) from None
        ing.index.note_request(request_id, (identity.issuer, identity.subject), None)
        log.info(
            "mcp run_query from %s via %s",
            identity.subject,
            caller.client_name,
            extra={"request_id": request_id},
        )
        return request_id

    async def outcome(
        self, identity: Identity, request_id: str, wait_s: float, until: tuple[str, ...]
    ) -> Any:
        """The caller's own request's outcome once its status is in ``until`` or ``wait_s`` passed."""
        from ingress.http_auth import may_read

        auditors = self.settings.ingress.auditor_groups
        deadline = time.monotonic() + wait_s
        while True:
            snap = self.ing.index.get(request_id)
            if snap is not None and snap["requester"] is not None:
                if not may_read(identity, snap["requester"], auditors):
                    raise ToolError("forbidden", f"request {request_id} belongs to another caller")
                if snap["body"]["status"] in until:
                    return snap["body"]
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(_POLL_S)
        if snap is None or snap["requester"] is None:
            raise ToolError("not_found", f"no request {request_id} known to this ingress")
        return snap["body"]


class _Tools:
    """The tool calls, over a backend; one instance per server."""

    def __init__(self, backend: McpBackend) -> None:
        self.backend = backend
        self.limits = backend.limits

    def _shape(self, body: dict[str, Any], max_rows: int) -> dict[str, Any]:
        return shape_outcome(
            body, max_rows=max_rows, max_bytes=self.limits.max_result_bytes, masks=self.backend.masks()
        )

    async def call(self, name: str, arguments: Any, caller: Caller) -> dict[str, Any]:
        args = validate(name, arguments, max_rows=self.limits.max_rows)
        identity: Identity = caller.identity
        if not self.backend.rate.allow(f"{identity.issuer}\n{identity.subject}"):
            raise ToolError(
                "rate_limited",
                f"more than {self.limits.calls_per_minute} tool calls a minute; wait before calling again",
            )
        b = self.backend
        # run_query is a request in the audit log; the read-only lookups are logged here
        log.info("mcp %s by %s (%s %s)", name, identity.subject, caller.client_name, caller.client_version)
        if name == "run_query":
            max_rows = args.get("max_rows", self.limits.default_max_rows)
            request_id = await b.submit(caller, args)
            body = await b.outcome(identity, request_id, self.limits.run_wait_s, _WAITING)
            return self._shape(body, max_rows)
        if name == "wait_for_approval":
            wait = min(float(args.get("timeout_s", 60.0)), self.limits.max_wait_s)
            until = ("completed", "denied", "rejected", "failed")
            body = await b.outcome(identity, args["request_id"], wait, until)
            return self._shape(body, self.limits.default_max_rows)
        if name == "get_request":
            body = await b.outcome(identity, args["request_id"], 0.0, ())
            return self._shape(body, self.limits.default_max_rows)
        if name == "check_query":
            return await run_in_threadpool(
                b.check, identity, args["sql"], args.get("database"), args.get("schema")
            )
        tables = await run_in_threadpool(b.tables, identity)
        if name == "list_tables":
            pattern = args.get("pattern", "").upper()
            if pattern and not any(ch in pattern for ch in "*?["):
                pattern = f"*{pattern}*"
            return {
                "tables": [
                    {
                        "name": t["name"],
                        "row_count": t["row_count"],
                        "classified_columns": [c["name"] for c in t["columns"] if c["classification"]],
                    }
                    for t in tables
                    if not pattern or fnmatchcase(t["name"], pattern)
                ]
            }
        wanted = args["name"].upper().strip('"')
        found = [t for t in tables if t["name"] == wanted or t["name"].endswith("." + wanted)]
        if len(found) != 1:
            hint = "; ".join(t["name"] for t in found) or "call list_tables to see the names"
            raise ToolError("unknown_table", f"no single table named {args['name']!r} ({hint})")
        return found[0]


def _caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
    request = ctx.request
    identity = request.scope.get(_IDENTITY_SCOPE_KEY) if isinstance(request, Request) else None
    if identity is None:
        raise ToolError("missing_token", "no verified identity on this request")
    params = getattr(ctx.session, "client_params", None)
    info = getattr(params, "client_info", None)
    meta: dict[str, Any] = dict(ctx.meta or {})
    model = meta.get("querytrail/model") or meta.get("model")
    transport = meta.get("querytrail/transport")
    session = meta.get("querytrail/session")  # the stdio process's session (ingress.mcp_stdio)
    if not isinstance(session, str) or not session:
        session = request.headers.get("mcp-session-id") if isinstance(request, Request) else None
    return Caller(
        identity=identity,
        client_name=str(getattr(info, "name", None) or "unknown")[:200],
        client_version=str(getattr(info, "version", None) or "unknown")[:100],
        model=str(model)[:200] if isinstance(model, str) and model else None,
        transport="stdio" if transport == "stdio" else "streamable-http",
        session_id=session[:200] if session else None,
    )


def build_server(backend: McpBackend) -> Server[Any]:
    """The low-level MCP server with querytrail's tools."""
    tools = _Tools(backend)

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(TOOLS))

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            return ok_result(await tools.call(params.name, params.arguments, _caller(ctx)))
        except ToolError as err:
            return error_result(err)
        except Exception:  # a bug must answer the model, not end the session
            log.exception("mcp tool %s failed", params.name)
            return error_result(ToolError("internal_error", "internal error; the call was not completed"))

    from querytrail import __version__

    return Server(
        "querytrail",
        version=__version__,
        instructions="querytrail runs read-only Snowflake SQL under the organisation's policy: sensitive "
        "columns are masked, risky statements wait for a human approval, and every call is audited. "
        "Start with list_tables/describe_table, check_query when unsure, then run_query with the "
        "user's request as intent.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _issuers(settings: Any) -> list[str]:
    urls = [i.issuer for i in settings.identity.issuers]
    if settings.identity.dev_issuer_enabled:
        urls.append(settings.identity.dev_issuer_url)
    return urls


def protected_resource_metadata(settings: Any, base_url: str) -> dict[str, Any]:
    """RFC 9728 metadata of ``/mcp``: where its tokens come from."""
    return {
        "resource": f"{base_url.rstrip('/')}/mcp",
        "authorization_servers": _issuers(settings),
        "bearer_methods_supported": ["header"],
        "resource_name": "querytrail",
        "resource_documentation": "https://github.com/querytrail/querytrail/blob/main/docs/mcp.md",
    }


class _Authenticated:
    """ASGI wrapper of ``/mcp``: the bearer token of every request verified as POST /v1/queries does."""

    def __init__(self, ingress: Any, app: Any) -> None:
        self.ing, self.app = ingress, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from ingress.http_auth import bearer_token, refused

        request = Request(scope, receive)
        token = bearer_token(request)
        try:
            identity: Identity = await self.ing.authenticate(request)
        except IdentityError as err:
            if token and err.code != "issuer_unavailable":
                client = request.client.host if request.client else "unknown"
                if self.ing.refusals.allow(client):  # a presented, refused token is audited
                    from schemas.events import new_event_id

                    with contextlib.suppress(ApiError):
                        await run_in_threadpool(self.ing.reject_identity, new_event_id(), token, err)
            resp = refused(err)
            if resp.status_code == 401:
                meta = f"{str(request.base_url).rstrip('/')}/.well-known/oauth-protected-resource/mcp"
                resp.headers["WWW-Authenticate"] = (
                    f'Bearer error="invalid_token", error_description="{err.code}", '
                    f'resource_metadata="{meta}"'
                )
            await resp(scope, receive, send)
            return
        scope[_IDENTITY_SCOPE_KEY] = identity
        # the SDK binds a session to the principal that opened it (issuer, subject)
        scope["user"] = AuthenticatedUser(
            AccessToken(
                token="",  # never kept: the identity is all the session needs
                client_id=identity.subject,
                scopes=[],
                subject=identity.subject,
                claims={"iss": identity.issuer},
            )
        )
        await self.app(scope, receive, send)


class McpMount:
    """The ``/mcp`` routes of the ingress and the session manager its lifespan runs."""

    def __init__(self, ingress: Any) -> None:
        settings = ingress.settings
        self.server = build_server(McpBackend(ingress))
        loopback = settings.ingress.host in ("127.0.0.1", "localhost", "::1")
        security = (
            TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
            if loopback
            else None
        )
        self.manager = StreamableHTTPSessionManager(
            app=self.server,
            json_response=True,
            security_settings=security,
            max_request_body_size=settings.ingress.max_body_bytes,
        )
        endpoint = _Authenticated(ingress, StreamableHTTPASGIApp(self.manager))

        async def metadata(request: Request) -> JSONResponse:
            return JSONResponse(protected_resource_metadata(settings, str(request.base_url)))

        self.routes = [
            Route("/mcp", endpoint=endpoint, methods=["GET", "POST", "DELETE"]),
            Route("/.well-known/oauth-protected-resource", metadata, methods=["GET"]),
            Route("/.well-known/oauth-protected-resource/mcp", metadata, methods=["GET"]),
        ]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

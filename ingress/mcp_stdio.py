"""``querytrail mcp``: the MCP server over stdio, for Claude Code and Claude Desktop.

One process per user. It holds no Snowflake credentials and no querytrail keys: each tool
call is forwarded to the ingress's ``/mcp`` endpoint with the user's bearer token, so the
identity is verified, the request attested and recorded exactly as for a hosted agent. The
token comes from a file or a command (``--token-file``, ``--token-command``, e.g. a cloud CLI
that prints an OIDC token) and is read again before it expires. See docs/mcp.md.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, cast

import anyio
import httpx2
import jwt
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server

from ingress.mcp_tools import TOOLS, ToolError, error_result

__all__ = ["TokenSource", "build_proxy", "serve_stdio"]

log = logging.getLogger(__name__)

REFRESH_BEFORE_S = 60.0  # a token this close to its expiry is fetched again
_NO_EXP_RECHECK_S = 300.0  # a token without exp is fetched again this often


class TokenSource:
    """The caller's bearer token, from a file or a command, fetched again before it expires."""

    def __init__(self, *, file: Path | None = None, command: str | None = None) -> None:
        if (file is None) == (command is None):
            raise ValueError("give exactly one of a token file or a token command")
        self.file, self.command = file, command
        self._lock = threading.Lock()
        self._token: str | None = None
        self._fresh_until = 0.0
        self._mtime: float | None = None

    def _read(self) -> str:
        if self.file is not None:
            text = self.file.read_text(encoding="utf-8")
        else:
            assert self.command is not None
            done = subprocess.run(  # no shell: the user's own command, split
                shlex.split(self.command), capture_output=True, text=True, timeout=60, check=False
            )
            if done.returncode != 0:
                raise ToolError(
                    "token_command_failed",
                    f"--token-command exited {done.returncode}: {done.stderr.strip()[:300]}",
                )
            text = done.stdout
        token = text.strip()
        if not token:
            raise ToolError("missing_token", "the token source gave an empty token")
        return token

    def token(self, now: float | None = None) -> str:
        """The current token; read again when it is about to expire (or the file changed)."""
        now = time.time() if now is None else now
        with self._lock:
            mtime = self.file.stat().st_mtime if self.file is not None else None
            if self._token is None or now >= self._fresh_until or mtime != self._mtime:
                self._token, self._mtime = self._read(), mtime
                self._fresh_until = now + _NO_EXP_RECHECK_S
                try:
                    exp = jwt.decode(self._token, options={"verify_signature": False}).get("exp")
                except jwt.PyJWTError:
                    exp = None  # not a JWT we can read: the ingress will say what is wrong
                if isinstance(exp, int | float):
                    self._fresh_until = min(self._fresh_until, float(exp) - REFRESH_BEFORE_S)
            return self._token


def build_proxy(url: str, tokens: TokenSource) -> Server[Any]:
    """A stdio-side server whose tool calls run at the ingress's ``/mcp`` with the user's token."""
    session_id = f"mcp-stdio-{uuid.uuid4()}"  # one agent session: every call of this process

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(TOOLS))

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        info = getattr(getattr(ctx.session, "client_params", None), "client_info", None)
        meta: dict[str, Any] = {
            "querytrail/transport": "stdio",
            "querytrail/session": session_id,
        }
        model = (ctx.meta or {}).get("querytrail/model") or (ctx.meta or {}).get("model")
        if isinstance(model, str) and model:
            meta["querytrail/model"] = model
        try:
            token = await anyio.to_thread.run_sync(tokens.token)
        except ToolError as err:
            return error_result(err)
        except OSError as exc:
            return error_result(ToolError("missing_token", f"cannot read the token: {exc}"))
        client_info = types.Implementation(
            name=getattr(info, "name", None) or "unknown", version=getattr(info, "version", None) or "unknown"
        )
        refused: list[str] = []

        async def note(response: httpx2.Response) -> None:
            if response.status_code == 401:  # the reason travels in the challenge, never the token
                challenge = response.headers.get("www-authenticate", "")
                refused.append(challenge.partition('error_description="')[2].partition('"')[0] or "401")

        try:
            async with (
                httpx2.AsyncClient(
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=httpx2.Timeout(30.0, read=400.0),
                    event_hooks={"response": [note]},
                ) as http,
                streamable_http_client(url, http_client=http) as (read, write),
                ClientSession(read, write, client_info=client_info) as upstream,
            ):
                await upstream.initialize()
                return await upstream.call_tool(
                    params.name, params.arguments, meta=cast(types.RequestParamsMeta, meta)
                )
        except Exception as exc:  # the ingress is down or refused the token: tell the model why
            log.warning("forwarding %s to %s failed: %s", params.name, url, exc)
            if refused:
                return error_result(
                    ToolError(
                        refused[-1],
                        f"the querytrail ingress at {url} refused the token ({refused[-1]}): "
                        "get a fresh token (see docs/mcp.md) and call again",
                    )
                )
            return error_result(
                ToolError("ingress_unavailable", f"cannot reach the querytrail ingress at {url}: {_why(exc)}")
            )

    return Server(
        "querytrail",
        instructions="querytrail runs read-only Snowflake SQL under the organisation's policy: sensitive "
        "columns are masked, risky statements wait for a human approval, and every call is audited. "
        "Start with list_tables/describe_table, check_query when unsure, then run_query with the "
        "user's request as intent.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _why(exc: BaseException) -> str:
    text = str(exc)
    for inner in getattr(exc, "exceptions", ()):  # task groups wrap the transport's error
        text = f"{text}: {_why(inner)}"
    return text[:400]


def serve_stdio(url: str, tokens: TokenSource) -> None:
    """Serve MCP on stdin/stdout until the client closes it."""
    from mcp.server.stdio import stdio_server

    server = build_proxy(url, tokens)

    async def run() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    print(f"querytrail mcp: forwarding tool calls to {url}", file=sys.stderr)
    anyio.run(run)

"""The MCP server driven by the SDK's own client, over streamable HTTP and over stdio.

One stack for the module: the worker and the executor as processes (tests/pipeline's harness,
its policy and the demo catalog over the seeded fakesnow) and the ingress serving ``/mcp``.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, Implementation

from querytrail.settings import McpSettings, Settings, SnowflakeProfile
from tests.ingress.ingress_kafka import free_port, read_topic, serve
from tests.pipeline.pipeline_harness import Pipeline, new_prefix

pytestmark = pytest.mark.integration

T = TypeVar("T")
AGENT = Implementation(name="test-agent", version="9.9.1")
CUSTOMERS = "SELECT ID, EMAIL, SSN FROM ANALYTICS.PUBLIC.CUSTOMERS ORDER BY ID LIMIT 5"


class Stack:
    def __init__(self, pipeline: Pipeline, url: str, settings: Settings, home: Path) -> None:
        self.pipeline, self.url, self.settings, self.home = pipeline, url, settings, home
        self.mcp_url = f"{url}/mcp"

    def token(self, sub: str, *groups: str, ttl_s: int = 600, now: float | None = None) -> str:
        from querytrail.devissuer import mint_token

        return mint_token(self.settings, sub=sub, groups=groups, ttl_s=ttl_s, now=now)

    def token_file(self, token: str) -> Path:
        path = self.home / f"token-{abs(hash(token))}"
        path.write_text(token, encoding="utf-8")
        return path


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, fakesnow_profile: SnowflakeProfile
) -> Iterator[Stack]:
    from infra.topics import create_topics
    from ingress.app import create_app

    home = tmp_path_factory.mktemp("mcp")
    prefix = new_prefix()
    create_topics(kafka_bootstrap, prefix)
    pipeline = Pipeline(home / prefix, kafka_bootstrap, prefix, fakesnow_profile)
    port = free_port()
    base = pipeline.settings
    settings = base.model_copy(
        update={
            "ingress": base.ingress.model_copy(update={"port": port}),
            "mcp": McpSettings(max_result_bytes=4096, run_wait_s=30.0),
        }
    )
    try:
        pipeline.start("sink")  # the audit log, for replay
        pipeline.start_all()
        pipeline.wait_log("sink", "sink consuming")
        with serve(create_app(settings), port) as url:
            yield Stack(pipeline, url, settings, home)
    finally:
        pipeline.stop()


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn)


@asynccontextmanager
async def http_session(stack: Stack, token: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=120.0)) as http,
        streamable_http_client(stack.mcp_url, http_client=http) as (read, write),
        ClientSession(read, write, client_info=AGENT) as session,
    ):
        await session.initialize()
        yield session


@asynccontextmanager
async def stdio_session(stack: Stack, token_file: Path) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "querytrail.cli", "mcp", "--token-file", str(token_file), "--url", stack.mcp_url],
        env=stack.pipeline.env(),
    )
    with open(stack.home / "stdio.log", "a", encoding="utf-8") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, client_info=Implementation(name="claude-code", version="2.1.0")) as s,
        ):
            await s.initialize()
            yield s


def data(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, result
    out: dict[str, Any] = result.structured_content
    return out


def requested(stack: Stack, request_id: str) -> Any:
    from schemas.codec import EventCodec

    codec = EventCodec()
    for key, value in read_topic(stack.settings, "requests", 10_000, timeout=3.0):
        if key == request_id.encode():
            return codec.decode(value)
    raise AssertionError(f"no QueryRequested {request_id}")


def test_tools_are_listed_over_http_and_stdio(stack: Stack) -> None:
    token = stack.token("ci-bot", "ci")

    async def both() -> tuple[set[str], set[str], dict[str, Any]]:
        async with http_session(stack, token) as s:
            listed = (await s.list_tools()).tools
        async with stdio_session(stack, stack.token_file(token)) as s:
            local = (await s.list_tools()).tools
        return {t.name for t in listed}, {t.name for t in local}, {t.name: t for t in listed}

    over_http, over_stdio, tools = run(both)
    expected = {
        "run_query",
        "wait_for_approval",
        "get_request",
        "list_tables",
        "describe_table",
        "check_query",
    }
    assert over_http == over_stdio == expected
    schema = tools["run_query"].input_schema
    assert schema["required"] == ["sql", "intent"] and schema["additionalProperties"] is False
    assert "intent" in (tools["run_query"].description or "")


def test_masked_result_over_http_records_the_intent_and_the_client(stack: Stack) -> None:
    token = stack.token("ci-bot", "ci")

    async def go() -> dict[str, Any]:
        async with http_session(stack, token) as s:
            res = await s.call_tool(
                "run_query",
                {"sql": CUSTOMERS, "intent": "five customers for the churn report"},
                meta={"querytrail/model": "claude-sonnet-4-5"},  # type: ignore[typeddict-unknown-key]
            )
        assert not res.is_error, res.content
        return data(res)

    out = go_result = run(go)
    assert out["status"] == "completed" and out["rows_returned"] == 5 and not out["truncated"]
    names = [c["name"] for c in out["columns"]]
    assert names == ["ID", "EMAIL", "SSN"]
    emails = [row[names.index("EMAIL")] for row in out["rows"]]
    assert all(e.startswith("****@") for e in emails), emails
    masked = {m["column"]: m for m in out["masked"]}
    assert masked["EMAIL"]["classification"] == "pii.email" and masked["EMAIL"]["mask"] == "email"
    assert masked["SSN"]["mask"] == "last4" and "pii.ssn" in masked["SSN"]["why"]
    event = requested(stack, go_result["request_id"])
    assert event.prompt == "five customers for the churn report"
    assert event.model == "claude-sonnet-4-5"
    assert event.context.ci_provider == "mcp"
    assert event.context.extra["mcp.client"] == "test-agent"
    assert event.context.extra["mcp.client_version"] == "9.9.1"
    assert event.credential.attested.subject == "ci-bot" and event.credential.sealed_token is None


def test_stdio_runs_a_masked_query_and_answers_a_denial_with_the_rule(stack: Stack) -> None:
    token_file = stack.token_file(stack.token("ci-bot", "ci"))

    async def go() -> tuple[CallToolResult, CallToolResult]:
        async with stdio_session(stack, token_file) as s:
            ok = await s.call_tool("run_query", {"sql": CUSTOMERS, "intent": "customers over stdio"})
            denied = await s.call_tool(
                "run_query",
                {"sql": "DELETE FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 1", "intent": "tidy up"},
            )
        return ok, denied

    ok, denied = run(go)
    assert not ok.is_error, ok.content
    out = data(ok)
    assert out["status"] == "completed" and all(r[1].startswith("****@") for r in out["rows"])
    event = requested(stack, out["request_id"])
    assert event.context.extra["mcp.client"] == "claude-code"
    assert event.context.extra["mcp.transport"] == "stdio"
    assert event.session_id and event.session_id.startswith("mcp-stdio-")
    assert denied.is_error
    refusal = data(denied)
    assert "no-deletes" in refusal["rules"] and "no-deletes" in refusal["message"]


def test_held_query_is_approved_by_a_second_identity_and_returned_by_wait(stack: Stack) -> None:
    token = stack.token("ci-bot", "ci")
    approver = stack.token_file(stack.token("alice", "data-security"))

    async def go() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with http_session(stack, token) as s:
            held = data(
                await s.call_tool(
                    "run_query",
                    {
                        "sql": "SELECT USERNAME, ROLE FROM SECURITY.ADMIN.USERS",
                        "intent": "who are the admins",
                    },
                )
            )
            assert held["status"] == "awaiting_approval", held
            rid = held["request_id"]
            still = data(await s.call_tool("wait_for_approval", {"request_id": rid, "timeout_s": 0.5}))
            approved = await anyio.to_thread.run_sync(
                lambda: stack.pipeline.cli("approve", rid, "--token-file", str(approver))
            )
            assert approved.returncode == 0, approved.stdout + approved.stderr
            done = data(await s.call_tool("wait_for_approval", {"request_id": rid, "timeout_s": 60}))
        return held, still, done

    held, still, done = run(go)
    assert held["approver_groups"] == ["data-security"] and held["expires_at"]
    assert held["rule"] == "privileged-needs-approval"
    assert still["status"] == "awaiting_approval"
    assert done["status"] == "completed" and done["request_id"] == held["request_id"]
    assert [c["name"] for c in done["columns"]] == ["USERNAME", "ROLE"] and done["rows"]


def test_refused_tokens(stack: Stack) -> None:
    import time

    expired = stack.token("ci-bot", "ci", ttl_s=60, now=time.time() - 3600)
    good = stack.token("ci-bot", "ci")
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["data-security", "auditor"]  # a raised privilege, the signature kept
    raised = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = f"{head}.{raised}.{sig}"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    accept = {"Accept": "application/json, text/event-stream"}
    for token, code in ((None, "missing_token"), (expired, "expired"), (forged, "bad_signature")):
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        resp = httpx.post(stack.mcp_url, json=init, headers={**accept, **auth}, timeout=10)
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"] == code
        assert "resource_metadata=" in resp.headers["www-authenticate"]
    meta = httpx.get(f"{stack.url}/.well-known/oauth-protected-resource", timeout=10).json()
    assert meta["resource"] == stack.mcp_url
    assert stack.settings.identity.dev_issuer_url in meta["authorization_servers"]

    async def sdk_refused() -> None:
        async with http_session(stack, expired):
            pass

    with pytest.raises(BaseException):
        run(sdk_refused)

    async def stdio_expired() -> CallToolResult:
        async with stdio_session(stack, stack.token_file(expired)) as s:
            return await s.call_tool("list_tables", {})

    res = run(stdio_expired)
    assert res.is_error and data(res)["error"] == "expired"
    assert "refused the token (expired)" in data(res)["message"]


def test_another_callers_request_is_refused(stack: Stack) -> None:
    async def go() -> tuple[dict[str, Any], CallToolResult, dict[str, Any]]:
        async with http_session(stack, stack.token("bob", "ci")) as s:
            mine = data(await s.call_tool("run_query", {"sql": CUSTOMERS, "intent": "bob's"}))
            again = data(await s.call_tool("get_request", {"request_id": mine["request_id"]}))
        async with http_session(stack, stack.token("mallory", "ci")) as s:
            theirs = await s.call_tool("get_request", {"request_id": mine["request_id"]})
        return mine, theirs, again

    mine, theirs, again = run(go)
    assert again["status"] == "completed" and again["request_id"] == mine["request_id"]
    assert theirs.is_error and data(theirs)["error"] == "forbidden"


def test_oversized_results_are_truncated_and_marked(stack: Stack) -> None:
    sql = "SELECT ID, EMAIL, NAME FROM ANALYTICS.PUBLIC.CUSTOMERS ORDER BY ID LIMIT 80"

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with http_session(stack, stack.token("ci-bot", "ci")) as s:
            by_rows = data(await s.call_tool("run_query", {"sql": sql, "intent": "a few", "max_rows": 3}))
            by_bytes = data(await s.call_tool("run_query", {"sql": sql, "intent": "many", "max_rows": 1000}))
        return by_rows, by_bytes

    by_rows, by_bytes = run(go)
    assert by_rows["status"] == "completed", by_rows
    assert by_rows["truncated"] and by_rows["rows_returned"] == 3 and "row cap" in by_rows["truncation"]
    assert by_bytes["truncated"] and "byte cap" in by_bytes["truncation"]
    assert by_bytes["rows_returned"] < 80 and len(json.dumps(by_bytes["rows"], separators=(",", ":"))) <= 4096


def test_malformed_arguments_are_answered_not_crashed(stack: Stack) -> None:
    cases: list[tuple[str, Any, str]] = [
        ("run_query", {"sql": "SELECT 1"}, "missing required argument(s): intent"),
        ("run_query", {"sql": "SELECT 1", "intent": "x", "max_rows": "ten"}, "max_rows must be an integer"),
        ("run_query", {"sql": "  ", "intent": "x"}, "sql must not be empty"),
        ("run_query", {"sql": "SELECT 1", "intent": "x", "drop": True}, "unknown argument(s) drop"),
        ("wait_for_approval", {"request_id": "x", "timeout_s": -1}, "timeout_s must be a number"),
        ("describe_table", {"name": 7}, "name must be a string"),
        ("describe_table", {"name": "NO.SUCH.TABLE"}, "no single table"),
        ("get_request", {"request_id": "not-a-request"}, "no request not-a-request"),
        ("drop_table", {}, "no tool named 'drop_table'"),
    ]

    async def go() -> tuple[list[CallToolResult], CallToolResult, CallToolResult, CallToolResult]:
        async with http_session(stack, stack.token("ci-bot", "ci")) as s:
            results = [await s.call_tool(name, args) for name, args, _ in cases]
            described = await s.call_tool("describe_table", {"name": "customers"})
            listed = await s.call_tool("list_tables", {"pattern": "analytics.*"})
            checked = await s.call_tool("check_query", {"sql": "SELECT * FROM SECURITY.ADMIN.USERS"})
        return results, described, listed, checked

    results, described, listed, checked = run(go)
    for (name, _, expected), res in zip(cases, results, strict=True):
        assert res.is_error, (name, res)
        assert expected in data(res)["message"], (name, data(res))
    table = data(described)
    assert table["name"] == "ANALYTICS.PUBLIC.CUSTOMERS"
    email = next(c for c in table["columns"] if c["name"] == "EMAIL")
    assert (email["classification"], email["mask"]) == ("pii.email", "email")
    names = [t["name"] for t in data(listed)["tables"]]
    assert "ANALYTICS.PUBLIC.CUSTOMERS" in names and not any(n.startswith("SECURITY.") for n in names)
    decision = data(checked)
    assert decision["decision"] == "require_approval" and "privileged-needs-approval" in decision["rules"]
    assert decision["approval"]["approver_groups"] == ["data-security"]


def test_a_tool_call_is_in_the_audit_log_and_replay_shows_it(stack: Stack) -> None:
    import time

    async def go() -> dict[str, Any]:
        async with http_session(stack, stack.token("ci-bot", "ci")) as s:
            return data(await s.call_tool("run_query", {"sql": CUSTOMERS, "intent": "replay me please"}))

    rid = run(go)["request_id"]
    deadline = time.monotonic() + 60
    while True:
        shown = stack.pipeline.cli("replay", rid)
        if "QueryCompleted" in shown.stdout or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "prompt: replay me please" in shown.stdout, shown.stdout + shown.stderr
    assert "agent: test-agent 9.9.1 over MCP (streamable-http)" in shown.stdout
    assert "PolicyDecided" in shown.stdout and "QueryCompleted" in shown.stdout

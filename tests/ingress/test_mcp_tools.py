"""The MCP tools' pure parts: argument checks, caps, outcome shapes, the stdio token source."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from ingress.mcp_stdio import REFRESH_BEFORE_S, TokenSource
from ingress.mcp_tools import TOOLS, ToolError, cap_rows, error_result, shape_outcome, validate


def test_every_tool_has_a_closed_object_schema_and_a_description() -> None:
    for tool in TOOLS:
        assert tool.input_schema["type"] == "object" and tool.input_schema["additionalProperties"] is False
        assert set(tool.input_schema["required"]) <= set(tool.input_schema["properties"])
        assert tool.description and len(tool.description) > 80
        assert tool.annotations is not None and tool.annotations.read_only_hint


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("run_query", None, "missing required argument(s): sql, intent"),
        ("run_query", [], "arguments must be a JSON object"),
        ("run_query", {"sql": "SELECT 1", "intent": True}, "intent must be a string"),
        ("run_query", {"sql": "SELECT 1", "intent": "x", "max_rows": 0}, "max_rows must be an integer >= 1"),
        ("run_query", {"sql": "SELECT 1", "intent": "x", "max_rows": True}, "max_rows must be an integer"),
        ("run_query", {"sql": "SELECT 1\x00", "intent": "x"}, "sql holds a NUL character"),
        ("wait_for_approval", {"request_id": "r", "timeout_s": "soon"}, "timeout_s must be a number"),
        ("describe_table", {"name": "x" * 300}, "name is longer than 255 characters"),
        ("nope", {}, "no tool named 'nope'"),
    ],
)
def test_bad_arguments_name_the_problem(name: str, args: object, message: str) -> None:
    with pytest.raises(ToolError) as caught:
        validate(name, args, max_rows=1000)
    assert message in caught.value.message


def test_max_rows_is_capped() -> None:
    assert (
        validate("run_query", {"sql": "s", "intent": "i", "max_rows": 10**9}, max_rows=50)["max_rows"] == 50
    )


def test_cap_rows_marks_the_cap_that_cut() -> None:
    rows = [[i, "x" * 10] for i in range(100)]
    assert cap_rows(rows, 200, 10**6) == (rows, None)
    kept, why = cap_rows(rows, 5, 10**6)
    assert len(kept) == 5 and why == "row cap: 5 of 100 rows returned"
    kept, why = cap_rows(rows, 100, 100)
    assert 0 < len(kept) < 10 and why is not None and why.startswith("byte cap")


def test_a_denial_is_an_error_naming_rule_and_reason() -> None:
    body = {
        "request_id": "r1",
        "status": "denied",
        "decision": {"decision": "deny", "rules": ["no-deletes"], "reasons": ["rule no-deletes denies"]},
    }
    with pytest.raises(ToolError) as caught:
        shape_outcome(body, max_rows=10, max_bytes=1000, masks={})
    assert caught.value.details["rules"] == ["no-deletes"]
    result = error_result(caught.value)
    assert result.is_error and "no-deletes" in result.content[0].text  # type: ignore[union-attr]


def test_an_expired_approval_is_an_error() -> None:
    body = {
        "request_id": "r2",
        "status": "denied",
        "approval": {"state": "expired", "rule_id": "privileged-needs-approval", "reason": None},
    }
    with pytest.raises(ToolError, match="approval expired"):
        shape_outcome(body, max_rows=10, max_bytes=1000, masks={})


def test_pending_names_approvers_and_expiry() -> None:
    body = {
        "request_id": "r3",
        "status": "awaiting_approval",
        "approval": {
            "state": "pending",
            "rule_id": "privileged",
            "approver_groups": ["data-security"],
            "min_approvals": 1,
            "expires_at": "2026-12-04T17:00:00+00:00",
        },
    }
    out = shape_outcome(body, max_rows=10, max_bytes=1000, masks={})
    assert out["approver_groups"] == ["data-security"] and out["expires_at"].startswith("2026-12-04")
    assert "wait_for_approval" in out["next"]


def _jwt(exp: float) -> str:
    return jwt.encode({"sub": "me", "exp": int(exp)}, "k" * 32, algorithm="HS256")


def test_token_file_is_read_again_before_expiry(tmp_path: Path) -> None:
    path = tmp_path / "token"
    now = time.time()
    first = _jwt(now + 600)
    path.write_text(first + "\n")
    source = TokenSource(file=path)
    assert source.token(now) == first
    second = _jwt(now + 1200)
    path.write_text(second)
    import os

    os.utime(path, (now - 100, now - 100))  # same-second writes: force an unchanged-looking mtime
    source._mtime = path.stat().st_mtime
    assert source.token(now + 10) == first  # fresh and the file looks unchanged: cached
    assert source.token(now + 600 - REFRESH_BEFORE_S + 1) == second  # about to expire: read again


def test_token_command_runs_again_before_expiry(tmp_path: Path) -> None:
    import sys

    counter = tmp_path / "n"
    script = tmp_path / "tok.py"
    script.write_text(
        "import pathlib, time, jwt\n"
        f"p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "print(jwt.encode({'sub': f'me{n}', 'exp': int(time.time()) + 120}, 'k' * 32, algorithm='HS256'))\n"
    )
    source = TokenSource(command=f"{sys.executable} {script}")
    now = time.time()
    a = source.token(now)
    assert source.token(now + 1) == a
    b = source.token(now + 120 - REFRESH_BEFORE_S + 1)
    assert b != a and counter.read_text() == "2"
    failing = TokenSource(command=f"{sys.executable} -c 'import sys; sys.exit(3)'")
    with pytest.raises(ToolError, match="exited 3"):
        failing.token()


def test_tool_calls_are_rate_limited_per_identity() -> None:
    import anyio

    from ingress.http_auth import RefusalLimiter
    from ingress.mcp_server import _Tools
    from ingress.mcp_tools import Caller
    from querytrail.identity import Identity
    from querytrail.settings import McpSettings

    class Backend:
        limits = McpSettings(calls_per_minute=3)
        rate = RefusalLimiter(3)

        def masks(self) -> dict[str, str]:
            return {}

        def tables(self, identity: Identity) -> list[dict[str, object]]:
            return []

    tools = _Tools(Backend())  # type: ignore[arg-type]
    alice = Caller(identity=Identity(subject="alice", issuer="https://idp"))
    bob = Caller(identity=Identity(subject="bob", issuer="https://idp"))

    async def calls() -> list[str]:
        out = []
        for caller in (alice, alice, alice, alice, bob):
            try:
                await tools.call("list_tables", {}, caller)
                out.append("ok")
            except ToolError as err:
                out.append(err.code)
        return out

    assert anyio.run(calls) == ["ok", "ok", "ok", "rate_limited", "ok"]

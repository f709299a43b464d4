"""The MCP tools of querytrail: their schemas and descriptions, argument checks, result shapes.

Pure: no Kafka, no HTTP. ``ingress.mcp_server`` wires them to the ingress (where a tool call
becomes a QueryRequested like any other) and ``ingress.mcp_stdio`` forwards a local agent's
calls to it. Descriptions are written for the model that reads them: they say what to pass,
what comes back, and what to do next. See docs/mcp.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mcp_types import CallToolResult, TextContent, Tool, ToolAnnotations

__all__ = [
    "TOOLS",
    "TOOL_NAMES",
    "Caller",
    "ToolError",
    "cap_rows",
    "error_result",
    "ok_result",
    "shape_outcome",
    "validate",
]

_STR = {"type": "string", "minLength": 1}
_IDENT = {"type": "string", "minLength": 1, "maxLength": 255}


def _tool(name: str, title: str, description: str, props: dict[str, Any], required: list[str]) -> Tool:
    return Tool(
        name=name,
        title=title,
        description=description,
        input_schema={
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": False,
        },
        # nothing here writes: run_query runs only what the policy lets a read-only agent run
        annotations=ToolAnnotations(title=title, read_only_hint=True, destructive_hint=False),
    )


TOOLS: tuple[Tool, ...] = (
    _tool(
        "run_query",
        "Run a Snowflake query through querytrail",
        "Run ONE read-only Snowflake SQL statement (Snowflake dialect) under the organisation's "
        "policy and return its rows. Pass as intent the user's request you are serving, in plain "
        "words: it is recorded as the prompt and shown to approvers. Sensitive columns come back "
        "masked; the result lists each "
        "masked column with its classification and mask, so say so when you report the data. "
        "Outcomes: status 'completed' (rows, columns, request_id; 'truncated' is true when rows "
        "were cut to the row or byte cap: narrow the query or aggregate instead of paging); "
        "status 'awaiting_approval' (a human must approve: tell the user who (approver_groups) "
        "and until when (expires_at), then call wait_for_approval with the request_id); status "
        "'running' (call wait_for_approval); or an error when the policy denies the statement, "
        "naming the rule and the reason: do not retry the same SQL, change it (or ask the user) "
        "to fit the rule. Call check_query first when unsure, and list_tables/describe_table to "
        "find tables and columns. Writes (INSERT, UPDATE, DELETE, DDL) are always refused.",
        {
            "sql": {
                **_STR,
                "description": "One Snowflake SQL SELECT statement, no trailing second statement.",
            },
            "intent": {
                **_STR,
                "description": "The user's request you are serving, in plain language (for example "
                "'count last week's signups by country for the growth report'). Recorded in the "
                "audit log as the prompt and shown to approvers.",
            },
            "database": {**_IDENT, "description": "Default database for unqualified table names."},
            "schema": {**_IDENT, "description": "Default schema for unqualified table names."},
            "max_rows": {"type": "integer", "minimum": 1, "description": "Rows to return at most."},
        },
        ["sql", "intent"],
    ),
    _tool(
        "wait_for_approval",
        "Wait for a held query",
        "Block up to timeout_s seconds for a request that run_query left 'awaiting_approval' or "
        "'running'. Returns the rows when it was approved and ran, an error naming the rule and "
        "reason when it was denied or the approval expired, or status 'awaiting_approval' again "
        "when nobody decided yet (tell the user, then wait again or stop).",
        {
            "request_id": {**_IDENT, "description": "The request_id run_query returned."},
            "timeout_s": {
                "type": "number",
                "minimum": 0,
                "description": "Seconds to wait at most (capped by the server; default 60).",
            },
        },
        ["request_id"],
    ),
    _tool(
        "get_request",
        "Look up one of your requests",
        "The story of one of YOUR requests: the policy decision (rules, reasons, masked "
        "columns), the approval state, and the outcome (rows when it completed). Requests of "
        "other callers are refused.",
        {"request_id": {**_IDENT, "description": "The request_id run_query returned."}},
        ["request_id"],
    ),
    _tool(
        "list_tables",
        "List tables",
        "List the tables querytrail knows (DATABASE.SCHEMA.TABLE), with row counts and which "
        "columns are classified as sensitive. Use describe_table for a table's columns.",
        {
            "pattern": {
                "type": "string",
                "maxLength": 255,
                "description": "Optional filter: a glob on DATABASE.SCHEMA.TABLE ('ANALYTICS.*.*', "
                "'*ORDERS*') or a plain substring, case-insensitive.",
            }
        },
        [],
    ),
    _tool(
        "describe_table",
        "Describe a table",
        "The columns of one table with their types, each column's classification, and the mask "
        "YOU get when you select it ('none' when you read it raw), so you can write SQL that "
        "works the first time.",
        {
            "name": {
                **_IDENT,
                "description": "DATABASE.SCHEMA.TABLE (or SCHEMA.TABLE / TABLE with a default).",
            }
        },
        ["name"],
    ),
    _tool(
        "check_query",
        "Dry-run a query against the policy",
        "Decide a statement without running it: 'allow', 'deny' or 'require_approval', the "
        "rules that matched with their reasons, findings (full scans, sensitive predicates, "
        "...), the columns that would be masked, and the estimated bytes scanned. Nothing is "
        "recorded as a query.",
        {
            "sql": {**_STR, "description": "One Snowflake SQL statement."},
            "database": {**_IDENT, "description": "Default database for unqualified table names."},
            "schema": {**_IDENT, "description": "Default schema for unqualified table names."},
        },
        ["sql"],
    ),
)
TOOL_NAMES = frozenset(t.name for t in TOOLS)
_SCHEMAS = {t.name: t.input_schema for t in TOOLS}


class ToolError(Exception):
    """A tool call answered as an error the model can act on (``is_error`` result)."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the MCP layer knows it (the verified identity lives with the backend)."""

    identity: Any  # querytrail.identity.Identity
    client_name: str = "unknown"
    client_version: str = "unknown"
    model: str | None = None
    transport: str = "streamable-http"
    session_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def validate(name: str, arguments: Any, *, max_rows: int) -> dict[str, Any]:
    """The arguments checked against the tool's schema, with a clear error for each problem."""
    if name not in _SCHEMAS:
        raise ToolError("unknown_tool", f"no tool named {name!r}; tools: {', '.join(sorted(TOOL_NAMES))}")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ToolError("invalid_arguments", "arguments must be a JSON object")
    schema = _SCHEMAS[name]
    props: dict[str, Any] = schema["properties"]
    unknown = sorted(set(arguments) - set(props))
    if unknown:
        raise ToolError(
            "invalid_arguments",
            f"unknown argument(s) {', '.join(unknown)}; {name} takes {', '.join(props)}",
        )
    missing = [k for k in schema["required"] if arguments.get(k) is None]
    if missing:
        raise ToolError("invalid_arguments", f"missing required argument(s): {', '.join(missing)}")
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        if value is None:
            continue
        spec = props[key]
        kind = spec["type"]
        if kind == "string":
            if not isinstance(value, str):
                raise ToolError("invalid_arguments", f"{key} must be a string")
            if len(value.strip()) < spec.get("minLength", 0):
                raise ToolError("invalid_arguments", f"{key} must not be empty")
            if "maxLength" in spec and len(value) > spec["maxLength"]:
                raise ToolError("invalid_arguments", f"{key} is longer than {spec['maxLength']} characters")
            if "\x00" in value:
                raise ToolError("invalid_arguments", f"{key} holds a NUL character")
        elif kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int) or value < spec.get("minimum", 0):
                raise ToolError("invalid_arguments", f"{key} must be an integer >= {spec.get('minimum', 0)}")
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ToolError("invalid_arguments", f"{key} must be a number of seconds >= 0")
        out[key] = value
    if "max_rows" in out:
        out["max_rows"] = min(out["max_rows"], max_rows)
    return out


def cap_rows(rows: list[Any], max_rows: int, max_bytes: int) -> tuple[list[Any], str | None]:
    """At most ``max_rows`` rows and ``max_bytes`` of their JSON; why it was cut, or None."""
    kept: list[Any] = []
    size = 2
    for row in rows:
        if len(kept) >= max_rows:
            return kept, f"row cap: {max_rows} of {len(rows)} rows returned"
        size += len(json.dumps(row, ensure_ascii=False, default=str, separators=(",", ":")).encode()) + 1
        if size > max_bytes:
            return kept, f"byte cap: {len(kept)} of {len(rows)} rows fit in {max_bytes} bytes"
        kept.append(row)
    return kept, None


def _masked(decision: dict[str, Any] | None, masks: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for m in (decision or {}).get("masked_columns", []):
        mask = m.get("mask") or masks.get(m["classification"], "masked")
        out.append(
            {
                "column": m["output"],
                "source": m["source"],
                "classification": m["classification"],
                "mask": mask,
                "why": f"{m['source']} is classified {m['classification']}; "
                f"the policy gives you its '{mask}' mask",
            }
        )
    return out


def shape_outcome(
    body: dict[str, Any], *, max_rows: int, max_bytes: int, masks: dict[str, str]
) -> dict[str, Any]:
    """An outcome (``RequestOutcome.to_json()``) as a tool result; ToolError for a denial or failure."""
    status = body["status"]
    request_id = body["request_id"]
    decision = body.get("decision")
    approval = body.get("approval")
    if status in ("denied", "rejected"):
        rejected = body.get("rejected") or {}
        rules = list(rejected.get("rules") or (decision or {}).get("rules") or [])
        if approval and approval.get("state") in ("denied", "expired"):
            rules = rules or [approval.get("rule_id")]
            reason = f"approval {approval['state']}" + (
                f": {approval['reason']}" if approval.get("reason") else ""
            )
        else:
            reasons = (decision or {}).get("reasons") or []
            reason = rejected.get("reason") or "; ".join(reasons) or "denied by policy"
        rule_text = ", ".join(r for r in rules if r) or "(no rule: the policy default)"
        raise ToolError(
            rejected.get("reason_code") or "denied",
            f"querytrail refused request {request_id}: rule {rule_text}: {reason}",
            request_id=request_id,
            status=status,
            rules=rules,
            reason=reason,
            findings=(decision or {}).get("findings", []),
        )
    if status == "failed":
        failed = body.get("failed") or {}
        raise ToolError(
            failed.get("error_code") or "failed",
            f"request {request_id} failed in Snowflake ({failed.get('outcome')}): {failed.get('message')}",
            request_id=request_id,
            status=status,
            sqlstate=failed.get("sqlstate"),
        )
    out: dict[str, Any] = {"status": status, "request_id": request_id}
    if status == "awaiting_approval" and approval:
        out.update(
            approver_groups=approval.get("approver_groups", []),
            min_approvals=approval.get("min_approvals"),
            expires_at=approval.get("expires_at"),
            rule=approval.get("rule_id"),
            next="tell the user who must approve, then call wait_for_approval with this request_id",
        )
    elif status in ("pending", "running", "decided"):
        out["next"] = "call wait_for_approval with this request_id to get the outcome"
    if status == "completed":
        result = body.get("result") or {}
        rows, why = cap_rows(result.get("rows") or [], max_rows, max_bytes)
        executor_cut = bool(result.get("truncated"))
        if executor_cut and why is None:
            why = f"row cap: only the first {len(rows)} rows were fetched (max_rows or the policy's max_result_rows)"
        out.update(
            columns=[
                {
                    "name": c["name"],
                    "type": c["type"],
                    "masked": c.get("masked", False),
                    "classification": c.get("classification"),
                }
                for c in result.get("columns", [])
            ],
            rows=rows,
            row_count=result.get("row_count"),
            rows_returned=len(rows),
            truncated=why is not None,
            truncation=why,
            masked=_masked(decision, masks),
            snowflake_query_id=result.get("snowflake_query_id"),
            elapsed_ms=result.get("elapsed_ms"),
        )
    if decision is not None:
        out["decision"] = {
            "decision": decision.get("decision"),
            "rules": decision.get("rules", []),
            "reasons": decision.get("reasons", []),
        }
    return out


def _text(data: Any) -> list[Any]:
    return [TextContent(text=json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":")))]


def ok_result(data: dict[str, Any]) -> CallToolResult:
    return CallToolResult(content=_text(data), structured_content=data)


def error_result(err: ToolError) -> CallToolResult:
    data = {"error": err.code, "message": err.message, **err.details}
    return CallToolResult(
        content=[TextContent(text=err.message), *_text(data)], structured_content=data, is_error=True
    )

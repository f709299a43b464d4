"""``querytrail replay``: one request's whole story from the log, and re-deciding under a new policy.

Everything printed from an event (prompt, SQL, claims, comments, rows) is untrusted text, printed
through ``querytrail.escape.terminal``: control and invisible characters (ANSI escapes, newlines,
bidi overrides) are shown escaped so a crafted prompt cannot forge lines of the display.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from querytrail.escape import terminal

__all__ = ["redecide", "request_story", "story_json", "story_text"]

_TOPIC_ORDER = (
    "requests",
    "decisions",
    "approvals",
    "executions",
    "results",
    "actions",
    "catalog",
    "deadletter",
)


def _order(row: dict[str, Any]) -> tuple[Any, ...]:
    suffix = str(row["topic"]).rsplit(".", 1)[-1]
    rank = _TOPIC_ORDER.index(suffix) if suffix in _TOPIC_ORDER else len(_TOPIC_ORDER)
    return (row["occurred_at"], rank, row["topic"], row["partition"], row["offset"])


def request_story(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's rows in order, each with its decoded JSON payload (duplicates by event id once)."""
    seen: set[str] = set()
    story = []
    for row in sorted(rows, key=_order):
        if row["event_id"] in seen:
            continue  # an at-least-once producer may have sent it twice; the log keeps both
        seen.add(row["event_id"])
        payload = json.loads(row["payload_json"]) if row.get("payload_json") else {}
        story.append(
            {
                **{
                    k: row.get(k)
                    for k in ("event_type", "occurred_at", "topic", "partition", "offset", "event_id")
                },
                "event": payload,
            }
        )
    return story


def story_json(request_id: str, story: list[dict[str, Any]]) -> str:
    def plain(v: Any) -> Any:
        return v.isoformat() if isinstance(v, datetime) else v

    return json.dumps(
        {"request_id": request_id, "events": [{k: plain(v) for k, v in e.items()} for e in story]},
        indent=2,
        ensure_ascii=True,
    )


def _who(ident: dict[str, Any] | None) -> str:
    if not ident:
        return "unverified"
    groups = ",".join(ident.get("groups") or [])
    actor = f" actor={ident['actor']}" if ident.get("actor") else ""
    return f"{ident.get('subject')} ({ident.get('issuer')}) groups=[{groups}]{actor}"


def _lines(et: str, e: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if et == "QueryRequested":
        cred = e.get("credential") or {}
        ctx = e.get("context") or {}
        who = (
            _who(cred.get("attested")) if cred.get("attested") else f"token sha256 {cred.get('token_sha256')}"
        )
        out += [
            f"who: {who}",
            f"model: {e.get('model')}",
            f"prompt: {e.get('prompt')}",
            f"sql: {e.get('sql')}",
        ]
        out.append(
            f"target: {e.get('target')}; ci: {ctx.get('ci_provider')} {ctx.get('repository')} "
            f"run {ctx.get('run_id')} commit {ctx.get('commit')}"
        )
        extra = ctx.get("extra") or {}
        if "mcp.client" in extra:  # a tool call of an MCP agent (docs/mcp.md)
            out.append(
                f"agent: {extra['mcp.client']} {extra.get('mcp.client_version')} over MCP "
                f"({extra.get('mcp.transport')}), session {e.get('session_id')}"
            )
    elif et == "PolicyDecided":
        out += [
            f"decision: {e.get('decision')} rules={e.get('rules')} statement={e.get('statement')}",
            f"identity: {_who(e.get('identity'))}",
            f"reasons: {e.get('reasons')}",
            f"tables: {e.get('tables')} tags={e.get('tags')}",
            f"findings: {[f.get('code') for f in e.get('findings') or []]}",
            f"masking: {[(m.get('output'), m.get('classification'), m.get('mask')) for m in e.get('masked_columns') or []]}",
            f"rewritten sql: {e.get('rewritten_sql')}",
            f"estimated bytes: {e.get('estimated_bytes')}",
        ]
    elif et == "ApprovalRequested":
        out += [
            f"approvers: {e.get('approver_groups')} min={e.get('min_approvals')} expires {e.get('expires_at')}",
            f"rule: {e.get('rule_id')} statement sha256 {e.get('statement_sha256')}",
        ]
    elif et == "ApprovalVerdict":
        cred = e.get("credential") or {}
        out += [f"verdict: {e.get('verdict')} by {_who(cred.get('attested'))} comment: {e.get('comment')}"]
    elif et == "ApprovalVerdictRecorded":
        out += [
            f"verdict {e.get('verdict')} accepted={e.get('accepted')} reason={e.get('reason')} "
            f"approver: {_who(e.get('approver'))}"
        ]
    elif et == "ApprovalResolved":
        out += [f"outcome: {e.get('outcome')} approvers={e.get('approvers')} reason={e.get('reason')}"]
    elif et == "ExecutionAuthorized":
        out += [
            f"statement: {e.get('statement')}",
            f"target: {e.get('target')} max_rows={e.get('max_rows')} "
            f"expires {e.get('expires_at')} key {e.get('key_id')}",
        ]
    elif et == "ExecutionStarted":
        out += [f"query tag {e.get('query_tag')} on profile {e.get('target_profile')}"]
    elif et == "QueryCompleted":
        cols = [f"{c.get('name')}{'(masked)' if c.get('masked') else ''}" for c in e.get("columns") or []]
        out += [
            f"rows: {e.get('row_count')} columns: {cols} snowflake query {e.get('snowflake_query_id')}",
            f"bytes scanned: {e.get('bytes_scanned')} (estimated {e.get('estimated_bytes')}"
            f"{', COST ALERT' if e.get('cost_alert') else ''}) partitions {e.get('partitions_scanned')}"
            f"/{e.get('partitions_total')} rows produced {e.get('rows_produced')} queued {e.get('queued_ms')} ms",
            f"warehouse {e.get('warehouse_name')} ({e.get('warehouse_size')}) role {e.get('role_name')} "
            f"elapsed {e.get('elapsed_ms')} ms result sha256 {e.get('result_sha256')}",
            f"detector hits: {e.get('detector_hits')} classifications: {e.get('classifications_touched')}",
        ]
    elif et == "ResultPage":
        out += [f"page {e.get('page')} from row {e.get('row_offset')}: {e.get('rows_json')}"]
    elif et in ("QueryFailed", "QueryRejected"):
        out += [
            f"{k}: {e.get(k)}"
            for k in ("stage", "outcome", "reason_code", "reason", "rules", "error_code", "message")
            if e.get(k) is not None
        ]
    elif et == "DownstreamActionReported":
        out += [
            f"action: {e.get('action')} on {e.get('system')} rows={e.get('row_count')} "
            f"by {_who(e.get('reporter'))}",
            f"details: {e.get('details_json')}",
        ]
    else:
        out += [json.dumps(e, sort_keys=True)]
    return out


def story_text(request_id: str, story: list[dict[str, Any]], width: int = 400) -> str:
    if not story:
        return f"request {terminal(request_id)}: no events in the audit log"
    lines = [f"request {terminal(request_id)}: {len(story)} events"]
    for item in story:
        at = item["occurred_at"]
        when = at.isoformat() if isinstance(at, datetime) else str(at)
        lines.append(
            f"{when}  {terminal(item['event_type'])}  [{item['topic']}:{item['partition']}@{item['offset']}]"
        )
        lines += [f"    {terminal(line, width)}" for line in _lines(item["event_type"], item["event"])]
    return "\n".join(lines)


def redecide(rows: list[dict[str, Any]], policy: Any, catalog: Any) -> list[dict[str, Any]]:
    """Re-decide each past QueryRequested under ``policy``: what would change.

    The identity is the one the processors verified (the PolicyDecided event), the time the
    original request time, the session defaults the request's target.
    """
    from processors.decision.policy import IdentityClaims
    from processors.decision.statement import evaluate

    by_request: dict[str, dict[str, dict[str, Any]]] = {}
    for row in sorted(rows, key=_order):
        if row["event_type"] in ("QueryRequested", "PolicyDecided"):
            by_request.setdefault(row["request_id"], {}).setdefault(row["event_type"], row)
    changes = []
    for rid, events in sorted(by_request.items()):
        req, old = events.get("QueryRequested"), events.get("PolicyDecided")
        if req is None or old is None:
            continue  # rejected before a decision (identity, validation): nothing to re-decide
        payload = json.loads(req["payload_json"])
        ident = json.loads(old["payload_json"]).get("identity") or {}
        try:
            claims = json.loads(ident.get("claims_json") or "{}")
        except ValueError:
            claims = {}
        identity = IdentityClaims(
            subject=ident.get("subject"),
            issuer=ident.get("issuer"),
            groups=frozenset(ident.get("groups") or ()),
            claims=claims if isinstance(claims, dict) else {},
        )
        target = payload.get("target") or {}
        new = evaluate(
            payload.get("sql") or "",
            identity,
            catalog,
            policy,
            req["occurred_at"],
            database=target.get("database"),
            schema=target.get("schema"),
        )
        old_rules = list(old.get("rules") or [])
        if new.decision != old["decision"] or list(new.rules) != old_rules:
            changes.append(
                {
                    "request_id": rid,
                    "requested_at": req["occurred_at"],
                    "subject": ident.get("subject"),
                    "sql": payload.get("sql"),
                    "old_decision": old["decision"],
                    "old_rules": old_rules,
                    "new_decision": new.decision,
                    "new_rules": list(new.rules),
                    "new_reasons": list(new.reasons),
                }
            )
    return changes

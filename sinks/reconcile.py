"""``querytrail reconcile``: Snowflake's query history against the audit log.

Auditors ask "show me that every AI query went through the control point". The audit log knows
what querytrail authorised and ran (ExecutionAuthorized, ExecutionStarted with the QUERY_TAG,
QueryCompleted/QueryFailed with Snowflake's query id); Snowflake's QUERY_HISTORY knows what ran.
Matched by query id, query tag (querytrail.query_tag) and statement SHA-256, four findings:

- ``unauthorized``: a statement under querytrail's service user that querytrail never
  authorised (stolen credentials, or something that goes around querytrail);
- ``text_mismatch``: tagged with an authorised request but not its statement;
- ``missing_in_history``: authorised and started, but Snowflake has no record of it (checked only
  once the history's latency has passed);
- ``agent_direct``: a statement by a user or with a tag configured as an agent's.

querytrail's own housekeeping in its sessions (ALTER SESSION for the tag and timeout, the cost
read-back, the catalog sync's INFORMATION_SCHEMA reads, this reader's own reads) is not a
finding. Each finding is a BypassDetected event (keyed ``reconcile-<kind>-<id>``) and a row of the
``bypass`` report. A state file remembers how far a run got and what it reported, so a rerun
over the same window reports nothing twice; every run re-reads ``latency_s`` back from the last
watermark, because ACCOUNT_USAGE rows can land that late. Pure over rows: the history rows come
from processors.executor.warehouse_history, the audit rows from the Iceberg table (or, in tests, from
``sinks.audit_schema.derive`` of events).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from querytrail.query_tag import parse_query_tag
from schemas.events import BypassDetected, envelope, utcnow

__all__ = [
    "CATALOG_SYNC_TAG",
    "AuditIndex",
    "Finding",
    "ReconcileState",
    "Window",
    "audit_index",
    "find_bypasses",
    "finding_events",
    "plan_window",
]

CATALOG_SYNC_TAG = "querytrail-catalog-sync"  # processors.executor.catalog_sync's tag
RECONCILE_TAG = "querytrail-reconcile"  # processors.executor.warehouse_history's tag
_MAX_TEXT = 65_536

# Statements the executor itself issues in a tagged session, around the authorised statement.
_HOUSEKEEPING = re.compile(
    r"^\s*(ALTER\s+SESSION\s+(UN)?SET\s+(QUERY_TAG|STATEMENT_TIMEOUT_IN_SECONDS)\b"
    r"|SELECT\s+\*\s+FROM\s+TABLE\s*\(\s*(\S+\.)?INFORMATION_SCHEMA\.QUERY_HISTORY_BY_SESSION\s*\("
    r"\s*RESULT_LIMIT\s*=>\s*\d+\s*\)\s*\)\s+WHERE\s+QUERY_ID\s*=\s*'[0-9a-fA-F-]+'\s*$)",
    re.I | re.S,
)
_CATALOG_READ = re.compile(
    r"^\s*(SHOW\s+DATABASES\s*$|SELECT\s+[\w\s,]+\s+FROM\s+(\"[^\"]+\"|\w+)\.INFORMATION_SCHEMA\.(TABLES|COLUMNS)\b"
    r"|SELECT\s+COUNT\(\*\)\s+FROM\s+[\w\".]+\s*$)",
    re.I | re.S,
)
_HISTORY_READ = re.compile(
    r"^\s*SELECT\s+[\w\s,]+\s+FROM\s+SNOWFLAKE\.ACCOUNT_USAGE\.QUERY_HISTORY\s+WHERE\s", re.I | re.S
)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class _Execution:
    request_id: str
    started_at: datetime | None = None
    statement_sha256: str | None = None
    query_ids: set[str] = field(default_factory=set)
    finished: bool = False


@dataclass
class AuditIndex:
    """What the audit log says querytrail ran: per request id, and every Snowflake query id."""

    executions: dict[str, _Execution] = field(default_factory=dict)
    query_ids: set[str] = field(default_factory=set)
    reported: set[str] = field(default_factory=set)  # keys of BypassDetected already in the log


def audit_index(rows: Iterable[Mapping[str, Any]]) -> AuditIndex:
    """Index audit rows (``audit.events`` columns: event_type, request_id, occurred_at,
    statement_sha256, snowflake_query_id, reason_code)."""
    index = AuditIndex()
    for row in rows:
        et, rid = row.get("event_type"), row.get("request_id")
        if not isinstance(rid, str):
            continue
        if et == "BypassDetected":
            index.reported.add(rid)
            continue
        if et not in ("ExecutionAuthorized", "ExecutionStarted", "QueryCompleted", "QueryFailed"):
            continue
        ex = index.executions.setdefault(rid, _Execution(rid))
        if et in ("ExecutionAuthorized", "ExecutionStarted") and row.get("statement_sha256"):
            ex.statement_sha256 = ex.statement_sha256 or str(row["statement_sha256"])
        if et == "ExecutionStarted":
            ex.started_at = _aware(row.get("occurred_at"))
        if et in ("QueryCompleted", "QueryFailed"):
            ex.finished = True
            qid = row.get("snowflake_query_id")
            if isinstance(qid, str) and qid:
                ex.query_ids.add(qid)
                index.query_ids.add(qid)
    return index


@dataclass(frozen=True)
class Finding:
    kind: str  # unauthorized | text_mismatch | missing_in_history | agent_direct
    key: str  # the BypassDetected's request id: stable, so a rerun recognises it
    detail: str
    related_request_id: str | None = None
    history: Mapping[str, Any] | None = None
    authorized_sha256: str | None = None
    started_at: datetime | None = None


def _key(kind: str, ident: str) -> str:
    return f"reconcile-{kind}-{ident}"


def _is_ours(row: Mapping[str, Any], tag: Mapping[str, Any] | None) -> bool:
    """querytrail's own housekeeping, recognised by its tag and exact statement shape."""
    text = str(row.get("QUERY_TEXT") or "")
    raw_tag = str(row.get("QUERY_TAG") or "")
    if raw_tag == CATALOG_SYNC_TAG and _CATALOG_READ.match(text):
        return True
    if raw_tag == RECONCILE_TAG and _HISTORY_READ.match(text):
        return True
    return tag is not None and _HOUSEKEEPING.match(text) is not None


def _glob_any(value: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, g) for g in globs)


def find_bypasses(
    history: Iterable[Mapping[str, Any]],
    index: AuditIndex,
    *,
    service_users: Iterable[str],
    agent_users: Iterable[str] = (),
    agent_tags: Iterable[str] = (),
    settled_before: datetime | None = None,
    expected_since: datetime | None = None,
) -> list[Finding]:
    """Every finding for ``history`` (rows keyed by Snowflake's column names) against ``index``.

    ``missing_in_history`` is checked for executions started in [expected_since, settled_before):
    older ones fell out of the read window, younger ones may not be in the history yet.
    """
    services = {u.upper() for u in service_users}
    agents = {u.upper() for u in agent_users}
    tag_globs = list(agent_tags)
    out: list[Finding] = []
    seen_by_request: dict[str, int] = {}
    history = list(history)
    history_ids = {str(r.get("QUERY_ID")) for r in history}
    for row in history:
        qid = str(row.get("QUERY_ID") or "")
        user = str(row.get("USER_NAME") or "").upper()
        raw_tag = str(row.get("QUERY_TAG") or "")
        tag = parse_query_tag(raw_tag)
        text = str(row.get("QUERY_TEXT") or "")
        if user in agents or (tag_globs and _glob_any(raw_tag, tag_globs)):
            if qid not in index.query_ids:
                out.append(
                    Finding("agent_direct", _key("agent_direct", qid), f"agent user {user} ran a statement "
                            "that did not come through querytrail", history=row)
                )  # fmt: skip
            continue
        if user not in services or qid in index.query_ids or _is_ours(row, tag):
            if tag is not None:
                seen_by_request[str(tag["request_id"])] = seen_by_request.get(str(tag["request_id"]), 0) + 1
            continue
        rid = str(tag["request_id"]) if tag is not None else None
        ex = index.executions.get(rid) if rid else None
        if ex is None or ex.started_at is None:
            why = (
                f"tagged with request {rid}, which querytrail never authorised"
                if rid
                else "no querytrail tag and no querytrail execution has this query id"
            )
            out.append(
                Finding("unauthorized", _key("unauthorized", qid), f"{user} ran a statement querytrail "
                        f"did not authorise: {why}", related_request_id=rid, history=row)
            )  # fmt: skip
            continue
        seen_by_request[ex.request_id] = seen_by_request.get(ex.request_id, 0) + 1
        if ex.statement_sha256 and _sha256(text) != ex.statement_sha256:
            out.append(
                Finding("text_mismatch", _key("text_mismatch", qid), f"statement tagged with request "
                        f"{ex.request_id} is not the statement querytrail authorised for it",
                        related_request_id=ex.request_id, history=row, authorized_sha256=ex.statement_sha256)
            )  # fmt: skip
    for ex in index.executions.values():
        started = ex.started_at
        if started is None or settled_before is None or started >= settled_before:
            continue  # not started, or the history may not show it yet
        if expected_since is not None and started < expected_since:
            continue  # an earlier run's window
        if ex.query_ids:
            if ex.query_ids & history_ids:
                continue
        elif ex.finished or seen_by_request.get(ex.request_id):
            continue  # failed before Snowflake gave an id (nothing to expect), or its tag is there
        ids = ", ".join(sorted(ex.query_ids)) or "none reported"
        out.append(
            Finding("missing_in_history", _key("missing_in_history", ex.request_id),
                    f"request {ex.request_id} started an execution (query id {ids}) that Snowflake's "
                    "history does not show", related_request_id=ex.request_id,
                    authorized_sha256=ex.statement_sha256, started_at=started)
        )  # fmt: skip
    return out


def finding_events(findings: Iterable[Finding], component: str = "reconcile") -> list[BypassDetected]:
    """The audit events for ``findings``."""
    now = utcnow()
    events = []
    for f in findings:
        h = f.history or {}
        text = h.get("QUERY_TEXT")
        events.append(
            BypassDetected(
                **envelope(f.key, component, at=now),
                reason_code=f.kind,
                detail=f.detail,
                related_request_id=f.related_request_id,
                snowflake_query_id=str(h["QUERY_ID"]) if h.get("QUERY_ID") else None,
                sql_text=str(text)[:_MAX_TEXT] if text is not None else None,
                statement_sha256=_sha256(str(text)) if text is not None else None,
                authorized_sha256=f.authorized_sha256,
                user_name=_opt(h.get("USER_NAME")),
                role_name=_opt(h.get("ROLE_NAME")),
                warehouse_name=_opt(h.get("WAREHOUSE_NAME")),
                query_tag=_opt(h.get("QUERY_TAG"), 2000),
                execution_status=_opt(h.get("EXECUTION_STATUS")),
                started_at=_aware(h.get("START_TIME")) or f.started_at,
            )
        )
    return events


def _opt(value: Any, limit: int = 1000) -> str | None:
    return None if value is None or value == "" else str(value)[:limit]


@dataclass(frozen=True)
class Window:
    """One run's read of the history: [since, until), and what counts as settled."""

    since: datetime
    until: datetime
    settled_before: datetime  # executions started before this must be in the history by now
    expected_since: datetime  # ... and after this (older ones were checked by earlier runs)


@dataclass
class ReconcileState:
    """How far reconcile got and what it reported (a JSON file; rewritten atomically)."""

    path: Path
    watermark: datetime | None = None
    reported: dict[str, str] = field(default_factory=dict)  # finding key -> when reported

    @classmethod
    def load(cls, path: Path) -> ReconcileState:
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        mark = data.get("watermark")
        return cls(path, _aware(mark) if mark else None, dict(data.get("reported", {})))

    def save(self, keep: timedelta = timedelta(days=8)) -> None:
        if self.watermark is not None:  # findings older than any window we will read again
            floor = (self.watermark - keep).isoformat()
            self.reported = {k: v for k, v in self.reported.items() if v >= floor}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = {
            "watermark": self.watermark.isoformat() if self.watermark else None,
            "reported": self.reported,
        }
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)


def plan_window(
    state: ReconcileState, now: datetime, latency_s: float, lookback_s: float, settle_s: float = 0.0
) -> Window:
    """The next read: from ``latency_s`` before the watermark (late rows) to ``settle_s`` before
    now (the audit sink lands events seconds after they happen: a statement that new is left to
    the next run rather than reported because its events are not in the log yet)."""
    latency = timedelta(seconds=latency_s)
    until = now - timedelta(seconds=settle_s)
    since = (state.watermark - latency) if state.watermark else until - timedelta(seconds=lookback_s)
    return Window(since=since, until=until, settled_before=until - latency, expected_since=since)

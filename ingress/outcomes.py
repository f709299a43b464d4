"""What happened to a request, assembled from the decisions and results topics.

``RequestOutcome.apply(event)`` folds one event into the picture (pure, no Kafka); the CI
client and the HTTP ingress both use it. ``OutcomeIndex`` keeps a bounded, thread-safe map of
recent outcomes by request id for the ingress's long poll.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OutcomeIndex", "RequestOutcome", "Requester"]

# (issuer, subject): a caller reads only outcomes whose requester is itself.
Requester = tuple[str, str]

_MAX_ROWS_KEPT = 100_000  # per request, so a huge result cannot exhaust the ingress's memory


@dataclass
class RequestOutcome:
    """Everything seen so far about one request."""

    request_id: str
    requester: Requester | None = None
    decision: dict[str, Any] | None = None
    approval: dict[str, Any] | None = None
    completed: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    rejected: dict[str, Any] | None = None
    pages: dict[int, list[Any]] = field(default_factory=dict)
    last_page: int | None = None
    fingerprint: str | None = None  # of the body sent with an Idempotency-Key (ingress.app)
    updated_at: float = field(default_factory=time.monotonic)

    def apply(self, event: Any) -> None:
        """Fold one event of this request in."""
        kind = event.event_type
        ident = getattr(event, "identity", None) or getattr(event, "requester", None)
        if ident is not None and kind in ("PolicyDecided", "ApprovalRequested", "QueryRejected"):
            self.requester = self.requester or (ident.issuer, ident.subject)
        if kind == "PolicyDecided":
            self.decision = {
                "decision": event.decision,
                "rules": list(event.rules),
                "reasons": list(event.reasons),
                "statement": event.statement,
                "tables": list(event.tables),
                "findings": [{"code": f.code, "detail": f.detail} for f in event.findings],
                "masked_columns": [
                    {"output": m.output, "source": m.source, "classification": m.classification}
                    for m in event.masked_columns
                ],
                "policy_sha256": event.policy_sha256,
            }
        elif kind == "ApprovalRequested":
            self.approval = {
                "state": "pending",
                "rule_id": event.rule_id,
                "approver_groups": list(event.approver_groups),
                "min_approvals": event.min_approvals,
                "expires_at": event.expires_at.isoformat(),
                "statement_sha256": event.statement_sha256,
            }
        elif kind == "ApprovalResolved":
            self.approval = {
                **(self.approval or {}),
                "state": event.outcome,
                "approvers": list(event.approvers),
                "reason": event.reason,
            }
        elif kind == "QueryCompleted":
            self.completed = {
                "row_count": event.row_count,
                "columns": [
                    {"name": c.name, "type": c.type, "masked": c.masked, "classification": c.classification}
                    for c in event.columns
                ],
                "snowflake_query_id": event.snowflake_query_id,
                "elapsed_ms": event.elapsed_ms,
                "bytes_scanned": event.bytes_scanned,
                "result_sha256": event.result_sha256,
                "pages": event.pages,
                "truncated": event.truncated,
                "classifications_touched": list(event.classifications_touched),
            }
        elif kind == "ResultPage":
            if sum(len(p) for p in self.pages.values()) < _MAX_ROWS_KEPT:
                self.pages[event.page] = json.loads(event.rows_json)
            if event.last:
                self.last_page = event.page
        elif kind == "QueryFailed":
            self.failed = {
                "outcome": event.outcome,
                "error_code": event.error_code,
                "sqlstate": event.sqlstate,
                "message": event.message,
                "snowflake_query_id": event.snowflake_query_id,
            }
        elif kind == "QueryRejected":
            self.rejected = {
                "stage": event.stage,
                "reason_code": event.reason_code,
                "reason": event.reason,
                "rules": list(event.rules),
            }
        self.updated_at = time.monotonic()

    @property
    def rows_complete(self) -> bool:
        if self.completed is None:
            return False
        expected = self.completed["pages"]
        return all(i in self.pages for i in range(expected))

    @property
    def status(self) -> str:
        if self.rejected is not None:
            return "rejected"
        if self.failed is not None:
            return "failed"
        if self.completed is not None:
            return "completed" if self.rows_complete else "running"
        state = (self.approval or {}).get("state")
        if state == "pending":
            return "awaiting_approval"
        if state in ("denied", "expired"):
            return "denied"  # an approval that was refused or ran out is final
        if state == "approved":
            return "running"
        if self.decision is not None:
            # A deny is final even before its QueryRejected arrives.
            return {"allow": "running", "deny": "denied"}.get(self.decision["decision"], "decided")
        return "pending"

    @property
    def terminal(self) -> bool:
        return self.status in ("rejected", "denied", "failed", "completed")

    def rows(self) -> list[Any]:
        return [row for i in sorted(self.pages) for row in self.pages[i]]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"request_id": self.request_id, "status": self.status}
        for name in ("decision", "approval", "rejected", "failed"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.completed is not None:
            out["result"] = {**self.completed, "rows": self.rows() if self.rows_complete else None}
        return out


def _unsolicited(event: Any) -> bool:
    """A refused (401) caller's rejection: nobody can read it back (it has no requester)."""
    return event.event_type == "QueryRejected" and event.stage == "identity" and event.identity is None


class OutcomeIndex:
    """Bounded LRU of recent outcomes by request id; safe to share between threads."""

    def __init__(self, max_requests: int = 10_000) -> None:
        self._max = max_requests
        self._lock = threading.Lock()
        self._items: OrderedDict[str, RequestOutcome] = OrderedDict()

    def _entry(self, request_id: str) -> RequestOutcome:
        entry = self._items.get(request_id)
        if entry is None:
            entry = self._items[request_id] = RequestOutcome(request_id)
            while len(self._items) > self._max:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(request_id)
        return entry

    def note_request(self, request_id: str, requester: Requester, fingerprint: str | None = None) -> None:
        """The ingress accepted this request from ``requester`` (with this body fingerprint)."""
        with self._lock:
            entry = self._entry(request_id)
            entry.requester = requester
            entry.fingerprint = entry.fingerprint or fingerprint

    def fingerprint_conflicts(self, request_id: str, fingerprint: str) -> bool:
        """True when this request id was accepted before with another body."""
        with self._lock:
            entry = self._items.get(request_id)
            return entry is not None and entry.fingerprint not in (None, fingerprint)

    def apply(self, event: Any) -> None:
        with self._lock:
            if event.request_id not in self._items and _unsolicited(event):
                return  # a refused caller's own rejection must not evict real outcomes
            self._entry(event.request_id).apply(event)

    def get(self, request_id: str) -> dict[str, Any] | None:
        """A JSON snapshot plus the requester, or None when nothing is known about it."""
        with self._lock:
            entry = self._items.get(request_id)
            if entry is None:
                return None
            return {"requester": entry.requester, "terminal": entry.terminal, "body": entry.to_json()}

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

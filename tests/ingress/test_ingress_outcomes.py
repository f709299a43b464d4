"""Outcome folding (pure): statuses, page order, the bounded index, and submit's exit codes."""

from __future__ import annotations

from typing import Any

import pytest

from ingress.outcomes import OutcomeIndex, RequestOutcome
from querytrail.cli.ingress import EXIT_COMPLETED, EXIT_FAILED, EXIT_REJECTED, EXIT_TIMEOUT, _report
from schemas.events import (
    ApprovalRequested,
    ApprovalResolved,
    PolicyDecided,
    QueryCompleted,
    QueryFailed,
    ResultColumn,
    ResultPage,
    VerifiedIdentity,
    new_event_id,
    producer,
    utcnow,
)

WHO = VerifiedIdentity(
    subject="alice", issuer="https://idp", groups=(), claims_json="{}", token_sha256="0" * 64
)


def _c(rid: str = "r1") -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "request_id": rid,
        "occurred_at": utcnow(),
        "producer": producer("test"),
    }


def _decided(decision: str, rid: str = "r1") -> PolicyDecided:
    return PolicyDecided(
        **_c(rid),
        decision=decision,
        rules=("r",),
        reasons=("because",),
        statement="select",
        tables=(),
        findings=(),
        masked_columns=(),
        policy_sha256="p",
        identity=WHO,
        sql_text="s",
    )


def _held() -> ApprovalRequested:
    return ApprovalRequested(
        **_c(),
        statement_sha256="h",
        statement="s",
        rule_id="r",
        approver_groups=("sec",),
        min_approvals=1,
        expires_at=utcnow(),
        requester=WHO,
        prompt="p",
        sql_text="s",
        findings=(),
        masked_columns=(),
    )


def test_approval_then_paged_result() -> None:
    o = RequestOutcome("r1")
    o.apply(_decided("require_approval"))
    assert (o.status, o.requester) == ("decided", ("https://idp", "alice"))
    o.apply(_held())
    assert o.status == "awaiting_approval" and not o.terminal
    o.apply(ApprovalResolved(**_c(), outcome="approved", approvers=("bob",), statement_sha256="h"))
    assert o.status == "running"
    o.apply(
        QueryCompleted(
            **_c(),
            row_count=3,
            columns=(ResultColumn(name="A", type="NUMBER", masked=False),),
            elapsed_ms=1,
            result_sha256="x",
            pages=2,
            truncated=False,
        )
    )
    o.apply(ResultPage(**_c(), page=1, rows_json="[[3]]", row_offset=2, last=True))
    assert o.status == "running"  # page 0 is still missing
    o.apply(ResultPage(**_c(), page=0, rows_json="[[1],[2]]", row_offset=0, last=False))
    assert o.status == "completed" and o.rows() == [[1], [2], [3]]
    assert o.to_json()["result"]["rows"] == [[1], [2], [3]]
    assert _report(o, "json", 1) == EXIT_COMPLETED


@pytest.mark.parametrize(
    ("events", "status", "code"),
    [
        ([_decided("deny")], "denied", EXIT_REJECTED),
        (
            [
                _decided("require_approval"),
                _held(),
                ApprovalResolved(**_c(), outcome="expired", approvers=(), statement_sha256="h"),
            ],
            "denied",
            EXIT_REJECTED,
        ),
        ([_decided("allow"), QueryFailed(**_c(), outcome="failed", message="boom")], "failed", EXIT_FAILED),
        ([_decided("allow")], "running", EXIT_TIMEOUT),
        ([], "pending", EXIT_TIMEOUT),
    ],
)
def test_statuses_and_exit_codes(events: list[Any], status: str, code: int) -> None:
    o = RequestOutcome("r1")
    for e in events:
        o.apply(e)
    assert o.status == status and _report(o, "table", 1) == code


def test_index_is_bounded_and_keeps_requesters() -> None:
    index = OutcomeIndex(max_requests=3)
    for i in range(5):
        index.note_request(f"r{i}", ("iss", f"u{i}"))
    assert len(index) == 3 and index.get("r0") is None
    index.apply(_decided("allow", rid="r4"))
    snap = index.get("r4")
    assert snap is not None and snap["requester"] == ("iss", "u4") and snap["body"]["status"] == "running"

"""Hand-made events shared by the codec tests, and fastavro's bytes for any event."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import fastavro

from schemas import events
from schemas.codec import schema_versions

_PARSED = {v.name: v.parsed for v in schema_versions() if v.version == "current"}


def fastavro_body(event: Any) -> bytes:
    """The body fastavro writes for the event: an implementation independent of ours."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, _PARSED[type(event).__name__], dataclasses.asdict(event))
    return out.getvalue()


def result_page() -> events.ResultPage:
    return events.ResultPage(
        event_id=events.new_event_id(),
        request_id="req-é",
        occurred_at=events.utcnow(),
        producer=events.producer("executor"),
        page=0,
        rows_json="[]",
        row_offset=0,
        last=True,
    )


def approval_verdict(verdict: str = "approve") -> events.ApprovalVerdict:
    return events.ApprovalVerdict(
        event_id=events.new_event_id(),
        request_id="r",
        occurred_at=events.utcnow(),
        producer=events.producer("cli"),
        verdict=verdict,  # type: ignore[arg-type]
        statement_sha256="ab",
        credential=events.Credential(token_sha256="t"),
    )


def query_rejected(rules: Any = ("rule-1",)) -> events.QueryRejected:
    return events.QueryRejected(
        event_id=events.new_event_id(),
        request_id="r",
        occurred_at=events.utcnow(),
        producer=events.producer("worker"),
        stage="policy",
        reason_code="denied_by_policy",
        reason="no rule allows it",
        rules=rules,
    )


def query_requested(sealed: bytes | None) -> events.QueryRequested:
    return events.QueryRequested(
        event_id=events.new_event_id(),
        request_id="req-1",
        occurred_at=events.utcnow(),
        producer=events.producer("cli"),
        prompt="list customers",
        model="claude",
        sql="SELECT 1",
        target=events.Target(profile="analytics"),
        context=events.ClientContext(extra={"k": "v"}),
        credential=events.Credential(sealed_token=sealed, token_sha256="f" * 64),
    )

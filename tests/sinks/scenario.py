"""A seeded audit scenario: one request per thing an auditor asks about, with known answers.

- ``pii-unmasked``: SSN reached the result in clear (a classified column with masked = false).
- ``pii-masked``: EMAIL and SSN reached the result masked.
- ``pii-detector``: a phone number slipped past the SQL masking and a detector masked it.
- ``priv-night``: a privileged table read at 02:30 UTC (inside the 00:00-05:00 window), executed.
- ``priv-day``: a privileged table read at 14:00 UTC, executed.
- ``priv-denied``: a privileged read at 03:00 UTC that policy denied (never ran).
- ``scan-full``: a full_table_scan of ORDERS, with its prompt.
- ``plain``: an ordinary small read (appears in no report).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import events as ev

DAY = datetime(2026, 11, 20, tzinfo=UTC)

ALICE = ev.VerifiedIdentity(
    subject="ci-bot",
    issuer="https://token.actions.githubusercontent.com",
    groups=("ci",),
    service_account=True,
    actor="alice",
    claims_json=json.dumps({"sub": "ci-bot", "repository": "acme/etl"}),
    token_sha256="a" * 64,
)
NIGHTLY = ev.VerifiedIdentity(
    subject="nightly-batch",
    issuer="https://token.actions.githubusercontent.com",
    groups=("ci", "batch"),
    service_account=True,
    claims_json=json.dumps({"sub": "nightly-batch", "repository": "acme/nightly"}),
    token_sha256="b" * 64,
)


def _meta(rid: str, at: datetime, component: str) -> dict[str, Any]:
    return {
        "event_id": ev.new_event_id(),
        "request_id": rid,
        "session_id": f"run-{rid}",
        "occurred_at": at,
        "producer": ev.producer(component),
    }


def request(
    rid: str,
    at: datetime,
    sql: str,
    prompt: str,
    ident: ev.VerifiedIdentity = ALICE,
    *,
    decision: str = "allow",
    rules: tuple[str, ...] = ("ci-reads-analytics",),
    tables: tuple[str, ...] = ("ANALYTICS.PUBLIC.CUSTOMERS",),
    tags: tuple[str, ...] = (),
    findings: tuple[str, ...] = (),
    estimated_bytes: int | None = 1000,
    masked: tuple[tuple[str, str], ...] = (),
    columns: tuple[ev.ResultColumn, ...] | None = None,
    hits: tuple[ev.DetectorHit, ...] = (),
    bytes_scanned: int | None = None,
    rows: int = 2,
) -> list[Any]:
    """The events of one request, in the order the pipeline produces them."""
    out: list[Any] = [
        ev.QueryRequested(
            **_meta(rid, at, "cli"),
            prompt=prompt,
            model="claude",
            sql=sql,
            target=ev.Target(profile="analytics", database="ANALYTICS", schema="PUBLIC"),
            context=ev.ClientContext(ci_provider="github-actions", repository="acme/etl", run_id=f"r-{rid}"),
            credential=ev.Credential(sealed_token=b"\x01sealed-opaque", token_sha256=ident.token_sha256),
        ),
        ev.PolicyDecided(
            **_meta(rid, at + timedelta(seconds=1), "worker"),
            decision=decision,
            rules=rules,
            reasons=("r",),
            statement="select",
            tables=tables,
            findings=tuple(ev.Finding(code=f, detail=f) for f in findings),
            masked_columns=tuple(
                ev.MaskedColumn(output=o, source=f"{tables[0]}.{o}", classification=c, mask="last4")
                for o, c in masked
            ),
            rewritten_sql=sql,
            estimated_bytes=estimated_bytes,
            policy_sha256="p" * 64,
            identity=ident,
            sql_text=sql,
            classifications_touched=tuple(c for _, c in masked),
            tags=tags,
        ),
    ]
    if decision != "allow":
        out.append(
            ev.QueryRejected(
                **_meta(rid, at + timedelta(seconds=2), "worker"),
                stage="policy",
                reason_code="denied_by_policy",
                reason="denied",
                rules=rules,
                identity=ident,
            )
        )
        return out
    cols = (
        columns
        if columns is not None
        else (
            *tuple(ev.ResultColumn(name=o, type="TEXT", masked=True, classification=c) for o, c in masked),
            ev.ResultColumn(name="ID", type="NUMBER"),
        )
    )
    out += [
        ev.ExecutionStarted(
            **_meta(rid, at + timedelta(seconds=3), "executor"),
            authorization_event_id="x",
            statement_sha256=hashlib.sha256(sql.encode()).hexdigest(),
            query_tag=rid,
            target_profile="analytics",
        ),
        ev.ResultPage(
            **_meta(rid, at + timedelta(seconds=4), "executor"),
            page=0,
            rows_json='[["***-**-6789", 1]]',
            row_offset=0,
            last=True,
        ),
        ev.QueryCompleted(
            **_meta(rid, at + timedelta(seconds=4), "executor"),
            row_count=rows,
            columns=cols,
            snowflake_query_id=f"sf-{rid}",
            elapsed_ms=12,
            bytes_scanned=bytes_scanned,
            result_sha256="r" * 64,
            pages=1,
            truncated=False,
            detector_hits=hits,
            classifications_touched=tuple(c.classification for c in cols if c.classification and c.masked),
        ),
        ev.DownstreamActionReported(
            **_meta(rid, at + timedelta(seconds=9), "etl"),
            action="wrote report",
            system="s3",
            details_json="{}",
            row_count=rows,
            reporter=ident,
        ),
    ]
    return out


def scenario() -> list[Any]:
    c = "ANALYTICS.PUBLIC.CUSTOMERS"
    return [
        *request(
            "pii-unmasked",
            DAY + timedelta(hours=10),
            "select ssn, id from customers",
            "show me ssns",
            masked=(),
            columns=(
                ev.ResultColumn(name="SSN", type="TEXT", masked=False, classification="pii.ssn"),
                ev.ResultColumn(name="ID", type="NUMBER"),
            ),
        ),
        *request(
            "pii-masked",
            DAY + timedelta(hours=10, minutes=5),
            "select email, ssn, id from customers",
            "emails please",
            masked=(("EMAIL", "pii.email"), ("SSN", "pii.ssn")),
        ),
        *request(
            "pii-detector",
            DAY + timedelta(hours=10, minutes=10),
            "select notes from customers",
            "notes",
            columns=(ev.ResultColumn(name="NOTES", type="TEXT"),),
            hits=(ev.DetectorHit(column="NOTES", detector="phone", count=3),),
        ),
        *request(
            "priv-night",
            DAY + timedelta(hours=2, minutes=30),
            "select * from security.admin.users",
            "list admins",
            NIGHTLY,
            rules=("privileged-needs-approval",),
            tables=("SECURITY.ADMIN.USERS",),
            tags=("privileged",),
            findings=("privileged_table",),
        ),
        *request(
            "priv-day",
            DAY + timedelta(hours=14),
            "select name from security.admin.users",
            "admin names",
            rules=("privileged-needs-approval",),
            tables=("SECURITY.ADMIN.USERS",),
            tags=("privileged",),
            findings=("privileged_table",),
        ),
        *request(
            "priv-denied",
            DAY + timedelta(hours=3),
            "select * from security.admin.users",
            "admins again",
            NIGHTLY,
            decision="deny",
            rules=("nightly-privileged",),
            tables=("SECURITY.ADMIN.USERS",),
            tags=("privileged",),
            findings=("privileged_table",),
        ),
        *request(
            "scan-full",
            DAY + timedelta(hours=11),
            "select * from orders",
            "how many orders ever? all of them",
            tables=("ANALYTICS.PUBLIC.ORDERS",),
            findings=("full_table_scan",),
            estimated_bytes=50 * 1024**3,
            bytes_scanned=48 * 1024**3,
        ),
        *request("plain", DAY + timedelta(hours=12), f"select id from {c} where id = 1", "one id"),
    ]

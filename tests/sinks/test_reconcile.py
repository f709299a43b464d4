"""``querytrail reconcile`` against the real local fakesnow's query history (sinks/reconcile.py,
querytrail/cli/reconcile.py): direct use of querytrail's credentials, a changed statement, an
agent going around querytrail and an execution Snowflake never saw are found; authorised traffic
is not; a rerun reports nothing twice."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from processors.decision.authz import Signer, Verifier, make_authorization
from querytrail.settings import Settings
from schemas.events import ExecutionStarted, QueryCompleted, Target, VerifiedIdentity, utcnow
from sinks.audit_schema import derive
from sinks.reconcile import ReconcileState, audit_index, find_bypasses, plan_window

SIGNER = Signer(Ed25519PrivateKey.generate())
WHO = VerifiedIdentity(
    subject="ci-bot", issuer="https://issuer", groups=("ci",), claims_json="{}", token_sha256="0" * 64
)


class Collect:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def publish(self, events: list[Any]) -> None:
        self.events.extend(events)


def _direct(settings: Settings, sql: str, *, tag: str | None = None, user: str | None = None) -> str:
    """Run ``sql`` with querytrail's Snowflake credentials (or as ``user``), outside the executor."""
    import snowflake.connector

    from infra.fakesnow_server import connect_kwargs

    profile = settings.snowflake_profiles["analytics"]
    extra: dict[str, Any] = {"user": user} if user else {}
    with snowflake.connector.connect(**connect_kwargs(int(profile.port or 0), **extra)) as conn:
        cur = conn.cursor()
        if tag is not None:
            cur.execute(
                "ALTER SESSION SET QUERY_TAG = '" + tag.replace("\\", "\\\\").replace("'", "\\'") + "'"
            )
        cur.execute(sql)
        return str(cur.sfqid)


def test_window_rereads_the_latency_and_leaves_the_newest_for_later(tmp_path: Path) -> None:
    state = ReconcileState(tmp_path / "s.json")
    now = utcnow()
    first = plan_window(state, now, latency_s=60, lookback_s=3600, settle_s=10)
    assert first.until == now - timedelta(seconds=10) and first.since == first.until - timedelta(hours=1)
    state.watermark = first.until
    state.reported["k"] = first.until.isoformat()
    state.save()
    again = ReconcileState.load(state.path)
    nxt = plan_window(again, now + timedelta(minutes=5), latency_s=60, lookback_s=3600, settle_s=10)
    assert nxt.since == first.until - timedelta(seconds=60) and again.reported == {
        "k": first.until.isoformat()
    }


def test_housekeeping_is_not_a_finding() -> None:
    index = audit_index([])
    tag = '{"qt":"0.1.0","request_id":"r1"}'
    rows = [
        {"QUERY_ID": "a", "USER_NAME": "QT", "QUERY_TAG": tag, "QUERY_TEXT": "ALTER SESSION SET QUERY_TAG = 'x'"},
        {"QUERY_ID": "b", "USER_NAME": "QT", "QUERY_TAG": tag, "QUERY_TEXT": "SELECT * FROM TABLE("
         "INFORMATION_SCHEMA.QUERY_HISTORY_BY_SESSION(RESULT_LIMIT => 100)) WHERE QUERY_ID = '0a-1b'"},
        {"QUERY_ID": "c", "USER_NAME": "QT", "QUERY_TAG": "querytrail-catalog-sync", "QUERY_TEXT": "SHOW DATABASES"},
        {"QUERY_ID": "d", "USER_NAME": "QT", "QUERY_TAG": "querytrail-catalog-sync",
         "QUERY_TEXT": "DELETE FROM ANALYTICS.PUBLIC.ORDERS"},
    ]  # fmt: skip
    found = find_bypasses(rows, index, service_users=["qt"])
    assert [(f.kind, f.history["QUERY_ID"] if f.history else None) for f in found] == [("unauthorized", "d")]


@pytest.mark.integration
def test_reconcile_finds_bypasses_and_reports_each_once(qt_settings: Callable[..., Settings]) -> None:
    from processors.executor.ledger import Ledger
    from processors.executor.runner import Executor
    from querytrail.cli.reconcile import run_once

    settings = qt_settings(
        reconcile={"latency_s": 120, "settle_s": 0, "lookback_s": 900, "agent_users": ["AGENT_BOT"]}
    )
    settings.home.mkdir(parents=True, exist_ok=True)
    auth = make_authorization(
        SIGNER, request_id=f"rec-{utcnow().timestamp()}", session_id=None,
        statement="SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 1", masked_columns=(),
        target=Target(profile="analytics"), max_rows=10, timeout_s=10, requester=WHO, now=utcnow(), ttl_s=60,
    )  # fmt: skip
    sink = Collect()
    executor = Executor(
        settings, Verifier([SIGNER.private_key.public_key()]), Ledger(settings.home / "l.db"), sink
    )
    assert executor.handle(auth) == "completed"
    started = next(e for e in sink.events if isinstance(e, ExecutionStarted))
    done = next(e for e in sink.events if isinstance(e, QueryCompleted))

    stolen = _direct(settings, "SELECT ID, CITY FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 2")
    forged = _direct(settings, "SELECT 1", tag='{"qt":"0.1.0","request_id":"never-authorised"}')
    changed = _direct(settings, "SELECT COUNT(*) FROM ANALYTICS.PUBLIC.CUSTOMERS", tag=started.query_tag)
    agent = _direct(settings, "SELECT COUNT(*) FROM ANALYTICS.PUBLIC.ORDERS", user="agent_bot")

    ghost = f"ghost-{utcnow().timestamp()}"
    now = utcnow()
    audit = [derive(e) for e in (auth, *sink.events)] + [
        {
            "event_type": "ExecutionStarted",
            "request_id": ghost,
            "occurred_at": now,
            "statement_sha256": "ab" * 32,
        },
        {
            "event_type": "QueryCompleted",
            "request_id": ghost,
            "occurred_at": now,
            "snowflake_query_id": "01-ghost",
        },
    ]
    later = now + timedelta(seconds=121)  # the ghost execution is past the history's latency
    published = Collect()
    events = run_once(settings, now=later, audit_rows=audit, publisher=published)
    assert events == published.events
    by_query = {e.snowflake_query_id: e for e in events if e.snowflake_query_id}
    assert by_query[stolen].reason_code == "unauthorized" and by_query[stolen].user_name == "QUERYTRAIL"
    assert (
        by_query[forged].reason_code == "unauthorized"
        and by_query[forged].related_request_id == "never-authorised"
    )
    assert by_query[changed].reason_code == "text_mismatch"
    assert by_query[changed].related_request_id == auth.request_id
    assert by_query[changed].authorized_sha256 == auth.statement_sha256
    assert by_query[agent].reason_code == "agent_direct" and by_query[agent].user_name == "AGENT_BOT"
    missing = [e for e in events if e.reason_code == "missing_in_history"]
    assert [e.related_request_id for e in missing] == [ghost]
    # authorised traffic (the statement and the executor's own session statements) is no finding
    assert done.snowflake_query_id not in by_query
    assert not [
        e for e in events if e.related_request_id == auth.request_id and e.reason_code != "text_mismatch"
    ]

    again = run_once(settings, now=later + timedelta(seconds=5), audit_rows=audit, publisher=published)
    assert again == [], [(e.reason_code, e.detail) for e in again]


def test_findings_land_in_the_log_and_the_bypass_report(tmp_path: Path) -> None:
    from sinks.reconcile import Finding, finding_events
    from sinks.reports import load_events, run_report

    from .helpers import local_settings, make_sink, write_events

    settings = local_settings(tmp_path / "home")
    row = {"QUERY_ID": "01-stolen", "USER_NAME": "QUERYTRAIL", "ROLE_NAME": "SYSADMIN", "QUERY_TEXT": "SELECT 2",
           "QUERY_TAG": "\x1b[31mx", "EXECUTION_STATUS": "SUCCESS", "START_TIME": utcnow()}  # fmt: skip
    events = finding_events([Finding("unauthorized", "reconcile-unauthorized-01-stolen", "why", history=row)])
    write_events(make_sink(settings), events + events)  # a rerun that lost its state file
    rows = load_events(settings)
    index = audit_index(rows.to_pylist())
    assert index.reported == {"reconcile-unauthorized-01-stolen"}  # a rerun skips it
    names, found = run_report(rows, "bypass")
    assert len(found) == 1
    got = dict(zip(names, found[0], strict=True))
    assert (got["kind"], got["snowflake_query_id"], got["user_name"], got["role_name"]) == (
        "unauthorized", "01-stolen", "QUERYTRAIL", "SYSADMIN",
    )  # fmt: skip
    assert got["sql_text"] == "SELECT 2" and got["detail"] == "why"

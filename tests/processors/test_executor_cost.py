"""The executor reads Snowflake's record of each statement (processors/executor/cost.py) and tags
it with a JSON QUERY_TAG (querytrail/query_tag.py); against the real local fakesnow server."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from processors.decision.authz import Signer, Verifier, canonical_bytes, make_authorization
from processors.executor.cost import cost_alert, read_cost
from processors.executor.runner import run_statement
from querytrail.observability import COST_ALERTS
from querytrail.query_tag import build_query_tag, executor_tag
from querytrail.settings import Settings
from schemas.events import ExecutionAuthorized, QueryCompleted, Target, VerifiedIdentity, utcnow

SIGNER = Signer(Ed25519PrivateKey.generate())
WHO = VerifiedIdentity(
    subject="ci-bot",
    issuer="https://issuer.example",
    groups=("ci",),
    service_account=True,
    claims_json="{}",
    token_sha256="0" * 64,
)


def _auth(sql: str, *, estimated: int | None, tag: str | None, rid: str = "cost-1") -> ExecutionAuthorized:
    return make_authorization(
        SIGNER,
        request_id=rid,
        session_id=None,
        statement=sql,
        masked_columns=(),
        target=Target(profile="analytics"),
        max_rows=100,
        timeout_s=10,
        requester=WHO,
        now=utcnow(),
        ttl_s=60,
        query_tag=tag,
        estimated_bytes=estimated,
    )


def test_cost_alert_needs_both_figures_a_factor_and_a_floor() -> None:
    assert cost_alert(1_000, 20_000, 10.0)
    assert not cost_alert(1_000, 10_000, 10.0)
    assert not cost_alert(None, 10**12, 10.0) and not cost_alert(1, None, 10.0)
    assert not cost_alert(1_000, 20_000, 10.0, floor_bytes=1_000_000)


def test_tag_and_estimate_are_signed_and_old_authorisations_still_verify() -> None:
    tagged = _auth("SELECT 1", estimated=5, tag=build_query_tag("cost-1"))
    Verifier([SIGNER.private_key.public_key()]).verify(tagged, utcnow())
    from dataclasses import replace

    assert canonical_bytes(replace(tagged, query_tag=build_query_tag("other"))) != canonical_bytes(tagged)
    assert canonical_bytes(replace(tagged, estimated_bytes=6)) != canonical_bytes(tagged)
    plain = replace(tagged, query_tag=None, estimated_bytes=None)
    assert b"query_tag" not in canonical_bytes(plain)  # the v1 bytes: old signatures hold
    assert json.loads(executor_tag(plain)) == {
        "qt": json.loads(build_query_tag("x"))["qt"],
        "request_id": "cost-1",
        "subject": "ci-bot",
        "issuer": "https://issuer.example",
        "service_account": True,
    }


@pytest.mark.integration
def test_completed_carries_snowflakes_cost_and_alerts_on_a_big_miss(
    qt_settings: Callable[..., Settings],
) -> None:
    settings = qt_settings(executor={"cost_alert_min_bytes": 0, "cost_alert_factor": 10.0})
    profile = settings.snowflake_profiles["analytics"].model_copy(update={"warehouse": "WH_AI"})
    tag = build_query_tag("cost-1", subject="ci-bot", model="claude", repository="acme/etl", run_id="42")
    before = COST_ALERTS._value.get()
    out = run_statement(
        _auth(
            "SELECT ORDER_ID FROM ANALYTICS.PUBLIC.ORDERS WHERE STATUS = 'shipped'", estimated=100, tag=tag
        ),
        profile,
        settings,
    )
    done = out.events[-1]
    assert isinstance(done, QueryCompleted), done
    assert done.estimated_bytes == 100
    assert done.bytes_scanned is not None and done.bytes_scanned > 1000
    assert done.partitions_scanned and done.partitions_total
    assert done.rows_produced is not None and done.rows_produced > done.row_count and done.truncated
    assert done.queued_ms == 0 and done.execution_ms is not None
    assert (done.warehouse_name, done.warehouse_size) == ("WH_AI", "X-Small")
    assert done.cost_alert and COST_ALERTS._value.get() == before + 1

    # the tag Snowflake recorded is the signed one and parses as JSON with the request's identity
    from processors.executor.runner import connect

    conn: Any = connect(profile, {})
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT QUERY_TAG FROM SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY WHERE QUERY_ID = %s",
            (done.snowflake_query_id,),
        )
        recorded = json.loads(cur.fetchone()[0])
        assert read_cost(conn, done.snowflake_query_id) is None  # another session's statement
    finally:
        conn.close()
    assert recorded["request_id"] == "cost-1" and recorded["subject"] == "ci-bot"
    assert (recorded["model"], recorded["repository"], recorded["run_id"]) == ("claude", "acme/etl", "42")

    small = run_statement(
        _auth(
            "SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 1", estimated=10**9, tag=None, rid="cost-2"
        ),
        profile,
        settings.model_copy(update={"executor": settings.executor.model_copy(update={"read_cost": True})}),
    ).events[-1]
    assert isinstance(small, QueryCompleted) and not small.cost_alert and small.bytes_scanned

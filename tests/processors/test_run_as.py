"""Rules choose the Snowflake role and warehouse (``run_as``); a caller may only pick among
them (processors/decision/run_as.py, applied by the worker and carried through approvals)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from processors.decision import approvals
from processors.decision.authz import Signer
from processors.decision.policy import PolicyError, RunAs, parse_policy
from processors.decision.requests import WorkerConfig, authorize_approved, decide_request
from processors.decision.run_as import RunAsChoice, RunAsDenied, resolve_run_as
from processors.decision.warehouse_catalog import Catalog, ColumnInfo, TableInfo
from querytrail.settings import Settings
from schemas.events import (
    ClientContext,
    Credential,
    ExecutionAuthorized,
    PolicyDecided,
    QueryRejected,
    QueryRequested,
    Target,
    VerifiedIdentity,
    new_event_id,
    producer,
    utcnow,
)

POLICY_TEXT = """
version: 1
rules:
  - id: ci-reads
    when: {identity: {groups: [ci]}, statement: [select], tables: ["ANALYTICS.*.*"]}
    then: allow
    run_as: {role: [ai_reader, AI_READER_WIDE], warehouse: wh_ai}
  - id: analysts-read
    when: {identity: {groups: [analyst]}, statement: [select]}
    then: allow
  - id: big-needs-approval
    when: {identity: {groups: [ops]}, statement: [select]}
    then: {require_approval: {approvers: [data-platform]}}
    run_as: {role: OPS_READER}
"""
POLICY = parse_policy(POLICY_TEXT)
CATALOG = Catalog.from_tables(
    [TableInfo("ANALYTICS.PUBLIC.ORDERS", (ColumnInfo("ORDER_ID", "NUMBER"),), row_count=3000, bytes=48_000)]
)
SIGNER = Signer(Ed25519PrivateKey.generate())
CONFIG = WorkerConfig(signer=SIGNER, statement_timeout_s=7, authorization_ttl_s=60)
SQL = "SELECT ORDER_ID FROM ANALYTICS.PUBLIC.ORDERS WHERE ORDER_ID = 1"


def who(group: str) -> VerifiedIdentity:
    return VerifiedIdentity(
        subject=f"{group}-bot",
        issuer="https://issuer",
        groups=(group,),
        claims_json=json.dumps({"sub": f"{group}-bot", "groups": [group]}),
        token_sha256="aa" * 32,
    )


def request(role: str | None = None, warehouse: str | None = None) -> QueryRequested:
    return QueryRequested(
        event_id=new_event_id(),
        request_id="r-" + new_event_id(),
        occurred_at=utcnow(),
        producer=producer("cli"),
        prompt="p",
        model="m",
        sql=SQL,
        target=Target(profile="analytics", role=role, warehouse=warehouse),
        context=ClientContext(),
        credential=Credential(token_sha256="aa" * 32),
    )


def test_run_as_is_parsed_upper_cased_and_validated() -> None:
    rule = POLICY.rules[0]
    assert rule.run_as == RunAs(roles=("AI_READER", "AI_READER_WIDE"), warehouses=("WH_AI",))
    assert POLICY.rules[1].run_as is None
    for bad, why in (
        ("- {id: x, then: deny, run_as: {role: R}}", "deny rule"),
        ("- {id: x, then: allow, run_as: {role: R, pool: P}}", "unknown key"),
        ("- {id: x, then: allow, run_as: {}}", "needs role and/or warehouse"),
        ('- {id: x, then: allow, run_as: {role: "R\'; DROP"}}', "not a Snowflake identifier"),
    ):
        with pytest.raises(PolicyError, match=why):
            parse_policy(f"version: 1\nrules:\n{bad}\n")


def test_resolve_defaults_allows_listed_and_denies_others() -> None:
    assert resolve_run_as(POLICY, "allow", ("ci-reads",)) == RunAsChoice(
        "AI_READER", "WH_AI", "ci-reads", "ci-reads"
    )
    assert resolve_run_as(POLICY, "allow", ("ci-reads",), role="ai_reader_wide").role == "AI_READER_WIDE"
    denied = resolve_run_as(POLICY, "allow", ("ci-reads",), role="ACCOUNTADMIN")
    assert isinstance(denied, RunAsDenied) and "ACCOUNTADMIN" in denied.reason and "ci-reads" in denied.reason
    assert isinstance(resolve_run_as(POLICY, "allow", ("ci-reads",), warehouse="WH_BIG"), RunAsDenied)
    # a rule without run_as leaves the profile's role, and lets the caller choose none
    assert resolve_run_as(POLICY, "allow", ("analysts-read",)) == RunAsChoice()
    assert isinstance(resolve_run_as(POLICY, "allow", ("analysts-read",), role="SYSADMIN"), RunAsDenied)


def test_worker_signs_the_rules_role_and_denies_a_role_the_rule_does_not_allow() -> None:
    now = utcnow()
    decided, auth = decide_request(request(), who("ci"), POLICY, CATALOG, now, CONFIG)
    assert isinstance(auth, ExecutionAuthorized) and isinstance(decided, PolicyDecided)
    assert (auth.target.role, auth.target.warehouse) == ("AI_READER", "WH_AI")
    assert (decided.run_as_role, decided.run_as_warehouse) == ("AI_READER", "WH_AI")
    out = decide_request(request(role="ACCOUNTADMIN"), who("ci"), POLICY, CATALOG, now, CONFIG)
    assert [type(e) for e in out] == [PolicyDecided, QueryRejected]
    assert out[0].decision == "deny" and out[0].run_as_role is None
    assert (
        out[1].reason_code == "run_as_not_allowed"
        and "ACCOUNTADMIN is not allowed by rule ci-reads" in out[1].reason
    )


def test_an_approved_statement_runs_with_the_role_the_policy_chose() -> None:
    now = utcnow()
    req = request()
    decided, asked = decide_request(req, who("ops"), POLICY, CATALOG, now, CONFIG)
    assert decided.decision == "require_approval" and decided.run_as_role == "OPS_READER"
    state = None
    for event in (req, decided, asked):
        state = approvals.evolve(state, event)
    assert state is not None and state.target is not None and state.target.role == "OPS_READER"
    auth = authorize_approved(replace(state, status="approved"), now, CONFIG, 100)
    assert auth.target.role == "OPS_READER"


@pytest.mark.integration
def test_the_emulator_records_the_rules_role(qt_settings: Callable[..., Settings]) -> None:
    from processors.decision.authz import Verifier
    from processors.executor.ledger import Ledger
    from processors.executor.runner import Executor, connect

    settings = qt_settings()
    _, auth = decide_request(request(), who("ci"), POLICY, CATALOG, utcnow(), CONFIG)

    class Collect:
        events: list = []

        def publish(self, events: list) -> None:
            self.events.extend(events)

    sink = Collect()
    settings.home.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(settings.home / "ledger.db")
    executor = Executor(settings, Verifier([SIGNER.private_key.public_key()]), ledger, sink)
    assert executor.handle(auth) == "completed"
    done = sink.events[-1]
    assert (done.role_name, done.warehouse_name) == ("AI_READER", "WH_AI")
    conn = connect(settings.snowflake_profiles["analytics"], {})
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT ROLE_NAME, WAREHOUSE_NAME FROM SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY WHERE QUERY_ID = %s",
            (done.snowflake_query_id,),
        )
        assert cur.fetchone() == ("AI_READER", "WH_AI")
    finally:
        conn.close()

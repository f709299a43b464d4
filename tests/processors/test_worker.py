"""decide_request: one QueryRequested in, the worker's events out (example policy, demo catalog)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from processors.decision.authz import Signer, Verifier, statement_sha256
from processors.decision.policy import load_policy
from processors.decision.requests import CredentialError, WorkerConfig, decide_request
from processors.decision.warehouse_catalog import Catalog
from schemas.events import (
    ApprovalRequested,
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

ROOT = Path(__file__).resolve().parents[2]
POLICY = load_policy(ROOT / "infra" / "policies" / "example.yaml")
CATALOG = Catalog.load(ROOT / "infra" / "catalog" / "demo.yaml")
SIGNER = Signer(Ed25519PrivateKey.generate())
CONFIG = WorkerConfig(signer=SIGNER, statement_timeout_s=7, authorization_ttl_s=60)
CI = VerifiedIdentity(
    subject="ci-bot",
    issuer="https://issuer",
    groups=("ci",),
    claims_json=json.dumps({"sub": "ci-bot", "groups": ["ci"], "repository": "acme/etl"}),
    token_sha256="aa" * 32,
)


def request(sql: str, max_rows: int | None = None) -> QueryRequested:
    return QueryRequested(
        event_id=new_event_id(),
        request_id="r-" + new_event_id(),
        occurred_at=utcnow(),
        producer=producer("cli"),
        prompt="list customers",
        model="test",
        sql=sql,
        target=Target(profile="analytics"),
        context=ClientContext(),
        credential=Credential(token_sha256="aa" * 32),
        max_rows=max_rows,
    )


def decide(sql: str, identity: VerifiedIdentity | CredentialError = CI, max_rows: int | None = None) -> list:
    now = utcnow()
    # 12:00 UTC: outside the example policy's nightly window whatever the wall clock says
    now = now.replace(hour=12)
    return decide_request(request(sql, max_rows), identity, POLICY, CATALOG, now, CONFIG)


def test_allowed_query_is_authorised_with_the_masked_statement() -> None:
    out = decide("SELECT ID, EMAIL FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID < 5", max_rows=3)
    assert [type(e) for e in out] == [PolicyDecided, ExecutionAuthorized]
    decided, auth = out
    assert decided.decision == "allow" and decided.rules == ("ci-reads-analytics",)
    assert auth.statement == decided.rewritten_sql and "SPLIT_PART" in auth.statement
    assert auth.statement_sha256 == statement_sha256(auth.statement)
    assert [m.output for m in auth.masked_columns] == ["EMAIL"]
    assert (auth.max_rows, auth.timeout_s) == (3, 7)
    Verifier([SIGNER.private_key.public_key()]).verify(auth, auth.occurred_at)


def test_denied_query_names_rule_and_reason() -> None:
    out = decide("INSERT INTO ANALYTICS.PUBLIC.SCRATCH_EVENTS (ID, EVENT) VALUES (1, 'x')")
    assert [type(e) for e in out] == [PolicyDecided, QueryRejected]
    assert out[0].decision == "deny"
    rejected = out[1]
    assert rejected.stage == "policy" and rejected.reason_code == "denied_by_policy"
    assert rejected.rules == ("no-writes-from-ai",) and "never writes" in rejected.reason


def test_privileged_query_waits_for_approval() -> None:
    out = decide("SELECT USERNAME, ROLE FROM SECURITY.ADMIN.USERS WHERE USERNAME = 'admin'")
    assert [type(e) for e in out] == [PolicyDecided, ApprovalRequested]
    asked = out[1]
    assert asked.approver_groups == ("data-security",) and asked.min_approvals == 1
    assert asked.statement_sha256 == statement_sha256(asked.statement)
    assert asked.requester == CI
    assert (asked.expires_at - asked.occurred_at).total_seconds() == 1800


def test_unverified_identity_is_rejected_before_any_decision() -> None:
    out = decide("SELECT 1", CredentialError("expired", "token expired"))
    assert [type(e) for e in out] == [QueryRejected]
    assert (out[0].stage, out[0].reason_code, out[0].identity) == ("identity", "expired", None)


@pytest.mark.parametrize("sql", ["SELECT 1; DROP TABLE X", "NOT SQL AT ALL ((("])
def test_unparseable_and_multi_statement_fail_closed(sql: str) -> None:
    out = decide(sql)
    assert [type(e) for e in out] == [PolicyDecided, QueryRejected]
    assert out[0].decision == "deny"


def test_combined_approval_rules_need_each_rules_own_approvers() -> None:
    """Two require_approval rules match: one approver from either group is not enough."""
    from processors.decision import approvals
    from processors.decision.policy import parse_policy
    from processors.decision.requests import approval_satisfied, authorize_approved
    from schemas.events import ApprovalVerdict, ExecutionAuthorized

    text = (ROOT / "tests" / "pipeline" / "policy.yaml").read_text()
    text += (
        "  - id: platform-too\n"
        "    when: {tables_tagged: [privileged]}\n"
        "    then: {require_approval: {approvers: [data-platform], min_approvals: 1, ttl: 10m}}\n"
    )
    policy = parse_policy(text)
    req = request("SELECT USERNAME, ROLE FROM SECURITY.ADMIN.USERS WHERE ROLE = 'ACCOUNTADMIN'")
    now = utcnow().replace(hour=12)
    out = decide_request(req, CI, policy, CATALOG, now, CONFIG)
    asked = out[1]
    assert isinstance(asked, ApprovalRequested)
    assert set(asked.approver_groups) == {"data-security", "data-platform"}
    state = approvals.evolve(approvals.evolve(None, req), asked)

    def verdict_by(sub: str, group: str) -> list:
        v = ApprovalVerdict(
            event_id=new_event_id(), request_id=req.request_id, occurred_at=now, producer=producer("cli"),
            verdict="approve", statement_sha256=asked.statement_sha256, credential=Credential(token_sha256="00"),
        )  # fmt: skip
        who = VerifiedIdentity(
            subject=sub, issuer="https://issuer", groups=(group,), claims_json="{}", token_sha256="0"
        )
        return approvals.decide(
            v, state, now, approver=who, credential_error=None,
            authorize=lambda s, t: authorize_approved(s, t, CONFIG, 100), satisfied=approval_satisfied(policy),
        )  # fmt: skip

    first = verdict_by("pat", "data-platform")
    assert [e.event_type for e in first] == ["ApprovalVerdictRecorded"]  # security has not approved
    for e in first:
        state = approvals.evolve(state, e)
    second = verdict_by("sam", "data-security")
    assert isinstance(second[-1], ExecutionAuthorized)

"""Explicit unmasking: ``unmask:`` grants and approval rules that release classifications raw.

A grant names identities (groups and/or claims), classifications and a reason; a decision for a
matching identity reads those classifications raw and says which columns, by which grant. A
require_approval rule's ``unmask:`` releases raw only the statement its approval lets run, and
the approver is shown exactly that.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from processors.decision.policy import IdentityClaims, PolicyError, parse_policy
from processors.decision.statement import evaluate
from processors.decision.warehouse_catalog import Catalog

ROOT = Path(__file__).resolve().parents[2]
CATALOG = Catalog.load(ROOT / "infra" / "catalog" / "demo.yaml")
NOON = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SQL = "SELECT id, email, ssn FROM analytics.public.customers WHERE id = 1"

POLICY = parse_policy(
    textwrap.dedent(
        """\
        version: 1
        classifications:
          pii.email: {mask: email}
          pii.ssn: {mask: last4}
          pii.name: {mask: hash}
        columns:
          - {match: "*.*.*.EMAIL", classification: pii.email}
          - {match: "*.*.*.SSN", classification: pii.ssn}
        unmask:
          - id: support-reads-emails
            identity: {groups: [support]}
            classifications: [pii.email]
            reason: support answers customer tickets by email
          - id: acme-fraud-ssn
            identity: {groups: [fraud], claims: {org: "acme"}}
            classifications: [pii.ssn]
            reason: fraud investigations match SSNs
        rules:
          - id: reads
            when: {statement: [select], tables: ["ANALYTICS.*.*"]}
            then: allow
          - id: incident-raw
            description: incident responders may see SSNs raw once data-security approves
            when: {identity: {groups: [incident]}, statement: [select]}
            then: {require_approval: {approvers: [data-security], unmask: [pii.ssn]}}
        """
    )
)


def who(*groups: str, **claims: str) -> IdentityClaims:
    return IdentityClaims.from_claims({"sub": "someone", "groups": list(groups), **claims})


def test_no_grant_everything_classified_is_masked() -> None:
    d = evaluate(SQL, who("ci"), CATALOG, POLICY, NOON)
    assert d.decision == "allow" and d.released == ()
    assert {m.output: m.mask for m in d.masked_columns} == {"EMAIL": "email", "SSN": "last4"}
    assert {r.column.rsplit(".", 1)[1] for r in d.masked_reads} >= {"EMAIL", "SSN"}
    assert d.to_json()["unmasked_columns"] == []


def test_a_group_grant_reads_its_classification_raw_and_says_so() -> None:
    d = evaluate(SQL, who("support"), CATALOG, POLICY, NOON)
    assert d.decision == "allow"
    assert [(u.column, u.classification, u.grant) for u in d.released] == [
        ("ANALYTICS.PUBLIC.CUSTOMERS.EMAIL", "pii.email", "support-reads-emails")
    ]
    assert {m.output: m.mask for m in d.masked_columns} == {"SSN": "last4"}  # only email is released
    assert "ANALYTICS.PUBLIC.CUSTOMERS.EMAIL" not in {r.column for r in d.masked_reads}
    assert any("released raw" in r and "support-reads-emails" in r for r in d.reasons)
    assert d.rewritten_sql is not None and "SPLIT_PART" not in d.rewritten_sql  # no email mask
    assert d.to_json()["unmasked_columns"][0]["reason"] == "support answers customer tickets by email"


def test_a_claims_grant_needs_every_listed_group_and_claim() -> None:
    assert evaluate(SQL, who("fraud", org="acme"), CATALOG, POLICY, NOON).released
    assert not evaluate(SQL, who("fraud", org="evil"), CATALOG, POLICY, NOON).released
    assert not evaluate(SQL, who("fraud"), CATALOG, POLICY, NOON).released
    assert not evaluate(SQL, who(org="acme"), CATALOG, POLICY, NOON).released


def test_an_approval_releases_raw_only_when_its_rule_says_so() -> None:
    d = evaluate(SQL, who("incident"), CATALOG, POLICY, NOON)
    assert d.decision == "require_approval" and d.approval is not None
    assert d.approval.unmask == frozenset({"pii.ssn"})
    assert [(u.column, u.grant) for u in d.released] == [("ANALYTICS.PUBLIC.CUSTOMERS.SSN", "incident-raw")]
    assert any(r.startswith("approving releases raw: ANALYTICS.PUBLIC.CUSTOMERS.SSN") for r in d.reasons)
    # the statement the approver is asked to release is the unmasked one
    assert d.rewritten_sql is not None and "'***-**-'" not in d.rewritten_sql


def test_decisions_for_different_identities_do_not_share_a_masking_plan() -> None:
    from processors.decision.statement import DecisionCache

    cache = DecisionCache()
    a = cache.evaluate(SQL, who("support"), CATALOG, POLICY, NOON)
    b = cache.evaluate(SQL, who("fraud", org="evil"), CATALOG, POLICY, NOON)
    c = cache.evaluate(SQL, who("fraud", org="acme"), CATALOG, POLICY, NOON)
    assert [u.grant for u in a.released] == ["support-reads-emails"]
    assert b.released == ()
    assert [u.grant for u in c.released] == ["acme-fraud-ssn"]


@pytest.mark.parametrize(
    ("grant", "reason"),
    [
        ("{id: g, identity: {}, classifications: [pii.email], reason: r}", "never applies to everyone"),
        (
            "{id: g, identity: {groups: [x]}, classifications: [pii.nope], reason: r}",
            "unknown classification",
        ),
        ("{id: g, identity: {groups: [x]}, classifications: [pii.email]}", "missing required key 'reason'"),
        ("{id: reads, identity: {groups: [x]}, classifications: [pii.email], reason: r}", "duplicate id"),
    ],
)
def test_invalid_grants_are_refused_with_the_reason(grant: str, reason: str) -> None:
    text = (
        "version: 1\nclassifications:\n  pii.email: {mask: email}\n"
        "rules:\n  - {id: reads, then: allow}\n"
        f"unmask:\n  - {grant}\n"
    )
    with pytest.raises(PolicyError, match=reason):
        parse_policy(text)


def test_an_approval_cannot_release_an_unknown_classification() -> None:
    text = (
        "version: 1\nclassifications:\n  pii.email: {mask: email}\n"
        "rules:\n  - {id: r, then: {require_approval: {approvers: [a], unmask: [pii.nope]}}}\n"
    )
    with pytest.raises(PolicyError, match="unknown classification"):
        parse_policy(text)

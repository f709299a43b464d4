"""Rules can name the Snowflake role and warehouse the caller asked for (``when: role/warehouse``).

The condition is on the request's target: a rule naming a role matches only when the caller asked
for a role matching one of its globs; asking for none never matches it.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from processors.decision.policy import IdentityClaims, PolicyError, parse_policy
from processors.decision.statement import DecisionCache, evaluate, evaluate_request
from processors.decision.warehouse_catalog import Catalog
from schemas.events import Target

ROOT = Path(__file__).resolve().parents[2]
CATALOG = Catalog.load(ROOT / "infra" / "catalog" / "demo.yaml")
NOON = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SQL = "SELECT id, city FROM analytics.public.customers WHERE id = 1"
CI = IdentityClaims.from_claims({"sub": "ci", "groups": ["ci"]})
POLICY = parse_policy(
    textwrap.dedent(
        """\
        version: 1
        rules:
          - id: reads
            when: {statement: [select]}
            then: allow
          - id: admin-roles-need-a-human
            when: {role: ["*ADMIN"]}
            then: {require_approval: {approvers: [data-security]}}
          - id: no-big-warehouse
            when: {warehouse: ["XL_*", "BATCH"]}
            then: deny
        """
    )
)


def test_no_role_asked_matches_no_role_condition() -> None:
    d = evaluate(SQL, CI, CATALOG, POLICY, NOON)
    assert d.decision == "allow" and d.rules == ("reads",)


def test_a_role_condition_matches_the_requested_role_by_glob_case_insensitively() -> None:
    d = evaluate(SQL, CI, CATALOG, POLICY, NOON, role="securityadmin")
    assert d.decision == "require_approval" and "admin-roles-need-a-human" in d.rules
    assert evaluate(SQL, CI, CATALOG, POLICY, NOON, role="ANALYST").decision == "allow"


def test_a_warehouse_condition_matches_the_requested_warehouse() -> None:
    assert evaluate(SQL, CI, CATALOG, POLICY, NOON, warehouse="XL_NIGHTLY").decision == "deny"
    assert evaluate(SQL, CI, CATALOG, POLICY, NOON, warehouse="COMPUTE_WH").decision == "allow"


def test_the_request_target_is_what_is_matched_and_the_cache_rechecks_it() -> None:
    class Request:
        sql = SQL
        target = Target(profile="analytics", role="SYSADMIN")

    cache = DecisionCache()
    assert evaluate_request(Request(), CI, CATALOG, POLICY, NOON, cache).decision == "require_approval"
    assert cache.evaluate(SQL, CI, CATALOG, POLICY, NOON).decision == "allow"  # same text, no role
    assert evaluate_request(Request(), CI, CATALOG, POLICY, NOON, cache).decision == "require_approval"


def test_role_condition_must_be_a_list_of_globs() -> None:
    with pytest.raises(PolicyError, match="role must be a non-empty list"):
        parse_policy("version: 1\nrules:\n  - {id: r, when: {role: ADMIN}, then: deny}\n")

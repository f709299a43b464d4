"""evaluate(), Decision.to_json() and DecisionCache over the demo catalog."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

import processors.decision.statement as decide_mod
from processors.decision.policy import IdentityClaims, Policy, load_policy, parse_policy
from processors.decision.statement import Decision, DecisionCache, evaluate, evaluate_request
from processors.decision.warehouse_catalog import Catalog

ROOT = Path(__file__).resolve().parents[2]
CATALOG = Catalog.load(ROOT / "infra" / "catalog" / "demo.yaml")
EXAMPLE = load_policy(ROOT / "infra" / "policies" / "example.yaml")
NOON = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
NIGHT = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
CI = IdentityClaims.from_claims({"sub": "ci-bot", "groups": ["ci"], "repository": "acme/etl"})
CONTRACT_KEYS = [
    "decision", "rules", "reasons", "statement", "tables", "findings", "masked_columns",
    "rewritten_sql", "estimated_bytes", "policy_sha256", "masked_reads", "unmasked_columns",
]  # fmt: skip

HEAD = """\
version: 1
classifications:
  pii.email: {mask: email}
tables:
  - {match: "SECURITY.*.*", tags: [privileged]}
"""


def policy(rules: str, head: str = HEAD) -> Policy:
    return parse_policy(head + textwrap.dedent(rules))


def test_to_json_is_exactly_the_contract() -> None:
    d = evaluate("SELECT id, email FROM analytics.public.customers WHERE id = 1", CI, CATALOG, EXAMPLE, NOON)
    data = d.to_json()
    assert list(data) == CONTRACT_KEYS
    assert data["decision"] == "allow"
    assert data["rules"] == ["ci-reads-analytics"]
    assert data["statement"] == "select"
    assert data["tables"] == ["ANALYTICS.PUBLIC.CUSTOMERS"]
    assert data["findings"] == []
    assert data["masked_columns"] == [
        {
            "output": "EMAIL",
            "source": "ANALYTICS.PUBLIC.CUSTOMERS.EMAIL",
            "classification": "pii.email",
            "mask": "email",
        }
    ]
    assert "EMAIL" in data["rewritten_sql"] and data["rewritten_sql"] != "SELECT id, email FROM ..."
    assert isinstance(data["estimated_bytes"], int)
    assert data["policy_sha256"] == EXAMPLE.sha256
    assert d.classifications_touched == ("pii.email",)
    assert d.tags == ("analytics",)
    assert d.max_result_rows == 10000
    assert d.approval is None


def test_precedence_deny_over_approval_over_allow() -> None:
    p = policy(
        """\
        rules:
          - {id: a-allow, when: {statement: [select]}, then: allow}
          - {id: b-approve, when: {tables_tagged: [privileged]}, then: {require_approval: {approvers: [sec]}}}
          - {id: c-deny, when: {findings: [unbounded_write]}, then: deny}
          - {id: d-deny-night, when: {time: {hours_utc: "00-05"}}, then: deny}
        """
    )
    users = "SELECT username FROM security.admin.users WHERE username = 'x'"
    assert (
        evaluate("SELECT id FROM analytics.public.customers WHERE id = 1", CI, CATALOG, p, NOON).decision
        == "allow"
    )
    approved = evaluate(users, CI, CATALOG, p, NOON)
    assert approved.decision == "require_approval"
    assert approved.rules == ("a-allow", "b-approve")
    assert approved.approval is not None and approved.approval.approvers == ("sec",)
    assert approved.rewritten_sql is not None
    denied = evaluate(users, CI, CATALOG, p, NIGHT)
    assert denied.decision == "deny" and denied.rules == ("a-allow", "b-approve", "d-deny-night")
    assert denied.rewritten_sql is None and denied.masked_columns == () and denied.approval is None
    assert any("d-deny-night" in r for r in denied.reasons)


@pytest.mark.parametrize(
    "sql",
    [
        "SELEC id FROM analytics.public.customers",
        "SELECT id FROM analytics.public.customers WHERE id = 1; SELECT 2",
        "SELECT * FROM analytics.nowhere.t",
        "",
    ],
)
def test_fail_closed_whatever_the_rules_say(sql: str) -> None:
    p = policy("rules:\n  - {id: everything, then: allow}\n")
    d = evaluate(sql, CI, CATALOG, p, NOON)
    assert d.decision == "deny"
    assert d.rules == ()
    assert d.reasons and all(r.startswith("fail closed") for r in d.reasons)
    assert d.rewritten_sql is None


def test_default_decision_when_nothing_matches() -> None:
    sql = "SELECT id FROM analytics.public.customers WHERE id = 1"
    deny = evaluate(sql, CI, CATALOG, policy("rules: []\n"), NOON)
    assert deny.decision == "deny" and deny.reasons == ("no rule matched: policy default is deny",)
    p = parse_policy(
        "version: 1\ndefaults:\n  decision: require_approval\n  approvers: [sec]\n  approval_ttl: 2h\n"
    )
    d = evaluate(sql, CI, CATALOG, p, NOON)
    assert d.decision == "require_approval"
    assert d.approval is not None and d.approval.rule_id == "default" and d.approval.ttl_s == 7200
    assert d.rewritten_sql is not None


def test_several_approval_rules_are_all_required() -> None:
    p = policy(
        """\
        rules:
          - id: privileged
            when: {tables_tagged: [privileged]}
            then: {require_approval: {approvers: [data-security], ttl: 30m}}
          - id: everyone
            when: {statement: [select]}
            then: {require_approval: {approvers: [data-platform], min_approvals: 2, ttl: 2h}}
        """
    )
    d = evaluate("SELECT username FROM security.admin.users WHERE role = 'x'", CI, CATALOG, p, NOON)
    assert d.decision == "require_approval" and d.approval is not None
    assert d.approval.rule_id == "privileged+everyone"
    assert d.approval.ttl_s == 1800 and d.approval.min_approvals == 2
    assert not d.approval.is_satisfied({"a": ["data-platform"], "b": ["data-platform"]})
    assert d.approval.is_satisfied({"a": ["data-platform"], "b": ["data-platform"], "c": ["data-security"]})


def test_unknown_estimate_never_allows() -> None:
    catalog = Catalog.from_mapping({"tables": {"A.B.T": {"columns": {"ID": "NUMBER"}}}})  # no statistics
    p = policy(
        """\
        rules:
          - {id: small-ok, when: {statement: [select], estimated_bytes_gt: 0}, then: allow}
        """
    )
    d = evaluate("SELECT id FROM a.b.t WHERE id = 1", CI, catalog, p, NOON)
    assert d.decision == "deny"
    assert d.estimated_bytes is None  # a table without statistics is unknown, never 0 bytes
    q = policy(
        "rules:\n  - {id: big, when: {estimated_bytes_gt: 1TB}, then: {require_approval: {approvers: [x]}}}\n"
    )
    assert evaluate("SELECT id FROM a.b.t WHERE id = 1", CI, catalog, q, NOON).decision == "require_approval"


def test_masking_failure_denies(monkeypatch: pytest.MonkeyPatch) -> None:
    # A masking step that raises cannot be caused from SQL the analyser accepts; simulated here.
    def broken(*_: object) -> None:
        raise RuntimeError("cannot rewrite")

    monkeypatch.setattr(decide_mod, "plan_read_masking", broken)
    d = evaluate("SELECT email FROM analytics.public.customers WHERE id = 1", CI, CATALOG, EXAMPLE, NOON)
    assert d.decision == "deny" and d.rewritten_sql is None
    assert any("masking could not be planned" in r for r in d.reasons)


def test_catalog_only_classification_is_masked_with_redact() -> None:
    catalog = Catalog.from_mapping(
        {
            "tables": {
                "A.B.T": {
                    "row_count": 5,
                    "bytes": 50,
                    "columns": {"ID": "NUMBER", "X": {"classification": "hr.salary"}},
                }
            }
        }
    )
    p = policy("rules:\n  - {id: ok, when: {statement: [select]}, then: allow}\n")
    d = evaluate("SELECT x FROM a.b.t WHERE id = 1", CI, catalog, p, NOON)
    assert d.decision == "allow"
    assert [(m.output, m.classification, m.mask) for m in d.masked_columns] == [("X", "hr.salary", "redact")]


class TestDecisionCache:
    SQL = "SELECT username FROM security.admin.users WHERE role = 'SYSADMIN'"

    def test_hits_return_equal_decisions_and_recheck_time(self) -> None:
        cache = DecisionCache()
        day = cache.evaluate(self.SQL, CI, CATALOG, EXAMPLE, NOON)
        assert (cache.hits, cache.misses) == (0, 1)
        assert cache.evaluate(self.SQL, CI, CATALOG, EXAMPLE, NOON) == day
        night = cache.evaluate(self.SQL, CI, CATALOG, EXAMPLE, NIGHT)
        assert (cache.hits, cache.misses) == (2, 1)
        assert day.decision == "require_approval" and night.decision == "deny"
        assert night == evaluate(self.SQL, CI, CATALOG, EXAMPLE, NIGHT)

    def test_claims_are_rechecked_on_every_hit(self) -> None:
        cache = DecisionCache()
        sql = "SELECT id FROM analytics.public.customers WHERE id = 1"
        foreign = IdentityClaims.from_claims({"groups": ["ci"], "repository": "evil/etl"})
        assert cache.evaluate(sql, CI, CATALOG, EXAMPLE, NOON).decision == "allow"
        assert cache.evaluate(sql, foreign, CATALOG, EXAMPLE, NOON).decision == "deny"
        assert cache.hits == 1  # same groups: the analysis was shared, the claim re-checked

    def test_key_separates_groups_policy_catalog_and_session(self) -> None:
        cache = DecisionCache()
        sql = "SELECT id FROM customers WHERE id = 1"
        analyst = IdentityClaims.from_claims({"groups": ["analyst"]})
        cache.evaluate(sql, CI, CATALOG, EXAMPLE, NOON, database="ANALYTICS", schema="PUBLIC")
        cache.evaluate(sql, analyst, CATALOG, EXAMPLE, NOON, database="ANALYTICS", schema="PUBLIC")
        other_policy = policy("rules: []\n")
        assert (
            cache.evaluate(
                sql, CI, CATALOG, other_policy, NOON, database="ANALYTICS", schema="PUBLIC"
            ).decision
            == "deny"
        )
        other_catalog = Catalog.from_mapping(
            {"tables": {"ANALYTICS.PUBLIC.CUSTOMERS": {"columns": {"ID": "NUMBER"}}}}
        )
        cache.evaluate(sql, CI, other_catalog, EXAMPLE, NOON, database="ANALYTICS", schema="PUBLIC")
        unresolved = cache.evaluate(sql, CI, CATALOG, EXAMPLE, NOON)  # no session defaults
        assert unresolved.decision == "deny"
        assert cache.misses == 5 and cache.hits == 0

    def test_comment_and_whitespace_variants_share_one_entry(self) -> None:
        cache = DecisionCache()
        a = cache.evaluate(
            "SELECT id FROM analytics.public.customers WHERE id = 1", CI, CATALOG, EXAMPLE, NOON
        )
        b = cache.evaluate(
            "select  id /* hi */ from analytics.public.customers\n where id = 1 -- x",
            CI,
            CATALOG,
            EXAMPLE,
            NOON,
        )
        assert (cache.hits, cache.misses) == (1, 1) and a == b
        c = cache.evaluate(
            "SELECT id FROM analytics.public.customers WHERE id = 2", CI, CATALOG, EXAMPLE, NOON
        )
        assert cache.misses == 2 and c.rewritten_sql != a.rewritten_sql  # literals are part of the key

    def test_bounded(self) -> None:
        cache = DecisionCache(maxsize=3)
        for i in range(10):
            cache.evaluate(
                f"SELECT id FROM analytics.public.customers WHERE id = {i}", CI, CATALOG, EXAMPLE, NOON
            )
        assert len(cache) == 3


def test_evaluate_request_reads_target_defaults() -> None:
    request = SimpleNamespace(
        sql="SELECT id, email FROM customers WHERE id = 3",
        target=SimpleNamespace(profile="analytics", database="ANALYTICS", schema="PUBLIC"),
    )
    d = evaluate_request(request, CI, CATALOG, EXAMPLE, NOON)
    assert isinstance(d, Decision) and d.decision == "allow"
    assert d.tables == ("ANALYTICS.PUBLIC.CUSTOMERS",)
    cache = DecisionCache()
    assert evaluate_request(request, CI, CATALOG, EXAMPLE, NOON, cache=cache) == d


def test_cache_is_safe_across_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    cache = DecisionCache(maxsize=8)
    sqls = [f"SELECT id, email FROM analytics.public.customers WHERE id = {i % 12}" for i in range(240)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda s: cache.evaluate(s, CI, CATALOG, EXAMPLE, NOON), sqls))
    assert all(d.decision == "allow" and d.masked_columns for d in got)
    assert cache.hits + cache.misses == len(sqls) and len(cache) <= 8


def test_long_statements_skip_the_text_index() -> None:
    cache = DecisionCache()
    padding = "/*" + "x" * DecisionCache.MAX_TEXT_KEY + "*/"
    sql = f"SELECT id FROM analytics.public.customers WHERE id = 1 {padding}"
    first = cache.evaluate(sql, CI, CATALOG, EXAMPLE, NOON)
    assert cache.evaluate(sql, CI, CATALOG, EXAMPLE, NOON) == first
    assert (cache.hits, cache.misses) == (1, 1)
    assert not cache._by_text  # looked up by fingerprint only


def test_an_analyser_crash_denies(monkeypatch: pytest.MonkeyPatch) -> None:
    # An internal analyser error cannot be caused from valid input; simulated to prove fail-closed.
    def crash(*_: object, **__: object) -> None:
        raise RecursionError("too deep")

    monkeypatch.setattr(decide_mod, "analyse", crash)
    d = evaluate("SELECT id FROM analytics.public.customers WHERE id = 1", CI, CATALOG, EXAMPLE, NOON)
    assert d.decision == "deny" and d.rewritten_sql is None
    assert d.statement == "unknown"
    assert d.reasons == ("fail closed: unknown_statement: analysis failed: RecursionError: too deep",)

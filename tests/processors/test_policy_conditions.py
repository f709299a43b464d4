"""Rule conditions, approval combination and the classifier, without the SQL analyser."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.decision.policy import (
    ApprovalRequirement,
    ApprovalRule,
    Facts,
    IdentityClaims,
    PolicyClassifier,
    dynamic_match,
    masks_for,
    parse_policy,
    static_match,
)
from processors.decision.warehouse_catalog import Catalog

POLICY = parse_policy(
    textwrap.dedent(
        """\
        version: 1
        classifications:
          pii.email: {mask: email}
          pii.name: {mask: hash}
        columns:
          - {match: "*.*.*.EMAIL", classification: pii.email}
          - {match: "*.*.*.*NAME", classification: pii.name}
          - {match: "*.*.*.NAME", classification: pii.email}
        tables:
          - {match: "SECURITY.*.*", tags: [privileged]}
          - {match: "SECURITY.ADMIN.*", tags: [admin]}
        rules:
          - id: grant
            when:
              identity: {groups: [ci, etl], claims: {repository: "acme/*", ref: "refs/heads/main"}}
              statement: [select]
              tables: ["ANALYTICS.*.*", "SHARED.PUBLIC.*"]
            then: allow
          - id: tagged
            when: {tables_tagged: [privileged, admin]}
            then: deny
          - id: big
            when: {estimated_bytes_gt: 1GB}
            then: {require_approval: {approvers: [platform]}}
          - id: big-allow
            when: {estimated_bytes_gt: 1GB}
            then: allow
          - id: night
            when: {time: {hours_utc: "22-04", days: [sat, sunday]}}
            then: deny
          - id: found
            when: {findings: [data_export, role_change]}
            then: deny
        """
    )
)
RULES = {r.id: r for r in POLICY.rules}


def facts(**kw: object) -> Facts:
    base: dict[str, object] = {
        "statement": "select",
        "tables": ("ANALYTICS.PUBLIC.CUSTOMERS",),
        "tags": frozenset(),
        "findings": frozenset(),
        "estimated_bytes": 1000,
        "groups": frozenset({"ci", "etl", "other"}),
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def test_groups_all_listed_must_be_held() -> None:
    assert static_match(RULES["grant"], facts())
    assert not static_match(RULES["grant"], facts(groups=frozenset({"ci"})))


def test_every_touched_table_must_match_a_glob() -> None:
    both = ("ANALYTICS.PUBLIC.CUSTOMERS", "shared.public.x")
    assert static_match(RULES["grant"], facts(tables=both))
    assert not static_match(RULES["grant"], facts(tables=(*both, "SECURITY.ADMIN.USERS")))
    assert not static_match(RULES["grant"], facts(tables=()))  # touching nothing grants nothing
    assert not static_match(RULES["grant"], facts(statement="insert"))


def test_tags_and_findings_match_on_any() -> None:
    assert static_match(RULES["tagged"], facts(tags=frozenset({"admin"})))
    assert not static_match(RULES["tagged"], facts(tags=frozenset({"analytics"})))
    assert static_match(RULES["found"], facts(findings=frozenset({"role_change", "x"})))
    assert not static_match(RULES["found"], facts(findings=frozenset({"full_table_scan"})))


def test_unknown_size_matches_restrictive_rules_only() -> None:
    assert static_match(RULES["big"], facts(estimated_bytes=2_000_000_000))
    assert not static_match(RULES["big"], facts(estimated_bytes=1_000_000_000))  # greater than, not equal
    assert static_match(RULES["big"], facts(estimated_bytes=None))
    assert not static_match(RULES["big-allow"], facts(estimated_bytes=None))
    assert static_match(RULES["big-allow"], facts(estimated_bytes=2_000_000_000))


def test_claims_are_globs_and_all_must_hold() -> None:
    rule = RULES["grant"]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert dynamic_match(rule, {"repository": "ACME/etl", "ref": "refs/heads/main"}, now)
    assert not dynamic_match(rule, {"repository": "acme/etl"}, now)  # ref missing
    assert not dynamic_match(rule, {"repository": "evil/acme/etl", "ref": "refs/heads/main"}, now)
    assert dynamic_match(rule, {"repository": ["x/y", "acme/z"], "ref": "refs/heads/main"}, now)
    assert not dynamic_match(rule, {"repository": {"acme/x": 1}, "ref": "refs/heads/main"}, now)
    assert not dynamic_match(rule, {"repository": None, "ref": "refs/heads/main"}, now)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (datetime(2026, 11, 28, 23, 0, tzinfo=UTC), True),  # Saturday 23:00
        (datetime(2026, 11, 29, 3, 59, tzinfo=UTC), True),  # Sunday 03:59
        (datetime(2026, 11, 29, 4, 0, tzinfo=UTC), False),  # end is exclusive
        (datetime(2026, 11, 27, 23, 0, tzinfo=UTC), False),  # Friday
        (datetime(2026, 11, 28, 12, 0, tzinfo=UTC), False),  # Saturday noon
        # 01:00 on Sunday in UTC+2 is Saturday 23:00 UTC: windows are UTC
        (datetime(2026, 11, 29, 1, 0, tzinfo=timezone(timedelta(hours=2))), True),
        (datetime(2026, 11, 28, 23, 0), True),  # naive is UTC
    ],
)
def test_time_windows_are_utc(when: datetime, expected: bool) -> None:
    assert dynamic_match(RULES["night"], {}, when) is expected


def test_several_approvals_combine_strictly() -> None:
    rule = ApprovalRule(
        (
            ApprovalRequirement("privileged", ("data-security",), 1, 1800),
            ApprovalRequirement("costly", ("data-platform",), 2, 3600),
        )
    )
    assert rule.rule_id == "privileged+costly"
    assert rule.approvers == ("data-platform", "data-security")
    assert rule.min_approvals == 2 and rule.ttl_s == 1800
    assert not rule.is_satisfied({"p1": ["data-platform"], "p2": ["data-platform"]})
    assert not rule.is_satisfied({"s1": ["data-security"], "p1": ["data-platform"]})
    assert rule.is_satisfied({"s1": ["data-security"], "p1": ["data-platform"], "p2": ["data-platform"]})
    # one person in both groups counts for both requirements
    assert rule.is_satisfied({"x": ["data-security", "data-platform"], "p": ["data-platform"]})


def test_classifier_catalog_wins_then_first_glob() -> None:
    catalog = Catalog.from_mapping(
        {
            "tables": {
                "A.B.C": {
                    "columns": {
                        "EMAIL": "VARCHAR",
                        "NAME": "VARCHAR",
                        "USERNAME": {"type": "VARCHAR", "classification": "pii.email"},
                        "NOTE": {"type": "VARCHAR", "classification": "internal.unknown"},
                        "ID": "NUMBER",
                    }
                }
            }
        }
    )
    c = PolicyClassifier(POLICY, catalog)
    assert c.column_classification("A.B.C.EMAIL") == "pii.email"
    assert c.column_classification("A.B.C.NAME") == "pii.name"  # "*NAME" comes before "NAME"
    assert c.column_classification("A.B.C.USERNAME") == "pii.email"  # catalog beats the glob
    assert c.column_classification("A.B.C.ID") is None
    assert c.column_classification("a.b.c.email") == "pii.email"  # globs are case-insensitive
    assert c.table_tags("SECURITY.ADMIN.USERS") == frozenset({"privileged", "admin"})
    assert c.table_tags("SECURITY.OTHER.T") == frozenset({"privileged"})
    assert c.table_tags("A.B.C") == frozenset()
    masks = masks_for(POLICY, catalog)
    assert masks["pii.email"] == "email" and masks["internal.unknown"] == "redact"


def test_identity_from_claims() -> None:
    ident = IdentityClaims.from_claims({"sub": "s", "iss": "i", "groups": ["a", "b"], "repository": "acme/x"})
    assert ident.groups == frozenset({"a", "b"}) and ident.subject == "s" and ident.issuer == "i"
    assert IdentityClaims.from_claims({"groups": "solo"}).groups == frozenset({"solo"})
    assert IdentityClaims.from_claims({}).groups == frozenset()


@given(st.integers(0, 23), st.integers(0, 24))
def test_hours_window_covers_exactly_its_length(start: int, end: int) -> None:
    from processors.decision.policy import parse_hours

    if start == end:
        with pytest.raises(ValueError):
            parse_hours(f"{start:02d}-{end:02d}")
        return
    window = parse_hours(f"{start:02d}-{end:02d}")
    covered = [h for h in range(24) if window.contains(h)]
    assert len(covered) == (end - start) % 24 or ((start, end) == (0, 24) and len(covered) == 24)
    assert (window.contains(start) and not window.contains(end % 24)) or (start, end) == (0, 24)


@given(st.text(alphabet="abcXYZ_.$ 1", min_size=1, max_size=20))
def test_literal_globs_match_themselves_in_any_case(name: str) -> None:
    from processors.decision.policy import parse_glob

    glob = parse_glob(name) if name.strip() else None
    if glob is not None:
        assert glob.matches(name.upper()) and glob.matches(name.lower()) and glob.matches(name)
        assert not glob.matches(name + "x")


def test_malformed_groups_claim_grants_nothing() -> None:
    assert IdentityClaims.from_claims({"groups": 7}).groups == frozenset()
    assert IdentityClaims.from_claims({"groups": ["a", 1, None]}).groups == frozenset({"a"})

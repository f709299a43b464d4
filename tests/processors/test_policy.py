"""Policy loading and validation: every mistake is named with its file, line and reason."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from processors.decision.policy import (
    KNOWN_MASKS,
    PolicyError,
    load_policy,
    parse_duration,
    parse_glob,
    parse_hours,
    parse_policy,
    parse_size,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "infra" / "policies" / "example.yaml"

BASE = """\
version: 1
classifications:
  pii.email: {mask: email}
tables:
  - {match: "SECURITY.*.*", tags: [privileged]}
"""


def _err(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse_policy(textwrap.dedent(text), "p.yaml")
    return info.value


def test_example_policy_loads_and_hashes_file_bytes() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.sha256 == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    assert policy.default_decision == "deny"
    assert [r.id for r in policy.rules][:2] == ["ci-reads-analytics", "analysts-read-analytics"]
    assert set(policy.classifications.values()) <= KNOWN_MASKS


def test_design_md_example_is_valid() -> None:
    text = """\
    version: 1
    defaults:
      decision: deny
      max_result_rows: 10000
      approval_ttl: 1h
    classifications:
      pii.email: {mask: email}
      pii.ssn:   {mask: last4}
      pii.name:  {mask: hash}
      secret:    {mask: nullify}
      internal:  {mask: redact}
    columns:
      - {match: "*.*.*.EMAIL", classification: pii.email}
      - {match: "*.*.*.SSN", classification: pii.ssn}
    tables:
      - {match: "SNOWFLAKE.ACCOUNT_USAGE.*", tags: [privileged]}
    rules:
      - id: ci-reads-analytics
        when:
          identity: {groups: [ci], claims: {repository: "acme/*"}}
          statement: [select]
          tables: ["ANALYTICS.*.*"]
        then: allow
      - id: privileged-needs-approval
        when: {tables_tagged: [privileged]}
        then: {require_approval: {approvers: [data-security], min_approvals: 1, ttl: 30m}}
      - id: nightly-privileged
        when: {tables_tagged: [privileged], time: {hours_utc: "00-05"}}
        then: deny
      - id: no-writes-from-ai
        when: {statement: [insert, update, delete, merge, ddl, grant, unload]}
        then: deny
      - id: costly
        when: {estimated_bytes_gt: 10GB}
        then: {require_approval: {approvers: [data-platform]}}
      - id: findings
        when: {findings: [unbounded_write, data_export, role_change, dynamic_sql]}
        then: deny
    """
    policy = parse_policy(textwrap.dedent(text))
    costly = policy.rules[4]
    assert costly.when.estimated_bytes_gt == 10 * 1000**3
    assert costly.approval is not None and costly.approval.ttl_s == 3600  # defaults.approval_ttl
    assert policy.rules[1].approval is not None and policy.rules[1].approval.ttl_s == 1800


MISTAKES = [
    # (yaml body after BASE, expected line, reason fragment)
    ("rules:\n  - id: a\n    when: {colour: red}\n    then: deny\n", 8, "unknown key 'colour'"),
    ("rules:\n  - id: a\n    then: allw\n", 8, "then must be allow, deny"),
    (
        "rules:\n  - id: a\n    when: {statement: [selct]}\n    then: deny\n",
        8,
        "unknown statement kind 'selct'",
    ),
    ("rules:\n  - id: a\n    when: {statement: [multi]}\n    then: deny\n", 8, "always denied"),
    ("rules:\n  - id: a\n    when: {findings: [sql_injection]}\n    then: deny\n", 8, "unknown finding"),
    ("rules:\n  - id: a\n    when: {estimated_bytes_gt: 10GiGa}\n    then: deny\n", 8, "bad size unit"),
    ("rules:\n  - id: a\n    when: {estimated_bytes_gt: lots}\n    then: deny\n", 8, "bad size"),
    ("rules:\n  - id: a\n    when: {time: {hours_utc: '25-03'}}\n    then: deny\n", 8, "start hour"),
    ("rules:\n  - id: a\n    when: {time: {hours_utc: '5-7'}}\n    then: deny\n", 8, "HH-HH"),
    ("rules:\n  - id: a\n    when: {time: {hours_utc: '04-04'}}\n    then: deny\n", 8, "empty window"),
    ("rules:\n  - id: a\n    when: {time: {days: [funday]}}\n    then: deny\n", 8, "unknown day"),
    ("rules:\n  - id: a\n    when: {tables: ['ANALYTICS.[*']}\n    then: deny\n", 8, "unclosed '['"),
    ("rules:\n  - id: a\n    when: {tables: ['']}\n    then: deny\n", 8, "glob must not be empty"),
    ("rules:\n  - id: a\n    when: {tables_tagged: [privilegd]}\n    then: deny\n", 8, "tag 'privilegd'"),
    ("rules:\n  - id: a\n    then: {require_approval: {min_approvals: 1}}\n", 8, "needs approvers"),
    ("rules:\n  - id: a\n    then: require_approval\n", 8, "needs approvers"),
    (
        "rules:\n  - id: a\n    then: {require_approval: {approvers: [x], min_approvals: 0}}\n",
        8,
        "min_approvals must be >= 1",
    ),
    ("rules:\n  - id: a\n    then: {require_approval: {approvers: [x], ttl: 30x}}\n", 8, "bad duration"),
    ("rules:\n  - id: a\n    then: {require_approval: {approvers: [x], ttl: 30}}\n", 8, "duration must be"),
    ("rules:\n  - id: a\n    then: deny\n  - id: a\n    then: allow\n", 9, "duplicate rule id 'a'"),
    ("rules:\n  - id: 'a b'\n    then: deny\n", 7, "may only hold"),
    ("rules:\n  - then: deny\n", 7, "missing required key 'id'"),
    ("rules:\n  - id: a\n    when: {identity: {groups: ci}}\n    then: deny\n", 8, "non-empty list"),
    ("rules:\n  - id: a\n    when: {identity: {roles: [ci]}}\n    then: deny\n", 8, "unknown key 'roles'"),
    ("columns:\n  - {match: '*.*.*.SSN', classification: pii.ssn}\n", 7, "unknown classification 'pii.ssn'"),
    ("columns:\n  - {match: '*.*.*.SSN', classification: pii.email, mask: x}\n", 7, "unknown key 'mask'"),
    ("defaults:\n  decision: allow\n", 7, "deny or require_approval"),
    ("defaults:\n  decision: require_approval\n", 7, "needs defaults.approvers"),
    ("defaults:\n  approval_ttl: 2 days\n", 7, "bad duration"),
    ("defaults:\n  max_result_rows: many\n", 7, "must be an integer"),
    ("colour: red\n", 6, "unknown key 'colour'"),
]


@pytest.mark.parametrize(("body", "line", "fragment"), MISTAKES)
def test_mistakes_are_named_with_line_and_reason(body: str, line: int, fragment: str) -> None:
    err = _err(BASE + body)
    assert err.line == line, str(err)
    assert fragment in err.reason, str(err)
    assert str(err).startswith(f"p.yaml:{line}: ")


def test_unknown_mask_is_named() -> None:
    err = _err("version: 1\nclassifications:\n  pii.ssn: {mask: scramble}\n")
    assert err.line == 3
    assert "unknown mask 'scramble'" in err.reason


def test_every_mistake_is_reported_not_just_the_first() -> None:
    err = _err(
        BASE
        + "rules:\n  - id: a\n    then: allw\n  - id: b\n    when: {statement: [selekt]}\n    then: deny\n"
    )
    assert [line for line, _ in err.errors] == [8, 10]
    assert str(err).count("p.yaml:") == 2


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("version: 2\n", 1, "unsupported version"),
        ("rules: []\n", 1, "missing required key 'version'"),
        ("version: 1\nrules:\n  - id: a\n    then: [deny\n", 5, "invalid YAML"),
        ("version: 1\nversion: 1\n", 2, "duplicate key 'version'"),
        ("", 1, "empty policy"),
        ("- 1\n", 1, "policy must be a mapping"),
    ],
)
def test_structural_mistakes(text: str, line: int, fragment: str) -> None:
    err = _err(text)
    assert err.line == line, str(err)
    assert fragment in err.reason


def test_load_policy_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nrules:\n  - id: x\n    then: maybe\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}:4: then must be")
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(tmp_path / "missing.yaml")


def test_default_require_approval_forms() -> None:
    p = parse_policy(
        "version: 1\ndefaults:\n  decision: require_approval\n  approvers: [sec]\n  min_approvals: 2\n"
    )
    assert p.default_decision == "require_approval"
    assert p.default_approval is not None and p.default_approval.min_approvals == 2
    p2 = parse_policy("version: 1\ndefaults:\n  decision: {require_approval: {approvers: [sec], ttl: 2d}}\n")
    assert p2.default_approval is not None and p2.default_approval.ttl_s == 2 * 86400


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10GB", 10_000_000_000),
        ("10gb", 10_000_000_000),
        ("1.5 TB", 1_500_000_000_000),
        ("512KB", 512_000),
        ("3MB", 3_000_000),
        ("1GiB", 1024**3),
        ("100B", 100),
        (42, 42),
    ],
)
def test_sizes_are_decimal_unless_binary_units(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["10", "10 G", "GB", "-1GB", True, -5, "10PB"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("1h", 3600), ("2d", 172800), ("1h30m", 5400)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["30", "m", "1w", "0m", "1h 30m", "", 30])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_hours_windows_start_inclusive_end_exclusive_and_cross_midnight() -> None:
    night = parse_hours("00-05")
    assert [h for h in range(24) if night.contains(h)] == [0, 1, 2, 3, 4]
    late = parse_hours("22-04")
    assert [h for h in range(24) if late.contains(h)] == [0, 1, 2, 3, 22, 23]
    assert all(parse_hours("00-24").contains(h) for h in range(24))
    assert [h for h in range(24) if parse_hours("23-24").contains(h)] == [23]


def test_globs_are_case_insensitive_and_anchored() -> None:
    g = parse_glob("analytics.*.*")
    assert g.matches("ANALYTICS.PUBLIC.CUSTOMERS")
    assert g.matches("analytics.public.Customers")
    assert not g.matches("XANALYTICS.PUBLIC.CUSTOMERS")
    assert parse_glob("*.*.*.EMAIL").matches("A.B.C.email")
    assert not parse_glob("*.*.*.EMAIL").matches("A.B.C.EMAIL_HASH")
    assert parse_glob("A.[BC].*").matches("A.c.T")
    for bad in ["A.[B", "A.]B", "A.[]", " ", "A.[[B]]"]:
        with pytest.raises(ValueError):
            parse_glob(bad)

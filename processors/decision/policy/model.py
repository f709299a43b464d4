"""The policy's data model: frozen dataclasses built once by the loader, read by evaluation."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

__all__ = [
    "DAYS",
    "FAIL_CLOSED_FINDINGS",
    "FINDING_CODES",
    "KNOWN_MASKS",
    "RULE_STATEMENT_KINDS",
    "ApprovalRequirement",
    "ApprovalRule",
    "Conditions",
    "Glob",
    "HoursWindow",
    "IdentityClaims",
    "Policy",
    "PolicyError",
    "Rule",
    "RunAs",
    "UnmaskGrant",
]

KNOWN_MASKS: frozenset[str] = frozenset({"email", "last4", "hash", "nullify", "redact"})
# Statement kinds a rule may name. "unknown" and "multi" are not here: they are always denied.
RULE_STATEMENT_KINDS: frozenset[str] = frozenset(
    {
        "select", "insert", "update", "delete", "merge", "ddl", "grant", "unload", "use", "show",
        "describe", "call", "set", "transaction", "other",
    }
)  # fmt: skip
FINDING_CODES: frozenset[str] = frozenset(
    {
        "unbounded_write", "full_table_scan", "cartesian_join", "select_star_sensitive",
        "privileged_table", "role_change", "data_export", "dynamic_sql", "sensitive_predicate",
        "parse_error", "multi_statement", "unknown_statement", "unresolved_table",
        "unresolved_column", "select_star_unknown", "unparsed_statement", "analysis_budget_exceeded",
        "user_function",
    }
)  # fmt: skip
# Findings that deny whatever the rules say: the engine could not understand the statement, so
# it cannot know what it reads or mask what it returns.
FAIL_CLOSED_FINDINGS: frozenset[str] = frozenset(
    {
        "parse_error",
        "multi_statement",
        "unknown_statement",
        "unresolved_table",
        "unresolved_column",
        "select_star_unknown",
        "unparsed_statement",  # raw text sqlglot could not parse: what it does is unknown
        "analysis_budget_exceeded",  # too large to analyse in bounded time
        "user_function",  # a UDF's body reads tables that masking cannot reach
    }
)
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class PolicyError(Exception):
    """An invalid policy; ``str()`` is ``"file:line: reason"``, one line per mistake.

    ``line``/``reason`` are the first mistake; ``errors`` lists every (line, reason) found.
    """

    def __init__(
        self,
        reason: str,
        *,
        source: str = "<policy>",
        line: int | None = None,
        errors: tuple[tuple[int | None, str], ...] = (),
    ) -> None:
        self.reason = reason
        self.source = source
        self.line = line
        self.errors = errors or ((line, reason),)
        text = "\n".join(
            f"{source}:{ln}: {why}" if ln is not None else f"{source}: {why}" for ln, why in self.errors
        )
        super().__init__(text)


@dataclass(frozen=True)
class Glob:
    """A case-insensitive glob (``*``, ``?``, ``[...]``) over upper-cased names or claim values."""

    pattern: str
    regex: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, value: str) -> bool:
        return self.regex.fullmatch(value.upper()) is not None


@dataclass(frozen=True)
class HoursWindow:
    """UTC hours ``start`` (inclusive) to ``end`` (exclusive); ``start > end`` crosses midnight."""

    start: int
    end: int

    def contains(self, hour: int) -> bool:
        if self.start < self.end:
            return self.start <= hour < self.end
        return hour >= self.start or hour < self.end


@dataclass(frozen=True)
class ApprovalRequirement:
    """One require_approval rule's demand: ``min_approvals`` distinct approvers from ``approvers``."""

    rule_id: str
    approvers: tuple[str, ...]
    min_approvals: int
    ttl_s: int
    # classifications an approval of this rule releases raw (``unmask:``), empty for none
    unmask: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ApprovalRule:
    """What a require_approval decision needs. Several matching rules are combined strictly:
    every requirement must be met, the shortest ttl applies."""

    requirements: tuple[ApprovalRequirement, ...]

    @property
    def rule_id(self) -> str:
        return "+".join(r.rule_id for r in self.requirements)

    @property
    def approvers(self) -> tuple[str, ...]:
        """Every group whose members may cast a verdict (union over the requirements)."""
        return tuple(sorted({g for r in self.requirements for g in r.approvers}))

    @property
    def min_approvals(self) -> int:
        """A lower bound on distinct approvers; `is_satisfied` is the exact test."""
        return max(r.min_approvals for r in self.requirements)

    @property
    def ttl_s(self) -> int:
        return min(r.ttl_s for r in self.requirements)

    @property
    def unmask(self) -> frozenset[str]:
        """Classifications that approving releases raw (any requirement's ``unmask``)."""
        return frozenset(c for r in self.requirements for c in r.unmask)

    def is_satisfied(self, approvals: Mapping[str, Iterable[str]]) -> bool:
        """``approvals`` maps each distinct approving subject to its groups. An approver counts
        toward every requirement whose groups it belongs to."""
        for req in self.requirements:
            allowed = set(req.approvers)
            count = sum(1 for groups in approvals.values() if allowed.intersection(groups))
            if count < req.min_approvals:
                return False
        return True


@dataclass(frozen=True)
class Conditions:
    """A rule's ``when``; every condition given must hold (None means not given)."""

    groups: frozenset[str] | None = None
    claims: tuple[tuple[str, Glob], ...] | None = None
    statement: frozenset[str] | None = None
    tables: tuple[Glob, ...] | None = None
    tables_tagged: frozenset[str] | None = None
    findings: frozenset[str] | None = None
    estimated_bytes_gt: int | None = None
    hours_utc: HoursWindow | None = None
    days: frozenset[int] | None = None  # 0 = Monday, as datetime.weekday()
    # the Snowflake role / warehouse the caller asked for (its target), as globs
    roles: tuple[Glob, ...] | None = None
    warehouses: tuple[Glob, ...] | None = None

    @cached_property
    def dynamic(self) -> bool:
        """Whether the rule depends on claims, time or the requested role/warehouse (re-checked
        on every cache hit)."""
        return (
            self.claims is not None
            or self.hours_utc is not None
            or self.days is not None
            or self.roles is not None
            or self.warehouses is not None
        )


@dataclass(frozen=True)
class RunAs:
    """A rule's ``run_as``: the Snowflake roles and warehouses its statements may run with.

    The first of each is the default; a caller may ask for another only among these. An empty
    tuple leaves that one to the connection profile (and a caller may not choose it).
    """

    roles: tuple[str, ...] = ()
    warehouses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    id: str
    when: Conditions
    then: str  # allow | deny | require_approval
    approval: ApprovalRequirement | None = None
    description: str | None = None
    line: int | None = None
    run_as: RunAs | None = None


@dataclass(frozen=True)
class UnmaskGrant:
    """``unmask:`` entry: identities matching ``when`` read ``classifications`` raw, for ``reason``."""

    id: str
    classifications: frozenset[str]
    when: Conditions  # only groups and claims are used
    reason: str
    line: int | None = None


@dataclass(frozen=True)
class Policy:
    """A validated policy file."""

    sha256: str
    source: str
    default_decision: str  # deny | require_approval
    default_approval: ApprovalRequirement | None
    max_result_rows: int
    approval_ttl_s: int
    classifications: Mapping[str, str]  # name -> mask
    columns: tuple[tuple[Glob, str], ...]  # (glob on DB.SCHEMA.TABLE.COLUMN, classification)
    tables: tuple[tuple[Glob, frozenset[str]], ...]  # (glob on DB.SCHEMA.TABLE, tags)
    rules: tuple[Rule, ...]
    unmask: tuple[UnmaskGrant, ...] = ()


@dataclass(frozen=True)
class IdentityClaims:
    """A verified identity as the policy sees it."""

    subject: str | None = None
    issuer: str | None = None
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], groups_claim: str = "groups") -> IdentityClaims:
        """Build from a verified claims object (``sub``, ``iss``, ``groups`` and any other claim)."""
        raw = claims.get(groups_claim) or ()
        if isinstance(raw, str):
            groups = frozenset([raw])
        elif isinstance(raw, list | tuple | set | frozenset):
            groups = frozenset(g for g in raw if isinstance(g, str))
        else:  # a malformed groups claim grants no group
            groups = frozenset()
        sub, iss = claims.get("sub"), claims.get("iss")
        return cls(
            subject=None if sub is None else str(sub),
            issuer=None if iss is None else str(iss),
            groups=groups,
            claims=dict(claims),
        )

"""Rule conditions, split into the part fixed by the statement and groups (cached) and the part
that depends on claims and the clock (re-checked on every decision)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from processors.decision.policy.model import Conditions, Rule, UnmaskGrant

__all__ = ["Facts", "dynamic_match", "grant_matches", "static_match"]


@dataclass(frozen=True)
class Facts:
    """What the conditions look at, computed once per analysed statement."""

    statement: str
    tables: tuple[str, ...]
    tags: frozenset[str]
    findings: frozenset[str]
    estimated_bytes: int | None
    groups: frozenset[str]


def static_match(rule: Rule, facts: Facts) -> bool:
    """Conditions on groups, statement, tables, tags, findings and size.

    An unknown estimated size matches ``estimated_bytes_gt`` in deny/require_approval rules and
    never in allow rules: what cannot be known must not loosen the decision.
    """
    w: Conditions = rule.when
    if w.groups is not None and not w.groups <= facts.groups:
        return False
    if w.statement is not None and facts.statement not in w.statement:
        return False
    if w.tables is not None:
        # every touched table must match; a statement touching no table does not satisfy it
        if not facts.tables:
            return False
        for table in facts.tables:
            if not any(g.matches(table) for g in w.tables):
                return False
    if w.tables_tagged is not None and not (w.tables_tagged & facts.tags):
        return False
    if w.findings is not None and not (w.findings & facts.findings):
        return False
    if w.estimated_bytes_gt is not None:
        if facts.estimated_bytes is None:
            return rule.then != "allow"
        if facts.estimated_bytes <= w.estimated_bytes_gt:
            return False
    return True


def dynamic_match(
    rule: Rule,
    claims: Mapping[str, Any],
    now: datetime,
    role: str | None = None,
    warehouse: str | None = None,
) -> bool:
    """Conditions on claim values (globs), the UTC time window, and the Snowflake role and
    warehouse the caller asked for (a condition on them never matches when none was asked)."""
    w = rule.when
    if w.roles is not None or w.warehouses is not None:
        for globs, asked in ((w.roles, role), (w.warehouses, warehouse)):
            if globs is not None and (not asked or not any(g.matches(asked) for g in globs)):
                return False
    if w.claims is not None:
        for name, glob in w.claims:
            value = claims.get(name)
            if value is None or isinstance(value, Mapping):
                return False
            values = value if isinstance(value, list | tuple) else [value]
            if not any(
                v is not None and not isinstance(v, Mapping | list) and glob.matches(_text(v)) for v in values
            ):
                return False
    if w.hours_utc is not None or w.days is not None:
        utc = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
        if w.hours_utc is not None and not w.hours_utc.contains(utc.hour):
            return False
        if w.days is not None and utc.weekday() not in w.days:
            return False
    return True


def grant_matches(grant: UnmaskGrant, groups: frozenset[str], claims: Mapping[str, Any]) -> bool:
    """Whether an ``unmask`` grant applies to this identity: every listed group and claim holds."""
    w = grant.when
    if w.groups is None and w.claims is None:
        return False  # the loader refuses such a grant; never let one apply to everyone
    if w.groups is not None and not w.groups <= groups:
        return False
    if w.claims is not None:
        probe = Rule(id=grant.id, when=Conditions(claims=w.claims), then="allow")
        return dynamic_match(probe, claims, datetime.now(UTC))
    return True


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

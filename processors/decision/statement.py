"""Decide one statement: analyse, match the policy's rules, plan masking; and cache it.

Precedence is deny > require_approval > allow; nothing matched means the policy default.
Statements the analyser cannot understand (FAIL_CLOSED_FINDINGS) are denied whatever the rules
say. Masking is planned for every decision that may run (allow, require_approval); a denied
statement has no ``rewritten_sql``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from processors.decision.analysis import Analysis, Finding, analyse
from processors.decision.analysis.fingerprint import fingerprint
from processors.decision.masking import (
    MaskedColumnPlan,
    MaskedRead,
    MaskingPlan,
    ReleasedColumn,
    plan_read_masking,
)
from processors.decision.policy import (
    FAIL_CLOSED_FINDINGS,
    ApprovalRule,
    Facts,
    IdentityClaims,
    Policy,
    PolicyClassifier,
    Rule,
    UnmaskGrant,
    dynamic_match,
    grant_matches,
    masks_for,
    static_match,
)
from processors.decision.warehouse_catalog import Catalog

__all__ = ["Decision", "DecisionCache", "evaluate", "evaluate_request"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """The outcome for one statement; ``to_json()`` is the ``policy check`` contract."""

    decision: str  # allow | deny | require_approval
    rules: tuple[str, ...]
    reasons: tuple[str, ...]
    statement: str
    tables: tuple[str, ...]
    findings: tuple[Finding, ...]
    masked_columns: tuple[MaskedColumnPlan, ...]
    rewritten_sql: str | None
    estimated_bytes: int | None
    policy_sha256: str
    approval: ApprovalRule | None = None
    max_result_rows: int = 0
    classifications_touched: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    fingerprint: str = ""
    catalog_version: str = ""
    masked_reads: tuple[MaskedRead, ...] = ()  # classified table columns read through their mask
    released: tuple[ReleasedColumn, ...] = ()  # classified table columns read raw, and by which grant

    def to_json(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "rules": list(self.rules),
            "reasons": list(self.reasons),
            "statement": self.statement,
            "tables": list(self.tables),
            "findings": [{"code": f.code, "detail": f.detail} for f in self.findings],
            "masked_columns": [
                {"output": m.output, "source": m.source, "classification": m.classification, "mask": m.mask}
                for m in self.masked_columns
            ],
            "rewritten_sql": self.rewritten_sql,
            "estimated_bytes": self.estimated_bytes,
            "policy_sha256": self.policy_sha256,
            "masked_reads": [
                {"column": m.column, "classification": m.classification, "mask": m.mask}
                for m in self.masked_reads
            ],
            "unmasked_columns": [
                {"column": u.column, "classification": u.classification, "rule": u.grant, "reason": u.reason}
                for u in self.released
            ],
        }


@dataclass
class _Prepared:
    """Everything that does not depend on claims or the clock, for one statement and group set."""

    analysis: Analysis
    facts: Facts
    fail_closed: tuple[str, ...]  # reasons; non-empty means deny whatever the rules say
    candidates: tuple[Rule, ...]  # rules whose static conditions hold, in file order
    classifications: tuple[str, ...]
    masks: Mapping[str, str]
    classifier: PolicyClassifier
    # per set of classifications released raw: the plan, or why it could not be made
    masking: dict[frozenset[tuple[str, str, str]], MaskingPlan | str] = field(default_factory=dict)
    decisions: dict[tuple[Any, ...], Decision] = field(default_factory=dict)
    tree_used: bool = False  # the analysis tree was rewritten in place by a first masking plan
    lock: threading.Lock = field(default_factory=threading.Lock)


_CLASSIFIERS: OrderedDict[tuple[str, str], tuple[PolicyClassifier, dict[str, str]]] = OrderedDict()
_CLASSIFIERS_LOCK = threading.Lock()


def _classifier(policy: Policy, catalog: Catalog) -> tuple[PolicyClassifier, dict[str, str]]:
    key = (policy.sha256, catalog.version)
    with _CLASSIFIERS_LOCK:
        found = _CLASSIFIERS.get(key)
        if found is None:
            found = (PolicyClassifier(policy, catalog), masks_for(policy, catalog))
            _CLASSIFIERS[key] = found
            while len(_CLASSIFIERS) > 8:
                _CLASSIFIERS.popitem(last=False)
        return found


def _prepare(
    sql: str,
    groups: frozenset[str],
    catalog: Catalog,
    policy: Policy,
    database: str | None,
    schema: str | None,
) -> _Prepared:
    classifier, masks = _classifier(policy, catalog)
    try:
        analysis = analyse(sql, catalog, classifier, database=database, schema=schema)
    except Exception as exc:  # an analyser bug must deny the statement, not crash the caller
        log.exception("analysis failed; denying")
        analysis = Analysis(
            statement="unknown",
            tables_read=(),
            tables_written=(),
            output_columns=(),
            predicate_columns=(),
            findings=(Finding("unknown_statement", f"analysis failed: {type(exc).__name__}: {exc}"),),
            estimated_bytes=None,
            fingerprint=fingerprint(sql),
            parsed=None,
            sql=sql,
        )
    codes = frozenset(f.code for f in analysis.findings)
    tags: set[str] = set()
    for table in analysis.tables:
        tags |= classifier.table_tags(table)
    facts = Facts(
        statement=analysis.statement,
        tables=analysis.tables,
        tags=frozenset(tags),
        findings=codes,
        estimated_bytes=analysis.estimated_bytes,
        groups=groups,
    )
    fail_closed = [
        f"fail closed: {f.code}: {f.detail}" for f in analysis.findings if f.code in FAIL_CLOSED_FINDINGS
    ]
    if analysis.statement in ("unknown", "multi") and not fail_closed:
        fail_closed.append(f"fail closed: statement kind {analysis.statement!r} is always denied")
    classes: set[str] = set()
    for out in analysis.output_columns:
        for src in out.sources:
            c = classifier.column_classification(src)
            if c:
                classes.add(c)
    for col in analysis.predicate_columns:
        c = classifier.column_classification(col)
        if c:
            classes.add(c)
    candidates = tuple(r for r in policy.rules if static_match(r, facts)) if not fail_closed else ()
    return _Prepared(
        analysis, facts, tuple(fail_closed), candidates, tuple(sorted(classes)), masks, classifier
    )


def _rule_reason(rule: Rule) -> str:
    verb = {"allow": "allows", "deny": "denies", "require_approval": "requires approval"}[rule.then]
    text = f"rule {rule.id} {verb}"
    return f"{text}: {rule.description}" if rule.description else text


def _finish(
    prep: _Prepared,
    policy: Policy,
    catalog: Catalog,
    claims: Mapping[str, Any],
    now: datetime,
    role: str | None = None,
    warehouse: str | None = None,
) -> Decision:
    matched = tuple(
        r for r in prep.candidates if not r.when.dynamic or dynamic_match(r, claims, now, role, warehouse)
    )
    grants = (
        tuple(g for g in policy.unmask if grant_matches(g, prep.facts.groups, claims))
        if policy.unmask
        else ()
    )
    ids = tuple([r.id for r in matched])
    # a tuple of rule ids, or (rule ids, grant ids) when a grant applies: never equal to each other
    key: tuple[Any, ...] = (ids, tuple([g.id for g in grants])) if grants else ids
    found = prep.decisions.get(key)
    if found is not None:
        return found
    decision = _decide(prep, policy, catalog, matched, grants)
    prep.decisions[key] = decision
    return decision


def _released(
    grants: tuple[UnmaskGrant, ...], approval: ApprovalRule | None, deciding: list[Rule]
) -> dict[str, tuple[str, str]]:
    """classification -> (grant or rule id, reason) for everything this decision reads raw."""
    out: dict[str, tuple[str, str]] = {}
    for g in grants:
        for c in sorted(g.classifications):
            out.setdefault(c, (g.id, g.reason))
    if approval is not None:
        described = {r.id: r.description for r in deciding}
        for req in approval.requirements:
            for c in sorted(req.unmask):
                why = described.get(req.rule_id) or f"released raw on approval by rule {req.rule_id}"
                out.setdefault(c, (req.rule_id, why))
    return out


def _plan(prep: _Prepared, catalog: Catalog, unmasked: dict[str, tuple[str, str]]) -> MaskingPlan | str:
    key = frozenset((c, g, why) for c, (g, why) in unmasked.items())
    with prep.lock:  # decisions may run on a thread pool; the first plan rewrites the tree in place
        found = prep.masking.get(key)
        if found is not None:
            return found
        a = prep.analysis
        try:
            if prep.tree_used:  # another release set of the same statement (rare): a fresh tree
                a = analyse(a.sql, catalog, prep.classifier, database=a.database, schema=a.schema)
            prep.tree_used = True
            found = plan_read_masking(
                a, prep.masks, prep.classifier, catalog=catalog, unmasked=unmasked, consume=True
            )
        except Exception as exc:  # any masking failure must stop the statement
            log.warning("masking failed for fingerprint %s: %s", a.fingerprint[:16], exc)
            found = f"{type(exc).__name__}: {exc}"
        prep.masking[key] = found
        return found


def _decide(
    prep: _Prepared,
    policy: Policy,
    catalog: Catalog,
    matched: tuple[Rule, ...],
    grants: tuple[UnmaskGrant, ...] = (),
) -> Decision:
    a = prep.analysis
    reasons: list[str] = list(prep.fail_closed)
    approval: ApprovalRule | None = None
    deciding: list[Rule] = []
    if prep.fail_closed:
        outcome = "deny"
    else:
        by_kind = {k: [r for r in matched if r.then == k] for k in ("deny", "require_approval", "allow")}
        if by_kind["deny"]:
            outcome, deciding = "deny", by_kind["deny"]
        elif by_kind["require_approval"]:
            outcome, deciding = "require_approval", by_kind["require_approval"]
        elif by_kind["allow"]:
            outcome, deciding = "allow", by_kind["allow"]
        else:
            outcome, deciding = policy.default_decision, []
            reasons.append(f"no rule matched: policy default is {policy.default_decision}")
            if policy.default_approval is not None:
                approval = ApprovalRule((policy.default_approval,))
        reasons.extend(_rule_reason(r) for r in deciding)
        if outcome == "require_approval" and deciding:
            approval = ApprovalRule(tuple(r.approval for r in deciding if r.approval is not None))
    rewritten: str | None = None
    masked: tuple[MaskedColumnPlan, ...] = ()
    reads: tuple[MaskedRead, ...] = ()
    released: tuple[ReleasedColumn, ...] = ()
    if outcome != "deny":
        plan = _plan(prep, catalog, _released(grants, approval, deciding))
        if isinstance(plan, str):
            outcome, approval = "deny", None
            reasons.append(f"fail closed: masking could not be planned ({plan})")
        else:
            rewritten, masked, reads, released = plan
            verb = "approving releases raw" if outcome == "require_approval" else "released raw"
            reasons.extend(
                f"{verb}: {u.column} ({u.classification}) by {u.grant}: {u.reason}" for u in released
            )
    if outcome == "deny":
        approval = None
    return Decision(
        decision=outcome,
        rules=tuple(r.id for r in matched),
        reasons=tuple(reasons),
        statement=a.statement,
        tables=a.tables,
        findings=a.findings,
        masked_columns=masked,
        rewritten_sql=rewritten,
        estimated_bytes=a.estimated_bytes,
        policy_sha256=policy.sha256,
        approval=approval,
        max_result_rows=policy.max_result_rows,
        classifications_touched=prep.classifications,
        tags=tuple(sorted(prep.facts.tags)),
        fingerprint=a.fingerprint,
        catalog_version=catalog.version,
        masked_reads=reads,
        released=released,
    )


def evaluate(
    sql: str,
    identity: IdentityClaims,
    catalog: Catalog,
    policy: Policy,
    now: datetime,
    *,
    database: str | None = None,
    schema: str | None = None,
    role: str | None = None,
    warehouse: str | None = None,
) -> Decision:
    """Decide ``sql`` for ``identity`` at ``now`` (no caching); ``role``/``warehouse`` are what
    the caller asked to run with (rules' ``role``/``warehouse`` conditions)."""
    prep = _prepare(sql, identity.groups, catalog, policy, database, schema)
    return _finish(prep, policy, catalog, identity.claims, now, role, warehouse)


class DecisionCache:
    """``evaluate`` with the analysis, masking plan and static rule matches cached.

    Keyed by (SQL fingerprint, catalog version, policy SHA-256, identity groups, database,
    schema); the fingerprint is parse-free (comments, whitespace and keyword case only), and
    an exact-text index in front skips even that for repeated text. Claim and time conditions
    are re-checked on every hit. Bounded LRU (``maxsize`` entries per index).
    """

    # texts longer than this are looked up by fingerprint only, so the exact-text index stays
    # small even when callers send statements up to the SQL size limit
    MAX_TEXT_KEY = 16_384

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._by_text: OrderedDict[tuple[Any, ...], _Prepared] = OrderedDict()
        self._by_fingerprint: OrderedDict[tuple[Any, ...], _Prepared] = OrderedDict()
        self._lock = threading.Lock()  # the worker may decide from a thread pool
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._by_fingerprint)

    def clear(self) -> None:
        with self._lock:
            self._by_text.clear()
            self._by_fingerprint.clear()

    def evaluate(
        self,
        sql: str,
        identity: IdentityClaims,
        catalog: Catalog,
        policy: Policy,
        now: datetime,
        *,
        database: str | None = None,
        schema: str | None = None,
        role: str | None = None,
        warehouse: str | None = None,
    ) -> Decision:
        context = (catalog.version, policy.sha256, identity.groups, database, schema)
        text_key = (sql, *context) if len(sql) <= self.MAX_TEXT_KEY else None
        with self._lock:
            prep = self._by_text.get(text_key) if text_key is not None else None
            if prep is not None and text_key is not None:
                self.hits += 1
                self._by_text.move_to_end(text_key)
        if prep is not None:
            return _finish(prep, policy, catalog, identity.claims, now, role, warehouse)
        fp_key = (fingerprint(sql), *context)
        with self._lock:
            prep = self._by_fingerprint.get(fp_key)
            if prep is not None:
                self.hits += 1
                self._by_fingerprint.move_to_end(fp_key)
        if prep is None:
            fresh = _prepare(sql, identity.groups, catalog, policy, database, schema)  # outside the lock
            with self._lock:
                prep = self._by_fingerprint.get(fp_key)
                if prep is None:
                    self.misses += 1
                    prep = fresh
                    self._store(self._by_fingerprint, fp_key, prep)
                else:
                    self.hits += 1
        if text_key is not None:
            with self._lock:
                self._store(self._by_text, text_key, prep)
        return _finish(prep, policy, catalog, identity.claims, now, role, warehouse)

    def _store(
        self, table: OrderedDict[tuple[Any, ...], _Prepared], key: tuple[Any, ...], prep: _Prepared
    ) -> None:
        table[key] = prep
        while len(table) > self.maxsize:
            table.popitem(last=False)


def evaluate_request(
    request: Any,
    identity: IdentityClaims,
    catalog: Catalog,
    policy: Policy,
    now: datetime,
    cache: DecisionCache | None = None,
) -> Decision:
    """Decide a QueryRequested-like object (``.sql`` and its ``.target``: database and schema for
    names, role and warehouse for the rules that name them)."""
    target = getattr(request, "target", None)
    where = {
        "database": getattr(target, "database", None),
        "schema": getattr(target, "schema", None),
        "role": getattr(target, "role", None),
        "warehouse": getattr(target, "warehouse", None),
    }
    if cache is not None:
        return cache.evaluate(request.sql, identity, catalog, policy, now, **where)
    return evaluate(request.sql, identity, catalog, policy, now, **where)

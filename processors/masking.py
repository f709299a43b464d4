"""Inline masking: rewrite a SELECT so classified values never leave Snowflake.

Each output column whose lineage reaches a classified column is wrapped in its mask at the
outermost SELECT (every branch of a set operation), over the final output expression, and
keeps its output name. Because the analyser traced lineage through CTEs, subqueries, unions
and ``*``, laundering a column through them does not escape the mask.

UNION ALL is masked inside each branch; UNION (distinct), INTERSECT and EXCEPT compare rows,
so they run on raw values inside a derived table and the masks wrap it from outside
(``SELECT mask(_QT.c) AS c FROM (<set operation>) AS _QT``), keeping the row set unchanged.

The rewrite starts from the analyser's qualified tree: alias references and positional
``GROUP BY 1`` are already expanded there, so grouping and filtering keep working on the raw
values inside Snowflake while only the returned value is masked.

Masks (Snowflake SQL, also run by fakesnow/DuckDB in tests)::

    email    '****@' || SPLIT_PART(TO_VARCHAR(x), '@', 2)     keeps the domain
    last4    '***-**-' || RIGHT(TO_VARCHAR(x), 4)
    hash     SHA2(TO_VARCHAR(x), 256)
    nullify  CAST(IFF(x IS NULL, NULL, NULL) AS <column type>)
    redact   IFF(x IS NULL, '***MASKED***', '***MASKED***')

(nullify and redact keep ``x`` in the expression so an aggregate stays an aggregate.)

Format-preserving masks (email, last4) are only sound on the value itself: ``'x@' || email``
or ``REVERSE(email)`` would leak through them. So when a source reaches the output through
anything but a pass-through (alias, cast, UPPER/LOWER/TRIM, set operation), email and last4
are raised to ``redact``. Among several classified sources the strongest mask wins
(nullify > redact > hash > last4 > email).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.optimizer.qualify_columns import quote_identifiers

from processors.analysis.model import Analysis, Classifier, OutputColumn

__all__ = ["MASKS", "STRENGTH", "MaskedColumnPlan", "MaskingError", "mask_expression", "plan_masking"]

STRENGTH = ("nullify", "redact", "hash", "last4", "email")  # strongest first
MASKS = frozenset(STRENGTH)
_FORMAT_PRESERVING = frozenset({"email", "last4"})
# statements that can return rows the analyser cannot see into: never run unmasked
_UNMASKABLE = frozenset({"unknown", "multi", "call"})
_PLAIN = re.compile(r"[A-Z_][A-Z0-9_$]*")
_SNOWFLAKE = Dialect.get_or_raise("snowflake")


class MaskingError(Exception):
    """The statement cannot be masked safely; it must not run."""


@dataclass(frozen=True)
class MaskedColumnPlan:
    output: str
    source: str
    classification: str
    mask: str


def _varchar(x: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this="TO_VARCHAR", expressions=[x])


def _constant(x: exp.Expr, value: exp.Expr) -> exp.Expr:
    return exp.If(this=exp.Is(this=x, expression=exp.null()), true=value, false=value.copy())


def mask_expression(kind: str, x: exp.Expr, col_type: str | None = None) -> exp.Expr:
    """The mask ``kind`` applied to expression ``x``.

    >>> mask_expression("hash", exp.column("SSN")).sql("snowflake")
    'SHA2(TO_VARCHAR(SSN), 256)'
    """
    if kind == "email":
        part = exp.Anonymous(
            this="SPLIT_PART", expressions=[_varchar(x), exp.Literal.string("@"), exp.Literal.number(2)]
        )
        return exp.DPipe(this=exp.Literal.string("****@"), expression=part, safe=True)
    if kind == "last4":
        right = exp.Anonymous(this="RIGHT", expressions=[_varchar(x), exp.Literal.number(4)])
        return exp.DPipe(this=exp.Literal.string("***-**-"), expression=right, safe=True)
    if kind == "hash":
        return exp.SHA2(this=_varchar(x), length=exp.Literal.number(256))
    # nullify/redact still mention x: a bare constant would turn MAX(x) into a non-aggregate
    # and change the row count; both IFF branches are equal, so nothing about x is revealed
    if kind == "nullify":
        return exp.cast(_constant(x, exp.null()), col_type or "VARCHAR", copy=False)
    if kind == "redact":
        return _constant(x, exp.Literal.string("***MASKED***"))
    raise MaskingError(f"unknown mask {kind!r}")


def _choose(out: OutputColumn, masks: Mapping[str, str], classifier: Classifier) -> MaskedColumnPlan | None:
    best: MaskedColumnPlan | None = None
    passthrough = set(out.passthrough)
    for fq in out.sources:
        cls_ = classifier.column_classification(fq)
        if not cls_:
            continue
        kind = masks.get(cls_, "redact")  # classified but no mask configured: fail closed
        if kind not in MASKS:
            raise MaskingError(f"classification {cls_} has unknown mask {kind!r}")
        if kind in _FORMAT_PRESERVING and fq not in passthrough:
            kind = "redact"
        plan = MaskedColumnPlan(output=out.name, source=fq, classification=cls_, mask=kind)
        if best is None or STRENGTH.index(kind) < STRENGTH.index(best.mask):
            best = plan
    return best


def _branches(node: exp.Expr) -> list[exp.Select]:
    while isinstance(node, exp.Subquery):
        node = node.this
    if isinstance(node, exp.SetOperation):
        return _branches(node.this) + _branches(node.expression)
    if isinstance(node, exp.Select):
        return [node]
    raise MaskingError(f"cannot mask a {type(node).__name__} result")


def _identifier(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=not _PLAIN.fullmatch(name))


def _rename_refs(scope_node: exp.Expr, renames: dict[str, str]) -> None:
    """Point ORDER BY references at the renamed output aliases."""
    order = scope_node.args.get("order")
    if order is None:
        return
    for col in order.find_all(exp.Column):
        if not col.table and col.name in renames:
            col.set("this", _identifier(renames[col.name]))


def plan_masking(
    analysis: Analysis, masks_by_classification: Mapping[str, str], classifier: Classifier
) -> tuple[str, tuple[MaskedColumnPlan, ...]]:
    """(Snowflake SQL to run, one plan entry per masked output column).

    Statements that return no table data (DML, DDL, USE, SHOW, ...) come back unchanged.
    Raises MaskingError when a SELECT's outputs cannot be fully accounted for, and for
    unknown, multi-statement and CALL text, whose results nobody can see into.
    """
    if analysis.statement in _UNMASKABLE:
        raise MaskingError(f"a {analysis.statement} statement may return data that cannot be masked")
    if analysis.statement != "select":
        return analysis.sql, ()
    if analysis.parsed is None:
        raise MaskingError("no parsed statement to mask")
    if "select_star_unknown" in analysis.finding_codes or any(o.name == "*" for o in analysis.output_columns):
        raise MaskingError("a * could not be expanded, so its columns cannot be masked")
    opaque = [o.name for o in analysis.output_columns if not o.resolved]
    if opaque:
        raise MaskingError(f"output(s) {', '.join(opaque)} depend on names only known at run time")
    plans = [_choose(o, masks_by_classification, classifier) for o in analysis.output_columns]
    if not any(plans):
        return analysis.sql, ()
    tree = analysis.parsed.copy()
    top = tree
    while isinstance(top, exp.Subquery):
        top = top.this
    if isinstance(top, exp.SetOperation) and _compares_values(top):
        tree = _mask_outside(top, analysis.output_columns, plans)
    else:
        _mask_branches(tree, analysis.output_columns, plans)
    quote_identifiers(tree, dialect="snowflake", identify=False)
    # the tree is our own copy: let the generator skip its defensive deep copy
    return _SNOWFLAKE.generate(tree, copy=False), tuple(p for p in plans if p is not None)


def _compares_values(node: exp.Expr) -> bool:
    """UNION (distinct), INTERSECT, EXCEPT compare rows: they must see raw values, not masks."""
    while isinstance(node, exp.Subquery):
        node = node.this
    if not isinstance(node, exp.SetOperation):
        return False
    if not isinstance(node, exp.Union) or node.args.get("distinct"):
        return True
    return _compares_values(node.this) or _compares_values(node.expression)


def _mask_outside(
    top: exp.SetOperation, outputs: tuple[OutputColumn, ...], plans: list[MaskedColumnPlan | None]
) -> exp.Expr:
    """``SELECT mask(_QT.c) AS c, ... FROM (<set operation>) AS _QT`` keeping ORDER BY/LIMIT outside."""
    first = _branches(top)[0]
    if len(first.expressions) != len(outputs):
        raise MaskingError("set operation branches disagree on the number of columns")
    renames: dict[str, str] = {}
    for proj, out in zip(first.expressions, outputs, strict=True):
        if proj.alias_or_name != out.name or not isinstance(proj, exp.Alias):
            renames[proj.alias_or_name] = out.name
            inner = proj.this if isinstance(proj, exp.Alias) else proj
            proj.replace(exp.alias_(inner, _identifier(out.name), copy=False))
    _rename_refs(top, renames)
    projections = []
    for out, plan in zip(outputs, plans, strict=True):
        ref: exp.Expr = exp.column(_identifier(out.name), table=exp.to_identifier("_QT"))
        if plan is not None:
            ref = mask_expression(plan.mask, ref, out.type)
        projections.append(exp.alias_(ref, _identifier(out.name), copy=False))
    outer = exp.Select(expressions=projections)
    for arg in ("with_", "order", "limit", "offset"):
        value = top.args.get(arg)
        if value is not None:
            top.set(arg, None)
            outer.set(arg, value)
    outer.set(
        "from_", exp.From(this=exp.Subquery(this=top, alias=exp.TableAlias(this=exp.to_identifier("_QT"))))
    )
    return outer


def _mask_branches(
    tree: exp.Expr, outputs: tuple[OutputColumn, ...], plans: list[MaskedColumnPlan | None]
) -> None:
    """Wrap each masked output in every branch of the outermost SELECT (UNION ALL is row-wise)."""
    branches = _branches(tree)
    n = len(outputs)
    for i, sel in enumerate(branches):
        if len(sel.expressions) != n:
            raise MaskingError("set operation branches disagree on the number of columns")
        renames: dict[str, str] = {}
        for pos, (out, plan) in enumerate(zip(outputs, plans, strict=True)):
            proj = sel.expressions[pos]
            inner = proj.this if isinstance(proj, exp.Alias) else proj
            old = proj.alias_or_name
            if plan is not None:
                inner = mask_expression(plan.mask, inner, out.type)
            elif i > 0 and not isinstance(proj, exp.Alias):
                continue  # later branches' names do not matter
            if old != out.name:
                renames[old] = out.name
            proj.replace(exp.alias_(inner, _identifier(out.name), copy=False))
        if i == 0:
            _rename_refs(sel, renames)
            top = tree.this if isinstance(tree, exp.Subquery) else tree
            if top is not sel:
                _rename_refs(top, renames)

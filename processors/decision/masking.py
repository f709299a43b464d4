"""Masking at the read: rewrite a statement so classified values never exist unmasked in it.

Every read of a table that holds classified columns is replaced by a derived table of the same
name that returns each classified column through its mask, as Snowflake's own masking policies
do::

    FROM ANALYTICS.PUBLIC.CUSTOMERS AS C
    -->
    FROM (SELECT ID, <mask email>(EMAIL) AS EMAIL, ..., CITY FROM ANALYTICS.PUBLIC.CUSTOMERS) AS C

Because the substitution is at the table, not at the columns the analyser happened to see,
every clause of the statement (projections, function arguments, aggregates, CASE/IFF
conditions, WHERE/HAVING/QUALIFY, joins, windows, FLATTEN inputs, CONNECT BY, MATCH_RECOGNIZE,
ASOF MATCH_CONDITION, PIVOT/UNPIVOT, set operations, subqueries) computes on masked values
only; no count, predicate outcome, conversion error or string function can carry a raw value
out. A filter on a masked column therefore compares the *masked* value (``WHERE EMAIL =
'a@b.com'`` matches nothing; ``WHERE EMAIL LIKE '%@acme.com'`` still works, since the domain
is what the email mask shows).

Partial masks (email keeps the domain, last4 the last four characters) are sound on the bare
value only. An output column computed from one (anything but a pass-through: alias, cast,
UPPER/LOWER/TRIM, set operation) is therefore also wrapped in ``redact`` at the outermost
SELECT, so slicing or padding a masked value returns nothing of it either. Among several
classified sources of one output the strongest mask is reported (nullify > redact > hash >
last4 > email).

Masks (Snowflake SQL, also run by fakesnow/DuckDB in tests)::

    email    '****@' || the part after the last '@' (NULL stays NULL)
    last4    '***-**-' || RIGHT(TO_VARCHAR(x), 4)
    hash     SHA2(TO_VARCHAR(x), 256)
    nullify  CAST(NULL AS <column type>)
    redact   '***MASKED***'

A classification granted raw to the caller (``unmask``, see docs/policy.md) is read unmasked;
the plan names every such column and the grant that released it.

Writes: the target of INSERT/UPDATE/DELETE/MERGE cannot be replaced by a derived table, so a
write that *reads* a classified column of its own target (in WHERE, SET values, ON, ...) is
refused (MaskingError); everything else it reads is masked at the read like a query.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from processors.decision.analysis.lineage import table_fq
from processors.decision.analysis.model import Analysis, Classifier, OutputColumn

__all__ = [
    "MASKS",
    "STRENGTH",
    "MaskedColumnPlan",
    "MaskedRead",
    "MaskingError",
    "MaskingPlan",
    "ReleasedColumn",
    "mask_expression",
    "plan_masking",
    "plan_read_masking",
]

STRENGTH = ("nullify", "redact", "hash", "last4", "email")  # strongest first
MASKS = frozenset(STRENGTH)
_FORMAT_PRESERVING = frozenset({"email", "last4"})
# statements that can return rows the analyser cannot see into: never run unmasked
_UNMASKABLE = frozenset({"unknown", "multi", "call"})
# statements that read no table rows: nothing to mask
_NO_READS = frozenset({"use", "show", "describe", "transaction", "other", "grant"})
_PLAIN = re.compile(r"[A-Z_][A-Z0-9_$]*")
_SNOWFLAKE = Dialect.get_or_raise("snowflake")
REDACTED = "***MASKED***"
# placeholders for spliced derived tables carry a per-process random part, so no caller text can
# name one (and they are checked to appear exactly once)
_NONCE = secrets.token_hex(8).upper()


class MaskingError(Exception):
    """The statement cannot be masked safely; it must not run."""


@dataclass(frozen=True)
class MaskedColumnPlan:
    """An output column whose values come from classified columns, and the mask it shows."""

    output: str
    source: str
    classification: str
    mask: str


@dataclass(frozen=True)
class MaskedRead:
    """A classified table column that the statement reads through its mask."""

    column: str  # DB.SCHEMA.TABLE.COLUMN
    classification: str
    mask: str


@dataclass(frozen=True)
class ReleasedColumn:
    """A classified table column the statement reads raw, and the grant that released it."""

    column: str
    classification: str
    grant: str  # the unmask grant's or approval rule's id
    reason: str


class MaskingPlan(NamedTuple):
    sql: str
    columns: tuple[MaskedColumnPlan, ...]  # masked output columns (the policy check contract)
    reads: tuple[MaskedRead, ...] = ()
    released: tuple[ReleasedColumn, ...] = ()


def _varchar(x: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this="TO_VARCHAR", expressions=[x])


def _lit(value: str) -> exp.Literal:
    return exp.Literal.string(value)


def mask_expression(kind: str, x: exp.Expr, col_type: str | None = None) -> exp.Expr:
    """The mask ``kind`` applied to expression ``x``.

    >>> mask_expression("hash", exp.column("SSN")).sql("snowflake")
    'SHA2(TO_VARCHAR(SSN), 256)'
    """
    if kind == "email":
        text = _varchar(x)
        domain = exp.If(
            this=exp.Like(this=text.copy(), expression=_lit("%@%")),
            true=exp.Anonymous(
                this="SPLIT_PART", expressions=[text.copy(), _lit("@"), exp.Literal.number(-1)]
            ),
            false=_lit(""),
        )
        masked = exp.DPipe(this=_lit("****@"), expression=domain, safe=True)
        return exp.If(this=exp.Is(this=x.copy(), expression=exp.null()), true=exp.null(), false=masked)
    if kind == "last4":
        right = exp.Anonymous(this="RIGHT", expressions=[_varchar(x), exp.Literal.number(4)])
        return exp.DPipe(this=_lit("***-**-"), expression=right, safe=True)
    if kind == "hash":
        return exp.SHA2(this=_varchar(x), length=exp.Literal.number(256))
    if kind == "nullify":
        return exp.cast(exp.null(), col_type or "VARCHAR", copy=False)
    if kind == "redact":
        return _lit(REDACTED)
    raise MaskingError(f"unknown mask {kind!r}")


def _output_mask(kind: str, x: exp.Expr, col_type: str | None) -> exp.Expr:
    """A mask over an output that may be an aggregate: keep ``x`` in it so MAX(x) stays one."""
    value: exp.Expr = _lit(REDACTED) if kind == "redact" else exp.cast(exp.null(), col_type or "VARCHAR")
    return exp.If(this=exp.Is(this=x, expression=exp.null()), true=value, false=value.copy())


def _identifier(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=not _PLAIN.fullmatch(name))


def _catalog_of(classifier: Classifier, catalog: Any) -> Any:
    found = catalog if catalog is not None else getattr(classifier, "catalog", None)
    if found is None:
        raise MaskingError("no catalog to list the columns of a classified table")
    return found


_COLUMN_SLOT = "QT_MASKED_COLUMN_SLOT"


@lru_cache(maxsize=256)
def _mask_template(kind: str, col_type: str | None) -> str:
    """The Snowflake SQL of a read mask with a slot for the column (generated once per kind/type)."""
    return mask_expression(kind, exp.column(_COLUMN_SLOT), col_type).sql("snowflake")


@dataclass
class _TableMasks:
    """For one catalog table: how each column is read (its mask, or None for raw)."""

    columns: list[tuple[str, str | None, str | None]]  # (name, mask kind or None, type)
    reads: list[MaskedRead]
    released: list[ReleasedColumn]
    text: str = ""  # the masked projection as SQL text, spliced in by placeholder

    @property
    def masked(self) -> bool:
        return bool(self.reads)

    def projection(self) -> list[exp.Expr]:
        out: list[exp.Expr] = []
        for name, kind, col_type in self.columns:
            ref = exp.column(_identifier(name))
            out.append(
                ref if kind is None else exp.alias_(mask_expression(kind, ref, col_type), _identifier(name))
            )
        return out


def _quoted(name: str) -> str:
    return name if _PLAIN.fullmatch(name) else '"' + name.replace('"', '""') + '"'


# (classifier id, catalog id, masks, released, table) -> (classifier, catalog, its masks): the
# per-table projection is the same for every statement decided under one policy and catalog
_SHARED: dict[tuple[Any, ...], tuple[Any, Any, _TableMasks]] = {}
_SHARED_LOCK = threading.Lock()


class _ReadMasker:
    def __init__(
        self,
        masks: Mapping[str, str],
        classifier: Classifier,
        catalog: Any,
        unmasked: Mapping[str, tuple[str, str]],
    ) -> None:
        self.masks = masks
        self.classifier = classifier
        self.catalog = catalog
        self.unmasked = unmasked
        self._tables: dict[str, _TableMasks] = {}
        self._shared_key = (
            id(classifier),
            id(catalog),
            frozenset(masks.items()),
            frozenset(unmasked.items()),
        )

    def kind_for(self, classification: str) -> str:
        kind = self.masks.get(classification, "redact")  # classified but no mask configured: fail closed
        if kind not in MASKS:
            raise MaskingError(f"classification {classification} has unknown mask {kind!r}")
        return kind

    def table(self, fq: str) -> _TableMasks:
        found = self._tables.get(fq)
        if found is not None:
            return found
        key = (*self._shared_key, fq)
        shared = _SHARED.get(key)
        # the entry holds its classifier and catalog, so their ids cannot be reused meanwhile
        if shared is not None and shared[0] is self.classifier and shared[1] is self.catalog:
            self._tables[fq] = shared[2]
            return shared[2]
        found = self._build(fq)
        with _SHARED_LOCK:
            _SHARED[key] = (self.classifier, self.catalog, found)
            while len(_SHARED) > 1024:
                _SHARED.pop(next(iter(_SHARED)))
        self._tables[fq] = found
        return found

    def _build(self, fq: str) -> _TableMasks:
        info = self.catalog.table(fq)
        if info is None:
            raise MaskingError(f"table {fq} is not in the catalog, so its reads cannot be masked")
        columns: list[tuple[str, str | None, str | None]] = []
        texts: list[str] = []
        reads: list[MaskedRead] = []
        released: list[ReleasedColumn] = []
        for col in info.columns:
            name = _quoted(col.name)
            cls_ = self.classifier.column_classification(f"{fq}.{col.name}")
            grant = self.unmasked.get(cls_) if cls_ else None
            if grant is not None and cls_:
                released.append(ReleasedColumn(f"{fq}.{col.name}", cls_, grant[0], grant[1]))
            if not cls_ or grant is not None:
                columns.append((col.name, None, col.type))
                texts.append(name)
                continue
            kind = self.kind_for(cls_)
            reads.append(MaskedRead(f"{fq}.{col.name}", cls_, kind))
            columns.append((col.name, kind, col.type))
            texts.append(f"{_mask_template(kind, col.type).replace(_COLUMN_SLOT, name)} AS {name}")
        return _TableMasks(columns, reads, released, ", ".join(texts))


def _unwrap(node: Any) -> Any:
    if isinstance(node, exp.Schema):
        return node.this
    return node


def _write_targets(node: exp.Expr) -> list[exp.Table]:
    targets: list[Any] = []
    if isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Copy)):
        targets.append(_unwrap(node.this))
    elif isinstance(node, exp.MultitableInserts):
        targets.extend(_unwrap(i.this) for i in node.find_all(exp.Insert))
    elif isinstance(node, (exp.Alter, exp.Drop, exp.TruncateTable, exp.Comment)):
        targets.extend(node.find_all(exp.Table))
    return [t for t in targets if isinstance(t, exp.Table)]


def _cte_names(tree: exp.Expr) -> set[str]:
    return {cte.alias for cte in tree.find_all(exp.CTE)}


def _derived(table: exp.Table, projection: list[exp.Expr]) -> exp.Subquery:
    """``(SELECT <projection> FROM <table>) AS <alias>``, keeping time travel and SAMPLE inside."""
    alias = table.args.get("alias")
    pivots = table.args.get("pivots")
    inner = table.copy()
    for arg in ("alias", "pivots", "joins", "laterals"):
        inner.set(arg, None)
    select = exp.Select(expressions=[p.copy() for p in projection]).from_(inner, copy=False)
    if alias is None:
        alias = exp.TableAlias(this=exp.to_identifier(table.name, quoted=not _PLAIN.fullmatch(table.name)))
    sub = exp.Subquery(this=select, alias=alias.copy())
    if pivots:
        sub.set("pivots", [p.copy() for p in pivots])
    if table.args.get("joins") or table.args.get("laterals"):
        raise MaskingError("a table with attached joins cannot be masked at the read")
    return sub


def _target_reads(root: exp.Expr, target: exp.Table, classified: set[str]) -> list[str]:
    """Classified columns of a write's own target that the statement reads (not SET targets)."""
    alias = target.alias_or_name
    found: list[str] = []
    for col in root.find_all(exp.Column):
        if col.name.upper() not in classified or (col.table and col.table != alias):
            continue
        parent = col.parent
        if (
            isinstance(parent, exp.EQ)
            and parent.this is col
            and isinstance(parent.parent, (exp.Update, exp.When))
        ):
            continue  # SET col = ... writes the column
        if isinstance(parent, exp.Schema) or isinstance(col.find_ancestor(exp.Schema), exp.Schema):
            continue  # INSERT INTO t (col, ...) names it
        found.append(col.name)
    return found


# table arguments that stay inside the derived table (time travel, sampling, ...): such a read is
# rewritten in the tree; a plain read is spliced in as text, which is much cheaper to generate
_PLAIN_TABLE_ARGS = frozenset({"this", "db", "catalog", "alias", "pivots"})


def _mask_reads(
    tree: exp.Expr, masker: _ReadMasker, splices: dict[str, str]
) -> tuple[list[MaskedRead], list[ReleasedColumn]]:
    """Replace every read of a classified catalog table with its masking derived table.

    Plain reads become a placeholder table whose name ``splices`` maps to the derived table's
    text; the caller substitutes it after generating the statement.
    """
    written = {id(t) for t in _write_targets(tree)}
    ctes = _cte_names(tree)
    reads: dict[str, MaskedRead] = {}
    released: dict[str, ReleasedColumn] = {}
    masked_inner: set[int] = set()
    # innermost first: a read nested in another read's clauses (AT(TIMESTAMP => (SELECT ...)))
    # is replaced before the outer read's clauses are copied into its derived table
    for table in sorted(tree.find_all(exp.Table), key=_depth, reverse=True):
        if table.find_ancestor(exp.Describe) is not None:
            continue
        if isinstance(table.parent, exp.Clone):
            fq_clone = table_fq(table)
            if fq_clone is not None and masker.table(fq_clone).masked:
                raise MaskingError(f"CLONE of {fq_clone} would copy its classified columns raw")
            continue
        fq = table_fq(table)
        if fq is None:
            if not table.args.get("db") and table.name in ctes:
                continue  # a CTE reference: its own reads are masked where they happen
            if isinstance(table.this, exp.Identifier) and table.this.name.startswith("@"):
                continue  # a stage location (denied by the policy's data_export / unresolved rules)
            raise MaskingError(
                f"table {table.sql('snowflake')} could not be resolved, so its reads cannot be masked"
            )
        if masker.catalog.table(fq) is None and id(table) in written:
            continue  # a table the statement creates
        masks = masker.table(fq)
        for rel in masks.released:
            released[rel.column] = rel
        if not masks.masked:
            continue
        for read in masks.reads:
            reads[read.column] = read
        if id(table) in written:
            classified = {read.column.rsplit(".", 1)[1] for read in masks.reads}
            used = _target_reads(tree, table, classified)
            if used:
                raise MaskingError(
                    f"the write reads classified column(s) {', '.join(sorted(set(used)))} of its own "
                    f"target {fq}, which cannot be masked at the read"
                )
            continue
        if all(k in _PLAIN_TABLE_ARGS for k, v in table.args.items() if v):
            slot = f"QT_READ_{len(splices)}_{_NONCE}"
            parts = (table.args["catalog"].name, table.args["db"].name, table.name)
            splices[slot] = f"(SELECT {masks.text} FROM {'.'.join(_quoted(p) for p in parts)})"
            placeholder = exp.Table(this=exp.to_identifier(slot))
            alias = table.args.get("alias") or exp.TableAlias(this=_identifier(table.name))
            placeholder.set("alias", alias)
            if table.args.get("pivots"):
                placeholder.set("pivots", table.args["pivots"])
            table.replace(placeholder)
        else:
            derived = _derived(table, masks.projection())
            masked_inner.add(id(derived.this.args["from_"].this))  # the one table it reads
            table.replace(derived)
    # the property itself, checked on the result: no classified table is read but through its mask
    for table in tree.find_all(exp.Table):
        fq = table_fq(table)
        if fq is None or id(table) in written or id(table) in masked_inner:
            continue
        if table.find_ancestor(exp.Describe) is not None or isinstance(table.parent, exp.Clone):
            continue
        if masker.catalog.table(fq) is not None and masker.table(fq).masked:
            raise MaskingError(f"a read of {fq} could not be masked")
    return list(reads.values()), list(released.values())


def _depth(node: exp.Expr) -> int:
    depth = 0
    parent = node.parent
    while parent is not None:
        depth += 1
        parent = parent.parent
    return depth


def _choose(out: OutputColumn, masker: _ReadMasker) -> tuple[MaskedColumnPlan | None, bool]:
    """(the mask this output shows, whether it must be wrapped at the output)."""
    best: MaskedColumnPlan | None = None
    wrap = False
    passthrough = set(out.passthrough)
    for fq in out.sources:
        cls_ = masker.classifier.column_classification(fq)
        if not cls_ or cls_ in masker.unmasked:
            continue
        kind = masker.kind_for(cls_)
        if kind in _FORMAT_PRESERVING and fq not in passthrough:
            kind, wrap = "redact", True
        plan = MaskedColumnPlan(output=out.name, source=fq, classification=cls_, mask=kind)
        if best is None or STRENGTH.index(kind) < STRENGTH.index(best.mask):
            best = plan
    return best, wrap


def plan_read_masking(
    analysis: Analysis,
    masks_by_classification: Mapping[str, str],
    classifier: Classifier,
    *,
    catalog: Any = None,
    unmasked: Mapping[str, tuple[str, str]] | None = None,
    consume: bool = False,
) -> MaskingPlan:
    """The statement to run with every classified read masked, and what was masked or released.

    ``unmasked`` maps a classification to the (grant id, reason) that releases it raw.
    ``consume=True`` rewrites ``analysis.parsed`` in place instead of a copy (a large statement's
    copy costs as much as its analysis): the caller must not use that tree again.
    Statements that read no rows (USE, SHOW, DESCRIBE, ...) and statements that read no
    classified column come back as their own text. Raises MaskingError when the statement
    cannot be masked with certainty (unknown, multi-statement and CALL text, unexpanded ``*``,
    names known only at run time, tables missing from the catalog).
    """
    kind = analysis.statement
    if kind in _UNMASKABLE:
        raise MaskingError(f"a {kind} statement may return data that cannot be masked")
    if kind in _NO_READS:
        return MaskingPlan(analysis.sql, ())
    if analysis.parsed is None:
        raise MaskingError("no parsed statement to mask")
    if kind == "set":
        if analysis.tables_read:
            raise MaskingError("SET from a query keeps values in the session, where they cannot be masked")
        return MaskingPlan(analysis.sql, ())
    if kind == "select":
        if "select_star_unknown" in analysis.finding_codes or any(
            o.name == "*" for o in analysis.output_columns
        ):
            raise MaskingError("a * could not be expanded, so its columns cannot be masked")
        opaque = [o.name for o in analysis.output_columns if not o.resolved]
        if opaque:
            raise MaskingError(f"output(s) {', '.join(opaque)} depend on names only known at run time")
    masker = _ReadMasker(
        masks_by_classification, classifier, _catalog_of(classifier, catalog), unmasked or {}
    )
    tree = analysis.parsed if consume else analysis.parsed.copy()
    splices: dict[str, str] = {}
    reads, released = _mask_reads(tree, masker, splices)
    plans: list[MaskedColumnPlan | None] = []
    wraps: list[bool] = []
    if kind == "select":
        for out in analysis.output_columns:
            plan, wrap = _choose(out, masker)
            plans.append(plan)
            wraps.append(wrap)
    if not reads:
        # nothing classified is read masked: run the caller's own text
        return MaskingPlan(analysis.sql, (), (), tuple(released))
    if kind == "select":
        tree = _wrap_outputs(tree, analysis.output_columns, plans, wraps)
    # no quote_identifiers pass: the analysed tree is normalised and qualified with its quoting
    # already decided, and every identifier made here is quoted by _identifier when it must be
    # (the generated SQL was identical with and without it over the corpus and fixtures)
    # the tree is our own copy: let the generator skip its defensive deep copy
    sql = _SNOWFLAKE.generate(tree, copy=False)
    for slot, text in splices.items():
        if sql.count(slot) != 1:
            raise MaskingError("a masked read could not be placed in the statement")
        sql = sql.replace(slot, text)
    return MaskingPlan(sql, tuple(p for p in plans if p is not None), tuple(reads), tuple(released))


def plan_masking(
    analysis: Analysis,
    masks_by_classification: Mapping[str, str],
    classifier: Classifier,
    *,
    catalog: Any = None,
    unmasked: Mapping[str, tuple[str, str]] | None = None,
) -> tuple[str, tuple[MaskedColumnPlan, ...]]:
    """(Snowflake SQL to run, one plan entry per masked output column); see plan_read_masking."""
    plan = plan_read_masking(
        analysis, masks_by_classification, classifier, catalog=catalog, unmasked=unmasked
    )
    return plan.sql, plan.columns


# output wrapping (partial masks computed into something else) ---------------------------------


def _branches(node: exp.Expr) -> list[exp.Select]:
    while isinstance(node, exp.Subquery):
        node = node.this
    if isinstance(node, exp.SetOperation):
        return _branches(node.this) + _branches(node.expression)
    if isinstance(node, exp.Select):
        return [node]
    raise MaskingError(f"cannot mask a {type(node).__name__} result")


def _rename_refs(scope_node: exp.Expr, renames: dict[str, str]) -> None:
    """Point ORDER BY references at the renamed output aliases."""
    order = scope_node.args.get("order")
    if order is None:
        return
    for col in order.find_all(exp.Column):
        if not col.table and col.name in renames:
            col.set("this", _identifier(renames[col.name]))


def _wrap_outputs(
    tree: exp.Expr,
    outputs: tuple[OutputColumn, ...],
    plans: list[MaskedColumnPlan | None],
    wraps: list[bool],
) -> exp.Expr:
    """Name every output as Snowflake would have, and wrap the computed partial masks."""
    top = tree
    while isinstance(top, exp.Subquery):
        top = top.this
    if isinstance(top, exp.SetOperation) and any(wraps):
        return _wrap_outside(top, outputs, plans, wraps)
    sel = _branches(tree)[0]
    renames = _wrap_select(sel, outputs, plans, wraps)
    if top is not sel:
        _rename_refs(top, renames)
    return tree


def _wrap_select(
    sel: exp.Select,
    outputs: Iterable[OutputColumn],
    plans: list[MaskedColumnPlan | None],
    wraps: list[bool],
) -> dict[str, str]:
    outs = list(outputs)
    if len(sel.expressions) != len(outs):
        raise MaskingError("the outputs of the statement could not be matched to its projections")
    renames: dict[str, str] = {}
    for pos, (out, plan, wrap) in enumerate(zip(outs, plans, wraps, strict=True)):
        proj = sel.expressions[pos]
        inner = proj.this if isinstance(proj, exp.Alias) else proj
        old = proj.alias_or_name
        if old != out.name:
            renames[old] = out.name
        if plan is not None and wrap:
            kind = "nullify" if plan.mask == "nullify" else "redact"
            inner = _output_mask(kind, inner, out.type)
        proj.replace(exp.alias_(inner, _identifier(out.name), copy=False))
    _rename_refs(sel, renames)
    return renames


def _wrap_outside(
    top: exp.SetOperation,
    outputs: tuple[OutputColumn, ...],
    plans: list[MaskedColumnPlan | None],
    wraps: list[bool],
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
    for out, plan, wrap in zip(outputs, plans, wraps, strict=True):
        ref: exp.Expr = exp.column(_identifier(out.name), table=exp.to_identifier("_QT"))
        if plan is not None and wrap:
            kind = "nullify" if plan.mask == "nullify" else "redact"
            ref = _output_mask(kind, ref, out.type)
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

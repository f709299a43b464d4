"""``analyse``: parse once, qualify against the catalog, trace lineage, run the finding rules."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.optimizer.qualify_columns import qualify_columns
from sqlglot.optimizer.qualify_tables import qualify_tables

from processors.analysis.fingerprint import fingerprint
from processors.analysis.kinds import is_location, statement_kind
from processors.analysis.lineage import OPAQUE, Lineage, Sources
from processors.analysis.model import Analysis, Classifier, Finding, OutputColumn
from processors.catalog import Catalog, CatalogError, normalise_identifier

__all__ = ["Context", "analyse"]

log = logging.getLogger(__name__)
E = TypeVar("E", bound=exp.Expr)

# kinds whose tables are qualified and whose queries are traced
_TRACED = frozenset({"select", "insert", "update", "delete", "merge", "ddl", "unload", "grant", "describe"})
_PREDICATE_ARGS = ("where", "having", "qualify", "group", "order")
_PREDICATE_CONTEXT = (exp.Where, exp.Having, exp.Qualify, exp.Order, exp.Group)


@dataclass
class Context:
    """Everything a finding rule may look at for one statement."""

    sql: str
    node: exp.Expr | None
    kind: str
    catalog: Catalog
    classifier: Classifier
    lineage: Lineage | None = None
    tables_read: set[str] = field(default_factory=set)
    tables_written: set[str] = field(default_factory=set)
    scanned: dict[str, bool] = field(default_factory=dict)  # table read by a query -> filtered?
    outputs: list[OutputColumn] = field(default_factory=list)
    predicates: Sources = field(default_factory=dict)
    star_selects: dict[int, frozenset[str]] = field(default_factory=dict)  # id(select) -> explicit names
    parse_error: str | None = None
    failed: bool = False  # analysis gave up part-way: nothing here may be trusted for masking

    _index: dict[type, list[Any]] | None = None

    def nodes(self, kind: type[E]) -> list[E]:
        """Every node of exactly this type in the (qualified) statement, from one shared walk."""
        if self._index is None:
            self._index = {}
            if self.node is not None:
                for n in self.node.walk():
                    self._index.setdefault(type(n), []).append(n)
        return self._index.get(kind, [])

    def classification(self, fq_column: str) -> str | None:
        """Catalog classification first, then the classifier (policy globs)."""
        col = self.catalog.column(fq_column)
        if col is not None and col.classification:
            return col.classification
        return self.classifier.column_classification(fq_column)


def _ident_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Identifier):
        return node.name if node.quoted else node.name.upper()
    return node.name.upper()


def _output_names(query: exp.Expr) -> list[str | None]:
    """Snowflake's names for the outermost projections, taken before qualify renames them.

    None marks a star (its names come from the expansion).
    """
    while isinstance(query, (exp.SetOperation, exp.Subquery)):
        query = query.this
    if not isinstance(query, exp.Select):
        return []
    names: list[str | None] = []
    for proj in query.expressions:
        if isinstance(proj, exp.Star) or (isinstance(proj, exp.Column) and isinstance(proj.this, exp.Star)):
            names.append(None)
        elif isinstance(proj, exp.Alias):
            names.append(_ident_name(proj.args["alias"]))
        elif isinstance(proj, exp.Column):
            names.append(_ident_name(proj.this))
        else:
            names.append(proj.sql("snowflake").upper())
    return names


def _star_selects(node: exp.Expr) -> dict[int, frozenset[str]]:
    out: dict[int, frozenset[str]] = {}
    for sel in node.find_all(exp.Select):
        if any(isinstance(p, exp.Star) or isinstance(p.this, exp.Star) for p in sel.expressions):
            out[id(sel)] = frozenset(
                p.alias_or_name.upper() for p in sel.expressions if not isinstance(p.this, exp.Star)
            )
    return out


def _session_ident(value: str | None) -> exp.Identifier | None:
    if not value:
        return None
    try:
        name = normalise_identifier(value)
    except CatalogError:
        return None
    return exp.to_identifier(name, quoted=name != name.upper() or not name.replace("_", "").isalnum())


def _qualify(ctx: Context, database: str | None, schema: str | None) -> None:
    node = ctx.node
    assert node is not None
    ctx.star_selects = _star_selects(node)
    normalize_identifiers(node, dialect="snowflake")
    qualify_tables(node, db=_session_ident(schema), catalog=_session_ident(database), dialect="snowflake")
    if node.find(exp.Select) is not None:
        # partial qualification: c.nosuch is reported as unresolved_column by the lineage
        # step instead of sqlglot raising for the whole statement
        qualify_columns(
            node,
            ctx.catalog.sqlglot_schema(),
            expand_alias_refs=True,
            expand_stars=True,
            allow_partial_qualification=True,
        )


def _cte_names(ctx: Context) -> set[str]:
    return {cte.alias for cte in ctx.nodes(exp.CTE)}


def _written_target(node: exp.Expr) -> list[exp.Table]:
    """Tables the statement changes (data or definition or privileges)."""
    targets: list[Any] = []
    if isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Alter, exp.Comment)):
        targets.append(node.this)
    elif isinstance(node, (exp.Drop, exp.TruncateTable)):
        targets.extend(node.expressions if isinstance(node, exp.TruncateTable) else [node.this])
        targets.extend(node.args.get("tables") or [])
    elif isinstance(node, exp.Copy) and not is_location(node.this):
        targets.append(node.this)
    elif isinstance(node, exp.Revoke | exp.Grant):
        targets.append(node.args.get("securable"))
    elif isinstance(node, exp.MultitableInserts):
        targets.extend(i.this for i in node.find_all(exp.Insert))
    out = []
    for t in targets:
        if isinstance(t, exp.Schema):
            t = t.this
        if isinstance(t, exp.Table):
            out.append(t)
    return out


def _restricts(pred: exp.Expr, alias: str | None) -> bool:
    """A condition that narrows ``alias``'s rows by itself (not a join equality, not ``1 = 1``)."""
    cols = [
        c for c in pred.find_all(exp.Column) if c.find_ancestor(exp.Select) is pred.find_ancestor(exp.Select)
    ]
    if not cols:
        return False
    if alias is None:
        return True
    return all(c.table in (alias, "") for c in cols) and any(c.table == alias for c in cols)


def _filtered(table: exp.Table, lineage: Lineage) -> bool:
    """Does the nearest enclosing query/DML restrict ``table`` in its WHERE?

    Only conjuncts count: ``a = 1 OR b.x = 2`` restricts nothing on its own, and a join
    predicate (``a.id = b.id``) does not reduce what is scanned.
    """
    owner = table.find_ancestor(exp.Select, exp.Update, exp.Delete, exp.Merge)
    if isinstance(owner, exp.Merge):
        return True  # the ON condition drives the scan of the target
    where = owner.args.get("where") if owner is not None else None
    if where is None:
        return False
    alias = None if isinstance(owner, (exp.Update, exp.Delete)) else table.alias_or_name
    conjuncts = list(where.this.flatten()) if isinstance(where.this, exp.And) else [where.this]
    return any(_restricts(c, alias) for c in conjuncts)


def _collect_tables(ctx: Context) -> None:
    node, lineage = ctx.node, ctx.lineage
    assert node is not None and lineage is not None
    written_ids = set()
    for t in _written_target(node):
        written_ids.add(id(t))
        if not is_location(t):
            name = lineage.table_name(t) if ctx.kind != "ddl" else (_fq_or_partial(t))
            ctx.tables_written.add(name)
            if isinstance(node, (exp.Update, exp.Delete)):
                ctx.scanned[name] = ctx.scanned.get(name, True) and _filtered(t, lineage)
    if ctx.kind == "describe":
        # DESCRIBE reads metadata only: the table is touched (policy, tags) but not scanned
        if isinstance(node.this, exp.Table) and not is_location(node.this):
            ctx.tables_read.add(lineage.table_name(node.this))
        return
    for udtf in ctx.nodes(exp.TableFromRows):
        if not isinstance(udtf.this, (exp.Explode, exp.Generator)):
            # TABLE(RESULT_SCAN(...)), TABLE(my_udtf(...)): rows the catalog knows nothing about
            name = udtf.this.sql("snowflake")
            lineage.unresolved_tables.add(name)
            ctx.tables_read.add(name)
    scans = not (isinstance(node, exp.Create) and str(node.args.get("kind") or "").upper() == "VIEW")
    ctes = _cte_names(ctx)
    for t in _read_candidates(ctx, node):
        if id(t) in written_ids or (isinstance(node, exp.Copy) and t is node.this):
            continue
        if is_location(t):
            # reading staged files: contents unknown to the catalog, so unresolved (fail closed)
            name = t.this.sql("snowflake")
            lineage.unresolved_tables.add(name)
            ctx.tables_read.add(name)
            continue
        if not t.args.get("db") and t.name in ctes:
            continue  # a CTE reference
        if isinstance(t.parent, exp.Schema) and t.parent is node.this:
            continue
        name = lineage.table_name(t)
        ctx.tables_read.add(name)
        if scans:
            ctx.scanned[name] = ctx.scanned.get(name, True) and _filtered(t, lineage)


def _read_candidates(ctx: Context, node: exp.Expr) -> list[exp.Table]:
    """Table nodes that may be read: for DDL only those inside its query or CLONE source."""
    if ctx.kind == "ddl":
        roots = [node.args.get("expression"), node.args.get("clone")] if isinstance(node, exp.Create) else []
        return [t for r in roots if r is not None for t in r.find_all(exp.Table)]
    return ctx.nodes(exp.Table)


def _fq_or_partial(t: exp.Table) -> str:
    from processors.analysis.lineage import _partial_name, table_fq

    return table_fq(t) or _partial_name(t)


def _outputs(ctx: Context, names: list[str | None]) -> None:
    lineage = ctx.lineage
    node = ctx.node
    assert lineage is not None and node is not None
    query = node
    while isinstance(query, exp.Subquery):
        query = query.this
    scope = lineage.scope_for(query)
    if scope is None or not isinstance(query, (exp.Select, exp.SetOperation)):
        return
    final = query.named_selects
    if names and None not in names and len(names) == len(final):
        final = [n or "" for n in names]
    for i, name in enumerate(final):
        srcs = dict(lineage.position_sources(scope, i))
        opaque = srcs.pop(OPAQUE, None) is not None or name == "*"
        passthrough = tuple(sorted(fq for fq, pure in srcs.items() if pure))
        ctype = None
        if len(srcs) == 1 and passthrough:
            col = ctx.catalog.column(passthrough[0])
            ctype = col.type if col else None
        ctx.outputs.append(
            OutputColumn(
                name=name,
                sources=tuple(sorted(srcs)),
                passthrough=passthrough,
                type=ctype,
                resolved=not opaque,
            )
        )


def _predicates(ctx: Context) -> None:
    lineage = ctx.lineage
    node = ctx.node
    assert lineage is not None and node is not None
    for scope in lineage.scopes:
        expr = scope.expression
        if isinstance(expr, exp.Select):
            aliases = {p.alias: p for p in expr.selects if isinstance(p, exp.Alias)}
            for clause in ("order", "group"):
                # ORDER BY n / GROUP BY n may name a projection alias: resolve through it
                node_ = expr.args.get(clause)
                for col in node_.find_all(exp.Column) if node_ is not None else ():
                    if not col.table and col.name in aliases:
                        _add(ctx.predicates, lineage.expr_sources(scope, aliases[col.name]))
                        col.meta["qt_alias_ref"] = True
            parts: list[exp.Expr | None] = [expr.args.get(a) for a in _PREDICATE_ARGS]
            for join in expr.args.get("joins") or []:
                parts.append(join.args.get("on"))
                parts.extend(join.args.get("using") or [])
            _add(ctx.predicates, lineage.columns_in(scope, parts))
            if _in_predicate(expr):
                # a subquery inside WHERE/JOIN/...: what it selects is compared, not returned
                for i in range(len(expr.selects)):
                    _add(ctx.predicates, lineage.position_sources(scope, i))
        elif isinstance(expr, exp.SetOperation) and expr.args.get("order") is not None:
            # ORDER BY of a set operation names its output columns
            names = expr.named_selects
            for col in expr.args["order"].find_all(exp.Column):
                if col.name in names:
                    _add(ctx.predicates, lineage.position_sources(scope, names.index(col.name)))
                else:
                    lineage.unresolved_columns.add(col.name)
    if isinstance(node, (exp.Update, exp.Delete, exp.Merge)):
        sources: dict[str, Any] = {}
        for t in node.find_all(exp.Table):
            if t.find_ancestor(exp.Select) is None:
                sources[t.alias_or_name] = t
        for sub in node.find_all(exp.Subquery):
            sub_scope = lineage.scope_for(sub.this)
            if sub.alias and sub_scope is not None and sub.find_ancestor(exp.Select) is None:
                sources[sub.alias] = sub_scope  # MERGE ... USING (SELECT ...) s
        parts = [node.args.get("where"), node.args.get("on")]
        for when in node.find_all(exp.When):
            parts.append(when.args.get("condition"))
        _add(ctx.predicates, lineage.columns_in(None, parts, sources=sources))


def _in_predicate(node: exp.Expr) -> bool:
    """Is this subquery compared rather than returned (inside WHERE, JOIN ON, HAVING, ...)?"""
    child, parent = node, node.parent
    while parent is not None and not isinstance(parent, exp.Select):
        if isinstance(parent, _PREDICATE_CONTEXT):
            return True
        if isinstance(parent, exp.Join) and child.arg_key == "on":
            return True
        child, parent = parent, parent.parent
    return False


def _add(into: Sources, more: Sources) -> None:
    for k in more:
        if k != OPAQUE:
            into[k] = False


def _analyse_one(ctx: Context, database: str | None, schema: str | None) -> None:
    if ctx.node is None:
        return
    if ctx.kind == "set":
        # SET v = (SELECT ...) reads tables too: trace its query like a SELECT
        sub = ctx.node.find(exp.Subquery)
        if sub is None:
            return
        ctx.node = sub.this
    elif ctx.kind not in _TRACED:
        return
    names = _output_names(ctx.node) if ctx.kind == "select" else []
    try:
        _qualify(ctx, database, schema)
        ctx.lineage = Lineage(ctx.node, ctx.catalog)
        _collect_tables(ctx)
        if ctx.kind == "select":
            _outputs(ctx, names)
        _predicates(ctx)
    except (SqlglotError, TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        # sqlglot refuses (or trips over) some valid-looking SQL: fail closed, never "no findings"
        ctx.parse_error = f"cannot analyse: {type(exc).__name__}: {str(exc)[:200]}"
        ctx.outputs.clear()
        ctx.failed = True
        log.info("analysis failed: %s", ctx.parse_error)


def _parse(sql: str) -> tuple[list[exp.Expr], str | None]:
    try:
        parsed = [e for e in sqlglot.parse(sql, dialect="snowflake") if e is not None]
    except SqlglotError as exc:
        return [], str(exc).splitlines()[0][:300]
    if not parsed:
        return [], "no statement"
    return parsed, None


def analyse(
    sql: str,
    catalog: Catalog,
    classifier: Classifier,
    *,
    database: str | None = None,
    schema: str | None = None,
) -> Analysis:
    """Analyse one SQL text against the catalog; see ENGINE.md for the result contract.

    >>> from processors.catalog import Catalog
    >>> cat = Catalog.from_mapping({"tables": {"A.B.T": {"columns": {"X": "NUMBER"}}}})
    >>> class NoTags:
    ...     def column_classification(self, c): return None
    ...     def table_tags(self, t): return frozenset()
    >>> analyse("select x from t", cat, NoTags(), database="a", schema="b").tables_read
    ('A.B.T',)
    """
    from processors.analysis.findings import run_rules

    fp = fingerprint(sql)
    parsed, error = _parse(sql)
    contexts: list[Context] = []
    if error is not None:
        ctx = Context(sql, None, "unknown", catalog, classifier, parse_error=error)
        contexts.append(ctx)
    for node in parsed:
        ctx = Context(sql, node, statement_kind(node), catalog, classifier)
        _analyse_one(ctx, database, schema)
        contexts.append(ctx)
    findings: list[Finding] = []
    for ctx in contexts:
        for f in run_rules(ctx):
            if f not in findings:
                findings.append(f)
    multi = len(contexts) > 1
    if multi:
        findings.insert(0, Finding("multi_statement", f"{len(contexts)} statements in one request"))
    read = set().union(*(c.tables_read for c in contexts))
    written = set().union(*(c.tables_written for c in contexts))
    scanned = set().union(*(c.scanned for c in contexts))
    # whole-table bytes of every table scanned (no selectivity guess); unknown (None) as soon
    # as one scanned table is unresolved or has no statistics, so a size rule never passes on it
    est: int | None = None
    if error is None:
        infos = [catalog.table(name) for name in sorted(scanned)]
        if all(t is not None and t.bytes is not None for t in infos):
            est = sum(t.bytes or 0 for t in infos if t is not None)
    one = contexts[0]
    predicates = set().union(*(c.predicates for c in contexts))
    return Analysis(
        statement="multi" if multi else one.kind,
        tables_read=tuple(sorted(read)),
        tables_written=tuple(sorted(written)),
        output_columns=() if multi else tuple(one.outputs),
        predicate_columns=tuple(sorted(predicates)),
        findings=tuple(findings),
        estimated_bytes=est,
        fingerprint=fp,
        parsed=None if multi or error or one.failed else one.node,
        sql=sql,
        database=database,
        schema=schema,
    )

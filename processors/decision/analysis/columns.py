"""Output columns (with Snowflake's names) and predicate columns of a qualified statement."""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from processors.decision.analysis.context import Context
from processors.decision.analysis.lineage import OPAQUE, Sources
from processors.decision.analysis.model import OutputColumn

__all__ = ["collect_outputs", "collect_predicates", "output_names", "star_selects"]

# clauses whose columns filter, group, order or join rows (CONNECT BY holds START WITH too)
_PREDICATE_ARGS = ("where", "having", "qualify", "group", "order", "connect")
_PREDICATE_CONTEXT = (exp.Where, exp.Having, exp.Qualify, exp.Order, exp.Group, exp.Connect)
# MATCH_RECOGNIZE: rows are partitioned, ordered and matched (DEFINE) on these; MEASURES are outputs
_MATCH_ARGS = ("partition_by", "order", "define")


def _ident_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Identifier):
        return node.name if node.quoted else node.name.upper()
    return node.name.upper()


def output_names(query: exp.Expr) -> list[str | None]:
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


def star_selects(selects: list[exp.Select]) -> dict[int, frozenset[str]]:
    """id(select) -> its explicit projection names, for each SELECT with a ``*`` (before expansion)."""
    out: dict[int, frozenset[str]] = {}
    for sel in selects:
        if any(isinstance(p, exp.Star) or isinstance(p.this, exp.Star) for p in sel.expressions):
            out[id(sel)] = frozenset(
                p.alias_or_name.upper() for p in sel.expressions if not isinstance(p.this, exp.Star)
            )
    return out


def collect_outputs(ctx: Context, names: list[str | None]) -> None:
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


def collect_predicates(ctx: Context) -> None:
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
                parts.append(join.args.get("match_condition"))  # ASOF JOIN ... MATCH_CONDITION
            match = expr.args.get("match")
            if match is not None:
                for arg in _MATCH_ARGS:
                    value = match.args.get(arg)
                    parts.extend(value if isinstance(value, list) else [value])
            for window in expr.find_all(exp.Window):
                # PARTITION BY / ORDER BY of a window group and order rows by the column's value
                if window.find_ancestor(exp.Select) is expr:
                    parts.extend(window.args.get("partition_by") or [])
                    parts.append(window.args.get("order"))
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

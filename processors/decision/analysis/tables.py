"""Which tables a statement reads, writes and scans, and whether each scan is filtered."""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from processors.decision.analysis.context import Context
from processors.decision.analysis.kinds import is_location
from processors.decision.analysis.lineage import Lineage, partial_name, table_fq

__all__ = ["collect_tables"]


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
    owner = pred.find_ancestor(exp.Select)
    cols = [c for c in pred.find_all(exp.Column) if c.find_ancestor(exp.Select) is owner]
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


def collect_tables(ctx: Context) -> None:
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
    return table_fq(t) or partial_name(t)

"""cartesian_join: a join whose rows are not matched by any condition.

Examples: ``select * from a, b``, ``a cross join b``, ``a join b on true`` -> ``cartesian_join``;
``from a, b where a.id = b.id`` and ``lateral flatten(...)`` are fine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlglot import exp

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["cartesian_join"]


def _links(cond: exp.Expr | None, alias: str) -> bool:
    """Does a comparison in ``cond`` relate ``alias`` to another source?"""
    if cond is None:
        return False
    for pred in cond.find_all(exp.Binary):
        if isinstance(pred, (exp.And, exp.Or)):
            continue
        aliases = {c.table for c in pred.find_all(exp.Column)}
        if alias in aliases and len(aliases) >= 2:
            return True
    return False


def cartesian_join(ctx: Context) -> Iterator[Finding]:
    if ctx.node is None or ctx.lineage is None:
        return
    for sel in ctx.nodes(exp.Select):
        where = sel.args.get("where")
        for join in sel.args.get("joins") or []:
            target = join.this
            if isinstance(target, (exp.Lateral, exp.UDTF)) or (
                isinstance(target, exp.Table) and not isinstance(target.this, exp.Identifier)
            ):
                continue  # FLATTEN / table functions are row-wise, not a product
            alias = target.alias_or_name
            if join.args.get("using") or _links(join.args.get("on"), alias):
                continue
            if _links(where.this if where else None, alias):
                continue
            yield Finding("cartesian_join", f"join with {target.sql('snowflake')} has no join condition")

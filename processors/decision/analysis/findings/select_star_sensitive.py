"""select_star_sensitive: a ``*`` that expands to a classified column.

Example: ``select * from customers`` (EMAIL classified pii.email) -> ``select_star_sensitive``;
so is ``select object_construct(*) from customers``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlglot import exp

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["select_star_sensitive"]


def _star_inside(proj: exp.Expr) -> bool:
    """``OBJECT_CONSTRUCT(*)``, ``HASH(t.*)``: a star read by a function (COUNT(*) reads no value)."""
    for star in proj.find_all(exp.Star):
        if not isinstance(star.find_ancestor(exp.Count, exp.Select), exp.Count):
            return True
    return False


def select_star_sensitive(ctx: Context) -> Iterator[Finding]:
    lineage, node = ctx.lineage, ctx.node
    if lineage is None or node is None:
        return
    hits: set[str] = set()
    for sel in ctx.nodes(exp.Select):
        explicit = ctx.star_selects.get(id(sel))
        scope = lineage.scope_for(sel)
        if scope is None:
            continue
        for proj in sel.selects:
            from_star = explicit is not None and proj.alias_or_name.upper() not in explicit
            if not from_star and not _star_inside(proj):
                continue
            for fq in lineage.expr_sources(scope, proj):
                cls_ = ctx.classification(fq)
                if cls_:
                    hits.add(f"{fq} ({cls_})")
    if hits:
        yield Finding("select_star_sensitive", "* expands to classified " + ", ".join(sorted(hits)))

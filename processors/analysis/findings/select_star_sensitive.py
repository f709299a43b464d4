"""select_star_sensitive: a ``*`` that expands to a classified column.

Example: ``select * from customers`` (EMAIL classified pii.email) -> ``select_star_sensitive``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlglot import exp

from processors.analysis.model import Finding

if TYPE_CHECKING:
    from processors.analysis.analyser import Context

__all__ = ["select_star_sensitive"]


def select_star_sensitive(ctx: Context) -> Iterator[Finding]:
    lineage, node = ctx.lineage, ctx.node
    if lineage is None or node is None or not ctx.star_selects:
        return
    hits: set[str] = set()
    for sel in ctx.nodes(exp.Select):
        explicit = ctx.star_selects.get(id(sel))
        scope = lineage.scope_for(sel)
        if explicit is None or scope is None:
            continue
        for proj in sel.selects:
            if proj.alias_or_name.upper() in explicit:
                continue
            for fq in lineage.expr_sources(scope, proj):
                cls_ = ctx.classification(fq)
                if cls_:
                    hits.add(f"{fq} ({cls_})")
    if hits:
        yield Finding("select_star_sensitive", "* expands to classified " + ", ".join(sorted(hits)))

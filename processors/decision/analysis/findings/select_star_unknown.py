"""select_star_unknown: a ``*`` that could not be expanded (its table is not in the catalog).

Example: ``select * from nosuch`` -> ``select_star_unknown``: nobody can say what it returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlglot import exp

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["select_star_unknown"]


def select_star_unknown(ctx: Context) -> Iterator[Finding]:
    if ctx.node is None or ctx.lineage is None:
        return
    for sel in ctx.nodes(exp.Select):
        for proj in sel.expressions:
            if isinstance(proj, exp.Star) or isinstance(proj.this, exp.Star):
                yield Finding("select_star_unknown", f"cannot expand {proj.sql('snowflake')}")
                return

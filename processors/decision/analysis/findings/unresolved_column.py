"""unresolved_column: a column the catalog does not know, or an ambiguous unqualified one.

Example: ``select nosuch from customers`` -> ``unresolved_column``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["unresolved_column"]


def unresolved_column(ctx: Context) -> Iterator[Finding]:
    if ctx.lineage is None or not ctx.lineage.unresolved_columns:
        return
    cols = sorted(ctx.lineage.unresolved_columns)
    yield Finding("unresolved_column", "cannot resolve column(s): " + ", ".join(cols))

"""unresolved_table: a table not in the catalog, not fully qualified, or named dynamically.

Example: ``select * from nosuch`` -> ``unresolved_table`` (ANALYTICS.PUBLIC.NOSUCH).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["unresolved_table"]


def unresolved_table(ctx: Context) -> Iterator[Finding]:
    if ctx.lineage is None:
        return
    names = sorted(ctx.lineage.unresolved_tables)
    if ctx.kind == "ddl":  # a CREATE names a table that does not exist yet
        names = [n for n in names if n in ctx.tables_read]
    for name in names:
        yield Finding("unresolved_table", f"table {name} is not in the catalog")

"""full_table_scan: a large table read with no WHERE condition on it (LIMIT does not help).

Large means catalog ``row_count >= 1,000,000`` or ``bytes >= 1 GB`` (10**9).
Example: ``select count(*) from customers`` (1.2M rows) -> ``full_table_scan``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["LARGE_BYTES", "LARGE_ROWS", "full_table_scan"]

LARGE_ROWS = 1_000_000
LARGE_BYTES = 1_000_000_000


def full_table_scan(ctx: Context) -> Iterator[Finding]:
    for name, filtered in sorted(ctx.scanned.items()):
        info = ctx.catalog.table(name)
        if filtered or info is None:
            continue
        if (info.row_count or 0) >= LARGE_ROWS or (info.bytes or 0) >= LARGE_BYTES:
            yield Finding(
                "full_table_scan", f"{name} ({info.row_count} rows, {info.bytes} bytes) read without a filter"
            )

"""unbounded_write: a write that touches every row.

Examples: ``delete from t``, ``update t set a = 1``, ``update t set a = 1 where 1 = 1``,
``truncate table t``, ``insert overwrite into t ...`` -> ``unbounded_write``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlglot import exp

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["unbounded_write"]


def unbounded_write(ctx: Context) -> Iterator[Finding]:
    node = ctx.node
    targets = ", ".join(sorted(ctx.tables_written)) or "?"
    if isinstance(node, (exp.Update, exp.Delete)):
        where = node.args.get("where")
        if where is None:
            yield Finding("unbounded_write", f"{type(node).__name__.upper()} without WHERE on {targets}")
        elif where.find(exp.Column) is None:
            yield Finding("unbounded_write", f"{type(node).__name__.upper()} WHERE has no column condition")
    elif isinstance(node, exp.TruncateTable):
        yield Finding("unbounded_write", f"TRUNCATE {targets}")
    elif isinstance(node, exp.Insert) and node.args.get("overwrite"):
        yield Finding("unbounded_write", f"INSERT OVERWRITE replaces every row of {targets}")

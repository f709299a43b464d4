"""dynamic_sql: SQL whose real text or target is only known at run time.

Examples: ``execute immediate '...'``, ``call proc()``, ``execute task t``,
``select * from identifier($t)`` -> ``dynamic_sql``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlglot import exp

from processors.decision.analysis.kinds import command_words
from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["dynamic_sql"]


def dynamic_sql(ctx: Context) -> Iterator[Finding]:
    node = ctx.node
    if node is None:
        return
    words = command_words(node)
    if words[:1] == ["EXECUTE"]:
        yield Finding("dynamic_sql", " ".join(words[:2]))
    elif words[:1] == ["CALL"]:
        yield Finding("dynamic_sql", "CALL runs a stored procedure")
    elif isinstance(node, exp.Command) and "EXECUTE" in str(node.expression).upper():
        yield Finding("dynamic_sql", "statement embeds EXECUTE")
    for fn in ctx.nodes(exp.DynamicIdentifier):
        yield Finding("dynamic_sql", f"IDENTIFIER() names an object at run time: {fn.sql('snowflake')}")
        return

"""unknown_statement: parsed, but not a statement kind the analyser recognises.

Example: ``unset v`` (parsed, but no kind of ours) -> ``unknown_statement``. Text sqlglot could
not parse at all (its ``exp.Command`` fallback) is ``unparsed_statement`` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlglot import exp

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["unknown_statement"]


def unknown_statement(ctx: Context) -> Iterator[Finding]:
    if ctx.kind == "unknown" and ctx.node is not None and not isinstance(ctx.node, exp.Command):
        head = ctx.node.sql("snowflake")[:60]
        yield Finding("unknown_statement", f"unrecognised statement: {head}")

"""unknown_statement: parsed, but not a statement kind the analyser recognises.

Example: ``execute immediate 'drop table t'`` (sqlglot's Command fallback) -> ``unknown_statement``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from processors.analysis.model import Finding

if TYPE_CHECKING:
    from processors.analysis.context import Context

__all__ = ["unknown_statement"]


def unknown_statement(ctx: Context) -> Iterator[Finding]:
    if ctx.kind == "unknown" and ctx.node is not None:
        head = ctx.node.sql("snowflake")[:60]
        yield Finding("unknown_statement", f"unrecognised statement: {head}")

"""unparsed_statement: text sqlglot could not parse, handed back as a raw command (fail closed).

Examples: ``show roles ->> select email from customers`` (a pipe hidden in raw SHOW text),
``explain select 1``, ``grant role r to user u``, ``call p((select email from t))`` ->
``unparsed_statement``. What such text does cannot be seen, so it is never judged by its
first word; only the shapes ``kinds.command_kind`` checks token by token are exempt.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlglot import exp

from processors.decision.analysis.kinds import command_text
from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["unparsed_statement"]


def unparsed_statement(ctx: Context) -> Iterator[Finding]:
    node = ctx.node
    if node is None:
        return
    if isinstance(node, exp.Command):
        if ctx.kind == "unknown":
            head = " ".join(command_text(node).split())[:80]
            yield Finding(
                "unparsed_statement",
                f"sqlglot could not parse this statement, so it cannot be analysed: {head}",
            )
        return
    inner = ctx.nodes(exp.Command)
    if inner:
        head = " ".join(command_text(inner[0]).split())[:80]
        yield Finding("unparsed_statement", f"part of the statement could not be parsed: {head}")

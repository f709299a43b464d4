"""role_change: ``USE ROLE`` / ``USE SECONDARY ROLES`` switch the privileges the statement runs with.

Example: ``use role accountadmin`` -> ``role_change``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlglot import exp

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["role_change"]


def role_change(ctx: Context) -> Iterator[Finding]:
    node = ctx.node
    if isinstance(node, exp.Use):
        kind = str(node.args.get("kind") or "").upper()
        if "ROLE" in kind:
            yield Finding(
                "role_change", f"USE {kind} {node.this.sql('snowflake') if node.this else ''}".strip()
            )
    elif isinstance(node, exp.Command) and str(node.this).upper() == "USE":
        yield Finding("role_change", "unparsed USE statement")

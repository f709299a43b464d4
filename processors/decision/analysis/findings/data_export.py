"""data_export: data leaving the warehouse, or a channel that lets it leave.

Examples: ``copy into @stage from t``, ``get @stage file:///tmp``, ``put``, ``create stage``,
``create external function``, ``create ... integration`` -> ``data_export``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlglot import exp

from processors.decision.analysis.kinds import command_words, is_location
from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["data_export"]

_CHANNEL = re.compile(r"\b(STAGE|INTEGRATION|EXTERNAL\s+FUNCTION|EXTERNAL\s+ACCESS|SHARE)\b")


def data_export(ctx: Context) -> Iterator[Finding]:
    node = ctx.node
    if node is None:
        return
    if isinstance(node, exp.Copy) and is_location(node.this):
        yield Finding("data_export", f"COPY INTO location {node.this.sql('snowflake')}")
    elif isinstance(node, exp.Put):
        yield Finding("data_export", "PUT uploads files to a stage")
    elif isinstance(node, exp.Get) or command_words(node)[:1] == ["GET"]:
        yield Finding("data_export", "GET downloads stage files")
    elif isinstance(node, (exp.Create, exp.Alter)):
        kind = str(node.args.get("kind") or "").upper()
        text = node.sql("snowflake").upper()[:400] if kind in ("FUNCTION", "STAGE") else ""
        if kind == "STAGE" or "INTEGRATION" in kind or "SHARE" in kind:
            yield Finding("data_export", f"{type(node).__name__.upper()} {kind}")
        elif kind == "FUNCTION" and ("API_INTEGRATION" in text or "EXTERNAL" in text):
            yield Finding("data_export", "external function")
    elif isinstance(node, exp.Command) and str(node.this).upper() in ("CREATE", "ALTER"):
        text = f"{node.this} {node.expression}".upper()
        m = _CHANNEL.search(text)
        if m:
            yield Finding("data_export", f"{node.this.upper()} {m.group(1)}")

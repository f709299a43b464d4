"""user_function: a call to a function named by schema or database, or by a quoted name (fail closed).

Built-in Snowflake functions are never qualified or quoted. A qualified call is a user-defined
function (or a system one such as ``SNOWFLAKE.CORTEX.*``), whose body can read any table with
its owner's rights and return raw values that no rewrite of the calling statement can mask.
Examples: ``select analytics.public.lookup_ssn(id) from orders``, ``select "my udf"(1)`` ->
``user_function``. An unqualified call of a UDF resolved through the session's schema cannot be
told from a built-in here (docs/policy.md, known limits).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlglot import exp

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["user_function"]


def _name(call: exp.Anonymous) -> str:
    name = call.this
    text = name.name if isinstance(name, exp.Identifier) else str(name)
    parent = call.parent
    parts = [text]
    while isinstance(parent, exp.Dot) and parent.expression is call:
        head = parent.this
        parts.insert(0, head.sql("snowflake") if isinstance(head, exp.Expr) else str(head))
        break
    return ".".join(parts)[:120]


def user_function(ctx: Context) -> Iterator[Finding]:
    names: list[str] = []
    for call in ctx.nodes(exp.Anonymous):
        qualified = isinstance(call.parent, exp.Dot) and call.parent.expression is call
        quoted = isinstance(call.this, exp.Identifier) and call.this.quoted
        if qualified or quoted:
            name = _name(call)
            if name not in names:
                names.append(name)
    if names:
        yield Finding(
            "user_function",
            "user-defined function(s) can read tables that masking cannot reach: " + ", ".join(names),
        )

"""parse_error: the text is not SQL sqlglot can parse, or cannot be resolved.

Example: ``select from where`` -> ``parse_error``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["parse_error"]


def parse_error(ctx: Context) -> Iterator[Finding]:
    if ctx.parse_error:
        yield Finding("parse_error", ctx.parse_error)

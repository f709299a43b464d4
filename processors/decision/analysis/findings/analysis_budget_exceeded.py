"""analysis_budget_exceeded: analysing the statement would cost more than its budget (fail closed).

Example: 300,000 characters of SQL, a statement of more than 120,000 syntax nodes, or one whose
analysis runs past 2 s -> ``analysis_budget_exceeded`` (limits in ``analysis/budget.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["analysis_budget_exceeded"]


def analysis_budget_exceeded(ctx: Context) -> Iterator[Finding]:
    if ctx.budget_error:
        yield Finding("analysis_budget_exceeded", ctx.budget_error)

"""Finding rules: one small module per rule, run in this order (sqlglot ``optimizer/`` style).

Each rule is ``rule(ctx: Context) -> Iterable[Finding]`` over the qualified statement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from processors.decision.analysis.findings.analysis_budget_exceeded import analysis_budget_exceeded
from processors.decision.analysis.findings.cartesian_join import cartesian_join
from processors.decision.analysis.findings.data_export import data_export
from processors.decision.analysis.findings.dynamic_sql import dynamic_sql
from processors.decision.analysis.findings.full_table_scan import full_table_scan
from processors.decision.analysis.findings.parse_error import parse_error
from processors.decision.analysis.findings.privileged_table import privileged_table
from processors.decision.analysis.findings.role_change import role_change
from processors.decision.analysis.findings.select_star_sensitive import select_star_sensitive
from processors.decision.analysis.findings.select_star_unknown import select_star_unknown
from processors.decision.analysis.findings.sensitive_predicate import sensitive_predicate
from processors.decision.analysis.findings.unbounded_write import unbounded_write
from processors.decision.analysis.findings.unknown_statement import unknown_statement
from processors.decision.analysis.findings.unparsed_statement import unparsed_statement
from processors.decision.analysis.findings.unresolved_column import unresolved_column
from processors.decision.analysis.findings.unresolved_table import unresolved_table
from processors.decision.analysis.findings.user_function import user_function
from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["RULES", "run_rules"]

Rule = Callable[["Context"], Iterable[Finding]]

RULES: tuple[Rule, ...] = (
    parse_error,
    analysis_budget_exceeded,
    unparsed_statement,
    unknown_statement,
    unresolved_table,
    unresolved_column,
    select_star_unknown,
    role_change,
    dynamic_sql,
    user_function,
    data_export,
    unbounded_write,
    privileged_table,
    select_star_sensitive,
    sensitive_predicate,
    cartesian_join,
    full_table_scan,
)


def run_rules(ctx: Context) -> Iterator[Finding]:
    """All findings of every rule, in rule order."""
    for rule in RULES:
        yield from rule(ctx)

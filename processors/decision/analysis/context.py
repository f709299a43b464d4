"""The per-statement analysis state shared by the analyser steps and the finding rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlglot import exp

from processors.decision.analysis.lineage import Lineage, Sources
from processors.decision.analysis.model import Classifier, OutputColumn
from processors.decision.warehouse_catalog import Catalog

__all__ = ["Context"]

E = TypeVar("E", bound=exp.Expr)


@dataclass
class Context:
    """Everything a finding rule may look at for one statement."""

    sql: str
    node: exp.Expr | None
    kind: str
    catalog: Catalog
    classifier: Classifier
    lineage: Lineage | None = None
    tables_read: set[str] = field(default_factory=set)
    tables_written: set[str] = field(default_factory=set)
    scanned: dict[str, bool] = field(default_factory=dict)  # table read by a query -> filtered?
    outputs: list[OutputColumn] = field(default_factory=list)
    predicates: Sources = field(default_factory=dict)
    star_selects: dict[int, frozenset[str]] = field(default_factory=dict)  # id(select) -> explicit names
    parse_error: str | None = None
    budget_error: str | None = None  # analysis_budget_exceeded: the limit it ran into
    failed: bool = False  # analysis gave up part-way: nothing here may be trusted for masking

    _index: dict[type, list[Any]] | None = None

    def nodes(self, kind: type[E]) -> list[E]:
        """Every node of exactly this type in the (qualified) statement, from one shared walk."""
        if self._index is None:
            self._index = {}
            if self.node is not None:
                for n in self.node.walk():
                    self._index.setdefault(type(n), []).append(n)
        return self._index.get(kind, [])

    def classification(self, fq_column: str) -> str | None:
        """Catalog classification first, then the classifier (policy globs)."""
        col = self.catalog.column(fq_column)
        if col is not None and col.classification:
            return col.classification
        return self.classifier.column_classification(fq_column)

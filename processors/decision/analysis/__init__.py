"""SQL analysis: statement kind, tables, column lineage, predicates, findings.

``analyse(sql, catalog, classifier, database=..., schema=...) -> Analysis`` (docs/architecture.md, "The analysis contract").
"""

from processors.decision.analysis.analyser import Context, analyse
from processors.decision.analysis.fingerprint import fingerprint, normalise_sql
from processors.decision.analysis.model import Analysis, Classifier, Finding, OutputColumn

__all__ = [
    "Analysis",
    "Classifier",
    "Context",
    "Finding",
    "OutputColumn",
    "analyse",
    "fingerprint",
    "normalise_sql",
]

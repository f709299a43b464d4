"""SQL analysis: statement kind, tables, column lineage, predicates, findings.

``analyse(sql, catalog, classifier, database=..., schema=...) -> Analysis`` (see ENGINE.md).
"""

from processors.analysis.analyser import Context, analyse
from processors.analysis.fingerprint import fingerprint, normalise_sql
from processors.analysis.model import Analysis, Classifier, Finding, OutputColumn

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

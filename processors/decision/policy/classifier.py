"""The Classifier the analyser and the masking step use, built from a policy and a catalog.

A classification set on a catalog column wins over the policy's ``columns`` globs (it is the
more specific statement about that one column); among the globs the first match in file order
wins. Table tags are the union of every matching ``tables`` entry.
"""

from __future__ import annotations

from processors.decision.policy.model import Policy
from processors.decision.warehouse_catalog import Catalog

__all__ = ["FALLBACK_MASK", "PolicyClassifier", "masks_for"]

# A classification named by the catalog but not defined by the policy still gets masked.
FALLBACK_MASK = "redact"


class PolicyClassifier:
    """Memoised column classifications and table tags for one (policy, catalog) pair."""

    __slots__ = ("_catalog", "_columns", "_policy", "_tags")

    def __init__(self, policy: Policy, catalog: Catalog) -> None:
        self._policy = policy
        self._catalog = catalog
        self._columns: dict[str, str | None] = {}
        self._tags: dict[str, frozenset[str]] = {}

    def column_classification(self, fq_column: str) -> str | None:
        try:
            return self._columns[fq_column]
        except KeyError:
            pass
        found: str | None = None
        col = self._catalog.column(fq_column)
        if col is not None and col.classification:
            found = col.classification
        else:
            for glob, name in self._policy.columns:
                if glob.matches(fq_column):
                    found = name
                    break
        self._columns[fq_column] = found
        return found

    def table_tags(self, fq_table: str) -> frozenset[str]:
        try:
            return self._tags[fq_table]
        except KeyError:
            pass
        tags: set[str] = set()
        for glob, entry_tags in self._policy.tables:
            if glob.matches(fq_table):
                tags |= entry_tags
        found = frozenset(tags)
        self._tags[fq_table] = found
        return found


def masks_for(policy: Policy, catalog: Catalog) -> dict[str, str]:
    """Mask kind per classification: the policy's, plus FALLBACK_MASK for catalog-only names."""
    masks = dict(policy.classifications)
    for table in catalog.tables.values():
        for col in table.columns:
            if col.classification and col.classification not in masks:
                masks[col.classification] = FALLBACK_MASK
    return masks

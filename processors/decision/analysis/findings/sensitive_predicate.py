"""sensitive_predicate: a classified column is used to filter, join, group or order.

Any such use counts, even when the column is also selected (and masked): a predicate runs on
the raw value, so repeated queries can recover it one bit at a time.
Example: ``select id from customers where ssn like '1%'`` -> ``sensitive_predicate``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["sensitive_predicate"]


def sensitive_predicate(ctx: Context) -> Iterator[Finding]:
    hits = []
    for fq in sorted(ctx.predicates):
        cls_ = ctx.classification(fq)
        if cls_:
            hits.append(f"{fq} ({cls_})")
    if hits:
        yield Finding("sensitive_predicate", "classified column(s) in predicates: " + ", ".join(hits))

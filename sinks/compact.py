"""``querytrail compact``: rewrite each day's small data files into one, without changing a row.

Every row (bytes, chain hash, all columns) is read and written back unchanged, ordered by topic,
partition and offset; the new snapshots carry the same signed heads and offsets as the snapshot
they replace, so ``verify`` passes afterwards. The rewrite is one optimistic transaction: if the
sink appends meanwhile, the commit fails and compaction simply runs again on the new state.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pyiceberg.exceptions import CommitFailedException

from sinks.table import state_of

__all__ = ["compact"]

log = logging.getLogger(__name__)


def _day_of(partition: Any) -> date:
    value = partition[0]
    return value if isinstance(value, date) else date(1970, 1, 1) + timedelta(days=int(value))


def compact(table: Any, min_files: int = 2, attempts: int = 5) -> dict[str, Any]:
    """Rewrite every day partition holding at least ``min_files`` data files; returns a summary."""
    for attempt in range(attempts):
        table.refresh()
        snapshot = table.current_snapshot()
        state = state_of(snapshot)
        if snapshot is None:
            return {"days": 0, "files_before": 0, "files_after": 0}
        if state is None:
            raise RuntimeError("the current snapshot holds no signed sink state: run verify first")
        tasks = list(table.scan().plan_files())
        per_day = Counter(_day_of(t.file.partition) for t in tasks)
        days = sorted(d for d, n in per_day.items() if n >= min_files)
        if not days:
            return {"days": 0, "files_before": len(tasks), "files_after": len(tasks)}
        props = state.to_summary()
        try:
            with table.transaction() as tx:
                for day in days:
                    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
                    hi = lo + timedelta(days=1)
                    window = f"occurred_at >= '{lo.isoformat()}' and occurred_at < '{hi.isoformat()}'"
                    rows = (
                        table.scan(row_filter=window)
                        .to_arrow()
                        .sort_by(
                            [("topic", "ascending"), ("partition", "ascending"), ("offset", "ascending")]
                        )
                    )
                    tx.overwrite(rows, overwrite_filter=window, snapshot_properties=props)
        except CommitFailedException:
            log.info("the sink committed meanwhile; compaction retries (attempt %d)", attempt + 1)
            continue
        table.refresh()
        after = len(list(table.scan().plan_files()))
        return {"days": len(days), "files_before": len(tasks), "files_after": after}
    raise RuntimeError(f"compaction lost the race with the sink {attempts} times; try again")

"""What a statement really cost: Snowflake's own record of it, read back by query id.

After each statement the executor asks the same session for its row of
``INFORMATION_SCHEMA.QUERY_HISTORY_BY_SESSION()`` (docs.snowflake.com, "QUERY_HISTORY,
QUERY_HISTORY_BY_*"): the Information Schema functions have no ingestion latency, unlike the
``SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY`` view (up to 45 minutes), and need no privilege beyond
the session's own. Columns are read by name, so a column an edition or the emulator lacks is
simply unknown. A failed read never fails the statement: the cost is then unknown (None).

``cost_alert`` compares the actual bytes with the policy's estimate: a statement that scanned
more than ``factor`` times what the policy expected is logged and counted
(``querytrail_cost_alerts_total``), and marked on its QueryCompleted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from processors.decision.warehouse_catalog import quote_identifier

__all__ = ["QueryCost", "cost_alert", "history_sql", "read_cost"]

log = logging.getLogger(__name__)

_RESULT_LIMIT = 100  # the statement just ran in this session: it is among the last few


@dataclass(frozen=True)
class QueryCost:
    """One statement's row of QUERY_HISTORY, the fields QueryCompleted carries."""

    query_id: str
    bytes_scanned: int | None = None
    partitions_scanned: int | None = None
    partitions_total: int | None = None
    rows_produced: int | None = None
    total_elapsed_ms: int | None = None
    execution_ms: int | None = None
    queued_ms: int | None = None
    warehouse_name: str | None = None
    warehouse_size: str | None = None
    role_name: str | None = None
    query_tag: str | None = None


def history_sql(database: str | None) -> str:
    """The read of one query id (a ``%s`` placeholder) from the session's history.

    INFORMATION_SCHEMA needs a database: the session's current one, or ``database`` named here.
    """
    schema = f"{quote_identifier(database)}.INFORMATION_SCHEMA" if database else "INFORMATION_SCHEMA"
    return (
        f"SELECT * FROM TABLE({schema}.QUERY_HISTORY_BY_SESSION(RESULT_LIMIT => {_RESULT_LIMIT})) "
        "WHERE QUERY_ID = %s"
    )


def _int(row: dict[str, Any], name: str) -> int | None:
    value = row.get(name)
    return None if value is None else int(value)


def _sum(row: dict[str, Any], *names: str) -> int | None:
    parts = [_int(row, n) for n in names]
    known = [p for p in parts if p is not None]
    return sum(known) if known else None


def _str(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    return None if value is None else str(value)


def read_cost(conn: Any, query_id: str | None, database: str | None = None) -> QueryCost | None:
    """``query_id``'s cost from the session's history through ``conn``, or None when unknown."""
    if not query_id:
        return None
    cur = conn.cursor()
    try:
        cur.execute(history_sql(database), (query_id,))
        names = [d.name.upper() for d in cur.description or []]
        found = cur.fetchone()
    except Exception as exc:
        log.warning("could not read QUERY_HISTORY for %s: %s", query_id, type(exc).__name__)
        return None
    finally:
        cur.close()
    if found is None:
        return None
    row = dict(zip(names, found, strict=False))
    return QueryCost(
        query_id=query_id,
        bytes_scanned=_int(row, "BYTES_SCANNED"),
        partitions_scanned=_int(row, "PARTITIONS_SCANNED"),
        partitions_total=_int(row, "PARTITIONS_TOTAL"),
        rows_produced=_int(row, "ROWS_PRODUCED"),
        total_elapsed_ms=_int(row, "TOTAL_ELAPSED_TIME"),
        execution_ms=_int(row, "EXECUTION_TIME"),
        queued_ms=_sum(row, "QUEUED_PROVISIONING_TIME", "QUEUED_REPAIR_TIME", "QUEUED_OVERLOAD_TIME"),
        warehouse_name=_str(row, "WAREHOUSE_NAME"),
        warehouse_size=_str(row, "WAREHOUSE_SIZE"),
        role_name=_str(row, "ROLE_NAME"),
        query_tag=_str(row, "QUERY_TAG"),
    )


def cost_alert(estimated: int | None, actual: int | None, factor: float, floor_bytes: int = 0) -> bool:
    """Whether ``actual`` bytes exceed ``factor`` times the ``estimated`` bytes.

    An unknown estimate or actual never alerts; neither does a scan at or under ``floor_bytes``
    (tiny scans are noise: 10 KB against an estimate of 1 KB costs nothing).
    >>> cost_alert(1_000, 50_000, 10.0)
    True
    >>> cost_alert(None, 50_000, 10.0)
    False
    """
    if estimated is None or actual is None or actual <= floor_bytes or factor <= 0:
        return False
    return actual > estimated * factor

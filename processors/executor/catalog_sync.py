"""Build the Catalog from Snowflake's INFORMATION_SCHEMA, and the CatalogTable events for it.

Per database: ``INFORMATION_SCHEMA.TABLES`` (ROW_COUNT, BYTES) and ``INFORMATION_SCHEMA.COLUMNS``
(names, types in ordinal order). Classifications do not come from Snowflake: they are carried
over from a base catalog file when one is given, and otherwise come from the policy's globs.

Statistics Snowflake does not give are left None (the analyser then treats the size as unknown,
which never loosens a decision). A table with rows but 0 bytes is read as "bytes unknown"
(None): plain fakesnow reports BYTES as 0 for every table (the local server, infra/, reports an
estimate instead). With
``count_rows=True`` a missing ROW_COUNT is filled with ``COUNT(*)``, which is only affordable on
small warehouses and the emulator.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from processors.decision.warehouse_catalog import Catalog, ColumnInfo, TableInfo, quote_identifier
from schemas.events import envelope

if TYPE_CHECKING:
    from querytrail.settings import Settings, SnowflakeProfile
    from schemas.events import CatalogTable

__all__ = ["SKIP_DATABASES", "catalog_events", "connect", "from_information_schema", "list_databases"]

log = logging.getLogger(__name__)

# Shared, read-only databases every account has; their views are not in the catalog, so
# statements on them are unresolved (and denied) unless a catalog file lists them.
SKIP_DATABASES: frozenset[str] = frozenset({"SNOWFLAKE", "SNOWFLAKE_SAMPLE_DATA"})


def list_databases(conn: Any) -> list[str]:
    """Databases visible to the connection's role (``SHOW DATABASES``), minus SKIP_DATABASES."""
    cur = conn.cursor()
    try:
        cur.execute("SHOW DATABASES")
        names = [d[0].lower() for d in cur.description]
        idx = names.index("name")
        return sorted({row[idx] for row in cur.fetchall()} - SKIP_DATABASES)
    finally:
        cur.close()


def from_information_schema(
    conn: Any,
    databases: Sequence[str] | None = None,
    *,
    base: Catalog | None = None,
    count_rows: bool = False,
) -> Catalog:
    """Read tables, columns and statistics through a DB-API connection (snowflake.connector)."""
    dbs = list(databases) if databases is not None else list_databases(conn)
    tables: list[TableInfo] = []
    for db in dbs:
        tables.extend(_database_tables(conn, db, base, count_rows))
    return Catalog.from_tables(tables)


def _database_tables(conn: Any, db: str, base: Catalog | None, count_rows: bool) -> list[TableInfo]:
    info = f"{quote_identifier(db)}.INFORMATION_SCHEMA"
    cur = conn.cursor()
    try:
        cur.execute(
            f"SELECT TABLE_SCHEMA, TABLE_NAME, ROW_COUNT, BYTES FROM {info}.TABLES "
            "WHERE TABLE_SCHEMA <> 'INFORMATION_SCHEMA'"
        )
        stats = {(r[0], r[1]): (r[2], r[3]) for r in cur.fetchall()}
        cur.execute(
            f"SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, ORDINAL_POSITION FROM {info}.COLUMNS "
            "WHERE TABLE_SCHEMA <> 'INFORMATION_SCHEMA' ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
        )
        columns: dict[tuple[str, str], list[ColumnInfo]] = {}
        for schema, table, column, dtype, _pos in cur.fetchall():
            name = f"{db}.{schema}.{table}"
            prior = base.column(f"{name}.{column}") if base is not None else None
            classification = prior.classification if prior is not None else None
            columns.setdefault((schema, table), []).append(
                ColumnInfo(column, str(dtype).upper(), classification)
            )
        out: list[TableInfo] = []
        for (schema, table), cols in sorted(columns.items()):
            row_count, size = stats.get((schema, table), (None, None))
            row_count = None if row_count is None else int(row_count)
            size = None if size is None else int(size)
            if size == 0 and row_count:  # fakesnow: BYTES is always 0; rows with no bytes is unknown
                size = None
            if row_count is None and count_rows:
                cur.execute(
                    f"SELECT COUNT(*) FROM {quote_identifier(db)}.{quote_identifier(schema)}.{quote_identifier(table)}"
                )
                row_count = int(cur.fetchone()[0])
            out.append(TableInfo(f"{db}.{schema}.{table}", tuple(cols), row_count=row_count, bytes=size))
        log.info("catalog sync: %d table(s) in %s", len(out), db)
        return out
    finally:
        cur.close()


def connect(profile: SnowflakeProfile) -> Any:
    """A connection for catalog reads, made like the executor's (password for the emulator,
    key-pair JWT for a real account) and tagged so catalog reads stand apart in QUERY_HISTORY."""
    from processors.executor.runner import connect as executor_connect

    return executor_connect(profile, {"QUERY_TAG": "querytrail-catalog-sync"})


def catalog_events(
    settings: Settings, *, previous: Iterable[str] = (), databases: Sequence[str] | None = None
) -> list[CatalogTable]:
    """CatalogTable events for the default target's warehouse; ``previous`` table names that are
    gone are emitted with ``deleted=True`` (tombstones for the compacted topic)."""
    from schemas.events import CatalogColumn, CatalogTable, utcnow

    profile = settings.snowflake_profiles[settings.default_target]
    base = Catalog.load(settings.catalog_path) if settings.catalog_path else None
    conn = connect(profile)
    try:
        catalog = from_information_schema(conn, databases, base=base)
    finally:
        conn.close()
    now = utcnow()
    events = [
        CatalogTable(
            **envelope(t.name, "executor", at=now),
            table=t.name,
            columns=tuple(
                CatalogColumn(name=c.name, type=c.type, classification=c.classification) for c in t.columns
            ),
            row_count=t.row_count,
            bytes=t.bytes,
        )
        for t in catalog.tables.values()
    ]
    for gone in sorted(set(previous) - set(catalog.tables)):
        events.append(
            CatalogTable(
                **envelope(gone, "executor", at=now),
                table=gone,
                columns=(),
                deleted=True,
            )
        )
    return events

"""``querytrail query`` and ``querytrail report``: DuckDB over a pyiceberg scan of the audit log.

The report SQL is written once in ``infra/sql/duckdb/<report>.sql``; ``sinks.report_sql`` generates
``infra/sql/{spark,trino}/`` from it so auditors run the same questions on Spark and Trino; placeholders ``{{since}}``, ``{{until}}`` and
``{{bytes_threshold}}`` are rendered here as literals of each engine's dialect.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

__all__ = [
    "DEFAULT_BYTES_THRESHOLD",
    "REPORTS",
    "format_result",
    "load_events",
    "render_sql",
    "report_sql",
    "run_report",
    "run_sql",
]

REPORTS = ("pii-exposure", "privileged-access", "costly-scans", "bypass")
DEFAULT_BYTES_THRESHOLD = 10 * 1024**3  # the example policy's "costly" rule: 10GB
_SQL_DIR = Path(__file__).resolve().parent.parent / "infra" / "sql"
_MIN = datetime(1970, 1, 1, tzinfo=UTC)
_MAX = datetime(9999, 1, 1, tzinfo=UTC)


def report_sql(name: str, engine: str = "duckdb") -> str:
    if name not in REPORTS:
        raise ValueError(f"unknown report {name!r}; one of {', '.join(REPORTS)}")
    return (_SQL_DIR / engine / f"{name}.sql").read_text(encoding="utf-8")


def _ts_literal(value: datetime, engine: str) -> str:
    text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if engine == "trino":
        return f"TIMESTAMP '{text} UTC'"
    if engine == "spark":  # the session time zone is UTC (infra/spark/spark-defaults.conf)
        return f"TIMESTAMP '{text}'"
    return f"TIMESTAMPTZ '{text}+00'"


def render_sql(
    sql: str,
    engine: str = "duckdb",
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    bytes_threshold: int = DEFAULT_BYTES_THRESHOLD,
) -> str:
    """Substitute the placeholders with typed literals (values never come from free text)."""
    return (
        sql.replace("{{since}}", _ts_literal(since or _MIN, engine))
        .replace("{{until}}", _ts_literal(until or _MAX, engine))
        .replace("{{bytes_threshold}}", str(int(bytes_threshold)))
    )


def load_events(settings: Any, since: datetime | None = None) -> pa.Table:
    """The audit rows as arrow (without the raw bytes, which queries rarely need)."""
    from sinks.table import open_table

    tbl = open_table(settings)
    scan = tbl.scan(row_filter=f"occurred_at >= '{since.isoformat()}'") if since else tbl.scan()
    return scan.to_arrow()


def run_sql(events: pa.Table, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run SQL with ``events`` / ``audit_events`` bound to the arrow table (UTC session)."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("audit_events", events)
        con.register("events", events)
        cur = con.execute(sql)
        names = [d[0] for d in cur.description or []]
        return names, cur.fetchall()
    finally:
        con.close()


def run_report(
    events: pa.Table,
    name: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    bytes_threshold: int = DEFAULT_BYTES_THRESHOLD,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    sql = render_sql(report_sql(name), since=since, until=until, bytes_threshold=bytes_threshold)
    return run_sql(events, sql)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def format_result(names: list[str], rows: list[tuple[Any, ...]], fmt: str = "table") -> str:
    """Rows as a text table, JSON (a list of objects) or CSV; untrusted text is escaped."""
    from querytrail.escape import json_inert, terminal

    if fmt == "json":
        return json_inert(
            json.dumps(
                [dict(zip(names, map(_plain, r), strict=True)) for r in rows], indent=2, ensure_ascii=False
            )
        )
    if fmt == "csv":  # CSV has no escapes: untrusted text is shown as the terminal shows it
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([terminal(n) for n in names])
        for r in rows:
            writer.writerow(
                [
                    json.dumps(v) if isinstance(v, list) else terminal(v) if isinstance(v, str) else v
                    for v in map(_plain, r)
                ]
            )
        return buf.getvalue()
    cells = [[terminal(_cell(v), 60) for v in r] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)

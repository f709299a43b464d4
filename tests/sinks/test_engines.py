"""Every report answers the same rows on DuckDB, Spark and Trino over the same Iceberg table.

DuckDB runs the hand-written source (infra/sql/duckdb/), Spark and Trino the files sqlglot
generated from it (sinks/report_sql.py); all three read the table the sink wrote through the same
SQL catalog (fixtures in conftest.py, each engine started once per session). Values are compared
whole: every column, every row, in the report's own order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from sinks.reports import REPORTS, render_sql, report_sql, run_report
from sinks.table import open_table

from .conftest import AuditLog

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Each report's window and threshold, so the placeholders are exercised, not just the defaults.
SINCE = datetime(2026, 11, 1, tzinfo=UTC)
UNTIL = datetime(2026, 12, 1, tzinfo=UTC)


def _plain(value: Any) -> Any:
    """One engine-neutral form: aware datetimes in UTC, decimals as floats, arrays as lists."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _rows(rows: list[Any]) -> list[list[Any]]:
    return [[_plain(v) for v in row] for row in rows]


@pytest.fixture(scope="module")
def duckdb_results(audit_log: AuditLog) -> dict[str, tuple[list[str], list[list[Any]]]]:
    events = open_table(audit_log.settings).scan().to_arrow()
    out = {}
    for name in REPORTS:
        names, rows = run_report(events, name, since=SINCE, until=UNTIL)
        out[name] = (names, _rows(rows))
    return out


def test_every_report_finds_something_in_the_scenario(duckdb_results: dict[str, Any]) -> None:
    # a report that returns nothing on every engine would agree vacuously
    assert {name: len(rows) > 0 for name, (_, rows) in duckdb_results.items()} == dict.fromkeys(REPORTS, True)
    _, bypass = duckdb_results["bypass"]
    assert [r[0] for r in bypass] == ["bypass-stolen", "bypass-direct"]  # the redelivery shown once


@pytest.mark.parametrize("name", REPORTS)
def test_spark_answers_like_duckdb(name: str, spark: Any, duckdb_results: dict[str, Any]) -> None:
    sql = render_sql(report_sql(name, "spark"), "spark", since=SINCE, until=UNTIL)
    table = spark.sql(sql).toArrow()
    names, rows = duckdb_results[name]
    assert table.column_names == names
    assert _rows([tuple(r.values()) for r in table.to_pylist()]) == rows


@pytest.mark.parametrize("name", REPORTS)
def test_trino_answers_like_duckdb(name: str, trino: Any, duckdb_results: dict[str, Any]) -> None:
    sql = render_sql(report_sql(name, "trino"), "trino", since=SINCE, until=UNTIL)
    got_names, got_rows = trino.query(sql)
    names, rows = duckdb_results[name]
    assert got_names == names
    assert _rows(got_rows) == rows


def test_trino_reads_every_row_the_sink_wrote(trino: Any, audit_log: AuditLog) -> None:
    _, rows = trino.query("SELECT count(*), count(DISTINCT event_id) FROM iceberg.audit.events")
    assert rows == [(len(audit_log.events), len({e.event_id for e in audit_log.events}))]


def test_a_bad_query_is_a_clear_error_and_trino_keeps_serving(trino: Any) -> None:
    from infra.trino import TrinoQueryError

    with pytest.raises(TrinoQueryError, match=r"no_such_column|cannot be resolved"):
        trino.query("SELECT no_such_column FROM iceberg.audit.events")
    assert trino.query("SELECT 1") == (["_col0"], [(1,)])

"""The Spark and Trino report files are generated from the DuckDB source and shipped up to date.

Pure (no broker, no engine): tests/sinks/test_engines.py runs the generated SQL on the engines.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import sqlglot

from sinks.report_sql import TARGETS, check, generate, generate_all, main
from sinks.reports import REPORTS, render_sql

SQL_DIR = Path(__file__).resolve().parents[2] / "infra" / "sql"
REGENERATE = "python -m sinks.report_sql --write (or make reports-sql)"


def test_shipped_report_files_equal_the_generators_output() -> None:
    stale = check()
    assert not stale, (
        f"generated report SQL is out of date: {[str(p.relative_to(SQL_DIR)) for p in stale]}; "
        f"edit infra/sql/duckdb/ only and run `{REGENERATE}`"
    )


def test_every_report_has_one_source_and_a_file_per_engine() -> None:
    assert sorted(p.stem for p in (SQL_DIR / "duckdb").glob("*.sql")) == sorted(REPORTS)
    assert sorted(p.relative_to(SQL_DIR).as_posix() for p in generate_all()) == sorted(
        f"{d}/{r}.sql" for d in TARGETS for r in REPORTS
    )


@pytest.mark.parametrize("dialect", sorted(TARGETS))
@pytest.mark.parametrize("report", REPORTS)
def test_generated_sql_names_the_engines_table_keeps_placeholders_and_parses(
    report: str, dialect: str
) -> None:
    source = (SQL_DIR / "duckdb" / f"{report}.sql").read_text(encoding="utf-8")
    text = (SQL_DIR / dialect / f"{report}.sql").read_text(encoding="utf-8")
    assert text.startswith(f"-- GENERATED from infra/sql/duckdb/{report}.sql")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    assert "audit_events" not in body
    assert ".".join(TARGETS[dialect]) in body
    source_body = "\n".join(line for line in source.splitlines() if not line.startswith("--"))
    assert set(re.findall(r"\{\{\w+\}\}", body)) == set(re.findall(r"\{\{\w+\}\}", source_body))
    rendered = render_sql(body, dialect)
    sqlglot.parse_one(rendered, read=dialect)  # raises on SQL the dialect's parser rejects


def test_an_edited_generated_file_or_a_file_without_source_is_reported(tmp_path: Path) -> None:
    shutil.copytree(SQL_DIR, tmp_path / "sql")
    spark = tmp_path / "sql" / "spark" / "bypass.sql"
    spark.write_text(spark.read_text(encoding="utf-8").replace("ORDER BY", "ORDER  BY"), encoding="utf-8")
    orphan = tmp_path / "sql" / "trino" / "hand-written.sql"
    orphan.write_text("SELECT 1\n", encoding="utf-8")
    assert check(tmp_path / "sql") == [spark, orphan]
    assert main(["--dir", str(tmp_path / "sql")]) == 1
    assert main(["--dir", str(tmp_path / "sql"), "--write"]) == 0
    assert check(tmp_path / "sql") == [orphan]  # --write never deletes; it names the orphan


def test_dialect_functions_and_the_table_name_are_translated() -> None:
    source = (
        "-- a report\n"
        "SELECT list_contains(tags, 'x') AS c, array_length(l) AS n, json_extract_string(p, '$.a') AS a\n"
        'FROM audit_events WHERE occurred_at >= {{since}} ORDER BY "offset"'
    )
    spark = generate(source, "spark", "x.sql")
    trino = generate(source, "trino", "x.sql")
    assert (
        "ARRAY_CONTAINS(tags, 'x')" in spark and "SIZE(l)" in spark and "GET_JSON_OBJECT(p, '$.a')" in spark
    )
    assert "FROM querytrail.audit.events" in spark and "`offset`" in spark and ">= {{since}}" in spark
    assert (
        "CONTAINS(tags, 'x')" in trino
        and "CARDINALITY(l)" in trino
        and "JSON_EXTRACT_SCALAR(p, '$.a')" in trino
    )
    assert "FROM iceberg.audit.events" in trino and '"offset"' in trino and "-- a report" in trino


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT list_reduce(l, (a, b) -> a + b) FROM audit_events",  # unknown to sqlglot: copied verbatim
        "PIVOT audit_events ON a USING sum(b)",  # no Trino form
        "SELECT FROM WHERE",  # does not parse
    ],
)
def test_sql_that_cannot_be_translated_faithfully_is_an_error(sql: str) -> None:
    with pytest.raises(ValueError, match=r"cannot generate trino SQL|does not know the function"):
        generate(sql, "trino", "bad.sql")


def test_the_reserved_placeholder_prefix_is_refused_in_the_source() -> None:
    with pytest.raises(ValueError, match="reserved prefix"):
        generate("SELECT qt_placeholder_x FROM audit_events", "spark")

"""The audit reports' SQL for Spark and Trino, generated from the one DuckDB source with sqlglot.

``infra/sql/duckdb/<report>.sql`` is written by hand (it is what ``querytrail report`` runs);
``infra/sql/spark/`` and ``infra/sql/trino/`` are generated from it and shipped, and a unit test
fails when they differ from what this module generates. After editing a DuckDB report::

    python -m sinks.report_sql --write        # or: make reports-sql

The source keeps to what transpiles exactly (``array_length`` rather than DuckDB's ``len``, an
alias on every derived table); a function sqlglot does not know is refused, since it would be
copied unchanged into every dialect. Two AST steps are ours, not sqlglot's: the table ``audit_events``
becomes each engine's name of the Iceberg table, and the ``{{since}}``-style placeholders that
``sinks.reports.render_sql`` fills survive as they are. A construct sqlglot cannot express in a
target dialect is an error here, never a silently different query.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel

__all__ = ["SOURCE_DIALECT", "TARGETS", "check", "generate", "generate_all", "main"]

SOURCE_DIALECT = "duckdb"
#: target dialect -> the audit table's name there (Spark: the catalog named iceberg.catalog_name in
#: infra/spark/spark-defaults.conf; Trino: the catalog file infra/trino/etc/catalog/iceberg.properties)
TARGETS: dict[str, tuple[str, str, str]] = {
    "spark": ("querytrail", "audit", "events"),
    "trino": ("iceberg", "audit", "events"),
}
SOURCE_TABLE = "audit_events"
_SQL_DIR = Path(__file__).resolve().parent.parent / "infra" / "sql"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_MARK = "qt_placeholder_"  # a placeholder, while sqlglot holds it, is a column with this prefix


def _split_header(text: str) -> tuple[list[str], str]:
    """The leading ``--`` comment lines (the report's description) and the statement after them."""
    lines = text.splitlines()
    n = 0
    while n < len(lines) and (lines[n].startswith("--") or not lines[n].strip()):
        n += 1
    return [line for line in lines[:n] if line.strip()], "\n".join(lines[n:])


def _transform(node: exp.Expression, table: tuple[str, str, str]) -> exp.Expression:
    if isinstance(node, exp.Column) and not node.table and node.name.startswith(_MARK):
        return exp.var("{{" + node.name[len(_MARK) :] + "}}")  # generated verbatim in any dialect
    if isinstance(node, exp.Table) and node.name == SOURCE_TABLE and not node.args.get("db"):
        catalog, db, name = table
        renamed = exp.table_(name, db=db, catalog=catalog)
        if node.alias:
            renamed.set("alias", node.args["alias"])
        return renamed
    return node


def generate(source: str, dialect: str, source_name: str = "") -> str:
    """The report ``source`` (DuckDB SQL with its header comment) in ``dialect``, with a header
    saying it is generated. Raises ``ValueError`` for SQL that does not parse or transpile."""
    if dialect not in TARGETS:
        raise ValueError(f"unknown target dialect {dialect!r}; one of {', '.join(TARGETS)}")
    header, body = _split_header(source)
    if _MARK in body:
        raise ValueError(f"{source_name or 'the source'} uses the reserved prefix {_MARK!r}")
    try:
        tree = sqlglot.parse_one(_PLACEHOLDER.sub(lambda m: _MARK + m.group(1), body), read=SOURCE_DIALECT)
        unknown = sorted({f.name for f in tree.find_all(exp.Anonymous)})
        if unknown:  # sqlglot copies a function it does not know verbatim into every dialect
            raise ValueError(
                f"{source_name or 'report'}: sqlglot does not know the function(s) {', '.join(unknown)}, "
                f"so it would copy them unchanged into {dialect}; use a portable equivalent"
            )
        tree = tree.transform(_transform, TARGETS[dialect])
        sql = tree.sql(dialect=dialect, pretty=True, unsupported_level=ErrorLevel.RAISE)
    except sqlglot.errors.SqlglotError as exc:
        raise ValueError(f"{source_name or 'report'}: cannot generate {dialect} SQL: {exc}") from exc
    origin = f"infra/sql/{SOURCE_DIALECT}/{source_name}" if source_name else f"the {SOURCE_DIALECT} source"
    banner = [
        f"-- GENERATED from {origin} by `python -m sinks.report_sql --write`",
        f"-- (sqlglot, {SOURCE_DIALECT} -> {dialect}). Do not edit: edit the source and regenerate.",
    ]
    return "\n".join([*banner, *header, sql]) + "\n"


def generate_all(sql_dir: Path = _SQL_DIR) -> dict[Path, str]:
    """Every generated file's path and the text it should hold."""
    out: dict[Path, str] = {}
    for src in sorted((sql_dir / SOURCE_DIALECT).glob("*.sql")):
        text = src.read_text(encoding="utf-8")
        for dialect in TARGETS:
            out[sql_dir / dialect / src.name] = generate(text, dialect, src.name)
    return out


def check(sql_dir: Path = _SQL_DIR) -> list[Path]:
    """Generated files that are missing, differ from the generator's output, or have no source."""
    expected = generate_all(sql_dir)
    stale = [p for p, text in expected.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    orphans = [p for d in TARGETS for p in sorted((sql_dir / d).glob("*.sql")) if p not in expected]
    return stale + orphans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinks.report_sql", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write the generated files (default: check)")
    parser.add_argument("--dir", type=Path, default=_SQL_DIR, help=f"default: {_SQL_DIR}")
    args = parser.parse_args(argv)
    if args.write:
        expected = generate_all(args.dir)
        for path, text in expected.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path}")
        for orphan in check(args.dir):
            print(f"no source for {orphan}: delete it or add infra/sql/{SOURCE_DIALECT}/{orphan.name}")
        return 0
    stale = check(args.dir)
    for path in stale:
        print(f"out of date: {path}", file=sys.stderr)
    if stale:
        print("run `python -m sinks.report_sql --write` (or `make reports-sql`)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())

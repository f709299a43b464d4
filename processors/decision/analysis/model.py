"""The analysis result types (the contract in docs/architecture.md, "The analysis contract")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Analysis", "Classifier", "Finding", "OutputColumn", "StatementKind"]

StatementKind = str  # select|insert|update|delete|merge|ddl|grant|unload|use|show|describe|call|
# set|transaction|other|unknown|multi


@dataclass(frozen=True)
class Finding:
    code: str
    detail: str


@dataclass(frozen=True)
class OutputColumn:
    name: str  # as Snowflake would report it (unquoted -> upper)
    sources: tuple[str, ...]  # "DB.SCHEMA.TABLE.COLUMN" whose values flow into it, sorted
    # sources reached only through pass-through steps (aliases, casts, UPPER/LOWER/TRIM, set
    # operations): format-preserving masks (email, last4) are only sound on these
    passthrough: tuple[str, ...] = ()
    type: str | None = None  # catalog type when the column is a pass-through of one source
    resolved: bool = True  # False: depends on something unknowable (unexpanded *, IDENTIFIER($v))


class Classifier(Protocol):
    def column_classification(self, fq_column: str) -> str | None: ...

    def table_tags(self, fq_table: str) -> frozenset[str]: ...


@dataclass(frozen=True)
class Analysis:
    statement: StatementKind
    tables_read: tuple[str, ...]
    tables_written: tuple[str, ...]
    output_columns: tuple[OutputColumn, ...]
    predicate_columns: tuple[str, ...]
    findings: tuple[Finding, ...]
    estimated_bytes: int | None
    fingerprint: str
    parsed: Any  # the qualified sqlglot expression, None when unparseable or multi-statement
    sql: str = ""  # the text analysed (masking re-parses it to rewrite only what it must)
    database: str | None = None
    schema: str | None = None

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.tables_read) | set(self.tables_written)))

    @property
    def finding_codes(self) -> frozenset[str]:
        return frozenset(f.code for f in self.findings)

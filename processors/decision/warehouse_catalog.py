"""The table catalog the analyser resolves names against.

The file format (YAML or JSON; docs/architecture.md, "The warehouse catalog file")::

    tables:
      ANALYTICS.PUBLIC.CUSTOMERS:
        row_count: 1200000
        bytes: 480000000
        columns:
          ID: NUMBER
          SSN: {type: VARCHAR, classification: pii.ssn}

Names are normalised the way Snowflake resolves identifiers: unquoted parts are upper-cased,
double-quoted parts are kept verbatim (``"Mixed"`` stays ``Mixed``). A list of column
mappings (``[{name, type, classification}]``) is accepted as well, as the CatalogTable event
carries them that way.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_PLAIN = re.compile(r"[A-Z_][A-Z0-9_$]*")

__all__ = [
    "Catalog",
    "CatalogError",
    "ColumnInfo",
    "TableInfo",
    "normalise_identifier",
    "normalise_name",
    "quote_identifier",
    "split_name",
]


class CatalogError(Exception):
    """A catalog file or mapping that cannot be used; ``reason`` says why."""

    def __init__(self, reason: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str
    classification: str | None = None


@dataclass(frozen=True)
class TableInfo:
    name: str  # "DB.SCHEMA.TABLE", normalised
    columns: tuple[ColumnInfo, ...]
    row_count: int | None = None
    bytes: int | None = None

    def column(self, name: str) -> ColumnInfo | None:
        """The column called ``name`` (already normalised), or None."""
        for col in self.columns:
            if col.name == name:
                return col
        return None


def split_name(name: str) -> list[str]:
    """Split a dotted name into parts, honouring double quotes.

    >>> split_name('analytics."My.Schema".t')
    ['analytics', '"My.Schema"', 't']
    """
    parts: list[str] = []
    buf: list[str] = []
    quoted = False
    i = 0
    while i < len(name):
        ch = name[i]
        if ch == '"':
            if quoted and i + 1 < len(name) and name[i + 1] == '"':
                buf.append('""')
                i += 2
                continue
            quoted = not quoted
            buf.append(ch)
        elif ch == "." and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if quoted:
        raise CatalogError(f"unbalanced double quote in name {name!r}")
    parts.append("".join(buf))
    return parts


def normalise_identifier(part: str) -> str:
    """Snowflake identifier resolution: ``"x"`` -> ``x``; ``x`` -> ``X``.

    >>> normalise_identifier('"Mixed"'), normalise_identifier('mixed')
    ('Mixed', 'MIXED')
    """
    part = part.strip()
    if len(part) >= 2 and part[0] == '"' and part[-1] == '"':
        return part[1:-1].replace('""', '"')
    return part.upper()


def quote_identifier(name: str) -> str:
    """Inverse of ``normalise_identifier``: quote only when Snowflake would not read it back as is.

    >>> quote_identifier("EMAIL"), quote_identifier("Email")
    ('EMAIL', '"Email"')
    """
    if _PLAIN.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def normalise_name(name: str) -> str:
    """Normalise every part of a dotted name.

    >>> normalise_name('analytics.public."Orders"')
    'ANALYTICS.PUBLIC.Orders'
    """
    parts = split_name(name)
    if any(not p.strip() for p in parts):
        raise CatalogError(f"empty part in name {name!r}")
    return ".".join(normalise_identifier(p) for p in parts)


def _opt_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CatalogError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _columns(table: str, raw: Any) -> tuple[ColumnInfo, ...]:
    items: list[tuple[Any, Any]]
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = []
        for entry in raw:
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise CatalogError(f"table {table}: column list entries need a name, got {entry!r}")
            items.append((entry["name"], {k: v for k, v in entry.items() if k != "name"}))
    else:
        raise CatalogError(f"table {table}: columns must be a mapping or a list")
    cols: list[ColumnInfo] = []
    seen: set[str] = set()
    for name, spec in items:
        if not isinstance(name, str) or not name.strip():
            raise CatalogError(f"table {table}: column name must be a non-empty string, got {name!r}")
        norm = normalise_identifier(name)
        if norm in seen:
            raise CatalogError(f"table {table}: duplicate column {norm}")
        seen.add(norm)
        if isinstance(spec, str):
            cols.append(ColumnInfo(norm, spec.upper()))
        elif isinstance(spec, Mapping):
            unknown = set(spec) - {"type", "classification"}
            if unknown:
                raise CatalogError(f"table {table}: column {norm}: unknown keys {sorted(unknown)}")
            ctype = spec.get("type", "VARCHAR")
            cls_ = spec.get("classification")
            if not isinstance(ctype, str) or (cls_ is not None and not isinstance(cls_, str)):
                raise CatalogError(f"table {table}: column {norm}: type/classification must be strings")
            cols.append(ColumnInfo(norm, ctype.upper(), cls_))
        else:
            raise CatalogError(f"table {table}: column {norm}: expected a type or a mapping")
    if not cols:
        raise CatalogError(f"table {table}: no columns")
    return tuple(cols)


class Catalog:
    """Tables by normalised ``DB.SCHEMA.TABLE`` name, plus a content version for cache keys."""

    __slots__ = ("_schema_cache", "tables", "version")

    def __init__(self, tables: Mapping[str, TableInfo]) -> None:
        self.tables: Mapping[str, TableInfo] = dict(sorted(tables.items()))
        self.version = hashlib.sha256(
            json.dumps(self.to_mapping(), sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        self._schema_cache: Any = None

    def __repr__(self) -> str:
        return f"Catalog({len(self.tables)} tables, version={self.version[:12]})"

    def table(self, fq: str) -> TableInfo | None:
        """The table with exactly this resolved name (``DB.SCHEMA.TABLE``, already normalised).

        Exact on purpose: ``"analytics"."public"."t"`` resolves to ``analytics.public.t``, which
        is a different table from ``ANALYTICS.PUBLIC.T``. Use ``lookup`` for names as typed.
        """
        return self.tables.get(fq)

    def lookup(self, name: str) -> TableInfo | None:
        """Find a table by a name as a user would type it (unquoted parts upper-cased)."""
        try:
            return self.tables.get(normalise_name(name))
        except CatalogError:
            return None

    def column(self, fq_column: str) -> ColumnInfo | None:
        """Look up ``DB.SCHEMA.TABLE.COLUMN`` (normalised)."""
        table, _, col = fq_column.rpartition(".")
        info = self.tables.get(table)
        return info.column(col) if info else None

    def to_mapping(self) -> dict[str, Any]:
        """The canonical file form (what ``from_mapping`` reads back)."""
        out: dict[str, Any] = {}
        for name, t in self.tables.items():
            cols: dict[str, Any] = {}
            for c in t.columns:
                spec = {"type": c.type, "classification": c.classification} if c.classification else c.type
                cols[quote_identifier(c.name)] = spec
            entry: dict[str, Any] = {"columns": cols}
            if t.row_count is not None:
                entry["row_count"] = t.row_count
            if t.bytes is not None:
                entry["bytes"] = t.bytes
            out[".".join(quote_identifier(p) for p in split_name_exact(name))] = entry
        return {"tables": out}

    def sqlglot_schema(self) -> Any:
        """A sqlglot ``MappingSchema`` (built once) with quoted, case-exact names."""
        if self._schema_cache is None:
            from sqlglot.schema import MappingSchema

            nested: dict[str, Any] = {}
            for name, t in self.tables.items():
                db, sch, tbl = split_name_exact(name)
                nested.setdefault(db, {}).setdefault(sch, {})[tbl] = {c.name: c.type for c in t.columns}
            # normalize=False: names are already resolved the Snowflake way
            self._schema_cache = MappingSchema(nested, dialect="snowflake", normalize=False)
        return self._schema_cache

    @classmethod
    def from_tables(cls, tables: Iterable[TableInfo]) -> Catalog:
        out: dict[str, TableInfo] = {}
        for t in tables:
            if len(split_name_exact(t.name)) != 3:
                raise CatalogError(f"table name {t.name!r} is not DB.SCHEMA.TABLE")
            out[t.name] = t
        return cls(out)

    @classmethod
    def from_mapping(cls, data: Any, source: str | None = None) -> Catalog:
        """Build from the catalog file structure (docs/architecture.md)."""
        try:
            if not isinstance(data, Mapping) or not isinstance(data.get("tables"), Mapping):
                raise CatalogError("expected a mapping with a 'tables' mapping")
            unknown = set(data) - {"tables", "version"}
            if unknown:
                raise CatalogError(f"unknown top-level keys {sorted(unknown)}")
            out: dict[str, TableInfo] = {}
            for raw_name, spec in data["tables"].items():
                if not isinstance(raw_name, str):
                    raise CatalogError(f"table name must be a string, got {raw_name!r}")
                name = normalise_name(raw_name)
                if len(split_name(raw_name)) != 3:
                    raise CatalogError(f"table name {raw_name!r} is not DATABASE.SCHEMA.TABLE")
                if len(split_name_exact(name)) != 3:
                    raise CatalogError(f"table name {raw_name!r}: dots inside quoted names are not supported")
                if not isinstance(spec, Mapping):
                    raise CatalogError(f"table {name}: expected a mapping")
                unknown = set(spec) - {"columns", "row_count", "bytes"}
                if unknown:
                    raise CatalogError(f"table {name}: unknown keys {sorted(unknown)}")
                if name in out:
                    raise CatalogError(f"table {name} listed twice")
                out[name] = TableInfo(
                    name=name,
                    columns=_columns(name, spec.get("columns")),
                    row_count=_opt_int(spec.get("row_count"), f"table {name}: row_count"),
                    bytes=_opt_int(spec.get("bytes"), f"table {name}: bytes"),
                )
        except CatalogError as exc:
            if source and exc.source is None:
                raise CatalogError(exc.reason, source) from None
            raise
        return cls(out)

    @classmethod
    def load(cls, path: Path) -> Catalog:
        """Read a YAML or JSON catalog file; raises CatalogError naming the file and reason."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogError(f"cannot read: {exc.strerror}", str(path)) from None
        try:
            data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise CatalogError(f"not valid YAML/JSON: {exc}", str(path)) from None
        return cls.from_mapping(data, source=str(path))


def split_name_exact(name: str) -> list[str]:
    """Split an already-normalised name (parts never contain dots unless it had quotes).

    Normalised names lose their quotes, so a part holding a dot is ambiguous; such names are
    rare in Snowflake and are split naively here (documented gap).
    """
    return name.split(".")

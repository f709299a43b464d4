"""Generate ``schemas/events.py`` from ``schemas/avsc/*.avsc`` (run ``python -m schemas.generate``).

The avsc files are the source of truth. Each event file inlines its nested records; a nested
record must be identical (docs included) in every file that defines it, and is emitted once.
``python -m schemas.generate --check`` exits 1 when events.py is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AVSC_DIR", "EVENTS_PY", "load_schemas", "main", "render"]

AVSC_DIR = Path(__file__).parent / "avsc"
EVENTS_PY = Path(__file__).parent / "events.py"

_PRIMITIVES = {
    "string": "str",
    "int": "int",
    "long": "int",
    "boolean": "bool",
    "bytes": "bytes",
    "float": "float",
    "double": "float",
}


@dataclass
class _Named:
    """A named type (record or enum) in emission order, with the first file that defined it."""

    name: str
    schema: dict[str, Any]
    origin: str
    is_event: bool = False
    deps: list[str] = field(default_factory=list)


def load_schemas(avsc_dir: Path = AVSC_DIR) -> dict[str, dict[str, Any]]:
    """Event name -> parsed JSON of its current avsc file, sorted by name."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(avsc_dir.glob("*.avsc")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        if schema.get("type") != "record" or schema.get("name") != path.stem:
            raise ValueError(f"{path.name}: must hold a record named {path.stem}")
        out[path.stem] = schema
    return out


class _Collector:
    def __init__(self) -> None:
        self.named: dict[str, _Named] = {}
        self.order: list[str] = []

    def visit(self, schema: Any, origin: str) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self.visit(branch, origin)
            return
        if not isinstance(schema, dict):
            return
        kind = schema.get("type")
        if kind == "array":
            self.visit(schema["items"], origin)
        elif kind == "map":
            self.visit(schema["values"], origin)
        elif kind in ("record", "enum"):
            self._define(schema, origin)

    def _define(self, schema: dict[str, Any], origin: str, is_event: bool = False) -> None:
        name = schema["name"]
        if name in self.named:
            prev = self.named[name]
            if prev.schema != schema:
                raise ValueError(f"{name} differs between {prev.origin} and {origin}")
            return
        if schema["type"] == "record":
            for f in schema["fields"]:
                self.visit(f["type"], origin)
        # Appended after its dependencies, so every class is defined before it is used.
        self.named[name] = _Named(name, schema, origin, is_event)
        self.order.append(name)

    def define_event(self, schema: dict[str, Any], origin: str) -> None:
        self._define(schema, origin, is_event=True)


def _py_type(schema: Any) -> str:
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema]
        return schema.rsplit(".", 1)[-1]  # reference to a named type
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        if len(branches) != 1 or len(schema) != 2:
            raise ValueError(f"only [null, T] unions are supported, got {schema}")
        return f"{_py_type(branches[0])} | None"
    kind = schema["type"]
    if kind in ("record", "enum"):
        return str(schema["name"])
    if kind == "array":
        return f"tuple[{_py_type(schema['items'])}, ...]"
    if kind == "map":
        return f"dict[str, {_py_type(schema['values'])}]"
    logical = schema.get("logicalType")
    if logical in ("timestamp-micros", "timestamp-millis"):
        return "datetime"
    return _py_type(kind)


def _default(ftype: Any, value: Any) -> str:
    if value is None:
        return " = None"
    if isinstance(ftype, dict) and ftype.get("type") == "array":
        if value != []:
            raise ValueError("only empty array defaults are supported")
        return " = ()"
    if isinstance(ftype, dict) and ftype.get("type") == "map":
        if value != {}:
            raise ValueError("only empty map defaults are supported")
        return " = field(default_factory=dict)"
    return f" = {value!r}"


def _docstring(doc: str, indent: str) -> list[str]:
    text = doc.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return [f'{indent}"""{text}"""']


def _render_record(named: _Named) -> list[str]:
    schema = named.schema
    lines = ["", "", "@dataclass(frozen=True, kw_only=True)", f"class {named.name}:"]
    lines += _docstring(schema.get("doc", named.name), "    ")
    lines.append("")
    for f in schema["fields"]:
        if f.get("doc"):
            lines.append(f"    #: {f['doc']}")
        default = _default(f["type"], f["default"]) if "default" in f else ""
        lines.append(f"    {f['name']}: {_py_type(f['type'])}{default}")
    return lines


def _symbols_name(enum_name: str) -> str:
    snake = "".join("_" + c if c.isupper() and i else c for i, c in enumerate(enum_name))
    return f"{snake.upper()}_SYMBOLS"


def _render_enum(named: _Named) -> list[str]:
    schema = named.schema
    symbols = tuple(schema["symbols"])
    upper = _symbols_name(named.name)
    return [
        "",
        "",
        f"#: Avro enum {named.name}: {schema.get('doc', '')} Plain str at runtime, one of the symbols.",
        f"{named.name}: TypeAlias = str",
        f"{upper}: tuple[str, ...] = {symbols!r}",
    ]


_HEADER = '''\
# GENERATED FILE, DO NOT EDIT.
# Generated by `python -m schemas.generate` from schemas/avsc/*.avsc:
#   {sources}
"""querytrail events: frozen dataclasses mirroring the Avro schemas in schemas/avsc/.

Nested records are defined once; timestamp-micros fields are tz-aware UTC datetimes, arrays are
tuples, maps are dicts, optional ([null, T]) fields default to None.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from typing import Any, TypeAlias
'''

_HELPERS = '''

_uuid_lock = threading.Lock()
_uuid_last = (0, 0)  # (unix ms, 74 random bits) of the previous id


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix ms timestamp, version 7, variant 10, 74 random bits.

    Ids are strictly increasing within this process (RFC 9562 section 6.2, method 2): within
    one millisecond, or if the clock steps back, the previous random part is incremented.
    """
    global _uuid_last
    now_ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big") >> 6  # 74 bits
    with _uuid_lock:
        last_ms, last_rand = _uuid_last
        if now_ms <= last_ms:
            now_ms, rand = last_ms, last_rand + 1
            if rand >> 74:  # random part exhausted: borrow the next millisecond
                now_ms, rand = last_ms + 1, 0
        _uuid_last = (now_ms, rand)
    value = (now_ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def utcnow() -> datetime:
    """Now as a tz-aware UTC datetime (microsecond precision, as timestamp-micros holds)."""
    return datetime.now(UTC)


@lru_cache(maxsize=1)
def _version() -> str:
    try:
        return metadata.version("querytrail")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def producer(component: str) -> Producer:
    """The ``producer`` field for an event written by ``component`` (e.g. "cli", "executor")."""
    return Producer(component=component, version=_version())


def envelope(
    request_id: str, component: str, *, at: datetime | None = None, session_id: str | None = None
) -> dict[str, Any]:
    """The metadata every event starts with: a fresh ``event_id``, the ``request_id``, when
    (``at``, default now), the producing ``component`` and, when given, the agent session.

    ``SomeEvent(**envelope(rid, "worker", at=now), field=...)``: the one place these are built.
    """
    meta: dict[str, Any] = {
        "event_id": new_event_id(),
        "request_id": request_id,
        "occurred_at": utcnow() if at is None else at,
        "producer": producer(component),
    }
    if session_id is not None:
        meta["session_id"] = session_id
    return meta
'''


def render(avsc_dir: Path = AVSC_DIR) -> str:
    """The full text of events.py for the avsc files in ``avsc_dir``."""
    schemas = load_schemas(avsc_dir)
    collector = _Collector()
    for name, schema in schemas.items():
        collector.define_event(schema, f"{name}.avsc")
    events = list(schemas)
    nested = [n for n in collector.order if not collector.named[n].is_event]
    names = sorted(
        [*collector.order, "Event", "EVENT_CLASSES", "envelope", "new_event_id", "producer", "utcnow"]
        + [_symbols_name(n) for n in collector.order if collector.named[n].schema["type"] == "enum"]
    )
    lines = [_HEADER.format(sources=" ".join(f"{n}.avsc" for n in events)).rstrip("\n")]
    lines.append("")
    lines.append("__all__ = [")
    lines += [f'    "{n}",' for n in names]
    lines.append("]")
    for name in nested + events:
        named = collector.named[name]
        if named.schema["type"] == "enum":
            lines += _render_enum(named)
        else:
            lines += _render_record(named)
    lines += ["", "", "#: Any querytrail event.", "Event: TypeAlias = ("]
    lines += [f"    {'|' if i else ' '} {n}" for i, n in enumerate(events)]
    lines.append(")")
    lines += ["", "#: event_type name -> event class.", "EVENT_CLASSES: dict[str, type[Event]] = {"]
    lines += [f'    "{n}": {n},' for n in events]
    lines.append("}")
    return "\n".join(lines) + "\n" + _HELPERS


def main(argv: list[str] | None = None) -> int:
    """Write events.py (or with ``--check`` only compare); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if events.py is out of date")
    args = parser.parse_args(argv)
    text = render()
    current = EVENTS_PY.read_text(encoding="utf-8") if EVENTS_PY.exists() else ""
    if args.check:
        if current != text:
            print(f"{EVENTS_PY} is out of date: run python -m schemas.generate", file=sys.stderr)
            return 1
        return 0
    if current != text:
        EVENTS_PY.write_text(text, encoding="utf-8")
        print(f"wrote {EVENTS_PY}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

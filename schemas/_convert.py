"""Per-schema converters between event dataclasses and plain dicts (JSON-safe or fastavro's).

Built once per record schema from the avsc types, so a conversion walks a precomputed list of
(field, converter) pairs instead of inspecting types per call (and never deep-copies like
``dataclasses.asdict``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

__all__ = ["JSON_ERRORS", "Converters", "build_converters"]

Conv = Callable[[Any], Any]

_new = object.__new__
_set = object.__setattr__


def _json_bytes_out(v: bytes) -> str:
    return base64.b64encode(v).decode("ascii")


def _json_bytes_in(v: str) -> bytes:
    return base64.b64decode(v, validate=True)


def _json_ts_out(v: datetime) -> str:
    return v.astimezone(UTC).isoformat()


def _json_ts_in(v: str) -> datetime:
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {v!r}")
    return dt.astimezone(UTC)


_BYTES: dict[str, Conv] = {"json_out": _json_bytes_out, "json_in": _json_bytes_in}
_TIMESTAMPS: dict[str, Conv] = {"json_out": _json_ts_out, "json_in": _json_ts_in}


def _optional(c: Conv) -> Conv:
    return lambda v: None if v is None else c(v)


def _sequence(seq: Conv, c: Conv | None) -> Conv:
    if c is None:
        return seq
    return lambda v: seq([c(i) for i in v])


def _mapping(c: Conv | None) -> Conv:
    if c is None:
        return dict
    return lambda v: {k: c(i) for k, i in v.items()}


class Converters:
    """The three conversions of one record schema (dataclass <-> JSON dict, fastavro dict -> dataclass)."""

    def __init__(self, classes: dict[str, type]) -> None:
        self.classes = classes
        self.named: dict[str, dict[str, Any]] = {}
        self.records: dict[tuple[str, str], Conv] = {}

    def _resolve(self, t: Any) -> Any:
        if isinstance(t, str):
            short = t.rsplit(".", 1)[-1]
            return self.named.get(short, t)
        if isinstance(t, dict) and t.get("type") in ("record", "enum"):
            self.named.setdefault(t["name"], t)
        return t

    def conv(self, t: Any, mode: str) -> Conv | None:
        """Converter for values of Avro type ``t``; None means the value passes unchanged."""
        t = self._resolve(t)
        if isinstance(t, list):
            inner = [self.conv(b, mode) for b in t if b != "null"]
            if len(inner) != 1:
                raise ValueError(f"only [null, T] unions are supported, got {t!r}")
            return None if inner[0] is None else _optional(inner[0])
        if isinstance(t, str):
            if t == "bytes":
                return _BYTES.get(mode)
            return None
        kind, logical = t["type"], t.get("logicalType")
        if kind == "record":
            return self.record(t, mode)
        if kind == "array":
            seq: Conv = list if mode == "json_out" else tuple
            return _sequence(seq, self.conv(t["items"], mode))
        if kind == "map":
            return _mapping(self.conv(t["values"], mode))
        if logical == "timestamp-micros":
            return _TIMESTAMPS.get(mode)
        if logical == "uuid" and mode == "avro_in":
            return str  # fastavro returns uuid.UUID; events carry the canonical string
        if kind == "enum":
            return None
        return self.conv(kind, mode)

    def record(self, t: dict[str, Any], mode: str) -> Conv:
        key = (t["name"], mode)
        if key in self.records:
            return self.records[key]
        cls = self.classes[t["name"]]
        fields: list[tuple[str, Conv | None]] = []

        if mode == "json_out":

            def out(o: Any) -> dict[str, Any]:
                d = {}
                for n, c in fields:
                    v = getattr(o, n)
                    d[n] = v if c is None or v is None else c(v)
                return d

            fn: Conv = out
        else:
            # Array and map converters copy, so a shared [] or {} default is never aliased.
            defaults = {f["name"]: f["default"] for f in t["fields"] if "default" in f}

            def into(d: dict[str, Any]) -> Any:
                values = {}
                for n, c in fields:
                    if n in d:
                        v = d[n]
                    elif n in defaults:
                        v = defaults[n]
                    else:
                        raise ValueError(f"{cls.__name__}: missing field {n!r}")
                    values[n] = v if c is None or v is None else c(v)
                o: Any = _new(cls)
                _set(o, "__dict__", values)
                return o

            fn = into
        # Registered before the field converters are built, so recursive types terminate.
        self.records[key] = fn
        for f in t["fields"]:
            fields.append((f["name"], self.conv(f["type"], mode)))
        return fn


def build_converters(schema: dict[str, Any], classes: dict[str, type]) -> dict[str, Conv]:
    """``{"json_out", "json_in", "avro_in"}`` converters for a top-level record schema."""
    conv = Converters(classes)
    conv._resolve(schema)
    return {mode: conv.record(schema, mode) for mode in ("json_out", "json_in", "avro_in")}


# Re-exported for the codec's error wrapping: what a bad JSON payload raises.
JSON_ERRORS = (ValueError, TypeError, KeyError, binascii.Error)

"""Hypothesis strategies for every event, built from the avsc types (not from the codec's code)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from schemas import events
from schemas.generate import AVSC_DIR

SCHEMAS: dict[str, dict[str, Any]] = {
    p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(AVSC_DIR.glob("*.avsc"))
}

# Any instant timestamp-micros can hold in a Python datetime, at microsecond precision.
timestamps = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.just(UTC),
)
text = st.text(max_size=40)


def _for(t: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    if isinstance(t, list):
        inner = [b for b in t if b != "null"]
        assert len(inner) == 1
        return st.none() | _for(inner[0], named)
    if isinstance(t, str):
        if t in named:
            return _for(named[t], named)
        return {
            "string": text,
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "boolean": st.booleans(),
            "bytes": st.binary(max_size=64),
            "null": st.none(),
        }[t]
    kind = t["type"]
    if t.get("logicalType") == "timestamp-micros":
        return timestamps
    if t.get("logicalType") == "uuid":
        return st.uuids().map(str)
    if kind == "enum":
        named[t["name"]] = t
        return st.sampled_from(t["symbols"])
    if kind == "array":
        return st.lists(_for(t["items"], named), max_size=4).map(tuple)
    if kind == "map":
        return st.dictionaries(text, _for(t["values"], named), max_size=4)
    if kind == "record":
        named[t["name"]] = t
        cls = getattr(events, t["name"])
        fields = {f["name"]: _for(f["type"], named) for f in t["fields"]}
        if "event_type" in fields:
            fields["event_type"] = st.just(t["name"])
        return st.builds(cls, **fields)
    return _for(kind, named)


EVENT_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {name: _for(s, {}) for name, s in SCHEMAS.items()}
any_event: st.SearchStrategy[Any] = st.one_of(*EVENT_STRATEGIES.values())

# Aware datetimes in other zones: the codec must keep the instant (decoded as UTC).
other_zones = st.sampled_from([timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])

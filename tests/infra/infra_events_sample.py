"""One filled-in instance of any event class, for round-trip tests (every field set)."""

from __future__ import annotations

import dataclasses
import types
import typing
from datetime import UTC, datetime
from typing import Any

import schemas.events as ev

__all__ = ["sample_event"]


def _value(tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _value(next(a for a in typing.get_args(tp) if a is not type(None)), name)
    if origin is tuple:
        return (_value(typing.get_args(tp)[0], name),)
    if origin is dict:
        return {"k": _value(typing.get_args(tp)[1], name)}
    if tp is str and name.endswith("event_id"):
        return ev.new_event_id()  # an Avro uuid: canonical lower-case text
    if tp is str:
        return "approve" if name == "verdict" else f"{name}-ü-✓"  # Avro enum; non-ASCII text
    if tp is bool:
        return True
    if tp is int:
        return 2**31 - 1  # fits an Avro int as well as a long
    if tp is float:
        return 1.25
    if tp is bytes:
        return b"\x00\xc3\x01\xff"
    if tp is datetime:
        return datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    if dataclasses.is_dataclass(tp):
        return _build(tp, {})
    raise TypeError(f"no sample for {name}: {tp!r}")


def _build(cls: Any, overrides: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls, vars(ev))
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name == "event_type":
            continue  # has its default
        kwargs[f.name] = overrides[f.name] if f.name in overrides else _value(hints[f.name], f.name)
    return cls(**kwargs)


def sample_event(event_type: str, request_id: str) -> Any:
    """An ``event_type`` event for ``request_id`` with every optional field filled."""
    return _build(
        ev.EVENT_CLASSES[event_type],
        {"request_id": request_id, "event_id": ev.new_event_id(), "producer": ev.producer("tests.infra")},
    )

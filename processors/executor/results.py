"""Result values as canonical JSON: conversion, bounded pages, and the result hash.

Pure: the executor calls these on the masked rows it publishes, and anyone holding the pages
can recompute ``result_sha256`` to check nothing was lost or altered on the way.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

__all__ = ["jsonable", "paginate", "result_sha256"]


def jsonable(value: Any) -> Any:
    """Result values as JSON-safe, type-preserving-enough values (canonical for hashing)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def _line(row: Sequence[Any]) -> bytes:
    return json.dumps(list(row), separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode() + b"\n"


def result_sha256(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """SHA-256 over canonical JSON lines: the column names, then every (masked) row."""
    digest = hashlib.sha256(_line(columns))
    for row in rows:
        digest.update(_line(row))
    return digest.hexdigest()


def paginate(rows: Sequence[Sequence[Any]], max_rows: int, max_bytes: int) -> list[tuple[int, str]]:
    """Split rows into (row_offset, rows_json) pages of at most max_rows rows / ~max_bytes bytes."""
    pages: list[tuple[int, str]] = []
    start, size = 0, 2
    current: list[str] = []
    for i, row in enumerate(rows):
        encoded = json.dumps(list(row), separators=(",", ":"), ensure_ascii=False)
        if current and (len(current) >= max_rows or size + len(encoded) + 1 > max_bytes):
            pages.append((start, "[" + ",".join(current) + "]"))
            start, current, size = i, [], 2
        current.append(encoded)
        size += len(encoded) + 1
    pages.append((start, "[" + ",".join(current) + "]"))
    return pages

"""Reading a pipeline's topics and the warehouse from tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from querytrail.publishing import read_topic
from schemas.codec import EventCodec
from tests.pipeline.pipeline_harness import Pipeline

CODEC = EventCodec()


def events(p: Pipeline, suffix: str, request_id: str | None = None) -> list[Any]:
    out = []
    for msg in read_topic(p.settings, suffix):
        event = CODEC.decode(msg.value() or b"")
        if request_id is None or event.request_id == request_id:
            out.append(event)
    return out


def wait_for(
    p: Pipeline, suffix: str, match: Callable[[Any], bool], timeout: float = 30.0, count: int = 1
) -> list[Any]:
    deadline = time.monotonic() + timeout
    found: list[Any] = []
    while time.monotonic() < deadline:
        found = [e for e in events(p, suffix) if match(e)]
        if len(found) >= count:
            return found
        time.sleep(0.5)
    raise TimeoutError(f"{count} matching event(s) on {suffix} not seen in {timeout}s (saw {len(found)})")


def scalar(p: Pipeline, sql: str) -> Any:
    from processors.executor.runner import connect

    conn = connect(p.settings.snowflake_profiles["analytics"], {})
    try:
        cur = conn.cursor()
        cur.execute(sql)
        row = cur.fetchone()
        return row[0] if row else None
    finally:
        conn.close()

"""querytrail.observability without services: what publishing counts, and the log format."""

from __future__ import annotations

import io
import json
import logging
import logging.config

from prometheus_client import REGISTRY

from querytrail.observability import logging_config, observe_published
from schemas.events import (
    ApprovalRequested,
    ApprovalResolved,
    DeadLetter,
    ExecutionStarted,
    QueryFailed,
    new_event_id,
    producer,
    utcnow,
)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _common(rid: str) -> dict[str, object]:
    return {
        "event_id": new_event_id(),
        "request_id": rid,
        "occurred_at": utcnow(),
        "producer": producer("test"),
    }


def _construct(cls: type, rid: str, **fields: object) -> object:
    """An event with the fields observe_published reads; the others None (dataclasses check no types)."""
    import dataclasses

    required = {
        f.name: None
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return cls(**{**required, **_common(rid), **fields})


def test_approval_wait_execution_time_and_dead_letters_are_counted() -> None:
    rid = f"obs-{new_event_id()}"
    waits = _value("querytrail_approval_wait_seconds_count", outcome="approved")
    failed = _value("querytrail_executor_seconds_count", outcome="error")
    dead = _value("querytrail_dead_letters_total", source_topic="qt.requests")

    observe_published([_construct(ApprovalRequested, rid)])
    observe_published([_construct(ApprovalResolved, rid, outcome="approved", approvers=())])
    observe_published([_construct(ExecutionStarted, rid)])
    observe_published([_construct(QueryFailed, rid, outcome="error")])
    observe_published([_construct(DeadLetter, rid, source_topic="qt.requests", key=None, value=b"\x00")])

    assert _value("querytrail_approval_wait_seconds_count", outcome="approved") == waits + 1
    assert _value("querytrail_executor_seconds_count", outcome="error") == failed + 1
    assert _value("querytrail_dead_letters_total", source_topic="qt.requests") == dead + 1
    # a resolution without a request seen by this process is not a wait of zero
    observe_published([_construct(ApprovalResolved, f"other-{rid}", outcome="approved", approvers=())])
    assert _value("querytrail_approval_wait_seconds_count", outcome="approved") == waits + 1


def test_logging_config_writes_json_lines_with_request_ids_and_no_tokens() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(logging_config("worker", "INFO", "json"))
        stream = io.StringIO()
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjaS1ib3QifQ.c2lnbmF0dXJlc2lnbmF0dXJl"
        logging.getLogger("processors.worker.app").info("decided with %s", token, extra={"request_id": "r-1"})
        record = json.loads(stream.getvalue().splitlines()[-1])
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert record["service"] == "worker" and record["request_id"] == "r-1"
    assert record["logger"] == "processors.worker.app" and token not in record["msg"]

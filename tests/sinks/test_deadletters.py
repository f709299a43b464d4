"""The sink's dead letters go out only for records the table holds, once, and not for records
that will be read again (a re-seek or a revoke forgets them). Real broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from querytrail.publishing import read_topic
from schemas.events import DeadLetter
from sinks.chain import tp_key
from sinks.deadletters import SinkDeadLetters
from sinks.writer import Record, convert

from .helpers import CODEC
from .kafka_helpers import sink_settings, stream

pytestmark = pytest.mark.integration


def _letters(settings: object) -> list[DeadLetter]:
    out = []
    for m in read_topic(settings, "deadletter"):  # type: ignore[arg-type]
        event = CODEC.decode(m.value())
        assert isinstance(event, DeadLetter)
        out.append(event)
    return out


def test_only_stored_records_are_dead_lettered_and_forgotten_ones_are_not(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = sink_settings(tmp_path / "home", kafka_bootstrap, topic_prefix)
    results, requests = f"{topic_prefix}.results", f"{topic_prefix}.requests"
    catalog = f"{topic_prefix}.catalog"
    completed = next(e for e in stream(12) if e.event_type == "QueryCompleted")
    records = [Record(results, 1, o, b"k", b"\xc3\x01bad-%d" % o, None) for o in (3, 7, 11)]
    records += [
        Record(results, 1, 12, b"k", CODEC.encode(completed), None),  # a good one
        Record(requests, 1, 4, b"k", b"junk", None),  # the worker's topic: not the sink's job
        Record(catalog, 0, 5, b"T", b"", None),  # a tombstone on the compacted topic
    ]
    counted = REGISTRY.get_sample_value("querytrail_dead_letters_total", {"source_topic": results}) or 0.0
    dead = SinkDeadLetters(settings, CODEC)
    body = convert(records, CODEC.decode)  # the rows the sink is about to write
    dead.scan(body)
    dead.scan(body)  # a retried flush hands the same batch over again
    assert dead.stored({tp_key(results, 1): 8}) == 2  # offsets 3 and 7 are in the table
    assert dead.stored({tp_key(results, 1): 8}) == 0  # never twice
    dead.forget({(results, 1)})  # re-seek: offset 11 will be read (and checked) again
    assert dead.stored({tp_key(results, 1): 13, tp_key(requests, 1): 5, tp_key(catalog, 0): 6}) == 0
    dead.close()
    assert (
        REGISTRY.get_sample_value("querytrail_dead_letters_total", {"source_topic": results}) == counted + 2
    )
    letters = _letters(settings)
    assert sorted((e.source_topic, e.source_partition, e.source_offset) for e in letters) == [
        (results, 1, 3),
        (results, 1, 7),
    ]
    assert {(e.reason, e.consumer, e.key) for e in letters} == {("undecodable", "sink", b"k")}
    assert [e.value for e in sorted(letters, key=lambda e: e.source_offset)] == [
        b"\xc3\x01bad-3",
        b"\xc3\x01bad-7",
    ]

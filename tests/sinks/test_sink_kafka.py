"""The sink against the real broker: exactly once, across restarts, crashes and catalog outages."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from querytrail.settings import Settings
from sinks.consumer import run_sink
from sinks.table import open_table

from .helpers import verify
from .kafka_helpers import produce, produce_raw, sink_settings, stream, wait_rows

pytestmark = pytest.mark.integration


class _SinkThread:
    def __init__(self, settings: Settings) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(settings,), daemon=True)

    def _run(self, settings: Settings) -> None:
        try:
            run_sink(settings, self.stop)
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def __enter__(self) -> _SinkThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def _assert_exactly_once(settings: Settings, expected: dict[str, int]) -> None:
    rows = open_table(settings).scan(selected_fields=("topic", "partition", "offset", "event_id")).to_arrow()
    keys = list(
        zip(rows["topic"].to_pylist(), rows["partition"].to_pylist(), rows["offset"].to_pylist(), strict=True)
    )
    dupes = [k for k, c in Counter(keys).items() if c > 1]
    assert not dupes, f"{len(dupes)} records stored twice, e.g. {dupes[:3]}"
    assert Counter(rows["topic"].to_pylist()) == Counter(expected)
    assert len(set(rows["event_id"].to_pylist())) == rows.num_rows
    for topic in expected:  # offsets contiguous from 0: nothing lost in between
        for p in {k[1] for k in keys if k[0] == topic}:
            offs = sorted(k[2] for k in keys if k[0] == topic and k[1] == p)
            assert offs == list(range(len(offs))), f"{topic}:{p} has gaps"


def test_stream_lands_exactly_once_and_restart_adds_nothing(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = sink_settings(tmp_path / "home", kafka_bootstrap, topic_prefix)
    counts = produce(kafka_bootstrap, topic_prefix, stream(3000), settings=settings)
    produce_raw(kafka_bootstrap, f"{topic_prefix}.deadletter", b"\x00not avro at all")
    counts[f"{topic_prefix}.deadletter"] = counts.get(f"{topic_prefix}.deadletter", 0) + 1
    with _SinkThread(settings):
        assert wait_rows(settings, 3001) == 3001
    with _SinkThread(settings):  # a restart resumes from the snapshot: nothing re-added
        time.sleep(3)
    _assert_exactly_once(settings, counts)
    # every witness line is on the witness topic too, and verify compares the two
    from sinks.consumer import witness_path
    from sinks.witness import read_witness_topic

    published = read_witness_topic(settings)
    assert published == witness_path(settings).read_bytes().splitlines() and published
    report = verify(settings, published=published)
    assert report.ok, report.problems[:5]
    assert report.witness_published == report.witness_entries == len(published)
    witness_path(settings).write_bytes(b"".join(ln + b"\n" for ln in published[:-1]))
    assert any(p.kind == "witness" for p in verify(settings, published=published).problems)
    rows = open_table(settings).scan(row_filter="event_type == 'Undecodable'").to_arrow()
    assert rows["avro"].to_pylist() == [b"\x00not avro at all"]


def test_catalog_outage_loses_nothing(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Iceberg appends fail for a while (a mock: an outage of a SQLite file cannot be caused
    from outside the process, the open connection pool keeps working); the sink keeps running,
    backs off, re-reads the failed batch from the offsets the table holds, and writes
    everything exactly once when the catalog is back."""
    from pyiceberg.table import Table

    settings = sink_settings(tmp_path / "home", kafka_bootstrap, topic_prefix, commit_interval_s=0.1)
    real_append = Table.append
    failures = {"left": 6}

    def flaky_append(self: Any, *args: Any, **kwargs: Any) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError("catalog unavailable (injected)")
        real_append(self, *args, **kwargs)

    monkeypatch.setattr(Table, "append", flaky_append)
    counts = produce(kafka_bootstrap, topic_prefix, stream(500), settings=settings)
    with _SinkThread(settings):
        assert wait_rows(settings, 500, timeout=180) == 500
    assert failures["left"] == 0
    _assert_exactly_once(settings, counts)
    assert verify(settings).ok


def _spawn(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "QUERYTRAIL_HOME": str(settings.home),
            "QUERYTRAIL_ENVIRONMENT": "local",
            "QUERYTRAIL_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "QUERYTRAIL_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
            "QUERYTRAIL_ICEBERG__COMMIT_INTERVAL_S": str(settings.iceberg.commit_interval_s),
            "QUERYTRAIL_ICEBERG__BATCH_SIZE": str(settings.iceberg.batch_size),
            "QUERYTRAIL_ICEBERG__SINK_WORKERS": "2",  # the crash test also covers the decoding processes
            "QUERYTRAIL_LOG_LEVEL": "WARNING",
        }
    )
    env.pop("QUERYTRAIL_CONFIG", None)
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "sinks"], env=env, stdout=fh, stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.reliability
def test_sigkill_at_random_points_neither_loses_nor_duplicates(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    total = 10_000
    settings = sink_settings(
        tmp_path / "home", kafka_bootstrap, topic_prefix, commit_interval_s=0.2, batch_size=700
    )
    counts: dict[str, int] = {}
    producer = threading.Thread(
        # ~60 s of production, so the five incarnations (each waits out the killed one's session
        # before it is assigned) are killed while rows still arrive, however fast the sink writes
        # (with ~30 s, a loaded CI run once saw the second incarnation start after the last row)
        target=lambda: counts.update(
            produce(kafka_bootstrap, topic_prefix, stream(total), 100, 0.6, settings)
        ),
        daemon=True,
    )
    producer.start()
    rng = random.Random(int(os.environ.get("QT_CRASH_SEED", "0")) or None)
    log = tmp_path / "sink.log"
    kills, progress = 0, []
    for _ in range(5):
        before = wait_rows(settings, total + 1, timeout=0.1)
        proc = _spawn(settings, log)
        # wait until this incarnation commits, then kill it at a random point of its work
        wait_rows(settings, before + 1, timeout=60)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
        progress.append(wait_rows(settings, total + 1, timeout=0.1))
    producer.join(120)
    assert not producer.is_alive()
    proc = _spawn(settings, log)
    try:
        got = wait_rows(settings, total, timeout=240)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert got == total, log.read_text()[-3000:]
    _assert_exactly_once(settings, counts)
    report = verify(settings)
    assert report.ok, report.problems[:5]
    assert kills == 5
    # the kills landed while rows were being written, not only before the first commit
    assert len({p for p in progress if 0 < p < total}) >= 2, progress


def test_garbage_on_topics_only_the_sink_reads_is_dead_lettered_once_after_it_is_stored(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """No processor reads decisions/results/actions/catalog, so the sink dead-letters what is
    unusable there, after its Undecodable row is in the table; a restart sends nothing again.
    A catalog tombstone is not garbage, and garbage on the deadletter topic is only recorded."""
    from querytrail.publishing import read_topic
    from schemas.events import DeadLetter, QueryRequested

    from .helpers import CODEC

    settings = sink_settings(tmp_path / "home", kafka_bootstrap, topic_prefix)
    counts = produce(kafka_bootstrap, topic_prefix, stream(300), settings=settings)
    requested = next(e for e in stream(1) if isinstance(e, QueryRequested))
    bad = {  # topic -> (value, the DeadLetter reason, or None when none is due)
        "results": (b"\xc3\x01not an event", "undecodable"),
        "decisions": (b"", "undecodable"),
        "actions": (CODEC.encode(requested), "unexpected_event"),  # decodes, but not on this topic
        "catalog": (b"", None),  # a tombstone on the compacted topic
        "deadletter": (b"\x00junk", None),
    }
    # keyed as every querytrail producer keys: by request id (a misplaced event's DeadLetter
    # takes its key from the stored row, which keeps the request id, not the raw Kafka key)
    keys = {s: requested.request_id.encode() if s == "actions" else b"junk" for s in bad}
    for suffix, (value, _reason) in bad.items():
        produce_raw(kafka_bootstrap, f"{topic_prefix}.{suffix}", value, keys[suffix])
        counts[f"{topic_prefix}.{suffix}"] = counts.get(f"{topic_prefix}.{suffix}", 0) + 1
    due = {f"{topic_prefix}.{s}": r for s, (_v, r) in bad.items() if r}
    counts[f"{topic_prefix}.deadletter"] += len(due)
    total = sum(counts.values())
    with _SinkThread(settings):
        assert wait_rows(settings, total) == total
    with _SinkThread(settings):  # a restart re-reads nothing, so it dead-letters nothing again
        time.sleep(3)
    _assert_exactly_once(settings, counts)
    assert verify(settings).ok
    raw = [m.value() for m in read_topic(settings, "deadletter")]
    letters = [
        e
        for e in map(CODEC.decode, (v for v in raw if v != bad["deadletter"][0]))
        if isinstance(e, DeadLetter)
    ]
    assert len(letters) == len(raw) - 1
    assert sorted((e.source_topic, e.reason) for e in letters) == sorted(due.items())
    table = open_table(settings).scan(selected_fields=("topic", "partition", "offset", "avro")).to_arrow()
    stored = {
        (t, p, o): a
        for t, p, o, a in zip(
            *(table[c].to_pylist() for c in ("topic", "partition", "offset", "avro")), strict=True
        )
    }
    for e in letters:  # each names the stored record it stands for, bytes intact
        suffix = e.source_topic.rsplit(".", 1)[1]
        assert (e.consumer, e.key, e.value) == ("sink", keys[suffix], bad[suffix][0])
        assert stored[(e.source_topic, e.source_partition, e.source_offset)] == e.value
    rows = open_table(settings).scan(row_filter="event_type == 'Undecodable'").to_arrow()
    assert sorted(rows["topic"].to_pylist()) == sorted(
        f"{topic_prefix}.{s}" for s in ("results", "decisions", "catalog", "deadletter")
    )

"""Benchmark: events/s the audit sink writes into Iceberg, next to bare pyiceberg appends.

Two measurements in one run, on the same rows and batch size, each into a fresh table:

- ``sink``: the whole sink path: Kafka consume (with ``--bootstrap`` or ``--start-broker``; without,
  the same records fed straight to the writer), decode, typed columns, payload JSON, hash chain,
  signed heads in the snapshot summary, one append per flush, witness file, Kafka offset commit.
- ``bare``: ``table.append`` of the arrow rows the sink produced (no decode, no chain), same batches.

Prints events/s, commit latency p50/p99 and data files written for both. Run from the repo root:

    python bench/sink.py --events 100000 --batch 20000
    python bench/sink.py --events 100000 --batch 20000 --start-broker
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from querytrail.settings import IcebergSettings, KafkaSettings, Settings
from schemas import events as ev
from schemas.codec import EventCodec, key_for
from schemas.topics import TOPICS, topic_names

_TOPIC_OF = {event: suffix for suffix, t in TOPICS.items() for event in t.events}
CODEC = EventCodec()


def _events(n: int) -> list[Any]:
    """Request-shaped events: QueryRequested, PolicyDecided, ExecutionStarted, QueryCompleted, ..."""
    ident = ev.VerifiedIdentity(
        subject="ci-bot", issuer="https://issuer", groups=("ci",), claims_json="{}", token_sha256="a" * 64
    )
    start = datetime(2026, 11, 20, tzinfo=UTC)
    out: list[Any] = []
    i = 0
    while len(out) < n:
        rid, at = f"bench-{i}", start + timedelta(milliseconds=i)

        def meta(rid: str = rid, at: datetime = at) -> dict[str, Any]:
            return {
                "event_id": ev.new_event_id(),
                "request_id": rid,
                "occurred_at": at,
                "producer": ev.producer("bench"),
            }

        sql = f"select id, email from analytics.public.customers where id = {i}"
        out += [
            ev.QueryRequested(
                **meta(),
                prompt=f"find customer {i}",
                model="claude",
                sql=sql,
                target=ev.Target(profile="analytics"),
                context=ev.ClientContext(repository="acme/etl"),
                credential=ev.Credential(token_sha256="a" * 64, attested=ident),
            ),
            ev.PolicyDecided(
                **meta(),
                decision="allow",
                rules=("ci-reads-analytics",),
                reasons=("ok",),
                statement="select",
                tables=("ANALYTICS.PUBLIC.CUSTOMERS",),
                findings=(),
                masked_columns=(
                    ev.MaskedColumn(
                        output="EMAIL", source="A.B.C.EMAIL", classification="pii.email", mask="email"
                    ),
                ),
                rewritten_sql=sql,
                estimated_bytes=1000,
                policy_sha256="p" * 64,
                identity=ident,
                sql_text=sql,
                classifications_touched=("pii.email",),
            ),
            ev.ExecutionStarted(
                **meta(),
                authorization_event_id="x",
                statement_sha256="s" * 64,
                query_tag=rid,
                target_profile="analytics",
            ),
            ev.QueryCompleted(
                **meta(),
                row_count=1,
                columns=(ev.ResultColumn(name="EMAIL", type="TEXT", masked=True),),
                elapsed_ms=5,
                result_sha256="r" * 64,
                pages=1,
                truncated=False,
            ),
        ]
        i += 1
    return out[:n]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(name: str, n: int, seconds: float, commits: list[float], files: int) -> dict[str, Any]:
    return {
        "path": name,
        "events": n,
        "seconds": round(seconds, 3),
        "events_per_s": round(n / seconds),
        "commits": len(commits),
        "commit_p50_ms": round(_pct(commits, 0.5) * 1000, 1),
        "commit_p99_ms": round(_pct(commits, 0.99) * 1000, 1),
        "commit_mean_ms": round(statistics.fmean(commits) * 1000, 1) if commits else None,
        "files_written": files,
    }


def bench_writer(
    settings: Settings, encoded: list[tuple[bytes, bytes, str]], batch: int
) -> tuple[dict[str, Any], Any]:
    """The sink's writer fed records directly (no broker)."""
    from sinks.consumer import build_sink
    from sinks.writer import Record

    sink = build_sink(settings)
    offsets: dict[str, int] = {}
    writing = None
    started = time.perf_counter()
    for key, value, topic in encoded:
        partition = hash(key) % 3
        tp = f"{topic}:{partition}"
        off = offsets.get(tp, 0)
        offsets[tp] = off + 1
        sink.add(Record(topic, partition, off, key, value, None))
        if sink.buffered >= batch:  # as SinkRunner does: the append runs while the next batch fills
            sink.settle(writing)
            writing = sink.flush_async()
    sink.settle(writing)
    sink.flush()
    elapsed = time.perf_counter() - started
    return _summary(
        "sink (writer, no broker)", len(encoded), elapsed, sink.commit_seconds, sink.files_written
    ), sink


def bench_kafka(settings: Settings, encoded: list[tuple[bytes, bytes, str]]) -> tuple[dict[str, Any], Any]:
    """Produce everything first, then time the real sink loop from start to the last commit."""
    from confluent_kafka import Producer

    from infra.topics import create_topics
    from sinks.consumer import SinkRunner

    create_topics(settings.kafka.bootstrap_servers, settings.kafka.topic_prefix)
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "linger.ms": 20,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    for key, value, topic in encoded:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    stop = threading.Event()
    runner = SinkRunner(settings, stop)
    thread = threading.Thread(target=runner.run, daemon=True)
    started = time.perf_counter()
    thread.start()
    total = len(encoded)
    while True:
        done = sum(runner.sink.state.offsets.values())
        if done >= total:
            break
        time.sleep(0.01)
    done_at = time.perf_counter()
    stop.set()
    thread.join(60)
    result = _summary(
        "sink (kafka -> iceberg)",
        total,
        done_at - started,
        runner.sink.commit_seconds,
        runner.sink.files_written,
    )
    if runner.assigned_at is not None:  # without the consumer group join (~3 s initial rebalance delay)
        result["events_per_s_after_assignment"] = round(total / (done_at - runner.assigned_at))
    return result, runner.sink


def bench_bare(settings: Settings, source_table: Any, batch: int) -> dict[str, Any]:
    """Bare pyiceberg appends of the very rows the sink wrote, in the same batch size."""
    from pyiceberg.catalog import load_catalog

    from sinks.audit_schema import PARTITION_SPEC, SCHEMA
    from sinks.table import catalog_properties

    rows = source_table.scan().to_arrow()
    catalog = load_catalog("bare", **catalog_properties(settings))
    catalog.create_namespace_if_not_exists("bare")
    tbl = catalog.create_table(
        f"bare.events_{uuid.uuid4().hex[:6]}",
        schema=SCHEMA,
        partition_spec=PARTITION_SPEC,
        properties={"write.parquet.compression-codec": "zstd"},
    )
    commits: list[float] = []
    files = 0
    started = time.perf_counter()
    for start in range(0, rows.num_rows, batch):
        t0 = time.perf_counter()
        tbl.append(rows.slice(start, batch))
        commits.append(time.perf_counter() - t0)
        snap = tbl.current_snapshot()
        summary = snap.summary if snap is not None else None
        files += int(summary.additional_properties.get("added-data-files", 0)) if summary else 0
    return _summary("bare pyiceberg append", rows.num_rows, time.perf_counter() - started, commits, files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--batch", type=int, default=20_000, help="rows per Iceberg append (iceberg.batch_size)"
    )
    parser.add_argument("--bootstrap", help="a running Kafka broker: measure the real consume path")
    parser.add_argument("--start-broker", action="store_true", help="start a local broker (infra.kafka)")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (iceberg.sink_workers)")
    parser.add_argument("--home", type=Path, help="where to put the tables (default: a temp dir)")
    args = parser.parse_args(argv)

    home = args.home or Path(tempfile.mkdtemp(prefix="qt-bench-"))
    broker = None
    bootstrap = args.bootstrap
    if args.start_broker:
        from infra.kafka import KafkaBroker

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests/
        from tests.conftest import free_port, jar_cache

        broker = KafkaBroker(home / "kafka", free_port(), free_port(), jar_cache=jar_cache())
        broker.start(timeout=180)
        bootstrap = broker.bootstrap
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    settings = Settings(
        home=home,
        environment="local",
        kafka=KafkaSettings(bootstrap_servers=bootstrap or "127.0.0.1:1", topic_prefix=prefix),
        iceberg=IcebergSettings(batch_size=args.batch, commit_interval_s=1.0, sink_workers=args.workers),
    )
    names = topic_names(prefix)
    print(f"encoding {args.events} events ...", file=sys.stderr)
    encoded = [(key_for(e), CODEC.encode(e), names[_TOPIC_OF[e.event_type]]) for e in _events(args.events)]
    try:
        if bootstrap:
            result, sink = bench_kafka(settings, encoded)
        else:
            result, sink = bench_writer(settings, encoded, args.batch)
        sink.close()
        bare = bench_bare(settings, sink.table, args.batch)
    finally:
        if broker is not None:
            broker.stop()
    result["workers"] = args.workers
    for r in (result, bare):
        print(json.dumps(r))
    print(f"sink / bare throughput: {result['events_per_s'] / bare['events_per_s']:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

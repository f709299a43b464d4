"""``querytrail sink``: the Kafka loop that feeds the Iceberg writer.

Iceberg first, Kafka second: offsets are committed to Kafka only after the append that holds
them succeeded, and the consumer always positions itself from the table's last snapshot (on
start and on every assignment), so a crash at any point neither loses nor duplicates a row.
When the catalog is unavailable the sink pauses its partitions, keeps polling (so it stays in
the group), retries with backoff and never commits Kafka offsets for unwritten rows.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import Future
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from querytrail.keys import KID_HEADER, SIG_HEADER, header_value
from querytrail.observability import SINK_COMMIT_LATENCY
from querytrail.settings import Settings
from schemas.topics import group_id, topic_names
from sinks.chain import ensure_keypair, load_signer, tp_key
from sinks.deadletters import SinkDeadLetters
from sinks.table import load_or_create_table
from sinks.writer import IcebergSink, Record, StaleStateError, no_cyclic_gc

__all__ = ["SinkRunner", "build_sink", "consumer_config", "run_sink", "witness_path", "witness_publisher"]

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 30.0


def witness_path(settings: Settings) -> Any:
    return settings.home / "witness.jsonl"


def consumer_config(settings: Settings) -> dict[str, Any]:
    conf = settings.kafka.confluent_config()
    conf.update(
        {
            "group.id": group_id("sink", settings.kafka.topic_prefix),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            "fetch.min.bytes": 1,
            "queued.max.messages.kbytes": 65536,
        }
    )
    return conf


def build_sink(settings: Settings) -> IcebergSink:
    """The writer with its table, signing key and codec (creates the local key when missing)."""
    from schemas.codec import EventCodec

    private = settings.key_path("chain_signing_key")
    public = settings.key_path("chain_verify_key")
    if settings.environment == "local":
        ensure_keypair(private, public)
    codec = EventCodec(settings.kafka.schema_registry_url)
    return IcebergSink(
        load_or_create_table(settings),
        load_signer(private),
        codec.decode,
        witness_path(settings),
        workers=settings.iceberg.sink_workers,
        publish_witness=witness_publisher(settings),
    )


def witness_publisher(settings: Settings) -> Any:
    """``publish(key, line)`` onto the witness topic, acknowledged (acks=all) or raising."""
    from querytrail.kafka_clients import make_producer, produce_sync
    from schemas.topics import WITNESS

    topic = WITNESS.name(settings.kafka.topic_prefix)
    producer: list[Any] = []  # created on first use: the sink forks its decoders before any client

    def publish(key: bytes, line: bytes) -> None:
        if not producer:
            producer.append(make_producer(settings.kafka, **{"linger.ms": 0}))
        produce_sync(producer[0], topic, line, key=key, timeout=10.0)

    return publish


class SinkRunner:
    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.sink = build_sink(settings)
        self.dead = SinkDeadLetters(settings)
        self.sink.on_batch = self.dead.scan  # held until the append that stores them succeeds
        self.consumer = Consumer(consumer_config(settings))
        self.assigned: list[TopicPartition] = []
        self.assigned_at: float | None = None
        self.paused = False
        self._writing: Future[None] | None = None  # the batch being appended in the background

    # rebalance callbacks: position from the table, never from Kafka's committed offsets
    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._settle()
        except Exception:  # the table, reloaded below, says where to resume
            log.warning("background append failed before an assignment", exc_info=True)
            self.sink.drop()
        state = self._reload_with_retry()
        self.dead.forget()  # anything stored was dead-lettered by _settle; the rest is re-read
        for tp in partitions:
            nxt = state.offsets.get(tp_key(tp.topic, tp.partition))
            tp.offset = nxt if nxt is not None else OFFSET_BEGINNING
        consumer.assign(partitions)
        self.assigned = list(partitions)
        self.assigned_at = time.perf_counter()
        log.info("assigned %s", {tp_key(t.topic, t.partition): t.offset for t in partitions})

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._flush()
        except Exception:
            log.warning("flush on revoke failed; the rows will be re-read by the next owner", exc_info=True)
        revoked = {(t.topic, t.partition) for t in partitions}
        self.sink.drop(revoked)
        self.dead.forget(revoked)
        self.assigned = []

    def _reload_with_retry(self) -> Any:
        delay = 0.5
        while True:
            try:
                return self.sink.reload()
            except Exception:
                if self.stop.is_set():
                    raise
                log.warning("catalog unavailable while positioning; retrying in %.1fs", delay, exc_info=True)
                time.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)

    def _reseek(self) -> None:
        """Forget the buffer and position every assigned partition from the table."""
        try:
            self._settle()
        except Exception:  # its rows are re-read from the table's offsets like the rest
            log.warning("background append failed; re-reading its rows", exc_info=True)
        self.sink.drop()
        self.dead.forget()
        state = self._reload_with_retry()
        for tp in self.assigned:
            nxt = state.offsets.get(tp_key(tp.topic, tp.partition))
            self.consumer.seek(
                TopicPartition(tp.topic, tp.partition, nxt if nxt is not None else OFFSET_BEGINNING)
            )

    def _settle(self) -> None:
        """Wait for the background append (raising its error), then record offsets in Kafka."""
        writing, self._writing = self._writing, None
        if writing is None:
            return
        self.sink.settle(writing)
        if self.sink.commit_seconds:
            SINK_COMMIT_LATENCY.observe(self.sink.commit_seconds[-1])
        self._commit_offsets()

    def _flush(self) -> bool:
        """Synchronous: the background append, then whatever is buffered (revoke, stop)."""
        self._settle()
        started = time.monotonic()
        if not self.sink.flush():
            return False
        SINK_COMMIT_LATENCY.observe(time.monotonic() - started)
        self._commit_offsets()
        return True

    def _commit_offsets(self) -> None:
        """After an append: dead-letter what it stored, then record the offsets in Kafka."""
        self.dead.stored(self.sink.state.offsets)
        offsets = [
            TopicPartition(t.topic, t.partition, self.sink.state.offsets[k])
            for t in self.assigned
            if (k := tp_key(t.topic, t.partition)) in self.sink.state.offsets
        ]
        if offsets:
            try:  # Kafka's committed offsets are only for lag monitoring: the table is the truth
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except Exception:
                log.warning("kafka offset commit failed (the table holds the offsets)", exc_info=True)

    def _take(self, messages: list[Any]) -> None:
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            ts_type, ts = msg.timestamp()
            headers = msg.headers()
            kid = header_value(headers, KID_HEADER)
            record = Record(
                str(msg.topic()),
                int(msg.partition() or 0),
                int(msg.offset() or 0),
                msg.key(),
                msg.value() or b"",
                ts if ts_type else None,
                header_value(headers, SIG_HEADER),  # the witness travels with the row
                kid.decode("utf-8", "replace") if kid is not None else None,
            )
            self.dead.check_signature(record, headers)
            self.sink.add(record)

    def run(self) -> None:
        cfg = self.settings.iceberg
        topics = sorted(topic_names(self.settings.kafka.topic_prefix).values())
        self.consumer.subscribe(topics, on_assign=self.on_assign, on_revoke=self.on_revoke)
        log.info("sink consuming %d topics into %s", len(topics), cfg.table)
        last_flush, delay = time.monotonic(), 0.5
        try:
            while not self.stop.is_set():
                room = max(1, cfg.batch_size - self.sink.buffered)
                with no_cyclic_gc():  # thousands of acyclic objects per batch: see writer.py
                    self._take(self.consumer.consume(num_messages=min(room, 10_000), timeout=0.1))
                self.dead.poll()
                due = time.monotonic() - last_flush >= cfg.commit_interval_s
                flush = bool(self.sink.buffered) and (due or self.sink.buffered >= cfg.batch_size)
                finished = self._writing is not None and self._writing.done()
                if flush or finished:
                    try:
                        had_write = self._writing is not None
                        self._settle()  # the previous batch first: appends chain on each other
                        if had_write:
                            delay = 0.5  # an append went through
                        if flush:
                            self._writing = self.sink.flush_async()
                            last_flush = time.monotonic()
                    except StaleStateError as exc:
                        log.warning("table moved under the sink (%s); re-positioning from it", exc)
                        self._reseek()
                    except Exception:
                        # The failed batch is no longer buffered: drop what followed it too and
                        # re-read everything from the offsets the table holds, after a pause.
                        log.warning(
                            "iceberg append failed; re-reading from the table's offsets in %.1fs",
                            delay,
                            exc_info=True,
                        )
                        self._pause(True)
                        self.stop.wait(delay)
                        delay = min(delay * 2, _MAX_BACKOFF_S)
                        self._reseek()
                        self._pause(False)
                        continue
                    self._pause(False)
            self._flush()
        finally:
            self.consumer.close()
            self.sink.close()
            self.dead.close()

    def _pause(self, pause: bool) -> None:
        if pause == self.paused or not self.assigned:
            return
        (self.consumer.pause if pause else self.consumer.resume)(self.assigned)
        self.paused = pause


def run_sink(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); flushes what it holds on the way out."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: _request_stop(stop))
    SinkRunner(settings, stop).run()
    return 0


_SHUTDOWN_GRACE_S = 20.0


def _request_stop(stop: threading.Event) -> None:
    """Stop cleanly, but never linger: a closing consumer can block for a long time when the
    broker is already gone. Exiting hard after a grace period is safe because the table, not
    Kafka, holds the offsets (the next start resumes from the last snapshot)."""
    if stop.is_set():  # a second signal: the operator means it
        os._exit(1)
    stop.set()
    timer = threading.Timer(_SHUTDOWN_GRACE_S, os._exit, args=(0,))
    timer.daemon = True
    timer.start()

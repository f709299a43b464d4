"""Background reader of the decisions and results topics feeding an OutcomeIndex (the ingress's long poll).

It uses its own consumer group and no commits: on start it seeks every partition to the
offsets of ``lookback_s`` ago, so a restarted ingress still answers for recent requests.
Undecodable records, and records no key trusted for their topic signed (querytrail.keys), are
logged and skipped: the processors and the sink own dead-lettering for these topics, and a
reader must not write duplicates there.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from ingress.outcomes import OutcomeIndex
from querytrail.keys import SignatureError, event_verifier
from querytrail.settings import Settings
from schemas.topics import topic_names

__all__ = ["OutcomeIndexer", "assign_from"]

log = logging.getLogger(__name__)


def assign_from(consumer: Any, topics: list[str], *, timestamp_ms: int | None, timeout: float = 5.0) -> None:
    """Assign every partition of ``topics``: at ``timestamp_ms``, or at the log end when None."""
    parts: list[TopicPartition] = []
    metadata = consumer.list_topics(timeout=timeout)
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic} not found"))
        for p in sorted(meta.partitions):
            if timestamp_ms is None:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                parts.append(TopicPartition(topic, p, high))
            else:
                parts.append(TopicPartition(topic, p, timestamp_ms))
    if timestamp_ms is not None:
        found = consumer.offsets_for_times(parts, timeout=timeout)
        # -1 means "no record that new": start at the end of that partition.
        parts = [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else -1) for tp in found]
    consumer.assign(parts)


class OutcomeIndexer(threading.Thread):
    """Daemon thread: poll decisions+results, decode, fold into ``index``."""

    def __init__(self, settings: Settings, index: OutcomeIndex, codec: Any) -> None:
        super().__init__(name="outcome-indexer", daemon=True)
        self._settings = settings
        self._index = index
        self._codec = codec
        self._stop_event = threading.Event()
        self.assigned = threading.Event()  # set once it reads; readiness and tests wait on it
        names = topic_names(settings.kafka.topic_prefix)
        self._topics = [names["decisions"], names["results"]]
        self._records = event_verifier(
            settings, service=True
        )  # only what the services signed changes an outcome

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        from querytrail.kafka_clients import make_consumer

        consumer = make_consumer(
            self._settings.kafka,
            f"querytrail-ingress-{uuid.uuid4().hex[:12]}",
            **{"enable.partition.eof": False},
        )
        try:
            since = int((time.time() - self._settings.ingress.index_lookback_s) * 1000)
            while not self._stop_event.is_set() and not self.assigned.is_set():
                try:
                    assign_from(consumer, self._topics, timestamp_ms=since)
                    self.assigned.set()
                except KafkaException as exc:
                    log.warning("outcome index cannot assign %s yet: %s", self._topics, exc)
                    self._stop_event.wait(1.0)
            while not self._stop_event.is_set():
                msg = consumer.poll(0.25)
                if msg is None:
                    continue
                if msg.error() is not None:
                    log.debug("consumer error: %s", msg.error())
                    continue
                self._handle(msg)
        finally:
            consumer.close()

    def _handle(self, msg: Any) -> None:
        try:
            event = self._codec.decode(msg.value())
        except Exception:  # DecodeError, or anything a corrupt record provokes
            log.warning(
                "skipping undecodable record %s[%d]@%d",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                exc_info=True,
            )
            return
        try:
            self._records.verify(msg.topic() or "", msg.value() or b"", msg.headers())
        except SignatureError as exc:  # the sink dead-letters it: these topics are its to report
            log.warning(
                "refusing record %s[%d]@%d: %s",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                exc,
                extra={"request_id": getattr(event, "request_id", None)},
            )
            return
        self._index.apply(event)

"""Kafka edges shared by the worker and the executor: publish events, dead-letter, read a topic.

Each event type's topic is declared once (``schemas.topics``); callers publish events and
never name topics or encode by hand. ``Publisher.publish`` waits for every acknowledgement
(acks=all), so a caller commits its input offset only after its outputs are durable: the
at-least-once half of every processor. The other half is deduplication in the consumer.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator

from confluent_kafka import KafkaError, Message, TopicPartition

from querytrail.kafka_clients import QtConsumer, QtProducer, make_consumer, make_producer
from querytrail.keys import EventSigner, event_signer
from querytrail.observability import observe_published
from querytrail.settings import Settings
from schemas.codec import EventCodec, key_for
from schemas.events import DeadLetter, Event, envelope, new_event_id
from schemas.topics import TOPICS, topic_names

__all__ = ["PRODUCER_MAX_BYTES", "PublishError", "Publisher", "dead_letter_event", "read_topic", "topic_for"]

log = logging.getLogger(__name__)

_TOPIC_OF = {event: suffix for suffix, topic in TOPICS.items() for event in topic.events}


_MAX_RECORD = 8 * 1024 * 1024  # the topics' max.message.bytes (schemas.topics)
_MAX_DEAD_VALUE = _MAX_RECORD - 64 * 1024  # room for the DeadLetter's other fields
# librdkafka's message.max.bytes for producers of events (its default cap is 1 MB)
PRODUCER_MAX_BYTES = _MAX_RECORD + 1_048_576


def topic_for(event: Event) -> str:
    """The topic suffix an event type belongs on (``schemas.topics``)."""
    return _TOPIC_OF[event.event_type]


class PublishError(RuntimeError):
    """An event was not acknowledged by the broker."""


class Publisher:
    """Encodes events with the codec and produces them keyed by request id to their topic."""

    def __init__(
        self,
        settings: Settings,
        component: str,
        codec: EventCodec | None = None,
        signer: EventSigner | None = None,
    ) -> None:
        self.settings = settings
        self.component = component
        # a service signs every record it publishes (querytrail.keys); other callers do not
        self.signer = signer if signer is not None else event_signer(settings, component)
        self.topics = topic_names(settings.kafka.topic_prefix)
        self.codec = codec or EventCodec(settings.kafka.schema_registry_url)
        # Each publish waits for its acknowledgement, so batching delay is pure latency here.
        # Records up to the topics' max.message.bytes (8 MiB) must be publishable, above all as
        # DeadLetters carrying an undecodable record's bytes (librdkafka's default cap is 1 MB).
        self.producer: QtProducer = make_producer(
            settings.kafka, **{"linger.ms": 0, "message.max.bytes": PRODUCER_MAX_BYTES}
        )

    def publish(self, events: Iterable[Event], timeout: float = 30.0) -> None:
        """Produce ``events`` in order and wait until the broker acknowledged all of them.

        Thread-safe: delivery callbacks may run in another thread's poll/flush, so each call
        counts its own acknowledgements under a lock.
        """
        lock = threading.Lock()
        errors: list[KafkaError] = []
        pending = [0]
        all_acked = threading.Event()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            with lock:
                pending[0] -= 1
                if err is not None:
                    errors.append(err)
                if pending[0] == 0:
                    all_acked.set()

        events = list(events)
        batch = [(self.topics[topic_for(e)], self.codec.encode(e), key_for(e)) for e in events]
        if not batch:
            return
        with lock:
            pending[0] = len(batch)
        signer = self.signer
        for topic, value, key in batch:
            headers = signer.headers(topic, value) if signer is not None else None
            self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            self.producer.poll(0)
        deadline = time.monotonic() + timeout
        while not all_acked.is_set():
            if time.monotonic() > deadline:
                raise PublishError(f"{pending[0]} event(s) not acknowledged within {timeout:.0f}s")
            self.producer.poll(0.01)  # serves delivery callbacks (ours or other threads')
        if errors:
            raise PublishError(f"publish failed: {errors[0]}")
        observe_published(events)  # Prometheus: decisions, approval waits, execution time, dead letters

    def dead_letter(self, msg: Message, reason: str, error: str) -> None:
        """Send an unusable confluent-kafka record to the dead-letter topic, bytes intact."""
        where = (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
        self.publish([dead_letter_event(self.component, *where, msg.key(), msg.value(), reason, error)])


def dead_letter_event(
    component: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    error: str,
) -> DeadLetter:
    """The DeadLetter for one unusable record, its bytes kept (a prefix and a hash if too large)."""
    value = value or b""
    if len(value) > _MAX_DEAD_VALUE:
        # the envelope must fit the topic: keep a prefix and the whole value's hash
        digest = hashlib.sha256(value).hexdigest()
        error = f"{error[:1500]} [value truncated from {len(value)} bytes; sha256 {digest}]"
        value = value[:_MAX_DEAD_VALUE]
    event = DeadLetter(
        **envelope(key.decode("utf-8", "replace") if key else "", component),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        key=key,
        value=value,
        reason=reason,
        error=error[:2000],
        consumer=component,
    )
    log.warning(
        "dead-lettered %s[%s]@%s: %s",
        topic,
        partition,
        offset,
        reason,
        extra={"request_id": event.request_id},
    )
    return event


def read_topic(settings: Settings, suffix: str, timeout: float = 30.0) -> Iterator[Message]:
    """Every record currently in a topic (all partitions, from the beginning to the end)."""
    consumer: QtConsumer = make_consumer(
        settings.kafka, group_id=f"qt-reader-{new_event_id()}", **{"enable.partition.eof": True}
    )
    name = topic_names(settings.kafka.topic_prefix)[suffix]
    try:
        meta = consumer.list_topics(name, timeout=10)
        parts = meta.topics[name].partitions if name in meta.topics else {}
        ends: dict[int, int] = {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
            if high > low:
                ends[p] = high
        if not ends:
            return
        consumer.assign([TopicPartition(name, p, 0) for p in ends])
        # offset 0 below the low watermark is reset to the earliest by auto.offset.reset
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {name} did not reach its end within {timeout:.0f}s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition() or 0)
                    continue
                raise RuntimeError(f"reading {name}: {err}")
            yield msg
            if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                done.add(msg.partition() or 0)
    finally:
        consumer.close()

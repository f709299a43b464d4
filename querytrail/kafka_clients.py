"""confluent-kafka producers and consumers configured from ``settings.kafka``.

Every producer is idempotent with ``acks=all`` and the ``murmur2_random`` partitioner, the
partitioner of the Java client and aiokafka, so one request id (the key) lands in the same
partition number whichever client produced it. Every wait is bounded: when the broker is gone a
call fails with ``KafkaUnavailableError`` naming the bootstrap servers instead of hanging.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from schemas.topics import GROUPS, group_id

if TYPE_CHECKING:
    from querytrail.settings import KafkaSettings, Settings

__all__ = [
    "KafkaUnavailableError",
    "QtConsumer",
    "QtProducer",
    "consumer_groups",
    "consumer_lag",
    "make_consumer",
    "make_producer",
    "partition_lag",
    "poll_messages",
    "produce_sync",
]

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger("querytrail.rdkafka")

# librdkafka error codes that mean "no broker to talk to".
_UNREACHABLE = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._MSG_TIMED_OUT}


class KafkaUnavailableError(RuntimeError):
    """The Kafka broker(s) could not be reached within the bounded time."""


class _Watch:
    """error_cb target remembering whether every broker is down (and since when)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.down_since: float | None = None
        self.last_error: str | None = None

    def __call__(self, err: KafkaError) -> None:
        self.last_error = str(err)
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.down_since = self.down_since or time.monotonic()
            log.warning("Kafka broker(s) %s unreachable: %s", self.bootstrap, err)
        elif err.fatal():
            log.error("fatal Kafka client error (%s): %s", self.bootstrap, err)
        else:
            log.debug("Kafka client error (%s): %s", self.bootstrap, err)

    def up(self) -> None:
        self.down_since = None

    def error(self, what: str) -> KafkaUnavailableError:
        detail = f": {self.last_error}" if self.last_error else ""
        return KafkaUnavailableError(f"{what}: Kafka broker {self.bootstrap} is unreachable{detail}")


class QtProducer(Producer):
    """A confluent-kafka Producer that knows its bootstrap servers (for error messages)."""

    bootstrap: str
    watch: _Watch


class QtConsumer(Consumer):
    """A confluent-kafka Consumer that knows its bootstrap servers (for error messages)."""

    bootstrap: str
    watch: _Watch


def make_producer(kafka: KafkaSettings, **overrides: Any) -> QtProducer:
    """An idempotent, acks=all, murmur2 producer; ``overrides`` are librdkafka settings."""
    conf = kafka.confluent_config()
    watch = _Watch(conf["bootstrap.servers"])
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "message.timeout.ms": int(kafka.delivery_timeout_s * 1000),
            "socket.connection.setup.timeout.ms": 5000,
            "linger.ms": 5,
            "error_cb": watch,
            "logger": _rdkafka_log,
        }
    )
    conf.update(overrides)
    producer = QtProducer(conf)
    producer.bootstrap, producer.watch = watch.bootstrap, watch
    return producer


def make_consumer(kafka: KafkaSettings, group_id: str, **overrides: Any) -> QtConsumer:
    """A consumer that commits only when told to and reads only committed transactions."""
    conf = kafka.confluent_config()
    watch = _Watch(conf["bootstrap.servers"])
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "socket.connection.setup.timeout.ms": 5000,
            "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
            "error_cb": watch,
            "logger": _rdkafka_log,
        }
    )
    conf.update(overrides)
    consumer = QtConsumer(conf)
    consumer.bootstrap, consumer.watch = watch.bootstrap, watch
    return consumer


def produce_sync(
    producer: QtProducer,
    topic: str,
    value: bytes,
    key: bytes | None = None,
    timeout: float = 30.0,
    headers: list[tuple[str, str | bytes | None]] | None = None,
) -> Message:
    """Produce one record and wait for its acknowledgement; the delivered Message."""
    result: list[tuple[KafkaError | None, Message]] = []
    producer.produce(
        topic, value=value, key=key, headers=headers, on_delivery=lambda err, msg: result.append((err, msg))
    )
    deadline = time.monotonic() + timeout
    while not result:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise producer.watch.error(f"no acknowledgement for {topic} within {timeout:.0f}s")
        producer.poll(min(remaining, 0.2))
    err, msg = result[0]
    if err is not None:
        if err.code() in _UNREACHABLE:
            raise producer.watch.error(f"producing to {topic} failed ({err.name()})")
        raise KafkaException(err)
    producer.watch.up()
    return msg


def poll_messages(
    consumer: QtConsumer, count: int, timeout: float = 30.0, broker_down_grace_s: float = 5.0
) -> list[Message]:
    """Poll until ``count`` messages arrived; raise when the broker is gone or time runs out."""
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"got {len(out)} of {count} messages from Kafka broker {consumer.bootstrap} in {timeout:.0f}s"
            )
        down = consumer.watch.down_since
        if down is not None and time.monotonic() - down > broker_down_grace_s:
            raise consumer.watch.error(f"consuming ({len(out)} of {count} messages received)")
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            if err.code() in _UNREACHABLE:
                consumer.watch(err)
                continue
            raise KafkaException(err)
        consumer.watch.up()
        out.append(msg)
    return out


def consumer_groups(settings: Settings) -> dict[str, str]:
    """service -> the consumer group whose committed offsets show how far behind it is."""
    return {service: group_id(service, settings.kafka.topic_prefix) for service in GROUPS}


def consumer_lag(settings: Settings, groups: list[str], timeout: float = 5.0) -> dict[str, dict[str, int]]:
    """group -> {topic: messages behind the log end}; a group whose offsets cannot be read is left out."""
    out: dict[str, dict[str, int]] = {}
    for group in groups:
        try:
            parts = partition_lag(settings, group, timeout)
        except Exception:  # noqa: S112 -- an unknown group or the broker down: no lag to show
            continue
        lag: dict[str, int] = {}
        for (topic, _), behind in parts.items():
            lag[topic] = lag.get(topic, 0) + behind
        out[group] = lag
    return out


def partition_lag(settings: Settings, group: str, timeout: float = 5.0) -> dict[tuple[str, int], int]:
    """(topic, partition) -> messages between ``group``'s committed offset and the log end.

    Only partitions the group has committed an offset for. The committed offsets are read with a
    consumer carrying the group's id that never subscribes (so it never joins the group or
    disturbs its members), not with AdminClient.list_consumer_group_offsets: confluent-kafka
    2.16 segfaults on that call while a fresh broker has no group coordinator yet.
    """
    from confluent_kafka import Consumer, TopicPartition

    conf: dict[str, Any] = {
        **settings.kafka.confluent_config(),
        "logger": logging.getLogger("querytrail.rdkafka"),
        "group.id": group,
        "enable.auto.commit": False,
    }
    probe = Consumer(conf)
    try:
        prefix = settings.kafka.topic_prefix + "."
        meta = probe.list_topics(timeout=timeout)
        parts = [
            TopicPartition(name, p)
            for name, topic in meta.topics.items()
            if name.startswith(prefix)
            for p in topic.partitions
        ]
        out: dict[tuple[str, int], int] = {}
        for tp in probe.committed(parts, timeout=timeout) if parts else []:
            if tp.error is not None or tp.offset < 0:
                continue  # nothing committed there by this group
            _, high = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=timeout)
            out[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return out
    finally:
        probe.close()

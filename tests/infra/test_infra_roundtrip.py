"""Every event type through the real broker with confluent-kafka and with aiokafka (faust's client).

Keyed by ``schemas.codec.key_for`` (the request id; the table name for CatalogTable), a record
lands in the same partition number whichever client produced it: both use murmur2.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2
from confluent_kafka import OFFSET_BEGINNING
from confluent_kafka import TopicPartition as CTopicPartition

from querytrail.kafka_clients import make_consumer, make_producer, poll_messages, produce_sync
from querytrail.settings import KafkaSettings
from schemas.codec import EventCodec, key_for
from schemas.events import EVENT_CLASSES
from schemas.topics import TOPICS
from tests.infra.infra_events_sample import sample_event

pytestmark = pytest.mark.integration

PARTITIONS = 3
TOPIC_OF = {event: suffix for suffix, topic in TOPICS.items() for event in topic.events}


def _events() -> list[tuple[str, Any]]:
    # Several distinct request ids so the keys spread over the partitions.
    return [(name, sample_event(name, f"req-{uuid.uuid4()}")) for name in sorted(EVENT_CLASSES)]


def _expected_partition(key: bytes) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS  # the Java client's formula


def test_every_event_type_has_a_topic() -> None:
    assert set(EVENT_CLASSES) <= set(TOPIC_OF)


async def _aio_consume(bootstrap: str, topics: list[str], count: int, timeout: float = 30.0) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=10000
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(t, p) for t in topics for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        out: list[Any] = []
        async with asyncio.timeout(timeout):
            while len(out) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend(records)
        return out
    finally:
        await consumer.stop()


async def _aio_produce(bootstrap: str, records: list[tuple[str, bytes, bytes]]) -> list[int]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", request_timeout_ms=10000
    )
    await producer.start()
    try:
        async with asyncio.timeout(30):
            return [(await producer.send_and_wait(t, v, key=k)).partition for t, k, v in records]
    finally:
        await producer.stop()


def test_confluent_produced_events_decode_via_aiokafka(kafka_bootstrap: str, topic_prefix: str) -> None:
    codec = EventCodec()
    events = _events()
    producer = make_producer(KafkaSettings(bootstrap_servers=kafka_bootstrap))
    sent: dict[bytes, tuple[Any, int]] = {}
    for name, event in events:
        topic = TOPICS[TOPIC_OF[name]].name(topic_prefix)
        msg = produce_sync(producer, topic, codec.encode(event), key=key_for(event))
        assert msg.partition() == _expected_partition(key_for(event)), name
        sent[key_for(event)] = (event, msg.partition())

    topics = sorted({TOPICS[TOPIC_OF[n]].name(topic_prefix) for n, _ in events})
    received = asyncio.run(_aio_consume(kafka_bootstrap, topics, len(events)))
    assert len(received) == len(events)
    for rec in received:
        event, partition = sent[rec.key]
        assert codec.decode(rec.value) == event
        assert rec.partition == partition


def test_aiokafka_produced_events_decode_via_confluent(kafka_bootstrap: str, topic_prefix: str) -> None:
    codec = EventCodec()
    events = _events()
    records = [(TOPICS[TOPIC_OF[n]].name(topic_prefix), key_for(e), codec.encode(e)) for n, e in events]
    partitions = asyncio.run(_aio_produce(kafka_bootstrap, records))
    for (name, event), partition in zip(events, partitions, strict=True):
        assert partition == _expected_partition(key_for(event)), name

    consumer = make_consumer(KafkaSettings(bootstrap_servers=kafka_bootstrap), group_id=f"g-{uuid.uuid4()}")
    try:
        topics = sorted({t for t, _, _ in records})
        consumer.assign([CTopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(PARTITIONS)])
        messages = poll_messages(consumer, len(events), timeout=30)
    finally:
        consumer.close()
    by_key = {key_for(e): (e, p) for (_, e), p in zip(events, partitions, strict=True)}
    for msg in messages:
        event, partition = by_key[msg.key()]
        assert codec.decode(msg.value()) == event
        assert msg.partition() == partition


def test_same_key_same_partition_number_from_both_clients(kafka_bootstrap: str, topic_prefix: str) -> None:
    keys = [f"req-{uuid.uuid4()}".encode() for _ in range(30)]
    topic = TOPICS["requests"].name(topic_prefix)
    producer = make_producer(KafkaSettings(bootstrap_servers=kafka_bootstrap))
    confluent = [produce_sync(producer, topic, b"c", key=k).partition() for k in keys]
    aio = asyncio.run(_aio_produce(kafka_bootstrap, [(topic, k, b"a") for k in keys]))
    assert confluent == aio == [_expected_partition(k) for k in keys]
    assert len(set(confluent)) > 1  # the keys really spread, so agreement is not trivial


def test_faust_producer_round_trip_same_partitions(kafka_bootstrap: str, topic_prefix: str) -> None:
    """faust-streaming's own producer (aiokafka underneath) on the 4.x broker, raw bytes values."""
    import faust

    codec = EventCodec()
    events = _events()

    async def produce() -> list[int]:
        app = faust.App(
            f"qt-infra-{uuid.uuid4().hex[:8]}",
            broker=f"kafka://{kafka_bootstrap}",
            store="memory://",
            web_enabled=False,
            topic_allow_declare=False,
            producer_acks=-1,
        )
        await app.producer.start()
        try:
            partitions = []
            async with asyncio.timeout(30):
                for name, event in events:
                    topic = app.topic(
                        TOPICS[TOPIC_OF[name]].name(topic_prefix),
                        key_serializer="raw",
                        value_serializer="raw",
                    )
                    fut = await topic.send(key=key_for(event), value=codec.encode(event))
                    partitions.append((await fut).partition)
            return partitions
        finally:
            await app.producer.stop()

    partitions = asyncio.run(produce())
    for (name, event), partition in zip(events, partitions, strict=True):
        assert partition == _expected_partition(key_for(event)), name

    consumer = make_consumer(KafkaSettings(bootstrap_servers=kafka_bootstrap), group_id=f"g-{uuid.uuid4()}")
    try:
        topics = sorted({TOPICS[TOPIC_OF[n]].name(topic_prefix) for n, _ in events})
        consumer.assign([CTopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(PARTITIONS)])
        messages = poll_messages(consumer, len(events), timeout=30)
    finally:
        consumer.close()
    by_key = {key_for(e): e for _, e in events}
    assert sorted(codec.decode(m.value()).event_id for m in messages) == sorted(
        e.event_id for e in by_key.values()
    )


def test_aiokafka_transactions_and_consumer_group(kafka_bootstrap: str, topic_prefix: str) -> None:
    """What faust needs beyond plain produce: a transactional producer, a group join and a commit."""
    topic = TOPICS["requests"].name(topic_prefix)
    group = f"g-{uuid.uuid4()}"

    async def run() -> tuple[list[bytes], int | None]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{uuid.uuid4()}")
        await producer.start()
        try:
            async with asyncio.timeout(30), producer.transaction():
                for i in range(3):
                    await producer.send(topic, f"v{i}".encode(), key=f"req-{i}".encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            values: list[bytes] = []
            async with asyncio.timeout(60):
                while len(values) < 3:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        values += [r.value for r in records]
                await consumer.commit()
                committed = [await consumer.committed(tp) for tp in consumer.assignment()]
        finally:
            await consumer.stop()
        return sorted(values), sum(c or 0 for c in committed)

    values, committed_total = asyncio.run(run())
    assert values == [b"v0", b"v1", b"v2"]
    assert committed_total >= 3  # offsets committed past the records (and their commit markers)

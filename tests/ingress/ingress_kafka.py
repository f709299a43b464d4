"""Helpers of the ingress integration tests: uvicorn in a thread, reading and writing real topics."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from confluent_kafka import TopicPartition

from querytrail.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: Any, port: int) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1:port in a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def read_topic(
    settings: Settings, suffix: str, count: int, timeout: float = 20.0
) -> list[tuple[bytes, bytes]]:
    """(key, value) of the first ``count`` records of ``<prefix>.<suffix>``, all partitions, from the start."""
    from querytrail.kafka_clients import make_consumer

    topic = f"{settings.kafka.topic_prefix}.{suffix}"
    consumer = make_consumer(settings.kafka, f"test-{time.monotonic_ns()}")
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        out: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append((msg.key(), msg.value()))
        return out
    finally:
        consumer.close()


def topic_bytes(settings: Settings, suffix: str, settle: float = 2.0) -> list[bytes]:
    """Every record value currently on a topic (waits ``settle`` seconds for stragglers)."""
    return [v for _, v in read_topic(settings, suffix, 10_000, timeout=settle)]


# the service that produces each topic in a running stack, whose key signs what the tests publish
_PRODUCER = {"decisions": "worker", "results": "executor", "executions": "worker", "catalog": "executor"}


def publish(settings: Settings, suffix: str, *events: Any, signed: bool = True) -> None:
    """Produce ``events`` as the topic's own service would: signed with its key (querytrail.keys)."""
    from querytrail.kafka_clients import make_producer, produce_sync
    from querytrail.keys import event_signer
    from schemas.codec import EventCodec, key_for

    codec = EventCodec()
    producer = make_producer(settings.kafka)
    topic = f"{settings.kafka.topic_prefix}.{suffix}"
    signer = event_signer(settings, _PRODUCER.get(suffix, "ingress")) if signed else None
    for event in events:
        value = codec.encode(event)
        headers = signer.headers(topic, value) if signer is not None else None
        produce_sync(producer, topic, value, key=key_for(event), headers=headers)
    producer.flush(5)

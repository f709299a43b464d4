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
    from infra.producer import make_consumer

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


def publish(settings: Settings, suffix: str, *events: Any) -> None:
    from infra.producer import make_producer, produce_sync
    from schemas.codec import EventCodec, key_for

    codec = EventCodec()
    producer = make_producer(settings.kafka)
    for event in events:
        produce_sync(
            producer, f"{settings.kafka.topic_prefix}.{suffix}", codec.encode(event), key=key_for(event)
        )
    producer.flush(5)

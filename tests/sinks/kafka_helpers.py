"""Producing scenario-shaped event streams to a test's topics, and waiting on the table."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from querytrail.settings import IcebergSettings, KafkaSettings, Settings
from schemas.codec import key_for
from schemas.topics import TOPICS, topic_names

from .helpers import CODEC
from .scenario import DAY, request

_TOPIC_OF = {event: suffix for suffix, t in TOPICS.items() for event in t.events}


def sink_settings(home: Path, bootstrap: str, prefix: str, **iceberg: Any) -> Settings:
    ice = {"commit_interval_s": 0.3, "batch_size": 2000, **iceberg}
    return Settings(
        home=home,
        environment="local",
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix),
        iceberg=IcebergSettings(**ice),
    )


def stream(n: int) -> Iterator[Any]:
    """``n`` events: whole requests of the scenario's shape, each with a fresh request id."""
    from datetime import timedelta

    i = 0
    while True:
        for event in request(f"req-{i}", DAY + timedelta(seconds=i), f"select {i} from t", f"prompt {i}"):
            yield event
            n -= 1
            if n == 0:
                return
        i += 1


# the service whose key signs each topic's events in a running stack (docs/security.md)
_SIGNER_OF = {"decisions": "worker", "executions": "worker", "results": "executor", "catalog": "executor"}


def _signers(settings: Settings | None) -> dict[str, Any]:
    from querytrail.keys import event_signer

    if settings is None:
        return {}
    return {suffix: event_signer(settings, _SIGNER_OF.get(suffix, "ingress")) for suffix in TOPICS}


def produce(
    bootstrap: str,
    prefix: str,
    events: Iterator[Any],
    pause_every: int = 0,
    pause_s: float = 0.0,
    settings: Settings | None = None,
) -> dict[str, int]:
    """Produce every event to its topic (murmur2 on the request id); returns counts per topic.

    With ``settings``, each record is signed as its producing service would (the sink
    dead-letters records of its topics that no trusted key signed).
    """
    names = topic_names(prefix)
    signers = _signers(settings)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 5,
        }
    )
    counts: dict[str, int] = {}
    for n, event in enumerate(events, 1):
        suffix = _TOPIC_OF[event.event_type]
        topic, value = names[suffix], CODEC.encode(event)
        signer = signers.get(suffix)
        headers = signer.headers(topic, value) if signer is not None else None
        while True:
            try:
                producer.produce(topic, key=key_for(event), value=value, headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        counts[topic] = counts.get(topic, 0) + 1
        if pause_every and n % pause_every == 0:
            producer.flush(10)
            time.sleep(pause_s)
    assert producer.flush(30) == 0
    return counts


def produce_raw(bootstrap: str, topic: str, value: bytes, key: bytes = b"junk") -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0


def wait_rows(settings: Settings, n: int, timeout: float = 120.0) -> int:
    """Poll the table until it holds ``n`` rows (or time out); returns the last count."""
    from pyiceberg.exceptions import NoSuchTableError

    from sinks.table import open_table

    deadline, count = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        try:
            count = open_table(settings).scan(selected_fields=("offset",)).to_arrow().num_rows
        except NoSuchTableError:
            count = 0
        if count >= n:
            return count
        time.sleep(0.3)
    return count

"""Faults of the local infrastructure give clear, bounded errors (no hangs).

Each test starts its own broker (the session broker stays untouched) and causes the fault for
real: it kills the broker process, binds the port first, or hides java/mvn from the search.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING
from confluent_kafka import TopicPartition as CTopicPartition

import infra.kafka
from infra.kafka import BrokerDiedError, KafkaBroker, PortInUseError, ToolMissingError
from infra.topics import create_topics
from querytrail.kafka_clients import (
    KafkaUnavailableError,
    make_consumer,
    make_producer,
    poll_messages,
    produce_sync,
)
from querytrail.settings import KafkaSettings
from tests.conftest import free_port, jar_cache, start_broker

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    broker = start_broker(tmp_path)
    try:
        yield broker
    finally:
        broker.stop()
        assert not broker.is_running()


def test_killed_broker_fails_produce_and_consume_naming_the_broker(own_broker: KafkaBroker) -> None:
    prefix = f"qt{uuid.uuid4().hex[:8]}"
    topic = create_topics(own_broker.bootstrap, prefix)["requests"]
    kafka = KafkaSettings(bootstrap_servers=own_broker.bootstrap, delivery_timeout_s=5)
    producer = make_producer(kafka)
    produce_sync(producer, topic, b"before", key=b"req-1", timeout=15)
    consumer = make_consumer(kafka, group_id=f"g-{uuid.uuid4()}")
    consumer.assign([CTopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
    assert len(poll_messages(consumer, 1, timeout=15)) == 1

    own_broker.kill()

    started = time.monotonic()
    with pytest.raises(KafkaUnavailableError, match=own_broker.bootstrap):
        produce_sync(producer, topic, b"after", key=b"req-1", timeout=20)
    assert time.monotonic() - started < 20
    started = time.monotonic()
    with pytest.raises(KafkaUnavailableError, match=own_broker.bootstrap):
        poll_messages(consumer, 1, timeout=30, broker_down_grace_s=3)
    assert time.monotonic() - started < 30
    consumer.close()


def test_killed_broker_bounds_aiokafka_too(own_broker: KafkaBroker) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    topic = create_topics(own_broker.bootstrap, f"qt{uuid.uuid4().hex[:8]}")["requests"]

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=own_broker.bootstrap, request_timeout_ms=5000)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"before", key=b"req-1")
            own_broker.kill()
            with pytest.raises(KafkaError):
                async with asyncio.timeout(30):  # a hang would be a TimeoutError, not a KafkaError
                    await producer.send_and_wait(topic, b"after", key=b"req-1")
        finally:
            async with asyncio.timeout(15):
                await producer.stop()

    asyncio.run(run())


def test_taken_port_is_reported(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        broker = KafkaBroker(tmp_path, port, free_port(), jar_cache=jar_cache())
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{port}"):
            broker.start(timeout=30)
    assert not broker.is_running()


def test_broker_that_dies_on_start_reports_its_log(tmp_path: Path) -> None:
    # A JVM option the JVM refuses: the broker process really exits at once, saying why.
    broker = KafkaBroker(
        tmp_path, free_port(), free_port(), jar_cache=jar_cache(), heap="-Xmx256m -XX:+QuerytrailNoSuchOption"
    )
    with pytest.raises(BrokerDiedError) as err:
        broker.start(timeout=60)
    assert broker.bootstrap in str(err.value)
    assert "last lines of" in str(err.value) and "QuerytrailNoSuchOption" in str(err.value)
    assert not broker.is_running()


def test_missing_java_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hide every place java is looked for (the machine has one; this is the only way to lose it).
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(infra.kafka, "JVM_DIR", tmp_path / "no-jvm")
    with pytest.raises(ToolMissingError, match="Java 17"):
        infra.kafka.find_java()


def test_missing_maven_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissingError, match="mvn"):
        infra.kafka.resolve_kafka_jars("4.4.0", tmp_path / "empty-cache")


def test_services_owned_by_a_killed_session_die_with_it(tmp_path: Path) -> None:
    """A SIGKILLed test session (no teardown runs) still leaves no server behind."""
    import os
    import signal
    import subprocess
    import sys

    from infra.stack import pid_alive, process_start_time

    script = (
        "import sys, time; from pathlib import Path; from infra.fakesnow_server import FakesnowServer;"
        f"s = FakesnowServer(Path({str(tmp_path)!r}), {free_port()}, owned_by_caller=True); s.start(60);"
        "print(s.pid, flush=True); time.sleep(300)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        start = process_start_time(child)
        assert pid_alive(child, start)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 20
        while pid_alive(child, start) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(child, start)
    finally:
        if parent.poll() is None:
            parent.kill()

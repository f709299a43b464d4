"""The real Kafka broker and topic creation."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from infra.topics import create_topics
from schemas.topics import TOPICS, WITNESS, topic_names

pytestmark = pytest.mark.integration


def _configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([res])[res].result(15)
    return {k: v.value for k, v in entries.items()}


def _eventually_config(bootstrap: str, topic: str, key: str, expected: str, timeout: float = 15.0) -> None:
    """Config changes reach the broker's metadata shortly after the controller accepts them."""
    deadline = time.monotonic() + timeout
    while (actual := _configs(bootstrap, topic)[key]) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert actual == expected, (topic, key)


def test_every_topic_exists_with_its_partitions(kafka_bootstrap: str, topic_prefix: str) -> None:
    md = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=15)
    for name in topic_names(topic_prefix).values():
        assert name in md.topics, name
        assert len(md.topics[name].partitions) == 3


def test_topic_configs_match_the_topic_table(kafka_bootstrap: str, topic_prefix: str) -> None:
    for suffix, topic in {**TOPICS, "witness": WITNESS}.items():
        actual = _configs(kafka_bootstrap, topic.name(topic_prefix))
        for key, value in topic.configs.items():
            assert actual[key] == value, (suffix, key)
    assert _configs(kafka_bootstrap, f"{topic_prefix}.catalog")["cleanup.policy"] == "compact"
    assert _configs(kafka_bootstrap, f"{topic_prefix}.requests")["cleanup.policy"] == "delete"


def test_create_topics_is_idempotent_and_repairs_drift(kafka_bootstrap: str, topic_prefix: str) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    res = ConfigResource(
        ResourceType.TOPIC,
        f"{topic_prefix}.catalog",
        incremental_configs=[
            ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([res])[res].result(15)
    _eventually_config(kafka_bootstrap, f"{topic_prefix}.catalog", "cleanup.policy", "delete")
    assert create_topics(kafka_bootstrap, topic_prefix) == {
        **topic_names(topic_prefix),
        "witness": WITNESS.name(topic_prefix),
    }
    _eventually_config(kafka_bootstrap, f"{topic_prefix}.catalog", "cleanup.policy", "compact")


def test_broker_does_not_auto_create_topics(kafka_bootstrap: str, topic_prefix: str) -> None:
    from confluent_kafka import Producer

    errors: list[object] = []
    p = Producer({"bootstrap.servers": kafka_bootstrap, "message.timeout.ms": 3000})
    p.produce(f"{topic_prefix}.not-declared", b"x", on_delivery=lambda err, _m: errors.append(err))
    p.flush(10)
    assert errors and errors[0] is not None
    md = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=15)
    assert f"{topic_prefix}.not-declared" not in md.topics

"""Create every topic of ``schemas.topics.TOPICS``, and the sink's ``WITNESS``, with its configs (idempotent)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from schemas.topics import TOPICS, WITNESS

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

    from querytrail.settings import Settings

__all__ = ["TopicCreationError", "create_topics"]

log = logging.getLogger(__name__)


class TopicCreationError(RuntimeError):
    """A topic could not be created or does not have the declared configuration."""


def create_topics(
    bootstrap: str,
    prefix: str = "querytrail",
    partitions: int = 3,
    settings: Settings | None = None,
    timeout: float = 30.0,
) -> dict[str, str]:
    """Create the querytrail topics and the witness topic under ``prefix``; return suffix -> name.

    Topics that already exist are left as they are, except that the declared configs are
    re-applied (incrementally), so a rerun repairs a drifted ``cleanup.policy``.
    With ``settings`` the SASL/TLS client settings and replication factor are taken from it.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewTopic,
        ResourceType,
    )

    conf = settings.kafka.confluent_config() if settings else {}
    conf["bootstrap.servers"] = bootstrap
    conf["logger"] = logging.getLogger("querytrail.rdkafka")  # not straight to stderr
    replication = settings.kafka.replication_factor if settings else 1
    admin = AdminClient(conf)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise TopicCreationError(f"Kafka broker {bootstrap} did not answer: {exc}") from exc

    declared = {**TOPICS, WITNESS.suffix: WITNESS}
    names = {suffix: t.name(prefix) for suffix, t in declared.items()}
    new = [
        NewTopic(
            names[suffix],
            num_partitions=1 if t is WITNESS else partitions,
            replication_factor=replication,
            config=dict(t.configs),
        )
        for suffix, t in declared.items()
        if names[suffix] not in existing
    ]
    if new:
        for name, fut in admin.create_topics(new, request_timeout=timeout).items():
            try:
                fut.result(timeout)
                log.info("created topic %s", name)
            except KafkaException as exc:
                if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                    continue  # a concurrent creator won the race: fine
                raise TopicCreationError(f"creating topic {name} on {bootstrap} failed: {exc}") from exc

        _wait_visible(admin, {t.topic: t.num_partitions for t in new}, bootstrap, timeout)

    # Re-assert the declared configs on topics that pre-existed.
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            names[suffix],
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in t.configs.items()
            ],
        )
        for suffix, t in declared.items()
        if names[suffix] in existing and t.configs
    ]
    if resources:
        for res, fut in admin.incremental_alter_configs(resources, request_timeout=timeout).items():
            try:
                fut.result(timeout)
            except KafkaException as exc:
                raise TopicCreationError(
                    f"setting configs of {res.name} on {bootstrap} failed: {exc}"
                ) from exc
    return names


def _wait_visible(admin: AdminClient, topics: dict[str, int], bootstrap: str, timeout: float) -> None:
    """Wait until every new topic has a leader for each partition.

    CreateTopics returns once the controller accepted the topic; the broker serves its
    metadata and configs a moment later, and a caller producing (or describing) at once
    would get UNKNOWN_TOPIC_OR_PARTITION.
    """
    deadline = time.monotonic() + timeout
    pending = set(topics)
    while pending:
        md = admin.list_topics(timeout=timeout)
        for name in list(pending):
            t = md.topics.get(name)
            if (
                t
                and t.error is None
                and len(t.partitions) >= topics[name]
                and all(p.leader >= 0 for p in t.partitions.values())
            ):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TopicCreationError(
                f"topics {sorted(pending)} not ready on {bootstrap} within {timeout:.0f}s"
            )
        if pending:
            time.sleep(0.1)

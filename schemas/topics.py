"""Every querytrail topic, declared once: its name, the events it carries and its configs; and
the consumer groups that read them.

The Kafka key is the request id everywhere (the catalog topic: the table name), encoded as
UTF-8, and every producer uses the murmur2 partitioner so one request's events share a
partition number on every topic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GROUPS", "TOPICS", "WITNESS", "Topic", "group_id", "topic_names"]

_DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, kw_only=True)
class Topic:
    """One topic: ``suffix`` after the prefix, the event types it carries, broker configs."""

    suffix: str
    events: tuple[str, ...]
    configs: dict[str, str] = field(default_factory=dict)

    def name(self, prefix: str = "querytrail") -> str:
        return f"{prefix}.{self.suffix}"


# Durable-audit defaults: the broker keeps events long enough for the sink to catch up after
# any realistic outage; the Iceberg table is the long-term record.
_AUDIT = {
    "cleanup.policy": "delete",
    "retention.ms": str(30 * _DAY_MS),
    "min.insync.replicas": "1",
    "unclean.leader.election.enable": "false",
    "message.timestamp.type": "CreateTime",
    "max.message.bytes": str(8 * 1024 * 1024),
}

TOPICS: dict[str, Topic] = {
    t.suffix: t
    for t in (
        Topic(suffix="requests", events=("QueryRequested",), configs=dict(_AUDIT)),
        Topic(
            suffix="decisions",
            events=(
                "PolicyDecided",
                "ApprovalRequested",
                "ApprovalVerdictRecorded",
                "ApprovalResolved",
            ),
            configs=dict(_AUDIT),
        ),
        Topic(suffix="approvals", events=("ApprovalVerdict",), configs=dict(_AUDIT)),
        Topic(suffix="executions", events=("ExecutionAuthorized", "ExecutionStarted"), configs=dict(_AUDIT)),
        Topic(
            suffix="results",
            # BypassDetected: reconcile's findings, keyed "reconcile-..." (no caller waits on them)
            events=("QueryCompleted", "ResultPage", "QueryFailed", "QueryRejected", "BypassDetected"),
            configs=dict(_AUDIT),
        ),
        Topic(
            suffix="actions",
            events=("DownstreamActionReported", "NotificationAttempted"),
            configs=dict(_AUDIT),
        ),
        Topic(
            suffix="catalog",
            events=("CatalogTable",),
            configs={
                "cleanup.policy": "compact",
                "min.compaction.lag.ms": "0",
                "segment.ms": str(3600 * 1000),
                "min.insync.replicas": "1",
                "max.message.bytes": str(8 * 1024 * 1024),
            },
        ),
        Topic(suffix="deadletter", events=("DeadLetter",), configs=dict(_AUDIT)),
    )
}


# The audit sink's own output, not an event topic (the sink does not read it back): one signed,
# chained JSON line per committed snapshot, kept forever so a rolled-back table and a truncated
# witness file still disagree with it (docs/audit.md). One partition: one total order.
WITNESS = Topic(
    suffix="witness",
    events=(),
    configs={
        "cleanup.policy": "delete",
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "min.insync.replicas": "1",
        "unclean.leader.election.enable": "false",
    },
)


def topic_names(prefix: str = "querytrail") -> dict[str, str]:
    """suffix -> full topic name for the given prefix (tests use a unique prefix each)."""
    return {suffix: t.name(prefix) for suffix, t in TOPICS.items()}


# The durable consumer groups, service -> the group's name after the topic prefix. The worker's
# is faust's app id, which faust joins with a hyphen; the others join with a dot. The spellings
# are kept as deployed: a renamed group starts again from its reset policy and would orphan the
# offsets it committed. Throwaway readers (smoke checks, `read_topic`, the ingress's indexer)
# use a unique group each and are not listed.
GROUPS: dict[str, str] = {
    "worker": "-worker",
    "executor": ".executor",
    "sink": ".audit-sink",
}


def group_id(service: str, prefix: str = "querytrail") -> str:
    """The consumer group ``service`` commits its offsets under (``GROUPS``)."""
    return f"{prefix}{GROUPS[service]}"

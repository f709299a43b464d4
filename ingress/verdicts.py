"""Sending an approver's verdict and waiting for the worker's judgement of it.

Shared by ``querytrail approve``/``deny`` and the demo, so both seal the approver's token the
same way and both wait from the log end instead of re-reading the decisions topic.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from confluent_kafka import TopicPartition

from querytrail.kafka_clients import make_consumer
from querytrail.publishing import Publisher
from querytrail.sealing import load_sealing_public_key, seal_token, token_sha256, verdict_binding
from schemas.codec import DecodeError, EventCodec
from schemas.events import (
    ApprovalVerdict,
    ApprovalVerdictRecorded,
    Credential,
    new_event_id,
    producer,
    utcnow,
)
from schemas.topics import topic_names

if TYPE_CHECKING:
    from querytrail.settings import Settings

__all__ = ["send_verdict"]


def send_verdict(
    settings: Settings,
    codec: EventCodec,
    *,
    request_id: str,
    statement_sha256: str,
    token: str,
    verdict: str,
    comment: str | None,
    wait_s: float,
    session_id: str | None = None,
) -> tuple[ApprovalVerdict, ApprovalVerdictRecorded | None]:
    """Publish an ApprovalVerdict for the statement the approver was shown; the worker's
    judgement of it, or None when none arrives within ``wait_s``."""
    event_id = new_event_id()
    binding = verdict_binding(request_id, verdict, statement_sha256, comment, event_id)
    event = ApprovalVerdict(
        event_id=event_id,
        request_id=request_id,
        session_id=session_id,
        occurred_at=utcnow(),
        producer=producer("cli"),
        verdict=verdict,
        statement_sha256=statement_sha256,
        credential=Credential(
            sealed_token=seal_token(token, load_sealing_public_key(settings), request_id, binding),
            token_sha256=token_sha256(token),
        ),
        comment=comment,
    )
    consumer = make_consumer(settings.kafka, f"querytrail-verdict-{event.event_id}")
    try:
        # Concrete end offsets, read before publishing: the judgement can only come after them.
        decisions = topic_names(settings.kafka.topic_prefix)["decisions"]
        parts = consumer.list_topics(decisions, timeout=10).topics[decisions].partitions
        ends = [consumer.get_watermark_offsets(TopicPartition(decisions, p), timeout=10)[1] for p in parts]
        consumer.assign([TopicPartition(decisions, p, end) for p, end in zip(parts, ends, strict=True)])
        Publisher(settings, "cli", codec).publish([event])
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None or msg.key() != request_id.encode():
                continue
            try:
                judged = codec.decode(msg.value() or b"")
            except DecodeError:
                continue
            if isinstance(judged, ApprovalVerdictRecorded) and judged.verdict_event_id == event.event_id:
                return event, judged
    finally:
        consumer.close()
    return event, None

"""Dead letters for the topics that only the sink reads.

The worker dead-letters what it cannot use on ``requests`` and ``approvals``, the executor on
``executions``. Nothing else consumes ``decisions``, ``results``, ``actions`` or ``catalog``, so
bad bytes there would reach only the audit table, as an ``Undecodable`` row. The design promises
a DeadLetter for them too: the sink publishes it. Bad bytes on ``deadletter`` itself are only
recorded (the Undecodable row): that topic is where bad input ends, not a source of more.

When: after the append holding the record's row is in the table, so a DeadLetter never points
at a record the audit log lacks, and a batch that is re-read after a failed append is not
dead-lettered twice. A crash between that append and the publish loses the DeadLetter (never the
row, which says ``Undecodable`` with the decoder's error); it is not sent twice.

The publish does not wait: librdkafka retries it in the background until its delivery timeout,
and the sink loop only polls, so a broker outage never stalls the audit log. A catalog
tombstone (empty value on the compacted topic) is not bad input and is not dead-lettered; an
empty value anywhere else is, as the worker treats one on ``requests``.

Records of these topics that no key trusted for the topic signed (docs/security.md) are
dead-lettered the same way, with the reason ``unsigned``, ``unknown_key`` or ``bad_signature``;
the other readers of these topics (the ingress, the CI client, the approvals CLI, the worker's
catalog reader) refuse them without writing a second DeadLetter.

The DeadLetter is built from the stored row, so nothing is decoded twice: its ``value`` is the
record's bytes (the ``avro`` column), intact; its ``key`` is the row's ``request_id``, which is
the record key read as UTF-8 for an undecodable record, and the event's request id for a
misplaced one (every querytrail producer keys by it; a foreign key is not kept by the table).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import KafkaError, Message

from querytrail.kafka_clients import make_producer
from querytrail.keys import SignatureError, event_verifier
from querytrail.observability import DEAD_LETTERS
from querytrail.publishing import PRODUCER_MAX_BYTES, dead_letter_event
from querytrail.settings import Settings
from schemas.codec import EventCodec, key_for
from schemas.topics import TOPICS, topic_names
from sinks.chain import tp_key
from sinks.writer import Record

__all__ = ["SINK_ONLY_TOPICS", "SinkDeadLetters"]

log = logging.getLogger(__name__)

SINK_ONLY_TOPICS = ("decisions", "results", "actions", "catalog")
_COMPONENT = "sink"


class SinkDeadLetters:
    """Finds unusable records of the sink-only topics and dead-letters them once they are stored."""

    def __init__(self, settings: Settings, codec: EventCodec | None = None) -> None:
        self.settings = settings
        self.codec = codec or EventCodec(settings.kafka.schema_registry_url)
        names = topic_names(settings.kafka.topic_prefix)
        self._expected = {
            names[s]: pa.array(sorted({*TOPICS[s].events, "Undecodable"}), pa.large_string())
            for s in SINK_ONLY_TOPICS
        }
        self._topics = pa.array(sorted(self._expected), pa.large_string())
        self._deadletter_topic = names["deadletter"]
        # an empty value on the compacted topic deletes a key: not bad input
        self._compacted = pa.array([names["catalog"]], pa.large_string())
        self._catalog_topic = names["catalog"]
        self._records = event_verifier(settings, service=True)  # who may sign each topic
        self.pending: dict[tuple[str, int], dict[int, tuple[Record, str, str]]] = {}
        self._producer: Any = None

    def scan(self, body: pa.Table) -> None:
        """Hold the unusable records of a batch about to be written (``body``: its rows).

        Reads the rows the conversion already built (an undecodable record is an Undecodable
        row): a handful of vectorised comparisons per batch, no second decode.
        """
        if not body.num_rows:
            return
        topic, kind = body["topic"], body["event_type"]
        undecodable = pc.equal(kind, "Undecodable")
        is_tombstone = pc.fill_null(pc.equal(body["reason_code"], "tombstone"), False)  # null on events
        tombstone = pc.and_(pc.is_in(topic, value_set=self._compacted), is_tombstone)
        bad = pc.and_not(undecodable, tombstone)
        for name, expected in self._expected.items():
            misplaced = pc.and_(pc.equal(topic, name), pc.invert(pc.is_in(kind, value_set=expected)))
            bad = pc.or_(bad, misplaced)
        bad = pc.and_(bad, pc.is_in(topic, value_set=self._topics))
        if not pc.any(bad).as_py():
            return
        columns = ("topic", "partition", "offset", "event_type", "request_id", "payload_json", "avro")
        for row in body.filter(bad).select(columns).to_pylist():
            key = row["request_id"].encode() if row["request_id"] else None
            record = Record(row["topic"], row["partition"], row["offset"], key, row["avro"], None)
            if row["event_type"] == "Undecodable":
                error = json.loads(row["payload_json"] or "{}").get("error") or "undecodable"
                self._hold(record, "undecodable", error)
            else:
                self._hold(record, "unexpected_event", f"{row['event_type']} on {row['topic']}")

    def check_signature(self, record: Record, headers: Any) -> None:
        """Hold a record of a sink-only topic that no key trusted for its topic signed.

        Its row is stored like any other (the audit log keeps the forgery); the DeadLetter
        names why (``unsigned``, ``unknown_key``, ``bad_signature``: querytrail.keys). An
        undecodable or misplaced record is held again by ``scan`` with that reason instead,
        and an empty value on the compacted topic is a tombstone, not an event.
        """
        if record.topic not in self._expected or not self._records.covers(record.topic):
            return
        if not record.value and record.topic == self._catalog_topic:
            return
        try:
            self._records.verify(record.topic, record.value, headers)
        except SignatureError as exc:
            self._hold(record, exc.reason, exc.message)

    def _hold(self, record: Record, reason: str, error: str) -> None:
        # keyed by offset: a batch handed over twice (a retried flush) is held once
        self.pending.setdefault((record.topic, record.partition), {})[record.offset] = (record, reason, error)

    def stored(self, offsets: Mapping[str, int]) -> int:
        """Publish every held record the table now holds (``offsets``: next offset per partition)."""
        sent = 0
        for tp, held in list(self.pending.items()):
            nxt = offsets.get(tp_key(*tp))
            if nxt is None:
                continue
            for offset in sorted(o for o in held if o < nxt):
                self._produce(*held.pop(offset))
                sent += 1
            if not held:
                del self.pending[tp]
        return sent

    def forget(self, tps: Iterable[tuple[str, int]] | None = None) -> None:
        """Drop held records that will be read again (re-seek, revoke, new assignment)."""
        if tps is None:
            self.pending.clear()
            return
        for tp in tps:
            self.pending.pop(tp, None)

    def _produce(self, record: Record, reason: str, error: str) -> None:
        event = dead_letter_event(
            _COMPONENT, record.topic, record.partition, record.offset, record.key, record.value, reason, error
        )
        if self._producer is None:
            self._producer = make_producer(
                self.settings.kafka, **{"linger.ms": 0, "message.max.bytes": PRODUCER_MAX_BYTES}
            )
        value = self.codec.encode(event)
        while True:
            try:
                self._producer.produce(
                    self._deadletter_topic,
                    value=value,
                    key=key_for(event),
                    on_delivery=lambda err, msg, source=record.topic: self._delivered(err, msg, source),
                )
                break
            except BufferError:  # the local queue is full: let librdkafka drain it
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _delivered(self, err: KafkaError | None, msg: Message, source_topic: str) -> None:
        if err is None:
            DEAD_LETTERS.labels(source_topic).inc()  # as the publisher counts the worker's
        else:
            log.error(
                "a DeadLetter for %s was not delivered (the record's Undecodable row is in the table): %s",
                msg.key(),
                err,
            )

    def poll(self) -> None:
        if self._producer is not None:
            self._producer.poll(0)

    def close(self, timeout_s: float = 10.0) -> None:
        if self._producer is None:
            return
        left = self._producer.flush(timeout_s)
        if left:
            log.error("%d DeadLetter(s) not delivered before the sink stopped", left)

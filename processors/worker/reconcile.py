"""Find requests the worker's stream skipped, whether or not its group committed past them.

faust acks the records its stream skips during a rebalance (``Skipping message ... generation_id``
in faust/streams.py), so after a worker restart its committed offset can lie beyond a request
that was never decided. A restarted worker has also been seen to start a partition's stream
past records its group had not committed (the kill-and-restart suite: offsets 11-24 of one
partition were never yielded, and the group's offset stayed below them). This scanner is the
safety net for both: per assigned partition it reads the records between where it last looked
and the later of the group's committed offset and the first record younger than ``grace_s``
(a request that old should have been decided by the stream), and returns them; the caller
decides those it has no record of (its ``seen`` table and in-flight set).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from querytrail.kafka_clients import make_consumer
from querytrail.settings import Settings

__all__ = ["Record", "RequestScanner", "dead_letter_marker"]

log = logging.getLogger(__name__)


def dead_letter_marker(topic: str, partition: int, offset: int, partitions: int) -> bytes:
    """The ``seen`` table key saying the record at topic/partition/offset was dead-lettered.

    The stream marks what it dead-letters; the scanner finds the same bytes again (they never
    become a decided request id), and without the mark every restart would dead-letter them
    once more. The key starts with byte 0xFF, which no UTF-8 request id contains, so it cannot
    shadow a request; a nonce makes it hash (murmur2, the table's partitioner) to the record's
    own partition, so the worker that owns the partition also holds its marks after a restart.
    """
    from aiokafka.partitioner import murmur2

    for nonce in itertools.count():
        key = b"\xffdead-letter:" + f"{topic}:{partition}:{offset}:{nonce}".encode()
        if (murmur2(key) & 0x7FFFFFFF) % partitions == partition:
            return key
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Record:
    """What the worker's handlers read from a faust event: ``value`` and ``message``."""

    value: bytes
    message: Any  # topic, partition, offset, key, value


@dataclass(frozen=True)
class _Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class RequestScanner:
    """Reads committed-but-maybe-unprocessed records of one topic for one consumer group."""

    def __init__(
        self, settings: Settings, topic: str, group_id: str, window_s: float, grace_s: float = 30.0
    ) -> None:
        self.topic = topic
        self.window_s = window_s
        self.grace_s = grace_s
        # not a group member: never joins, only reads the group's committed offsets
        self._reader: Consumer = make_consumer(
            settings.kafka, group_id, **{"enable.partition.eof": True, "enable.auto.commit": False}
        )
        self._checked: dict[int, int] = {}

    def close(self) -> None:
        self._reader.close()

    def _start(self, partition: int) -> int:
        if partition not in self._checked:
            since_ms = int((time.time() - self.window_s) * 1000)
            [tp] = self._reader.offsets_for_times(
                [TopicPartition(self.topic, partition, since_ms)], timeout=10
            )
            low, high = self._reader.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
            self._checked[partition] = high if tp.offset in (OFFSET_END, -1) else max(tp.offset, low)
        return self._checked[partition]

    def _old_end(self, partition: int) -> int:
        """The first offset whose record is younger than the grace period (the end if none is)."""
        since_ms = int((time.time() - self.grace_s) * 1000)
        [tp] = self._reader.offsets_for_times([TopicPartition(self.topic, partition, since_ms)], timeout=10)
        if tp.offset >= 0:
            return int(tp.offset)
        _, high = self._reader.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
        return int(high)

    def scan(self, partitions: set[int], timeout: float = 10.0) -> list[Record]:
        """Records not yet scanned below the group's committed offset or older than the grace
        period, in the given partitions."""
        committed = self._reader.committed(
            [TopicPartition(self.topic, p) for p in sorted(partitions)], timeout=10
        )
        ranges = {}
        for tp in committed:
            start = self._start(tp.partition)
            end = max(
                tp.offset if tp.offset is not None and tp.offset >= 0 else 0, self._old_end(tp.partition)
            )
            if end > start:
                ranges[tp.partition] = (start, end)
        if not ranges:
            return []
        self._reader.assign([TopicPartition(self.topic, p, start) for p, (start, _) in ranges.items()])
        out: list[Record] = []
        pending = set(ranges)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            msg = self._reader.poll(0.2)
            if msg is None:
                continue
            p = msg.partition() or 0
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(p)
                continue
            offset = msg.offset() or 0
            if p not in ranges or offset >= ranges[p][1]:
                pending.discard(p)
                continue
            value = msg.value() or b""
            out.append(Record(value, _Message(self.topic, p, offset, msg.key(), value)))
            self._checked[p] = offset + 1
            if offset + 1 >= ranges[p][1]:
                pending.discard(p)
        self._reader.unassign()
        return out

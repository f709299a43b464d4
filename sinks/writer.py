"""Batching per (topic, partition) and the Iceberg writer with the hash chain.

``add()`` decodes and buffers a record, ``flush()`` writes every buffered partition in one
Iceberg append inside ``try/finally`` (quix's ``sinks/base/sink.py`` shape) and ``write()`` is
the subclass hook. The append's snapshot summary holds the next offset and the signed chain
head of every topic-partition, so the table alone says where to resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from sinks.chain import GENESIS, Head, Signer, chain_step, tp_key
from sinks.schema import ARROW_SCHEMA, derive, undecodable_row
from sinks.table import SinkState, state_of

__all__ = ["BatchingSink", "IcebergSink", "Record", "StaleStateError", "TPBatch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One record as received from Kafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int | None = None


@dataclass
class TPBatch:
    """Buffered rows of one topic-partition, in offset order."""

    topic: str
    partition: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    avro_sha: list[bytes] = field(default_factory=list)
    last_offset: int = -1


class StaleStateError(Exception):
    """The table's chain heads moved under us (another writer): re-seek from the table."""


class BatchingSink:
    """Buffers records per (topic, partition); subclasses implement ``write``."""

    def __init__(self) -> None:
        self._batches: dict[tuple[str, int], TPBatch] = {}
        self.buffered = 0

    def add(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        batch = self._batches.get(tp)
        if batch is None:
            batch = self._batches[tp] = TPBatch(record.topic, record.partition)
        if record.offset <= max(batch.last_offset, self.committed_offset(record.topic, record.partition)):
            return  # redelivered after a seek or rebalance: already buffered or stored
        batch.rows.append(self.to_row(record))
        batch.avro_sha.append(hashlib.sha256(record.value).digest())
        batch.last_offset = record.offset
        self.buffered += 1

    def flush(self) -> bool:
        """Write all buffered partitions at once; True when something was written.

        On failure the buffer is kept (the caller retries) and the exception propagates.
        """
        batches = {tp: b for tp, b in self._batches.items() if b.rows}
        if not batches:
            return False
        ok = False
        try:
            self.write(batches)
            ok = True
        finally:
            if ok:
                self._batches.clear()
                self.buffered = 0
        return True

    def drop(self, tps: set[tuple[str, int]] | None = None) -> None:
        """Forget buffered rows (revoked partitions, or all): they are re-read from Kafka."""
        for tp in list(self._batches) if tps is None else tps:
            batch = self._batches.pop(tp, None)
            if batch is not None:
                self.buffered -= len(batch.rows)

    # hooks
    def committed_offset(self, topic: str, partition: int) -> int:
        return -1

    def to_row(self, record: Record) -> dict[str, Any]:
        raise NotImplementedError

    def write(self, batches: dict[tuple[str, int], TPBatch]) -> None:
        raise NotImplementedError


class IcebergSink(BatchingSink):
    """Appends batches to ``audit.events``, one snapshot per flush, chained and signed."""

    def __init__(
        self,
        table: Table,
        signer: Signer,
        decode: Callable[[bytes], Any],
        witness_path: Path | None = None,
    ) -> None:
        super().__init__()
        self.table = table
        self.signer = signer
        self.decode = decode
        self.witness_path = witness_path
        self.state = state_of(table.current_snapshot()) or SinkState({}, {}, signer.key_id)
        self.files_written = 0
        self.commit_seconds: list[float] = []

    def reload(self) -> SinkState:
        """Re-read the state from the table's current snapshot (after assignment or a conflict)."""
        self.table.refresh()
        self.state = state_of(self.table.current_snapshot()) or SinkState({}, {}, self.signer.key_id)
        return self.state

    def committed_offset(self, topic: str, partition: int) -> int:
        return self.state.offsets.get(tp_key(topic, partition), 0) - 1

    def to_row(self, record: Record) -> dict[str, Any]:
        try:
            event = self.decode(record.value)
            row = derive(event)
        except Exception as exc:  # any decoding failure is recorded, never dropped
            row = undecodable_row(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                value=record.value,
                error=f"{type(exc).__name__}: {exc}"[:500],
                timestamp_ms=record.timestamp_ms,
            )
        row["topic"], row["partition"], row["offset"] = record.topic, record.partition, record.offset
        row["avro"] = record.value
        return row

    def write(self, batches: dict[tuple[str, int], TPBatch]) -> None:
        started = time.perf_counter()
        self.table.refresh()
        base = state_of(self.table.current_snapshot()) or SinkState({}, {}, self.signer.key_id)
        uuid = str(self.table.metadata.table_uuid)
        offsets, heads = dict(base.offsets), dict(base.heads)
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        for (topic, partition), batch in batches.items():
            key = tp_key(topic, partition)
            ours, theirs = self.state.heads.get(key), base.heads.get(key)
            if ours != theirs:
                raise StaleStateError(f"chain head of {key} moved: table has {theirs}, sink had {ours}")
            prev = bytes.fromhex(ours.hash) if ours else GENESIS
            for row, sha in zip(batch.rows, batch.avro_sha, strict=True):
                prev = chain_step(prev, sha)
                row["avro_sha256"], row["chain_hash"], row["ingested_at"] = sha.hex(), prev.hex(), now
            rows.extend(batch.rows)
            heads[key] = self.signer.sign_head(uuid, key, batch.last_offset, prev)
            offsets[key] = batch.last_offset + 1
        state = SinkState(offsets=offsets, heads=heads, key_id=self.signer.key_id)
        data = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)
        before = len(self.table.metadata.snapshots)
        try:
            self.table.append(data, snapshot_properties=state.to_summary())
        except CommitFailedException as exc:
            raise StaleStateError(str(exc)) from exc
        self.state = state
        snap = self.table.current_snapshot()
        if snap is not None and snap.summary is not None:
            self.files_written += int(snap.summary.additional_properties.get("added-data-files", 0))
        self._witness(snap.snapshot_id if snap else None, uuid, heads)
        self.commit_seconds.append(time.perf_counter() - started)
        log.debug("appended %d rows in %d partitions (%d snapshots before)", len(data), len(batches), before)

    def _witness(self, snapshot_id: int | None, uuid: str, heads: dict[str, Head]) -> None:
        """Append the signed heads to the local witness file, so a later rollback shows."""
        if self.witness_path is None:
            return
        self.witness_path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(
            {
                "table": uuid,
                "snapshot_id": snapshot_id,
                "heads": {k: h.to_json() for k, h in sorted(heads.items())},
                "written_at": datetime.now(UTC).isoformat(),
            },
            sort_keys=True,
        )
        with open(self.witness_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

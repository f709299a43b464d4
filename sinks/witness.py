"""The witness: every set of signed heads the sink committed, kept where a table rollback cannot reach.

Each committed snapshot adds one line to the local witness file (``home/witness.jsonl``) and the
same bytes to the ``witness`` Kafka topic (no compaction, unlimited retention). A line is signed
by the sink's chain key and chained to the line before it (``prev`` = SHA-256 of that line,
``n`` its position), so lines cannot be edited, dropped or reordered unnoticed; dropping the
*newest* lines is caught by the topic, and by the table's own sequence numbers (Iceberg never
reuses one, so history cut off after a rollback and an expiry leaves a gap).

Pure apart from the file and the Kafka reads; ``sinks.verify`` turns the findings into problems.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sinks.chain import Head, HeadSigner, HeadVerifier

__all__ = [
    "WITNESS_GENESIS",
    "WitnessLine",
    "WitnessWriter",
    "canonical",
    "check_lines",
    "read_lines",
    "read_witness_topic",
]

log = logging.getLogger(__name__)

WITNESS_GENESIS = "0" * 64
_VERSION = 2
_TAIL_BYTES = 1 << 20
_RETRY_S = 30.0


def canonical(entry: dict[str, Any]) -> bytes:
    """The exact bytes of a witness line (and, without ``sig``, what is signed)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _last_line(fh: Any) -> bytes | None:
    """The last non-empty line of an open binary file (read from its end)."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    for window in (1 << 16, _TAIL_BYTES, size):
        fh.seek(max(0, size - window))
        chunk = fh.read()
        lines = [ln for ln in chunk.splitlines() if ln.strip()]
        if len(lines) > 1 or window >= size:
            return lines[-1] if lines else None
    return None


def _chain_state(last: bytes | None) -> tuple[str, int]:
    """(prev, n) for the line after ``last``."""
    if last is None:
        return WITNESS_GENESIS, 0
    try:
        n = int(json.loads(last).get("n", -1)) + 1
    except (ValueError, AttributeError, TypeError):
        n = 0  # verify names the unreadable line; the chain goes on from its hash
    return hashlib.sha256(last).hexdigest(), n


class WitnessWriter:
    """Appends signed, chained witness lines to the file and publishes them to the topic.

    ``publish(key, value)`` raises when Kafka did not acknowledge; the line is then kept and
    retried after the next commit (the file already holds it, fsynced).
    """

    def __init__(
        self,
        path: Path | None,
        signer: HeadSigner,
        publish: Callable[[bytes, bytes], None] | None = None,
    ) -> None:
        self.path = path
        self.signer = signer
        self.publish = publish
        self.unpublished: list[tuple[bytes, bytes]] = []
        self._retry_at = 0.0  # after a failure, commits do not wait on Kafka again for a while
        self._prev, self._n = WITNESS_GENESIS, 0  # without a file: the chain lives in memory

    def record(
        self, table_uuid: str, snapshot_id: int | None, sequence_number: int | None, heads: dict[str, Head]
    ) -> bytes:
        """Write (and publish) the line of one committed snapshot; returns its bytes.

        The file is locked and its last line re-read for every line, so two sinks on one home
        (a zombie and its successor) still write one chain.
        """
        if self.path is None:
            line = self._line(table_uuid, snapshot_id, sequence_number, heads)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                self._prev, self._n = _chain_state(_last_line(fh))
                line = self._line(table_uuid, snapshot_id, sequence_number, heads)
                fh.seek(0, os.SEEK_END)
                fh.write(line + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        self._prev, self._n = hashlib.sha256(line).hexdigest(), self._n + 1
        if self.publish is not None:
            self.unpublished.append((table_uuid.encode(), line))
            self.flush()
        return line

    def _line(
        self, table_uuid: str, snapshot_id: int | None, sequence_number: int | None, heads: dict[str, Head]
    ) -> bytes:
        entry: dict[str, Any] = {
            "v": _VERSION,
            "n": self._n,
            "prev": self._prev,
            "table": table_uuid,
            "snapshot_id": snapshot_id,
            "sequence_number": sequence_number,
            "heads": {k: h.to_json() for k, h in sorted(heads.items())},
            "written_at": datetime.now(UTC).isoformat(),
            "key_id": self.signer.key_id,
        }
        entry["sig"] = self.signer.sign_bytes(canonical(entry))
        return canonical(entry)

    def last_snapshot(self, table_uuid: str) -> int | None:
        """The snapshot id of the file's last line, when that line is this table's."""
        if self.path is None or not self.path.exists():
            return None
        with open(self.path, "rb") as fh:
            last = _last_line(fh)
        try:
            entry = json.loads(last) if last else None
        except ValueError:
            return None
        if not isinstance(entry, dict) or entry.get("table") != table_uuid:
            return None
        snapshot_id = entry.get("snapshot_id")
        return snapshot_id if isinstance(snapshot_id, int) else None

    def flush(self) -> None:
        """Publish the lines Kafka has not acknowledged yet, oldest first."""
        if time.monotonic() < self._retry_at:
            return
        while self.unpublished and self.publish is not None:
            key, line = self.unpublished[0]
            try:
                self.publish(key, line)
            except Exception as exc:  # the table and the file hold it; the topic gets it later
                log.warning("witness line not published yet (%d pending): %s", len(self.unpublished), exc)
                self._retry_at = time.monotonic() + _RETRY_S
                return
            self.unpublished.pop(0)


@dataclass(frozen=True)
class WitnessLine:
    """One line of the witness file: its 1-based number, bytes and parsed entry (None: unreadable)."""

    number: int
    raw: bytes
    entry: dict[str, Any] | None


def read_lines(path: Path) -> list[WitnessLine] | None:
    """Every non-empty line of the witness file, or None when the file does not exist."""
    if not path.exists():
        return None
    out = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        out.append(WitnessLine(number, raw, entry if isinstance(entry, dict) else None))
    return out


def check_lines(lines: Iterable[WitnessLine], verifier: HeadVerifier) -> list[tuple[str, str]]:
    """(where, message) for every line that is unreadable, unsigned, badly signed or off the chain."""
    out: list[tuple[str, str]] = []
    prev, expected_n = WITNESS_GENESIS, 0
    for line in lines:
        where = f"witness line {line.number}"
        entry = line.entry
        if entry is None:
            out.append((where, "not a JSON object: the witness file was damaged"))
        elif "sig" not in entry:
            out.append((where, "unsigned: not written by this version of the sink, or forged"))
        else:
            body = {k: v for k, v in entry.items() if k != "sig"}
            if canonical(entry) != line.raw:
                out.append((where, "changed: not the exact bytes the sink wrote"))
            elif isinstance(kid := entry.get("key_id"), str) and not verifier.knows(kid):
                out.append((where, f"signed by key {kid}, which is not in the keyring"))
            elif not verifier.check_bytes(
                canonical(body), str(entry["sig"]), kid if isinstance(kid, str) else None
            ):
                out.append((where, "bad signature: the line was changed or forged"))
            elif entry.get("prev") != prev or entry.get("n") != expected_n:
                out.append(
                    (
                        where,
                        f"off the chain (entry {entry.get('n')}, expected {expected_n}): "
                        "a line before it was removed, inserted or reordered",
                    )
                )
        prev = hashlib.sha256(line.raw).hexdigest()
        n = entry.get("n") if entry is not None else None
        expected_n = (n if isinstance(n, int) else expected_n) + 1
    return out


def read_witness_topic(settings: Any, timeout: float = 15.0) -> list[bytes]:
    """Every line on the witness topic, from its start to its current end."""
    from confluent_kafka import TopicPartition

    from querytrail.kafka_clients import make_consumer
    from schemas.topics import WITNESS

    topic = WITNESS.name(settings.kafka.topic_prefix)
    consumer = make_consumer(
        settings.kafka, f"querytrail-verify-{os.getpid()}", **{"enable.partition.eof": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"the witness topic {topic} does not exist")
        ends: dict[int, int] = {}
        parts = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                ends[p] = high
                parts.append(TopicPartition(topic, p, low))
        consumer.assign(parts)
        out: list[tuple[int, int, bytes]] = []
        done: set[int] = set()
        while len(done) < len(ends):
            msg = consumer.poll(timeout)
            if msg is None:
                raise TimeoutError(f"the witness topic {topic} stopped answering before its end")
            if msg.error() is not None:
                continue
            p, off = int(msg.partition() or 0), int(msg.offset() or 0)
            out.append((p, off, msg.value() or b""))
            if off + 1 >= ends[p]:
                done.add(p)
        return [value for _, _, value in sorted(out)]
    finally:
        consumer.close()

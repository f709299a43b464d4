"""The pending-approvals board: the decisions topic folded into approval states, kept live.

A background thread reads ``decisions`` from the log start with its own consumer (no group
offsets are committed), verifies each record's service signature exactly as ``querytrail
approvals`` does (an approver is shown only what the worker signed), and folds it with the
worker's own pure ``processors.decision.approvals.evolve``. ``version`` changes whenever the board
changes, which is what the server-sent events stream watches.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

__all__ = ["Board", "Pending"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pending:
    """One request waiting for (or past) a human: what the worker asked, and where it stands."""

    asked: Any  # schemas.events.ApprovalRequested
    state: Any  # processors.decision.approvals.ApprovalState
    estimated_bytes: int | None
    tables: tuple[str, ...]

    def status(self, now: datetime) -> str:
        if self.state.pending and self.state.expires_at is not None and self.state.expires_at <= now:
            return "expired"
        return str(self.state.status)


class Board:
    """Approval states by request id, folded from the decisions topic. Thread-safe reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, Any] = {}
        self._asked: dict[str, Any] = {}
        self._decided: dict[str, Any] = {}
        self.version = 0
        self.ready = threading.Event()  # set once the topic was read to its end at start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the pure part: tests feed events straight in ------------------------------------------

    def apply(self, event: Any) -> None:
        """Fold one verified decisions event into the board."""
        from processors.decision.approvals import evolve
        from schemas.events import ApprovalRequested, PolicyDecided

        with self._lock:
            if isinstance(event, ApprovalRequested):
                self._asked[event.request_id] = event
            elif isinstance(event, PolicyDecided):
                self._decided[event.request_id] = event
            state = evolve(self._states.get(event.request_id), event)
            if state is None:
                self._states.pop(event.request_id, None)
            else:
                self._states[event.request_id] = state
            self.version += 1

    def get(self, request_id: str) -> Pending | None:
        with self._lock:
            asked = self._asked.get(request_id)
            state = self._states.get(request_id)
            decided = self._decided.get(request_id)
        if asked is None or state is None:
            return None
        return Pending(
            asked=asked,
            state=state,
            estimated_bytes=getattr(decided, "estimated_bytes", None),
            tables=tuple(getattr(decided, "tables", ()) or ()),
        )

    def items(self, now: datetime, *, include_resolved: bool = False) -> list[Pending]:
        """Pending approvals (or all of them), oldest first."""
        with self._lock:
            ids = sorted(self._asked, key=lambda rid: self._asked[rid].occurred_at)
        out = [p for p in (self.get(rid) for rid in ids) if p is not None]
        return out if include_resolved else [p for p in out if p.status(now) == "pending"]

    # -- the I/O edge: a consumer thread ---------------------------------------------------------

    def start(self, settings: Any) -> None:
        self._thread = threading.Thread(target=self._run, args=(settings,), name="console-board", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self, settings: Any) -> None:
        while not self._stop.is_set():
            try:
                self._consume(settings)
            except Exception:  # a broker hiccup must not end the board: log, wait, read again
                log.exception("console board: reading the decisions topic failed; retrying in 5 s")
                self._stop.wait(5)

    def _consume(self, settings: Any) -> None:
        from querytrail.kafka_clients import make_consumer
        from querytrail.keys import SignatureError, event_verifier
        from schemas.codec import DecodeError, EventCodec
        from schemas.events import new_event_id
        from schemas.topics import topic_names

        codec = EventCodec(settings.kafka.schema_registry_url)
        records = event_verifier(settings)
        name = topic_names(settings.kafka.topic_prefix)["decisions"]
        consumer = make_consumer(
            settings.kafka, f"querytrail-console-{new_event_id()}", **{"enable.partition.eof": True}
        )
        try:
            parts = consumer.list_topics(name, timeout=10).topics[name].partitions
            consumer.assign([TopicPartition(name, p, 0) for p in parts])
            at_end: set[int] = set()
            # A restart after an error folds the whole topic again into a fresh board.
            with self._lock:
                self._states.clear()
                self._asked.clear()
                self._decided.clear()
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition() or 0)
                        if len(at_end) >= len(parts):
                            self.ready.set()
                        continue
                    log.warning("console board: %s", err)
                    continue
                value = msg.value() or b""
                try:
                    event = codec.decode(value)
                    records.verify(msg.topic() or "", value, msg.headers())
                except DecodeError:
                    continue  # the sink dead-letters and records it; nothing to show an approver
                except SignatureError as exc:
                    log.warning(
                        "console board: ignoring a decisions record the worker did not sign (%s)", exc.reason
                    )
                    continue
                self.apply(event)
        finally:
            consumer.close()

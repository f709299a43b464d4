"""The ``querytrail executor`` process: consume authorisations, run them in parallel, commit in order.

Delivery is at least once: an offset is committed only when the authorisation at that offset
and every earlier one in its partition has been handled (outputs acknowledged), so a crash
redelivers whatever was in flight, and the ledger makes sure nothing runs twice. Statements run
on a thread pool (``settings.executor.concurrency``): Snowflake round trips dominate, not CPU.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from infra.clients import make_consumer
from processors.authz import Verifier
from processors.executor import Executor
from processors.ledger import Ledger
from querytrail.settings import Settings
from schemas.events import ExecutionAuthorized, ExecutionStarted
from schemas.topics import topic_names

__all__ = ["InOrderCommits", "public_key_path", "serve", "verify_key_path"]

log = logging.getLogger(__name__)


def public_key_path(private_path: Path) -> Path:
    """``keys/foo.pem`` -> ``keys/foo.pub.pem`` (the identity helper's convention)."""
    return private_path.with_name(private_path.name.removesuffix(".pem") + ".pub.pem")


def verify_key_path(settings: Settings) -> Path:
    """The authorisation public key: configured, or next to the worker's key under home/keys."""
    if settings.authz_verify_key_path is not None:
        return settings.authz_verify_key_path
    return public_key_path(settings.key_path("authz_signing_key"))


class InOrderCommits:
    """Per partition, the offsets in flight; yields the offset safe to commit (contiguous done)."""

    def __init__(self) -> None:
        self._inflight: dict[tuple[str, int], deque[tuple[int, Future[Any]]]] = {}

    def add(self, topic: str, partition: int, offset: int, future: Future[Any]) -> None:
        self._inflight.setdefault((topic, partition), deque()).append((offset, future))

    def __len__(self) -> int:
        return sum(len(q) for q in self._inflight.values())

    def oldest(self) -> Future[Any] | None:
        heads = [q[0] for q in self._inflight.values() if q]
        return min(heads, key=lambda h: h[0])[1] if heads else None

    def ready(self) -> list[TopicPartition]:
        """Offsets to commit now; re-raises a handler's exception (fail fast, nothing committed)."""
        out = []
        for (topic, partition), queue in self._inflight.items():
            last = None
            while queue and queue[0][1].done():
                offset, future = queue.popleft()
                future.result()
                last = offset
            if last is not None:
                out.append(TopicPartition(topic, partition, last + 1))
        return out


def _done() -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(None)
    return future


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run until ``stop`` is set (SIGTERM/SIGINT in the CLI)."""
    from processors.kafka_io import Publisher
    from schemas.codec import DecodeError, EventCodec

    stop = stop or threading.Event()
    verifier = Verifier.from_pem_files(
        [verify_key_path(settings)], max_age_s=settings.executor.authorization_max_age_s
    )
    ledger = Ledger(settings.home / "executor" / "ledger.db")
    codec = EventCodec(settings.kafka.schema_registry_url)
    publisher = Publisher(settings, "executor", codec)
    executor = Executor(settings, verifier, ledger, publisher)
    recovered = executor.recover()
    if recovered:
        log.warning("reported %d unfinished execution(s) from a previous run", recovered)
    threading.Thread(target=_catalog_loop, args=(settings, publisher, stop), daemon=True).start()
    topic = topic_names(settings.kafka.topic_prefix)["executions"]
    # A short session: after a crash the restarted executor gets its partitions (and the
    # redelivered authorisations, which the ledger then refuses to rerun) within seconds.
    consumer = make_consumer(
        settings.kafka,
        group_id=f"{settings.kafka.topic_prefix}.executor",
        **{"session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000},
    )
    consumer.subscribe([topic])
    concurrency = max(1, settings.executor.concurrency)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="run")
    commits = InOrderCommits()
    log.info("executor consuming %s (concurrency %d)", topic, concurrency)
    try:
        while not stop.is_set():
            while len(commits) >= 4 * concurrency:  # back-pressure: bounded work in flight
                oldest = commits.oldest()
                if oldest is not None:
                    oldest.result(timeout=None)
                _commit(consumer, commits)
            msg = consumer.poll(0.05)
            _commit(consumer, commits)
            if msg is None or msg.error() is not None:
                continue
            where = (msg.topic() or topic, msg.partition() or 0, msg.offset() or 0)
            try:
                event = codec.decode(msg.value() or b"")
            except DecodeError as exc:
                publisher.dead_letter(msg, "undecodable", str(exc))
                commits.add(*where, _done())
                continue
            if isinstance(event, ExecutionAuthorized):
                commits.add(*where, pool.submit(executor.handle, event))
            else:
                if not isinstance(event, ExecutionStarted):  # our own events share the topic
                    publisher.dead_letter(msg, "unexpected_event", f"{event.event_type} on {topic}")
                commits.add(*where, _done())
        pool.shutdown(wait=True)
        _commit(consumer, commits)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        consumer.close()
        ledger.close()
        publisher.producer.flush(10)
    return 0


def _commit(consumer: Any, commits: InOrderCommits) -> None:
    offsets = commits.ready()
    if offsets:
        consumer.commit(offsets=offsets, asynchronous=False)


def _catalog_loop(settings: Settings, publisher: Any, stop: threading.Event) -> None:
    """Publish CatalogTable events from INFORMATION_SCHEMA on start and every refresh interval."""
    previous: list[str] = []
    while not stop.is_set():
        try:
            from processors import catalog_sync

            events = catalog_sync.catalog_events(settings, previous=previous)
            publisher.publish(events)
            previous = [e.table for e in events if not e.deleted]
            log.info("published %d catalog table(s)", len(events))
        except Exception:
            log.exception("catalog refresh failed; keeping the previous catalog on the topic")
        stop.wait(settings.executor.catalog_refresh_s)

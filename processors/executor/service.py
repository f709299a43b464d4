"""The ``querytrail executor`` process: consume authorisations, run them in parallel, commit in order.

Delivery is at least once: an offset is committed only when the authorisation at that offset
and every earlier one in its partition has been handled (outputs acknowledged), so a crash
redelivers whatever was in flight, and the ledger makes sure nothing runs twice. Statements run
on a thread pool (``settings.executor.concurrency``): Snowflake round trips dominate, not CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from processors.decision.authz import Verifier
from processors.executor.ledger import Ledger
from processors.executor.runner import Executor
from processors.executor.scrub import error_summary
from querytrail.kafka_clients import make_consumer
from querytrail.keys import EventVerifier, SignatureError, event_verifier
from querytrail.settings import Settings
from schemas.codec import DecodeError
from schemas.events import ExecutionAuthorized, ExecutionStarted
from schemas.topics import group_id, topic_names

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
    from querytrail.publishing import Publisher
    from schemas.codec import EventCodec

    stop = stop or threading.Event()
    # the connector's DEBUG records hold statement texts, responses and raw error texts
    logging.getLogger("snowflake.connector").setLevel(max(logging.INFO, logging.getLogger().level))
    verifier = Verifier.from_pem_files(
        [verify_key_path(settings)], max_age_s=settings.executor.authorization_max_age_s
    )
    ledger = Ledger(settings.home / "executor" / "ledger.db")
    codec = EventCodec(settings.kafka.schema_registry_url)
    publisher = Publisher(settings, "executor", codec)
    records = event_verifier(settings, service=True)  # who may sign a record on the executions topic
    executor = Executor(settings, verifier, ledger, publisher)
    recovered = executor.recover()
    if recovered:
        log.warning("reported %d unfinished execution(s) from a previous run", recovered)
    threading.Thread(target=_catalog_loop, args=(settings, publisher, stop), daemon=True).start()
    topic = topic_names(settings.kafka.topic_prefix)["executions"]
    commits = InOrderCommits()
    committer = _Committer(commits, settings.executor.commit_interval_s)
    # A short session: after a crash the restarted executor gets its partitions (and the
    # redelivered authorisations, which the ledger then refuses to rerun) within seconds.
    consumer = make_consumer(
        settings.kafka,
        group_id=group_id("executor", settings.kafka.topic_prefix),
        on_commit=_commit_failed,
        **{"session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_000},
    )
    # before a partition goes to another member, commit what is done (the ledger stops a rerun
    # here, but not in another process)
    consumer.subscribe([topic], on_revoke=lambda c, _parts: committer.commit_on_revoke(c))
    concurrency = max(1, settings.executor.concurrency)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="run")
    log.info("executor consuming %s (concurrency %d)", topic, concurrency)
    try:
        while not stop.is_set():
            while len(commits) >= 4 * concurrency:  # back-pressure: bounded work in flight
                oldest = commits.oldest()
                if oldest is not None:
                    oldest.result(timeout=None)
                committer.collect()
            msg = consumer.poll(0.05)
            if msg is not None and msg.error() is None:
                _dispatch(msg, topic, codec, publisher, executor, pool, commits, records)
            # after the dispatch, never before: a commit is a broker round trip
            committer.commit(consumer)
        pool.shutdown(wait=True)
        committer.commit(consumer, now=True)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        consumer.close()
        ledger.close()
        publisher.producer.flush(10)
    return 0


def _dispatch(
    msg: Any,
    topic: str,
    codec: Any,
    publisher: Any,
    executor: Executor,
    pool: ThreadPoolExecutor,
    commits: InOrderCommits,
    records: EventVerifier | None = None,
) -> None:
    """Hand one record to the pool (an authorisation) or settle it here (anything else).

    A record no trusted key signed (querytrail.keys) is dead-lettered; when it is an
    authorisation, the executor still records its refusal and never runs it.
    """
    where = (msg.topic() or topic, msg.partition() or 0, msg.offset() or 0)
    try:
        event = codec.decode(msg.value() or b"")
    except DecodeError as exc:
        publisher.dead_letter(msg, "undecodable", str(exc))
        commits.add(*where, _done())
        return
    if not isinstance(event, ExecutionAuthorized | ExecutionStarted):  # our own events share the topic
        publisher.dead_letter(msg, "unexpected_event", f"{event.event_type} on {topic}")
        commits.add(*where, _done())
        return
    if records is not None:
        try:
            records.verify(where[0], msg.value() or b"", msg.headers())
        except SignatureError as exc:
            publisher.dead_letter(msg, exc.reason, exc.message)
            if isinstance(event, ExecutionAuthorized):
                commits.add(*where, pool.submit(executor.handle, event, exc.reason, _at(where)))
            else:
                commits.add(*where, _done())
            return
    if isinstance(event, ExecutionAuthorized):
        commits.add(*where, pool.submit(executor.handle, event, None, _at(where)))
        return
    commits.add(*where, _done())


def _at(where: tuple[str, int, int]) -> str:
    return "{}:{}:{}".format(*where)


class _Committer:
    """Commits the contiguous handled offsets asynchronously, at most every ``interval_s``.

    A synchronous commit after every record had cost a broker round trip on the consumer
    thread, between a record's arrival and its dispatch. Committing less often only widens
    what a crash redelivers, and the ledger never runs a redelivered authorisation again.
    """

    def __init__(self, commits: InOrderCommits, interval_s: float) -> None:
        self.commits = commits
        self.interval_s = interval_s
        self._due: dict[tuple[str, int], TopicPartition] = {}
        self._last = time.monotonic()

    def collect(self) -> None:
        for tp in self.commits.ready():
            self._due[(tp.topic, tp.partition)] = tp

    def commit(self, consumer: Any, now: bool = False) -> None:
        """``now``: synchronously and regardless of the interval (revocation, shutdown)."""
        self.collect()
        if not self._due or (not now and time.monotonic() - self._last < self.interval_s):
            return
        offsets, self._due = list(self._due.values()), {}
        self._last = time.monotonic()
        consumer.commit(offsets=offsets, asynchronous=not now)

    def commit_on_revoke(self, consumer: Any) -> None:
        self.collect()  # a handler's failure propagates: the process stops, nothing is skipped
        try:
            self.commit(consumer, now=True)
        except KafkaException as exc:  # raised inside poll() otherwise; a redelivery is safe here
            log.warning("offset commit on revocation failed (%s)", exc)


def _commit_failed(err: Any, partitions: list[TopicPartition]) -> None:
    # a lost commit only means a redelivery after a restart, which the ledger refuses to rerun
    if err is not None:
        log.warning("offset commit failed (%s); those authorisations may be redelivered", err)


_CATALOG_RETRY_S = (1.0, 60.0)  # first and longest wait after a failed refresh


def _catalog_loop(settings: Settings, publisher: Any, stop: threading.Event) -> None:
    """Publish CatalogTable events from INFORMATION_SCHEMA on start and every refresh interval.

    A failed refresh is retried after 1 s, doubling up to a minute (never later than the next
    regular refresh): until the first one succeeds, a worker without a catalog file resolves
    no table and denies every statement.
    """
    from processors.executor import catalog_sync

    previous: list[str] = []
    retry = _CATALOG_RETRY_S[0]
    while not stop.is_set():
        wait = settings.executor.catalog_refresh_s
        try:
            events = catalog_sync.catalog_events(settings, previous=previous)
            publisher.publish(events)
            previous = [e.table for e in events if not e.deleted]
            log.info("published %d catalog table(s)", len(events))
            retry = _CATALOG_RETRY_S[0]
        except Exception as exc:
            wait = min(retry, wait)
            retry = min(retry * 2, _CATALOG_RETRY_S[1])
            if type(exc).__module__.startswith("snowflake."):  # its text is Snowflake's: scrubbed
                code, _, message = error_summary(exc)
                log.warning(
                    "catalog refresh failed (%s %s: %s); keeping the previous catalog on the topic, "
                    "retrying in %.0fs",
                    type(exc).__name__,
                    code or "-",
                    message,
                    wait,
                )
            else:
                log.exception(
                    "catalog refresh failed; keeping the previous catalog on the topic, retrying in %.0fs",
                    wait,
                )
        stop.wait(wait)

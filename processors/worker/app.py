"""The worker: a faust-streaming app whose agents only loop, call the pure functions, publish.

- ``requests`` agent: QueryRequested -> verify the credential (thread) -> ``worker.decide_request``
  -> publish PolicyDecided + QueryRejected | ApprovalRequested | ExecutionAuthorized.
- ``verdicts`` agent: ApprovalVerdict -> verify the approver -> ``approvals.decide`` -> publish.
- a timer expires pending approvals on time, with no further traffic needed; another reloads
  the policy when its file changes (an invalid file is logged and the last valid one kept) and
  re-reads the catalog topic.

State: two faust Tables backed by their changelog topics. ``approvals`` holds, per request, the
Avro events the approval state folds from (so the changelog holds real events and the state is
``approvals.evolve`` over them, exactly as when rebuilt from the decisions topic); ``seen``
dedupes request ids, because delivery is at least once (faust's exactly-once is not relied on).

Values are raw bytes on every topic: the schemas codec encodes and decodes, never faust's
model serialisation. Outputs go through ``kafka_io.Publisher`` (confluent-kafka, acks=all,
murmur2) and are acknowledged before the agent moves on, so offsets are committed only after
outputs are durable. Undecodable input goes to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import faust
from confluent_kafka import KafkaException

from processors.decision import approvals
from processors.decision.approvals import ApprovalState
from processors.decision.requests import (
    CredentialError,
    approval_satisfied,
    authorize_approved,
    decide_request,
    decided_at,
    owner_record,
    replay_refusal,
)
from processors.decision.statement import DecisionCache
from processors.worker.reconcile import RequestScanner, dead_letter_marker
from processors.worker.runtime import WorkerRuntime
from querytrail.observability import logging_config
from querytrail.publishing import Publisher, PublishError, dead_letter_event
from querytrail.sealing import verdict_binding
from querytrail.settings import Settings
from schemas.codec import DecodeError, EventCodec
from schemas.events import (
    ApprovalVerdict,
    Credential,
    Event,
    QueryRequested,
    VerifiedIdentity,
    utcnow,
)
from schemas.topics import group_id, topic_names

__all__ = ["build_app", "dump_history", "load_history", "main"]

log = logging.getLogger(__name__)


def dump_history(codec: EventCodec, events: list[Event]) -> bytes:
    """A table value: the request's state-building events, Avro-encoded, as a JSON list."""
    return json.dumps([base64.b64encode(codec.encode(e)).decode() for e in events]).encode()


def load_history(codec: EventCodec, value: bytes | None) -> list[Event]:
    if not value:
        return []
    return [codec.decode(base64.b64decode(item)) for item in json.loads(value)]


def _fold(events: list[Event]) -> ApprovalState | None:
    state: ApprovalState | None = None
    for event in events:
        state = approvals.evolve(state, event)
    return state


def _strip_credential(request: QueryRequested) -> QueryRequested:
    """The copy kept in state: no sealed token, only its hash (least secret material at rest)."""
    from dataclasses import replace

    return replace(request, credential=Credential(token_sha256=request.credential.token_sha256))


def _short_fetch_wait(ms: int) -> None:
    """faust hard-codes aiokafka's fetch_max_wait_ms=1500; set ours (a long-polling fetch added
    several ms between a record's arrival and the agent seeing it, measured in bench/gateway.py)."""
    from faust.transport.drivers import aiokafka as driver

    create = driver.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "querytrail_fetch_wait", None) == ms:
        return
    original = getattr(create, "__wrapped__", create)

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms  # read when the consumer starts its fetcher
        return consumer

    create_worker_consumer.__wrapped__ = original  # type: ignore[attr-defined]
    create_worker_consumer.querytrail_fetch_wait = ms  # type: ignore[attr-defined]
    driver.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def build_app(settings: Settings, runtime: WorkerRuntime | None = None) -> faust.App:
    """The faust app for ``settings`` (topics under its prefix, state under its home)."""
    rt = runtime or WorkerRuntime(settings)
    names = topic_names(settings.kafka.topic_prefix)
    brokers = ";".join(f"kafka://{b.strip()}" for b in settings.kafka.bootstrap_servers.split(","))
    app = faust.App(
        group_id("worker", settings.kafka.topic_prefix),  # faust's app id is its group id
        broker=brokers,
        broker_credentials=rt.faust_credentials(),
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        web_enabled=False,
        datadir=str(settings.home / "worker" / "faust"),
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        # commits need not follow every record: a redelivered request is deduplicated by `seen`;
        # committing each one cost a broker round trip per record in the consumer's thread
        broker_commit_every=settings.worker.commit_every,
        broker_commit_interval=settings.worker.commit_interval_s,
        # a restarted worker gets its partitions (and table state) back within seconds
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
    _short_fetch_wait(settings.kafka.fetch_wait_max_ms)
    requests_topic = app.topic(names["requests"], key_type=bytes, value_type=bytes)
    verdicts_topic = app.topic(names["approvals"], key_type=bytes, value_type=bytes)
    # use_partitioner: changelog records are keyed by request id and partitioned like every
    # other topic (murmur2), so the timer may write too (there is no "current event" there)
    state_table = app.Table("approvals", default=None, key_type=bytes, value_type=bytes, use_partitioner=True)
    # request id -> its first requester and record (worker.owner_record, never pruned: finished is
    # forever); dead-letter marks and entries of older versions -> a timestamp, pruned
    seen_table = app.Table("seen", default=None, key_type=bytes, value_type=bytes, use_partitioner=True)
    codec = rt.codec
    publisher: Publisher = rt.publisher
    cache = DecisionCache()
    inflight: set[bytes] = set()  # request ids being decided right now (agent or reconciler)
    loop_exec = None  # the default thread pool: blocking I/O (JWKS, Kafka acks) off the event loop

    async def publish(events: list[Event]) -> None:
        if events:
            await asyncio.get_running_loop().run_in_executor(loop_exec, publisher.publish, events)

    def marker(m: Any) -> bytes:
        return dead_letter_marker(m.topic, m.partition, m.offset, settings.kafka.partitions)

    async def dead_letter(event: Any, reason: str, error: str, mark: bool = False) -> None:
        m = event.message
        letter = dead_letter_event(
            publisher.component, m.topic, m.partition, m.offset, m.key, m.value, reason, error
        )
        await publish([letter])
        if mark:  # unusable bytes: the reconciler will read them again and must not re-send
            seen_table[marker(m)] = str(int(time.time())).encode()

    async def check(rid: str, credential: Credential, **kw: Any) -> VerifiedIdentity | CredentialError:
        def run() -> VerifiedIdentity | CredentialError:
            try:
                return rt.checker.check(rid, credential, **kw)
            except CredentialError as exc:
                return exc

        return await asyncio.get_running_loop().run_in_executor(loop_exec, run)

    async def guarded(handler: Callable[[Any], Awaitable[None]], event: Any) -> None:
        """Outputs not acknowledged: exit before the offset is committed (redelivered on restart).
        Any other failure: the record goes to the dead-letter topic, never silently dropped."""
        try:
            await handler(event)
        except (PublishError, KafkaException) as exc:
            log.critical("cannot publish, stopping so the input is redelivered: %s", exc)
            os._exit(70)
        except Exception as exc:
            log.exception("processing failed; dead-lettering the record")
            try:
                await dead_letter(event, "processing_error", f"{type(exc).__name__}: {exc}")
            except Exception:
                log.critical("cannot dead-letter either; stopping")
                os._exit(70)

    async def handle_request(event: Any) -> None:
        try:
            request = codec.decode(event.value)
        except DecodeError as exc:
            await dead_letter(event, "undecodable", str(exc), mark=True)
            return
        if not isinstance(request, QueryRequested):
            await dead_letter(event, "unexpected_event", f"{request.event_type} on requests", mark=True)
            return
        rid = request.request_id
        key = rid.encode()
        m = event.message
        where = f"{m.topic}:{m.partition}:{m.offset}"
        prior = seen_table.get(key)
        if key in inflight or (prior is not None and prior.isdigit()) or decided_at(prior) == where:
            log.info("duplicate request ignored", extra={"request_id": rid})
            return
        inflight.add(key)  # before the first await: the reconciler may hold the same request
        try:
            if prior is not None:
                await refuse_replay(event, request, prior)
            else:
                await decide_one(request, key, where)
        finally:
            inflight.discard(key)

    async def refuse_replay(event: Any, request: QueryRequested, prior: bytes) -> None:
        """A decided request id seen again in another record: refused and recorded, not decided."""
        if seen_table.get(marker(event.message)) is not None:
            return  # refused already (the reconciler reads it again)
        who = await check(request.request_id, request.credential, sql=request.sql)
        reason, detail = replay_refusal(prior, who if isinstance(who, VerifiedIdentity) else None)
        log.warning("request refused: %s", detail, extra={"request_id": request.request_id})
        await dead_letter(event, reason, detail, mark=True)

    async def decide_one(request: QueryRequested, key: bytes, where: str) -> None:
        rid = request.request_id
        identity = await check(rid, request.credential, sql=request.sql)
        policy, catalog = rt.policy, rt.catalog
        now = utcnow()
        outputs = decide_request(request, identity, policy, catalog, now, rt.config, cache)
        # publish first: a crash in between duplicates (consumers dedupe), never loses
        await publish(outputs)
        if any(o.event_type == "ApprovalRequested" for o in outputs):
            state_table[key] = dump_history(codec, [_strip_credential(request), *outputs])
        verified = identity if isinstance(identity, VerifiedIdentity) else None
        seen_table[key] = owner_record(verified, request.event_id, where)  # not a timestamp: kept
        log.info("decided %s", " ".join(o.event_type for o in outputs), extra={"request_id": rid})

    async def handle_verdict(event: Any) -> None:
        try:
            verdict = codec.decode(event.value)
        except DecodeError as exc:
            await dead_letter(event, "undecodable", str(exc))
            return
        if not isinstance(verdict, ApprovalVerdict):
            await dead_letter(event, "unexpected_event", f"{verdict.event_type} on approvals")
            return
        rid = verdict.request_id
        key = rid.encode()
        history = load_history(codec, state_table.get(key))
        state = _fold(history)
        m = event.message
        where = f"{m.topic}:{m.partition}:{m.offset}"
        judged_at = b"verdict\x00" + verdict.event_id.encode()  # which record was judged
        if state is not None and verdict.event_id in state.judged:
            first = seen_table.get(judged_at)
            if first is None or first.decode() == where:
                log.info("duplicate verdict ignored (a redelivery)", extra={"request_id": rid})
                return
            # the same verdict event id at another record is a copy: refused and recorded each time
            log.warning(
                "replayed verdict refused: event id %s was judged at %s, this copy is at %s",
                verdict.event_id,
                first.decode(),
                where,
                extra={"request_id": rid},
            )
            await dead_letter(
                event,
                "verdict_replayed",
                f"verdict {verdict.event_id} was already judged at {first.decode()}",
            )
            return
        # the approver's sealed token opens only for exactly this verdict (querytrail.sealing)
        binding = verdict_binding(
            rid, verdict.verdict, verdict.statement_sha256, verdict.comment, verdict.event_id
        )
        who = await check(rid, verdict.credential, sql_sha256=verdict.statement_sha256, binding=binding)
        approver = who if isinstance(who, VerifiedIdentity) else None
        error = who.code if isinstance(who, CredentialError) else None
        outputs = approvals.decide(
            verdict,
            state,
            utcnow(),
            approver=approver,
            credential_error=error,
            authorize=lambda s, now: authorize_approved(s, now, rt.config, rt.policy.max_result_rows),
            satisfied=approval_satisfied(rt.policy),
        )
        await publish(outputs)  # before the state: a verdict judged but unpublished is judged again
        if state is not None and outputs:
            state_table[key] = dump_history(codec, history + outputs)
            seen_table[judged_at] = where.encode()
        log.info("verdict judged: %s", " ".join(o.event_type for o in outputs), extra={"request_id": rid})

    @app.agent(requests_topic)
    async def on_requests(stream: Any) -> None:
        async for event in stream.events():
            await guarded(handle_request, event)

    @app.agent(verdicts_topic)
    async def on_verdicts(stream: Any) -> None:
        async for event in stream.events():
            await guarded(handle_verdict, event)

    scanner: list[RequestScanner] = []

    @app.timer(interval=settings.worker.reconcile_s)
    async def reconcile_requests() -> None:
        """Decide requests faust skipped (committed past or not) during a rebalance."""
        loop = asyncio.get_running_loop()
        parts = {tp.partition for tp in app.consumer.assignment() if tp.topic == names["requests"]}
        if not parts:
            return
        if not scanner:
            scanner.append(
                RequestScanner(
                    settings,
                    names["requests"],
                    app.conf.id,
                    settings.worker.reconcile_window_s,
                    grace_s=settings.worker.reconcile_grace_s,
                )
            )
        try:
            records = await loop.run_in_executor(loop_exec, scanner[0].scan, parts)
        except Exception:
            log.warning("reconcile scan failed; next tick retries", exc_info=True)
            return
        for record in records:
            key = record.message.key or b""
            if seen_table.get(key) is not None or key in inflight:
                continue  # decided, or being decided
            if seen_table.get(marker(record.message)) is not None:
                continue  # bytes the stream already dead-lettered (the mark costs ~85 µs: only here)
            log.warning(
                "request was committed past without a decision; deciding it now",
                extra={"request_id": key.decode("utf-8", "replace")},
            )
            await guarded(handle_request, record)

    @app.timer(interval=settings.worker.expiry_check_s)
    async def expire_approvals() -> None:
        now = utcnow()
        retention = timedelta(seconds=settings.worker.resolved_retention_s)
        for key, value in list(state_table.items()):
            history = load_history(codec, value)
            state = _fold(history)
            if state is None:
                continue
            if not state.pending:
                if state.expires_at is not None and now - state.expires_at > retention:
                    del state_table[key]
                continue
            outputs = approvals.expire(state, now)
            if outputs:
                try:
                    await publish(outputs)
                except (PublishError, KafkaException) as exc:
                    log.critical("cannot publish an expiry, stopping: %s", exc)
                    os._exit(70)
                state_table[key] = dump_history(codec, history + outputs)
                log.info("approval expired", extra={"request_id": state.request_id})

    @app.timer(interval=min(60.0, max(1.0, settings.worker.resolved_retention_s)))
    async def prune_seen() -> None:
        """Bound the dedupe table: dead-letter marks (and request entries of older versions, a
        timestamp) past the retention go; a decided request's owner record stays."""
        horizon = time.time() - settings.worker.resolved_retention_s
        for key, value in list(seen_table.items()):
            if value and value.isdigit() and int(value) < horizon:
                del seen_table[key]

    @app.timer(interval=settings.worker.policy_reload_s)
    async def reload_policy() -> None:
        await asyncio.get_running_loop().run_in_executor(loop_exec, rt.maybe_reload_policy)

    @app.timer(interval=min(2.0, settings.worker.catalog_reload_s))
    async def reload_catalog() -> None:
        # often while the catalog is empty (the executor publishes it after start), then slowly
        await asyncio.get_running_loop().run_in_executor(loop_exec, rt.reload_catalog_if_due)

    return app


def main(settings: Settings, loglevel: str = "info") -> int:
    """``querytrail worker``: run the app until SIGTERM/SIGINT."""
    runtime = WorkerRuntime(settings)
    runtime.load()
    (settings.home / "worker" / "faust").mkdir(parents=True, exist_ok=True)
    app = build_app(settings, runtime)
    # faust replaces the root logger's handlers: hand it ours (JSON lines with request ids)
    logs = logging_config("worker", loglevel, settings.log_format)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, logging_config=logs)
    worker.execute_from_commandline()
    return 0

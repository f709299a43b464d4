"""The executor is SIGKILLed after ExecutionStarted and before completion: the request ends as
``outcome_unknown`` and the statement ran exactly once (it is never rerun after the restart).

Fault injection, honestly: ``QUERYTRAIL_FAULT_EXECUTOR_SLEEP_AFTER_RUN_S`` makes the executor
sleep after the statement ran and before its finish is recorded, so the kill lands in exactly
that window. The kill itself is a real SIGKILL of the real process.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import pytest

from processors.executor.runner import FAULT_SLEEP_ENV
from querytrail.settings import SnowflakeProfile
from schemas.events import ExecutionStarted
from tests.pipeline.pipeline_events import events, scalar
from tests.pipeline.pipeline_harness import Pipeline, new_prefix

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.reliability]


def test_sigkill_after_started_reports_outcome_unknown_and_never_reruns(fresh_pipeline: Pipeline) -> None:
    from ingress.client import QueryClient
    from schemas.events import ClientContext, Target

    p = fresh_pipeline
    p.start("worker")
    p.start("executor", **{FAULT_SLEEP_ENV: "120"})
    p.wait_log("worker", "Worker]: Ready")
    p.wait_log("executor", "executor consuming")

    marker = f"crash-{uuid.uuid4().hex[:8]}"
    rid = f"req-{uuid.uuid4()}"
    sub = QueryClient(p.settings).submit(
        token=p.token("writer", ("scratch-writer",)),
        request_id=rid,
        prompt="record an event",
        sql=f"INSERT INTO ANALYTICS.PUBLIC.SCRATCH_EVENTS (ID, EVENT) VALUES (7, '{marker}')",
        model="test-model",
        target=Target(profile="analytics"),
        context=ClientContext(),
    )
    try:
        p.wait_log("executor", "fault injection", timeout=60)
        started = [e for e in events(p, "executions", rid) if isinstance(e, ExecutionStarted)]
        assert len(started) == 1 and json.loads(started[0].query_tag)["request_id"] == rid
        p.kill("executor", signal.SIGKILL)

        count = f"SELECT COUNT(*) FROM ANALYTICS.PUBLIC.SCRATCH_EVENTS WHERE EVENT = '{marker}'"
        assert scalar(p, count) == 1  # it ran before the kill

        mark = p.log("executor").stat().st_size
        p.start("executor")  # no fault this time; the authorisation is redelivered
        p.wait_log("executor", "executor consuming", after=mark)
        outcome = sub.wait(60)
        assert outcome.status == "failed", outcome.to_json()
        assert outcome.failed["outcome"] == "outcome_unknown"
        p.wait_log("executor", "not running again", after=mark, timeout=60)
        time.sleep(2)
        assert scalar(p, count) == 1  # never rerun
        started = [e for e in events(p, "executions", rid) if isinstance(e, ExecutionStarted)]
        assert len(started) == 1
    finally:
        sub.close()


def test_worker_sigkill_keeps_pending_approval_and_decides_each_request_once(
    fresh_pipeline: Pipeline,
) -> None:
    """Approval state lives in a faust Table: after a SIGKILL the restarted worker recovers it
    from the changelog, so an approval given afterwards still releases the statement, and the
    request itself (possibly redelivered) is not decided a second time."""
    from ingress.client import QueryClient
    from schemas.events import ApprovalRequested, ClientContext, PolicyDecided, Target

    p = fresh_pipeline
    p.start_all()
    rid = f"req-{uuid.uuid4()}"
    sub = QueryClient(p.settings).submit(
        token=p.token("ci-bot", ("ci",)),
        request_id=rid,
        prompt="who are the account admins?",
        sql="SELECT USERNAME, ROLE FROM SECURITY.ADMIN.USERS WHERE ROLE = 'ACCOUNTADMIN'",
        model="test-model",
        target=Target(profile="analytics"),
        context=ClientContext(),
    )
    try:
        assert sub.wait(10).status == "awaiting_approval"
        mark = p.log("worker").stat().st_size
        p.kill("worker", signal.SIGKILL)
        p.start("worker")
        p.wait_log("worker", "Worker]: Ready", after=mark)
        done = p.cli(
            "approve", rid, "--token", p.token("alice", ("data-security",)), "--wait", "60", timeout=90
        )
        assert done.returncode == 0 and "accepted" in done.stdout, done.stdout + done.stderr
        outcome = sub.wait(60)
        assert outcome.status == "completed", outcome.to_json()
    finally:
        sub.close()
    decided = [e for e in events(p, "decisions", rid) if isinstance(e, PolicyDecided | ApprovalRequested)]
    assert [type(e) for e in decided] == [PolicyDecided, ApprovalRequested]


def test_request_committed_past_without_a_decision_is_still_decided(
    tmp_path: Path, kafka_bootstrap: str, fakesnow_profile: SnowflakeProfile
) -> None:
    """faust acks records its stream skips during a rebalance, so a restarted worker's group can
    be committed past a request nobody decided (seen by the kill-and-restart suite). Reproduced
    here directly: with the worker stopped, the group's offset is committed past a fresh request;
    the restarted worker's reconciler must still decide (and run) it."""
    from confluent_kafka import TopicPartition

    from infra.topics import create_topics
    from ingress.client import QueryClient
    from querytrail.kafka_clients import make_consumer
    from schemas.events import ClientContext, Target

    prefix = new_prefix()
    create_topics(kafka_bootstrap, prefix)
    p = Pipeline(
        tmp_path / prefix, kafka_bootstrap, prefix, fakesnow_profile, extra={"worker": {"reconcile_s": 1.0}}
    )
    try:
        p.start_all()
        p.kill("worker", signal.SIGTERM)  # a clean stop: the group is empty afterwards
        rid = f"req-{uuid.uuid4()}"
        sub = QueryClient(p.settings).submit(
            token=p.token("ci-bot", ("ci",)),
            request_id=rid,
            prompt="p",
            sql="SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 4",
            model="test-model",
            target=Target(profile="analytics"),
            context=ClientContext(),
        )
        try:
            [request] = [m for m in _records(p, "requests") if m.key() == rid.encode()]
            committer = make_consumer(p.settings.kafka, f"{prefix}-worker")  # faust's group id
            topic = f"{prefix}.requests"
            committer.commit(
                offsets=[TopicPartition(topic, request.partition(), request.offset() + 1)], asynchronous=False
            )
            committer.close()
            p.start("worker")
            outcome = sub.wait(90)
            assert outcome.status == "completed", outcome.to_json()
        finally:
            sub.close()
        p.wait_log("worker", "committed past without a decision")
    finally:
        p.stop()


def _records(p: Pipeline, suffix: str) -> list:
    from querytrail.publishing import read_topic

    return list(read_topic(p.settings, suffix))


def test_reconciler_finds_an_old_request_its_group_never_committed_past(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The other skip: a restarted worker's stream started a partition past requests its group
    had not committed (14 in one kill-and-restart run), so no offset points at them. Against the
    real broker: a request older than the grace period is found although the group's committed
    offset is at it, not past it; a younger one is left to the stream."""
    from confluent_kafka import TopicPartition

    from infra.topics import create_topics
    from processors.worker.reconcile import RequestScanner
    from querytrail.kafka_clients import make_consumer, make_producer
    from querytrail.settings import Settings

    prefix = new_prefix()
    create_topics(kafka_bootstrap, prefix)
    settings = Settings(home=tmp_path, kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix})
    topic, group = f"{prefix}.requests", f"{prefix}-worker"
    producer = make_producer(settings.kafka)
    now_ms = int(time.time() * 1000)
    for key, age_s in ((b"decided", 300), (b"skipped", 120), (b"young", 1)):
        producer.produce(topic, key=key, value=key, partition=0, timestamp=now_ms - age_s * 1000)
    assert producer.flush(10) == 0
    committer = make_consumer(settings.kafka, group)
    committer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)  # "decided" only
    committer.close()

    scanner = RequestScanner(settings, topic, group, window_s=3600, grace_s=60)
    try:
        found = scanner.scan({0})
        assert [r.message.key for r in found] == [b"decided", b"skipped"]  # the caller skips "seen" ones
        assert scanner.scan({0}) == []  # each record is looked at once
    finally:
        scanner.close()

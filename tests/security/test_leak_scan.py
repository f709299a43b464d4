"""After a realistic run of the whole pipeline, no raw token and no raw seeded PII value is
anywhere: not in any Kafka topic of the run (the querytrail topics and the worker's changelogs:
keys, values and headers), not in any Iceberg column (payload_json and avro included), and no
token in any service log.

The run (the demo's story, played through HTTP and the Kafka client): masked reads of every PII
column, SSNs pulled through a CTE, a privileged read that is held, refused to its requester and
released by an approver, a DROP TABLE (denied), an expired token (rejected), an INSERT, and a
downstream action report. The test policy classifies and masks every seeded PII column, so it
allows no raw value anywhere.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from infra.seed import SEEDED_PII, SEEDED_SECRETS
from schemas.events import ClientContext, Target
from tests.reliability.reliability_stack import SERVICES, Stack, events, kafka_records, wait_for, wait_iceberg

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CUSTOMERS = "SELECT ID, NAME, EMAIL, SSN, PHONE, CARD_NUMBER FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID <= 60"
LAUNDER = (
    "WITH x AS (SELECT SSN AS s, EMAIL AS e, CARD_NUMBER || '' AS c FROM ANALYTICS.PUBLIC.CUSTOMERS) "
    "SELECT s, e, c FROM x LIMIT 40"
)
PRIVILEGED = "SELECT USERNAME, FULL_NAME, EMAIL, MFA_SECRET FROM SECURITY.ADMIN.USERS"
TERMINAL = ("QueryCompleted", "QueryFailed", "QueryRejected")


def _run_story(stack: Stack) -> dict[str, str]:
    """Play the story; returns request id -> the terminal event type it must reach."""
    from ingress.client import QueryClient
    from querytrail.devissuer import mint_token

    ci = stack.token("ci-bot", ("ci",), repository="acme/etl")
    writer = stack.token("writer", ("scratch-writer",))
    alice = stack.token("alice", ("data-security",))
    expired = mint_token(stack.settings, sub="ci-bot", groups=("ci",), ttl_s=60, now=time.time() - 3600)
    stack.minted.append(expired)
    expect: dict[str, str] = {}

    for sql in (CUSTOMERS, LAUNDER):  # over HTTP
        status, body = stack.post_query(ci, sql, prompt="list customers for the churn report")
        assert status == 202, body
        expect[body["request_id"]] = "QueryCompleted"
    status, body = stack.post_query(ci, "DROP TABLE ANALYTICS.PUBLIC.CUSTOMERS", prompt="clean up")
    assert status == 202, body
    expect[body["request_id"]] = "QueryRejected"
    status, body = stack.post_query(expired, CUSTOMERS)
    assert status == 401 and body["error"] == "expired", body
    expect[body["request_id"]] = "QueryRejected"

    for sql, token, want in ((CUSTOMERS, ci, "completed"), (LAUNDER, ci, "completed"),
                             (f"INSERT INTO ANALYTICS.PUBLIC.SCRATCH_EVENTS (ID, EVENT) VALUES (5, 'leak-{uuid.uuid4().hex[:6]}')",
                              writer, "completed"),
                             (CUSTOMERS, expired, "rejected")):  # fmt: skip
        outcome = stack.submit(sql, token)
        assert outcome.status == want, outcome.to_json()
        expect[outcome.request_id] = "QueryCompleted" if want == "completed" else "QueryRejected"

    held_by = stack.token("ci-bot", ("ci", "data-security"))
    sub = QueryClient(stack.settings).submit(
        token=held_by, request_id=f"req-{uuid.uuid4()}", prompt="who are the admins?", sql=PRIVILEGED,
        model="claude", target=Target(profile="analytics"), context=ClientContext(ci_provider="local"),
    )  # fmt: skip
    try:
        assert sub.wait(15).status == "awaiting_approval"
        selfie = stack.cli("approve", sub.request_id, "--token", held_by)
        assert selfie.returncode == 1 and "self_approval" in selfie.stdout, selfie.stdout + selfie.stderr
        ok = stack.cli("approve", sub.request_id, "--token", alice, "--wait", "60", timeout=90)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        outcome = sub.wait(60)
        assert outcome.status == "completed", outcome.to_json()
        expect[sub.request_id] = "QueryCompleted"
    finally:
        sub.close()

    action = {"request_id": next(iter(expect)), "action": "published_report", "system": "looker",
              "details": {"dashboard": "churn"}, "row_count": 60}  # fmt: skip
    status, body = stack.http("POST", "/v1/actions", action, ci)
    assert status == 202, body
    return expect


def _raw_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every key, value and header value of ``topic``, as raw bytes."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"leak-scan-{uuid.uuid4()}", "enable.partition.eof": True,
         "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )  # fmt: skip
    out: list[bytes] = []
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        live = []
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                live.append(p)
        consumer.assign([TopicPartition(topic, p, 0) for p in live])
        done: set[int] = set()
        deadline = time.monotonic() + 60
        while len(done) < len(live) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition() or 0)
                continue
            out += [msg.key() or b"", msg.value() or b""]
            headers: list[Any] = list(msg.headers() or [])
            for pair in headers:
                header = pair[1]
                out.append(header.encode() if isinstance(header, str) else header or b"")
        assert len(done) == len(live), f"{topic} not read to its end"
    finally:
        consumer.close()
    return out


def _needles(stack: Stack) -> dict[str, list[bytes]]:
    tokens: list[bytes] = []
    for token in set(stack.minted):
        signature = token.rsplit(".", 1)[-1]
        tokens += [token.encode(), base64.b64encode(token.encode())]
        if len(signature) >= 16:
            tokens.append(signature.encode())
    pii = [v.encode() for v in (*SEEDED_PII, *SEEDED_SECRETS)]
    pii += [v.lower().encode() for v in SEEDED_PII if "@" in v]
    return {"token": tokens, "pii": pii}


def _flatten(value: Any) -> list[bytes]:
    if value is None:
        return []
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, dict):
        return [b for k, v in value.items() for b in (*_flatten(k), *_flatten(v))]
    if isinstance(value, list | tuple):
        return [b for v in value for b in _flatten(v)]
    return [str(value).encode()]


def _hits(blobs: list[bytes], needles: list[bytes]) -> list[bytes]:
    return [n for n in needles if any(n in b for b in blobs)]


def test_no_raw_token_or_pii_in_any_topic_column_or_log(stack: Stack) -> None:
    from confluent_kafka.admin import AdminClient

    from sinks.table import open_table

    expect = _run_story(stack)
    deadline = time.monotonic() + 90
    seen: dict[str, str] = {}
    while time.monotonic() < deadline and set(seen) < set(expect):
        for event in events(stack, "results"):
            if event.event_type in TERMINAL:
                seen.setdefault(event.request_id, event.event_type)
        time.sleep(1)
    assert {rid: seen.get(rid) for rid in expect} == expect
    wait_for(stack, "actions", lambda e: e.event_type == "DownstreamActionReported")
    records = kafka_records(stack)
    expected = {(m.topic(), m.partition(), m.offset()) for ms in records.values() for m in ms}
    assert expected <= set(wait_iceberg(stack, expected, timeout=120))

    needles = _needles(stack)
    assert len(needles["token"]) >= 3 * 5 and len(needles["pii"]) > 900

    bootstrap = stack.settings.kafka.bootstrap_servers
    topics = [t for t in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
              if t.startswith(stack.prefix)]  # fmt: skip
    assert any("changelog" in t for t in topics), topics  # the worker's state is scanned too
    found: dict[str, list[bytes]] = {}
    control = [b"list customers for the churn report"]  # a prompt: the scan must see it
    seen_control: set[str] = set()
    for topic in topics:
        blobs = _raw_topic(bootstrap, topic)
        if _hits(blobs, control):
            seen_control.add(topic)
        for kind, ns in needles.items():
            if hits := _hits(blobs, ns):
                found[f"kafka {topic} {kind}"] = hits[:3]

    table = open_table(stack.settings).scan().to_arrow()
    assert table.num_rows >= len(expected)
    for column in table.column_names:
        blobs = [b for v in table[column].to_pylist() for b in _flatten(v)]
        if _hits(blobs, control):
            seen_control.add(column)
        for kind, ns in needles.items():
            if hits := _hits(blobs, ns):
                found[f"iceberg {column} {kind}"] = hits[:3]

    for name in SERVICES:
        if hits := _hits([stack.log(name).read_bytes()], needles["token"]):
            found[f"log {name} token"] = hits[:3]
    assert {f"{stack.prefix}.requests", "payload_json", "avro"} <= seen_control, seen_control
    assert not found, f"raw secrets found: {found}"

"""Random and malformed bytes on every topic: each record is audited (an ``Undecodable`` row in
Iceberg holding the exact bytes), dead-lettered with the reason (by the worker, the executor, or
the sink for the topics only it reads), and every processor keeps running: valid requests after the garbage still complete, over the
Kafka client path and over HTTP. Real broker, real processes; nothing is mocked.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from schemas.codec import DecodeError
from schemas.events import DeadLetter, QueryRequested
from schemas.topics import TOPICS, topic_names
from tests.reliability.reliability_stack import CODEC, Stack, events, iceberg_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# who dead-letters what: the worker (requests, approvals), the executor (executions) and the
# sink (decisions, results, actions, catalog: no other processor reads them). Garbage on the
# deadletter topic itself is only audited (its Undecodable row), and an empty value on the
# compacted catalog topic is a tombstone, not garbage.
DEAD_LETTERED = set(TOPICS) - {"deadletter"}


def _dead_lettered(suffix: str, value: bytes) -> bool:
    return suffix in DEAD_LETTERED and not (suffix == "catalog" and value == b"")


LARGE = 900_000  # under librdkafka's default message.max.bytes (1 MB), with room for a DeadLetter
HUGE = 2 * 1024 * 1024  # over that default, under the topics' max.message.bytes (8 MiB)


def _valid() -> bytes:
    from ingress.client import QueryClient  # noqa: F401 -- the same shape the client sends
    from schemas.events import ClientContext, Credential, Target, new_event_id, producer, utcnow

    event = QueryRequested(
        event_id=new_event_id(), request_id="garbage-template", occurred_at=utcnow(), producer=producer("test"),
        prompt="p" * 40, model="m", sql="SELECT 1", target=Target(profile="analytics"),
        context=ClientContext(), credential=Credential(sealed_token=b"x" * 40, token_sha256="0" * 64),
    )  # fmt: skip
    return CODEC.encode(event)


def hand_picked() -> dict[str, bytes]:
    valid = _valid()
    body = valid[10:]
    return {
        "empty": b"",
        "truncated_header": valid[:6],
        "wrong_fingerprint": b"\xc3\x01" + bytes(8) + body,
        "corrupt_body": valid[:10] + body[: len(body) // 3],
        "confluent_unknown_id": b"\x00" + struct.pack(">I", 987_654) + body,
        "wrong_marker": b"\xc3\x02" + valid[2:],
        "json_not_avro": b'{"event_type": "QueryRequested", "sql": "DROP TABLE X"}',
        "large": b"\xc3\x01" + bytes(LARGE),
    }


def _producer(stack: Stack) -> Producer:
    return Producer(
        {
            "bootstrap.servers": stack.settings.kafka.bootstrap_servers,
            "message.max.bytes": 8 * 1024 * 1024,
            "linger.ms": 5,
        }
    )


def _undecodable(value: bytes) -> bool:
    try:
        CODEC.decode(value)
    except DecodeError:
        return True
    return False


def _produce(stack: Stack, records: list[tuple[str, bytes, bytes]]) -> None:
    names = topic_names(stack.prefix)
    producer = _producer(stack)
    for suffix, key, value in records:
        producer.produce(names[suffix], key=key, value=value)
        producer.poll(0)
    assert producer.flush(30) == 0


def _still_serving(stack: Stack) -> None:
    """No service crashed, and a valid request completes through the Kafka client and HTTP."""
    assert stack.crashes == [], f"services crashed (restarted by the supervisor): {stack.crashes}"
    for name, proc in stack.procs.items():
        assert proc.poll() is None, f"{name} died:\n{stack.tail(name)}"
    token = stack.token("ci-bot", ("ci",))
    outcome = stack.submit("SELECT ID, EMAIL FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 7", token)
    assert outcome.status == "completed", outcome.to_json()
    status, body = stack.post_query(token, "SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 8")
    assert status == 202, body
    status, got = stack.http("GET", f"/v1/queries/{body['request_id']}?wait=30", token=token, timeout=40)
    assert status == 200 and got.get("status") == "completed", got


def _assert_audited(stack: Stack, sent: list[tuple[str, bytes, bytes]], timeout: float = 120.0) -> None:
    """Every garbage record is an Undecodable row with its bytes, and is dead-lettered once."""
    names = topic_names(stack.prefix)
    deadline = time.monotonic() + timeout
    missing_rows: list[Any] = []
    missing_dead: list[Any] = []
    while time.monotonic() < deadline:
        rows = iceberg_rows(stack, ("topic", "event_type", "avro"))
        stored = set()
        if rows is not None:
            for topic, kind, avro in zip(
                rows["topic"].to_pylist(),
                rows["event_type"].to_pylist(),
                rows["avro"].to_pylist(),
                strict=True,
            ):
                if kind == "Undecodable":
                    stored.add((topic, avro))
        letters = [e for e in events(stack, "deadletter") if isinstance(e, DeadLetter)]
        dead = {(e.source_topic, e.value, e.reason) for e in letters}
        dead_keys = {(t, v) for t, v, _ in dead}
        missing_rows = [(s, len(v)) for s, _k, v in sent if (names[s], v) not in stored]
        missing_dead = [
            (s, len(v)) for s, _k, v in sent if _dead_lettered(s, v) and (names[s], v) not in dead_keys
        ]
        if not missing_rows and not missing_dead:
            break
        time.sleep(2)
    assert not missing_dead, f"not dead-lettered: {missing_dead}"
    assert not missing_rows, f"not audited in Iceberg: {missing_rows}"
    # by record (topic, partition, offset): equal bytes at two offsets are two records (the
    # forged-authorisation tests replay one unsigned record twice: each is dead-lettered)
    where = Counter((e.source_topic, e.source_partition, e.source_offset) for e in letters)
    twice = [k for k, n in where.items() if n > 1]
    assert not twice, f"dead-lettered more than once: {twice[:5]}"
    garbage = {(names[s], v) for s, _k, v in sent}  # the stack is shared: other tests' forgeries
    reasons = {r for t, v, r in dead if (t, v) in garbage}  # are dead-lettered as ``unsigned``
    assert reasons <= {"undecodable", "unexpected_event"}, reasons


def test_hand_picked_garbage_on_every_topic_is_dead_lettered_audited_and_survived(stack: Stack) -> None:
    picked = hand_picked()
    assert all(_undecodable(v) for v in picked.values()), "a hand-picked payload decodes"
    sent = [(suffix, f"junk-{name}".encode(), value) for suffix in TOPICS for name, value in picked.items()]
    _produce(stack, sent)
    _assert_audited(stack, sent, timeout=180)
    _still_serving(stack)


def _mutations() -> st.SearchStrategy[bytes]:
    valid = _valid()

    def flip(data: tuple[int, int]) -> bytes:
        pos, byte = data
        b = bytearray(valid)
        b[pos % len(b)] = byte
        return bytes(b)

    return st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=64).map(lambda b: b"\xc3\x01" + b),  # right marker, random rest
        st.binary(max_size=64).map(lambda b: b"\x00" + b),  # Confluent magic, random rest
        st.integers(0, len(valid)).map(lambda n: valid[:n]),  # every truncation
        st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(flip),
    )


def test_generated_garbage_is_dead_lettered_audited_and_survived(stack: Stack) -> None:
    sent: list[tuple[str, bytes, bytes]] = []

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(suffix=st.sampled_from(sorted(TOPICS)), value=_mutations())
    def generate(suffix: str, value: bytes) -> None:
        assume(_undecodable(value))  # a mutation that still decodes is a valid event, not garbage
        sent.append((suffix, f"gen-{len(sent)}".encode(), value))

    generate()
    assert len(sent) >= 20
    _produce(stack, sent)
    _assert_audited(stack, sent, timeout=180)
    _still_serving(stack)


def test_garbage_on_topics_only_the_sink_reads_is_also_dead_lettered(stack: Stack) -> None:
    sent = [
        (s, b"junk-unread", b"\xc3\x01unread-garbage") for s in ("decisions", "results", "actions", "catalog")
    ]
    _produce(stack, sent)
    names = topic_names(stack.prefix)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        dead = {(e.source_topic, e.value) for e in events(stack, "deadletter") if isinstance(e, DeadLetter)}
        if all((names[s], v) in dead for s, _k, v in sent):
            return
        time.sleep(2)
    raise AssertionError("garbage on topics without a processor was not dead-lettered")


def test_huge_record_within_the_topic_limit_is_dead_lettered_without_a_crash(make_stack: Any) -> None:
    stack: Stack = make_stack()
    stack.start_everything()
    stack.supervise()
    huge = b"\xc3\x01" + bytes(HUGE)
    sent = [("requests", b"junk-huge", huge), ("executions", b"junk-huge", huge)]
    _produce(stack, sent)
    try:
        _assert_audited(stack, sent, timeout=60)
        _still_serving(stack)
    finally:
        stack.stop()


def test_the_reconciler_does_not_dead_letter_garbage_again(stack: Stack) -> None:
    """The worker's reconciler re-reads every request its group committed past (faust can skip
    records in a rebalance); garbage it finds there was dead-lettered by the stream already."""
    sent = [("requests", f"again-{i}".encode(), b"\xc3\x01again-%d" % i) for i in range(4)]
    _produce(stack, sent)
    _assert_audited(stack, sent, timeout=120)
    names = topic_names(stack.prefix)
    time.sleep(2.5 * stack.settings.worker.reconcile_s)  # at least two scans past the records
    letters = [e for e in events(stack, "deadletter") if isinstance(e, DeadLetter)]
    counts = Counter((e.source_topic, e.value) for e in letters)
    assert all(counts[(names[s], v)] == 1 for s, _k, v in sent), counts

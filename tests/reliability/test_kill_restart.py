"""While requests flow, SIGKILL and restart in turn the worker, the executor, the sink, the HTTP
ingress and the Kafka broker; then every request has exactly one terminal outcome, nothing ran
twice, every record of every topic is in Iceberg exactly once, and ``verify`` passes.

Everything is real: a broker of this test alone (restarted on its data dir), fakesnow, signed dev
issuer tokens, the four services as processes, real SIGKILLs. No fault is mocked.

A service that exits on its own (the worker exits 70 and the executor exits when they cannot
publish for longer than ``kafka.delivery_timeout_s``, e.g. while the broker restarts) is
restarted by the stack's supervisor, as systemd or Kubernetes would, and counted in
``crash_restarts`` of the printed counts.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest

from schemas.events import ClientContext, ExecutionStarted, QueryRequested, Target
from tests.pipeline.pipeline_events import scalar
from tests.reliability.reliability_stack import REPORT_LINES, Stack, decoded, kafka_records, wait_iceberg

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(900)]

TERMINAL = ("QueryCompleted", "QueryFailed", "QueryRejected")
MIN_REQUESTS, MAX_REQUESTS, PACE_S = 200, 500, 0.3


@dataclass
class Load:
    """Requests sent by the load thread (alternately over HTTP and by the Kafka client)."""

    stack: Stack
    run: str
    kinds: dict[str, str] = field(default_factory=dict)  # accepted request id -> kind
    markers: dict[str, str] = field(default_factory=dict)  # insert request id -> row marker
    retries: int = 0
    kills_done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def statement(self, i: int) -> tuple[str, str, str]:
        """(kind, sql, marker) of the i-th request: allowed reads and inserts, denials, holds."""
        n = i % 20
        if n < 9:
            return "allowed", f"SELECT ID, EMAIL FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = {i % 200 + 1}", ""
        if n < 13:
            marker = f"{self.run}-{i}"
            return (
                "insert",
                f"INSERT INTO ANALYTICS.PUBLIC.SCRATCH_EVENTS (ID, EVENT) VALUES ({i}, '{marker}')",
                marker,
            )
        if n < 16:
            return "denied", f"DELETE FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = {i % 200 + 1}", ""
        return "held", "SELECT USERNAME, ROLE FROM SECURITY.ADMIN.USERS WHERE ROLE = 'ACCOUNTADMIN'", ""

    def run_load(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _run(self) -> None:
        from ingress.client import QueryClient
        from querytrail.publishing import Publisher, PublishError

        s = self.stack
        tokens = {
            "allowed": s.token("ci-bot", ("ci",)),
            "denied": s.token("ci-bot", ("ci",)),
            "insert": s.token("writer", ("scratch-writer",)),
            "held": s.token("ci-bot", ("ci",), purpose="expiry-test"),  # 4s approval ttl: expires
        }
        client = QueryClient(s.settings)
        publisher = Publisher(s.settings, "reliability-load")
        started, i = time.monotonic(), 0
        while i < MAX_REQUESTS and (i < MIN_REQUESTS or not self.kills_done.is_set()):
            kind, sql, marker = self.statement(i)
            rid = None
            key = f"{self.run}-load-{i}"  # a retry after a lost 202 is the same request
            # Kafka path: one event for every attempt (a publish that timed out may still have
            # landed once the broker is back; a new request id per attempt would run it twice)
            kafka_rid = f"req-{uuid.uuid4()}"
            event = client.build_request(
                request_id=kafka_rid, prompt=f"load {i}", sql=sql, model="test-model", token=tokens[kind],
                target=Target(profile="analytics"), context=ClientContext(ci_provider="local"),
            )  # fmt: skip
            for _attempt in range(20):
                if i % 2 == 0:  # HTTP: the ingress verifies the token and attests the claims
                    try:
                        status, body = s.post_query(
                            tokens[kind], sql, prompt=f"load {i}", idempotency_key=key
                        )
                    except OSError:
                        status, body = 0, {}
                    if status == 202:
                        rid = body["request_id"]
                        break
                else:  # Kafka: the token travels sealed, the worker verifies it
                    try:
                        publisher.publish([event], timeout=15)
                        rid = kafka_rid
                        break
                    except PublishError:
                        pass  # retried with the same event: the worker must decide it once
                self.retries += 1
                time.sleep(1.0)
            else:
                raise RuntimeError(f"request {i} not accepted after 20 attempts")
            assert rid is not None
            self.kinds[rid] = kind
            if marker:
                self.markers[rid] = marker
            i += 1
            time.sleep(max(0.0, started + i * PACE_S - time.monotonic()))


def _kill_in_turn(stack: Stack, broker: Any, load: Load) -> list[str]:
    """SIGKILL and restart each service while the load flows; returns what was killed."""
    kills: list[str] = []
    time.sleep(8)
    for name in ("worker", "executor", "sink", "ingress", "broker"):
        if name == "broker":
            broker.kill()  # SIGKILL of the broker's process group
            kills.append(name)
            time.sleep(3)
            broker.start(timeout=120)  # same ports, same data dir
        else:
            with stack.lock:
                stack.kill(name, signal.SIGKILL)
                kills.append(name)
                stack.start_service(name, timeout=180)
        time.sleep(6)
    return kills


def _report(request: pytest.FixtureRequest, counts: dict[str, Any]) -> None:
    line = "querytrail reliability: " + " ".join(f"{k}={v}" for k, v in counts.items())
    REPORT_LINES.append(line)
    request.node.user_properties.append(("reliability_counts", json.dumps(counts)))


def test_sigkill_each_service_under_load_loses_and_duplicates_nothing(
    make_stack: Any, own_broker: Any, request: pytest.FixtureRequest
) -> None:
    stack: Stack = make_stack(bootstrap_=own_broker.bootstrap)
    stack.start_everything()
    stack.supervise()
    load = Load(stack, f"rel-{uuid.uuid4().hex[:8]}")
    thread = threading.Thread(target=load.run_load, daemon=True)
    t0 = time.monotonic()
    thread.start()
    try:
        kills = _kill_in_turn(stack, own_broker, load)
    finally:
        load.kills_done.set()
    thread.join(400)
    assert not thread.is_alive(), "the load did not finish"
    if load.error is not None:
        raise load.error

    # every request on the requests topic reaches a terminal outcome (held ones by expiry)
    deadline = time.monotonic() + 90
    while True:
        records = kafka_records(stack)
        events = {suffix: decoded(msgs) for suffix, msgs in records.items()}
        requested = {e.request_id for e in events["requests"] if isinstance(e, QueryRequested)}
        ended = {e.request_id for e in events["results"] if e.event_type in TERMINAL}
        missing = requested - ended
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    time.sleep(5)  # give a (wrong) late duplicate every chance to appear
    records = kafka_records(stack)
    events = {suffix: decoded(msgs) for suffix, msgs in records.items()}
    terminal: dict[str, list[Any]] = defaultdict(list)
    for e in events["results"]:
        if e.event_type in TERMINAL:
            terminal[e.request_id].append(e)
    started = Counter(e.request_id for e in events["executions"] if isinstance(e, ExecutionStarted))

    # every record of every topic lands in Iceberg exactly once
    expected = {(m.topic(), m.partition(), m.offset()) for msgs in records.values() for m in msgs}
    keys = wait_iceberg(stack, expected, timeout=180)

    # no INSERT ran twice: one row per completed insert, at most one when the outcome is unknown
    rows = {}
    if load.markers:
        from processors.executor.runner import connect

        conn = connect(stack.settings.snowflake_profiles["analytics"], {})
        try:
            cur = conn.cursor()
            cur.execute(
                "SELECT EVENT, COUNT(*) FROM ANALYTICS.PUBLIC.SCRATCH_EVENTS "
                f"WHERE EVENT LIKE '{load.run}-%' GROUP BY EVENT"
            )
            rows = dict(cur.fetchall())
        finally:
            conn.close()
    ledger = sqlite3.connect(stack.home / "executor" / "ledger.db")
    try:
        ledger_rows = Counter(r[0] for r in ledger.execute("SELECT request_id FROM executions"))
    finally:
        ledger.close()

    outcomes = Counter(e[0].event_type for e in terminal.values() if e)
    dup_terminal = {rid: [e.event_type for e in es] for rid, es in terminal.items() if len(es) > 1}
    dup_started = {rid: n for rid, n in started.items() if n > 1}
    dup_rows = {m: n for m, n in rows.items() if n > 1}
    dup_iceberg = {k: n for k, n in keys.items() if n > 1}
    lost_accepted = set(load.kinds) - requested
    lost_terminal = requested - set(terminal)
    lost_iceberg = expected - set(keys)
    completed = {rid for rid, es in terminal.items() if es[0].event_type == "QueryCompleted"}
    missing_rows = [m for rid, m in load.markers.items() if rid in completed and rows.get(m, 0) != 1]
    counts = {
        "requests": len(requested),
        "accepted_by_clients": len(load.kinds),
        "client_retries": load.retries,
        "outcomes": dict(outcomes),
        "events": len(expected),
        "iceberg_rows": sum(keys.values()),
        "kills": len(kills),
        "killed": ",".join(kills),
        "crash_restarts": ",".join(stack.crashes) or "none",
        "duplicates": len(dup_terminal) + len(dup_started) + len(dup_rows) + len(dup_iceberg),
        "lost": len(lost_accepted) + len(lost_terminal) + len(lost_iceberg) + len(missing_rows),
        "seconds": round(time.monotonic() - t0),
    }
    _report(request, counts)
    assert kills == ["worker", "executor", "sink", "ingress", "broker"]
    assert len(requested) >= MIN_REQUESTS
    assert not lost_accepted, f"accepted but never on the requests topic: {sorted(lost_accepted)[:5]}"
    assert not lost_terminal, f"no terminal outcome: {sorted(lost_terminal)[:5]}"
    assert not dup_terminal, f"more than one terminal outcome: {list(dup_terminal.items())[:5]}"
    assert not dup_started, f"ExecutionStarted more than once: {dup_started}"
    assert all(n == 1 for n in ledger_rows.values()) and set(started) <= set(ledger_rows)
    assert not dup_rows, f"an INSERT ran twice: {dup_rows}"
    assert not missing_rows, f"completed inserts without their row: {missing_rows[:5]}"
    assert not lost_iceberg, f"{len(lost_iceberg)} records not in Iceberg, e.g. {sorted(lost_iceberg)[:3]}"
    assert not dup_iceberg, f"records stored twice in Iceberg: {list(dup_iceberg)[:3]}"
    assert sum(keys.values()) == len(expected)
    # each kind ended the way its policy says. Killing the executor turns a run into one of two
    # failures its restart reports: outcome_unknown if the statement had been sent, or a
    # definite "failed" if the kill came after the ledger claim but before sending; that one
    # must be true: its INSERT row is not in the table.
    for rid, kind in load.kinds.items():
        first = terminal[rid][0]
        if kind == "denied":
            assert (first.event_type, first.stage) == ("QueryRejected", "policy"), first
        elif kind == "held":
            assert (first.event_type, first.reason_code) == ("QueryRejected", "approval_expired"), first
        elif first.event_type == "QueryFailed" and first.outcome == "failed":
            assert first.producer.component == "executor", first
            assert first.message.startswith("executor stopped before sending the statement"), first
            assert ledger_rows.get(rid) == 1, first
            assert rid not in load.markers or rows.get(load.markers[rid], 0) == 0, first
        elif first.event_type == "QueryFailed":
            assert first.outcome == "outcome_unknown", first
        else:
            assert first.event_type == "QueryCompleted", first
    assert scalar(stack, "SELECT 1") == 1
    verified = stack.cli("verify", "--format", "json", timeout=180)
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]

"""Faults other than a kill: the Iceberg catalog unavailable, an invalid policy file, and
Snowflake unreachable (refused, or a silent endpoint that accepts and never answers).

All real: the SQLite catalog is locked by a second connection holding an EXCLUSIVE transaction
(exactly what another writer, a backup or a stuck process does), the policy file is really
replaced, and the Snowflake endpoints are real sockets.
"""

from __future__ import annotations

import socket
import sqlite3
import time
import uuid
from typing import Any

import pytest

from schemas.events import ClientContext, PolicyDecided, QueryRequested, Target
from tests.pipeline.pipeline_events import events, wait_for
from tests.reliability.reliability_stack import Stack, free_port, kafka_records, wait_iceberg

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

READ = "SELECT ID, EMAIL FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = {}"


def _send(stack: Stack, n: int, token: str) -> list[str]:
    """Produce ``n`` allowed reads through the Kafka client path; returns their request ids."""
    from ingress.client import QueryClient
    from querytrail.publishing import Publisher

    client, publisher, rids = QueryClient(stack.settings), Publisher(stack.settings, "faults"), []
    for i in range(n):
        rid = f"req-{uuid.uuid4()}"
        publisher.publish(
            [
                client.build_request(
                    request_id=rid, prompt=f"p{i}", sql=READ.format(i % 200 + 1), model="m", token=token,
                    target=Target(profile="analytics"), context=ClientContext(),
                )
            ]
        )  # fmt: skip
        rids.append(rid)
    return rids


def _terminal(stack: Stack, rids: list[str], timeout: float = 90.0) -> dict[str, Any]:
    done: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(done) < len(rids):
        for e in events(stack, "results"):
            if e.request_id in rids and e.event_type in ("QueryCompleted", "QueryFailed", "QueryRejected"):
                done.setdefault(e.request_id, e)
        time.sleep(1)
    return done


def test_catalog_locked_for_a_while_events_wait_in_kafka_and_nothing_is_lost(make_stack: Any) -> None:
    stack: Stack = make_stack()
    stack.start_everything()
    token = stack.token("ci-bot", ("ci",))
    first = _send(stack, 5, token)
    assert len(_terminal(stack, first)) == 5
    expected = {(m.topic(), m.partition(), m.offset()) for ms in kafka_records(stack).values() for m in ms}
    assert expected <= set(wait_iceberg(stack, expected, timeout=60))

    catalog = stack.home / "iceberg" / "catalog.db"
    mark = stack.log("sink").stat().st_size
    lock = sqlite3.connect(catalog, timeout=30, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # nobody else can read or write the catalog now
    try:
        rids = _send(stack, 20, token)
        outcomes = _terminal(stack, rids)  # the pipeline itself does not depend on the catalog
        assert len(outcomes) == 20 and all(o.event_type == "QueryCompleted" for o in outcomes.values())
        time.sleep(12)  # several commit intervals and busy timeouts of the sink
        assert stack.procs["sink"].poll() is None, stack.tail("sink")
        outage = stack.log("sink").read_bytes()[mark:].decode(errors="replace")
        assert "iceberg append failed" in outage, "the lock did not make the catalog unavailable"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    records = kafka_records(stack)
    expected = {(m.topic(), m.partition(), m.offset()) for ms in records.values() for m in ms}
    keys = wait_iceberg(stack, expected, timeout=120)
    assert expected == set(keys), f"missing {len(expected - set(keys))}, extra {len(set(keys) - expected)}"
    assert all(n == 1 for n in keys.values()), "a record was stored twice"
    assert stack.procs["sink"].poll() is None
    done = stack.cli("verify", "--format", "json", timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_invalid_policy_is_refused_with_its_reason_and_the_old_one_keeps_deciding(make_stack: Any) -> None:
    stack: Stack = make_stack()
    stack.start("worker")
    stack.start("executor")
    stack.wait_log("worker", "Worker]: Ready")
    stack.wait_log("executor", "executor consuming")
    token = stack.token("ci-bot", ("ci",))
    before = stack.submit(READ.format(1), token)
    assert before.status == "completed", before.to_json()
    sha = next(e for e in events(stack, "decisions", before.request_id) if isinstance(e, PolicyDecided))
    good = stack.policy_path.read_text()
    broken = {
        "yaml": good.replace("rules:", "rules: [oops"),
        "schema": good.replace("then: allow", "then: allow_everything", 1),
        "empty": "",
    }
    try:
        for kind, text in broken.items():
            mark = stack.log("worker").stat().st_size
            stack.policy_path.write_text(text)
            stack.wait_log("worker", "policy reload refused", timeout=20, after=mark)
            refused = stack.log("worker").read_bytes()[mark:].decode(errors="replace")
            assert "keeping the last valid policy" in refused, kind
            allowed = stack.submit(READ.format(2), token)
            assert allowed.status == "completed", (kind, allowed.to_json())
            denied = stack.submit("DELETE FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 2", token)
            assert denied.status in ("denied", "rejected"), (kind, denied.to_json())
            decided = [
                e for e in events(stack, "decisions", allowed.request_id) if isinstance(e, PolicyDecided)
            ]
            assert decided[0].policy_sha256 == sha.policy_sha256, kind  # still the old policy
        stack.policy_path.unlink()  # a deleted file: also keeps the last valid policy
        time.sleep(2)
        assert stack.submit(READ.format(3), token).status == "completed"
        assert stack.procs["worker"].poll() is None
    finally:
        stack.policy_path.write_text(good)


def _silent_listener() -> socket.socket:
    """A socket that accepts connections (backlog) and never answers: the hanging endpoint."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@pytest.mark.parametrize("endpoint", ["closed_port", "silent"])
def test_snowflake_unreachable_fails_the_query_instead_of_hanging(
    make_stack: Any, fakesnow_profile: Any, endpoint: str
) -> None:
    silent = _silent_listener() if endpoint == "silent" else None
    port = silent.getsockname()[1] if silent else free_port()
    profile = fakesnow_profile.model_copy(
        update={"port": port, "login_timeout_s": 5, "network_timeout_s": 10}
    )
    stack: Stack = make_stack(profile_=profile)
    try:
        stack.start("worker")
        stack.start("executor")
        stack.wait_log("worker", "Worker]: Ready")
        stack.wait_log("executor", "executor consuming")
        token = stack.token("ci-bot", ("ci",))
        started = time.monotonic()
        outcome = stack.submit(READ.format(1), token, wait=120)
        elapsed = time.monotonic() - started
        assert outcome.status == "failed", outcome.to_json()
        assert elapsed < 90, f"took {elapsed:.0f}s"
        rid = outcome.request_id
        failed = wait_for(stack, "results", lambda e: e.request_id == rid and e.event_type == "QueryFailed")
        assert len(failed) == 1 and failed[0].message, failed
        assert stack.procs["executor"].poll() is None  # still serving
        requested = [e for e in events(stack, "requests", rid) if isinstance(e, QueryRequested)]
        assert len(requested) == 1
    finally:
        if silent is not None:
            silent.close()

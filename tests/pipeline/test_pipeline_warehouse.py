"""The warehouse's side of a request, end to end on the real local stack (Kafka, worker,
executor, fakesnow): with no catalog file and the example policy, the catalog sync carries the
emulator's table sizes, so a filtered analytics query runs without approval; the executor puts
Snowflake's cost next to the policy's estimate; the tag Snowflake recorded is the request's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from querytrail.settings import SnowflakeProfile
from schemas.events import ExecutionAuthorized, PolicyDecided, QueryCompleted
from tests.pipeline.pipeline_events import events
from tests.pipeline.pipeline_harness import Pipeline, new_prefix

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "infra" / "policies" / "example.yaml"


def test_filtered_query_runs_with_synced_sizes_and_reports_its_cost(
    tmp_path: Path, kafka_bootstrap: str, fakesnow_profile: SnowflakeProfile
) -> None:
    from infra.topics import create_topics
    from processors.executor.runner import connect

    prefix = new_prefix()
    create_topics(kafka_bootstrap, prefix)
    p = Pipeline(
        tmp_path / prefix, kafka_bootstrap, prefix, fakesnow_profile, catalog=None, policy=EXAMPLE_POLICY
    )
    try:
        p.start_all()
        p.wait_log("worker", "catalog loaded", timeout=120)
        token = p.token("ci-bot", ("ci",), repository="acme/etl")
        outcome = p.submit(
            "SELECT STATUS, COUNT(*) AS N FROM ANALYTICS.PUBLIC.ORDERS WHERE ORDER_DATE >= '2025-06-01' "
            "GROUP BY STATUS",
            token,
        )
        assert outcome.status == "completed", outcome.to_json()
        rid = outcome.request_id
        decided = [e for e in events(p, "decisions", rid) if isinstance(e, PolicyDecided)]
        assert decided and decided[0].decision == "allow" and decided[0].rules == ("ci-reads-analytics",)
        estimate = decided[0].estimated_bytes
        assert estimate is not None and 0 < estimate < 10 * 1024**3
        auth = [e for e in events(p, "executions", rid) if isinstance(e, ExecutionAuthorized)]
        assert auth and auth[0].estimated_bytes == estimate
        done = [e for e in events(p, "results", rid) if isinstance(e, QueryCompleted)]
        assert done and done[0].estimated_bytes == estimate and done[0].bytes_scanned
        assert not done[0].cost_alert  # the emulator scans what the catalog says the table holds

        conn = connect(p.settings.snowflake_profiles["analytics"], {})
        try:
            cur = conn.cursor()
            cur.execute(
                "SELECT QUERY_TAG, USER_NAME FROM SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY WHERE QUERY_ID = %s",
                (done[0].snowflake_query_id,),
            )
            tag_text, user = cur.fetchone()
        finally:
            conn.close()
        tag = json.loads(tag_text)
        assert user == "QUERYTRAIL"
        assert (tag["request_id"], tag["subject"], tag["model"]) == (rid, "ci-bot", "test-model")
        assert tag["policy_sha256"] == decided[0].policy_sha256
    finally:
        p.stop()


def test_reconcile_on_the_running_stack_reports_only_what_went_around(
    tmp_path: Path, kafka_bootstrap: str, fakesnow_profile: SnowflakeProfile
) -> None:
    import time

    import snowflake.connector
    from pyiceberg.exceptions import NoSuchTableError

    from infra.fakesnow_server import connect_kwargs
    from infra.topics import create_topics
    from schemas.events import utcnow
    from sinks.reconcile import ReconcileState
    from sinks.reports import load_events

    prefix = new_prefix()
    create_topics(kafka_bootstrap, prefix)
    extra = {"reconcile": {"latency_s": 0, "settle_s": 0}}
    p = Pipeline(
        tmp_path / prefix, kafka_bootstrap, prefix, fakesnow_profile, policy=EXAMPLE_POLICY, extra=extra
    )
    # the session's emulator holds other tests' statements: this run starts reading from now
    ReconcileState(p.home / "reconcile" / "state.json", watermark=utcnow()).save()
    try:
        p.start_all()
        p.start("sink")
        token = p.token("ci-bot", ("ci",), repository="acme/etl")
        outcome = p.submit("SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID <= 2", token)
        assert outcome.status == "completed", outcome.to_json()
        landed = False
        deadline = time.monotonic() + 180  # a loaded 2-core CI machine: the sink's first commit is slow
        while not landed and time.monotonic() < deadline:  # the sink lands the request's events
            try:
                rows = load_events(p.settings).to_pylist()
            except NoSuchTableError:  # the sink has not created the table yet
                rows = []
            landed = any(
                r["event_type"] == "QueryCompleted" and r["request_id"] == outcome.request_id for r in rows
            )
            time.sleep(0 if landed else 1)
        assert landed, "the sink did not land the request's QueryCompleted in 180 s"
        first = p.cli("reconcile", "--json")
        assert first.returncode == 0 and first.stdout.strip() == "", first.stdout + first.stderr

        with snowflake.connector.connect(**connect_kwargs(int(fakesnow_profile.port or 0))) as conn:
            cur = conn.cursor()
            cur.execute("SELECT CITY FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 3")
            direct = cur.sfqid
        second = p.cli("reconcile", "--json")
        found = [json.loads(line) for line in second.stdout.splitlines()]
        assert [(f["kind"], f["snowflake_query_id"]) for f in found] == [("unauthorized", direct)], (
            second.stderr
        )
        third = p.cli("reconcile", "--json")
        assert third.returncode == 0 and third.stdout.strip() == ""
    finally:
        p.stop()

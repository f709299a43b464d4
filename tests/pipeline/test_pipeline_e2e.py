"""End to end over the real broker, the real fakesnow endpoint and real signed (dev issuer) tokens.

The worker and the executor run as separate processes (``querytrail worker`` / ``executor``);
requests go in through the CI client or the ``querytrail submit`` CLI itself.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from schemas.events import (
    ApprovalVerdictRecorded,
    DeadLetter,
    ExecutionAuthorized,
    ExecutionStarted,
    PolicyDecided,
    QueryRejected,
)
from tests.pipeline.pipeline_events import CODEC, events, scalar, wait_for
from tests.pipeline.pipeline_harness import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CUSTOMERS = "SELECT ID, NAME, EMAIL, SSN, PHONE, CARD_NUMBER FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID <= 20"
PRIVILEGED = "SELECT USERNAME, ROLE FROM SECURITY.ADMIN.USERS WHERE ROLE = 'ACCOUNTADMIN'"


def _files(tmp_path: Path, sql: str, token: str) -> list[str]:
    (tmp_path / "q.sql").write_text(sql)
    (tmp_path / "prompt.txt").write_text("list some customers")
    (tmp_path / "token").write_text(token)
    return [
        "--sql-file", str(tmp_path / "q.sql"),
        "--prompt-file", str(tmp_path / "prompt.txt"),
        "--model", "test-model",
        "--token-file", str(tmp_path / "token"),
        "--wait", "60",
    ]  # fmt: skip


def test_allowed_query_returns_masked_rows_to_submit(pipeline: Pipeline, tmp_path: Path) -> None:
    from infra.seed import SEEDED_PII

    token = pipeline.token("ci-bot", ("ci",), repository="acme/etl")
    done = pipeline.cli("submit", *_files(tmp_path, CUSTOMERS, token), "--format", "json", timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    text = done.stdout
    rows = result["result"]["rows"] if "result" in result else result["rows"]
    assert len(rows) == 20
    leaked = [v for v in SEEDED_PII if v in text]
    assert leaked == [], f"raw PII reached the caller: {leaked[:3]}"
    assert all(str(row[2]).startswith("****@") for row in rows)  # EMAIL keeps only its domain


def test_denied_query_returns_rule_and_reason(pipeline: Pipeline, tmp_path: Path) -> None:
    token = pipeline.token("ci-bot", ("ci",))
    sql = "DELETE FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 1"
    done = pipeline.cli("submit", *_files(tmp_path, sql, token), timeout=120)
    assert done.returncode != 0
    assert "no-deletes" in done.stderr and "never deletes" in done.stderr
    assert scalar(pipeline, "SELECT COUNT(*) FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 1") == 1


def test_invalid_tokens_are_rejected_at_identity(pipeline: Pipeline) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from querytrail.devissuer import mint_token

    expired = mint_token(pipeline.settings, sub="ci-bot", groups=("ci",), ttl_s=60, now=time.time() - 3600)
    forged = jwt.encode(
        {"iss": pipeline.settings.identity.dev_issuer_url, "sub": "ci-bot", "aud": "querytrail",
         "exp": int(time.time()) + 600, "iat": int(time.time()), "groups": ["ci"]},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
    )  # fmt: skip
    for token, code in ((expired, "expired"), (forged, {"unknown_key", "bad_signature"})):
        outcome = pipeline.submit("SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 1", token)
        assert outcome.status == "rejected"
        assert outcome.rejected["stage"] == "identity"
        assert outcome.rejected["reason_code"] in (code if isinstance(code, set) else {code})
        assert outcome.decision is None  # nothing is decided for an unverified caller


def test_privileged_query_waits_and_only_a_valid_approver_releases_it(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    from ingress.client import QueryClient
    from schemas.events import ClientContext, Target

    requester = pipeline.token("ci-bot", ("ci", "data-security"))
    rid = f"req-{uuid.uuid4()}"
    sub = QueryClient(pipeline.settings).submit(
        token=requester,
        request_id=rid,
        prompt="who is admin?\x1b[2J\nstatus: APPROVED <b>",
        sql=PRIVILEGED,
        model="test-model",
        target=Target(profile="analytics"),
        context=ClientContext(),
    )
    try:
        outcome = sub.wait(8)
        assert outcome.status == "awaiting_approval"

        listed = pipeline.cli("approvals", "list")
        assert rid in listed.stdout, listed.stderr
        shown = pipeline.cli("approvals", "show", rid)
        assert "privileged-needs-approval" in shown.stdout and "USERNAME" in shown.stdout
        assert "\x1b" not in shown.stdout and "admin?\\x1b[2J" in shown.stdout  # escaped for a terminal
        assert "\n    | status: APPROVED <b>" in shown.stdout  # a forged line stays inside the field

        selfie = pipeline.cli("approve", rid, "--token", requester)
        assert selfie.returncode == 1 and "self_approval" in selfie.stdout, selfie.stdout + selfie.stderr
        outsider = pipeline.cli("approve", rid, "--token", pipeline.token("mallory", ("ci",)))
        assert outsider.returncode == 1 and "not_in_approver_group" in outsider.stdout
        assert sub.wait(2).status == "awaiting_approval"

        token_file = tmp_path / "alice.jwt"  # --token-file keeps the token off argv (ps)
        token_file.write_text(pipeline.token("alice", ("data-security",)) + "\n")
        alice = pipeline.cli("approve", rid, "--token-file", str(token_file))
        assert alice.returncode == 0 and "accepted" in alice.stdout, alice.stdout + alice.stderr
        outcome = sub.wait(60)
        assert outcome.status == "completed", outcome.to_json()
        assert outcome.rows() and all(role == "ACCOUNTADMIN" for _, role in outcome.rows())
    finally:
        sub.close()
    recorded = [e for e in events(pipeline, "decisions", rid) if isinstance(e, ApprovalVerdictRecorded)]
    assert [(r.accepted, r.reason) for r in recorded] == [
        (False, "self_approval"),
        (False, "not_in_approver_group"),
        (True, "approved"),
    ]
    assert [r.approver.subject for r in recorded if r.approver] == ["ci-bot", "mallory", "alice"]


def test_expiry_denies_without_further_traffic(pipeline: Pipeline) -> None:
    token = pipeline.token("ci-bot", ("ci",), purpose="expiry-test")
    started = time.monotonic()
    outcome = pipeline.submit(PRIVILEGED, token, wait=30)
    # the client stops at whichever terminal event it reads first: ApprovalResolved(expired)
    # on the decisions topic or QueryRejected on the results topic; both must exist
    assert outcome.status in ("rejected", "denied"), outcome.to_json()
    assert time.monotonic() - started < 15  # ttl 4s, checked every 0.5s
    rid = outcome.request_id
    resolved = wait_for(
        pipeline, "decisions", lambda e: e.event_type == "ApprovalResolved" and e.request_id == rid
    )
    assert [r.outcome for r in resolved] == ["expired"]
    rejected = wait_for(pipeline, "results", lambda e: isinstance(e, QueryRejected) and e.request_id == rid)
    assert (rejected[0].stage, rejected[0].reason_code) == ("approval", "approval_expired")


def test_redelivered_authorisation_runs_once(pipeline: Pipeline) -> None:
    marker = f"once-{uuid.uuid4().hex[:8]}"
    token = pipeline.token("writer", ("scratch-writer",))
    sql = f"INSERT INTO ANALYTICS.PUBLIC.SCRATCH_EVENTS (ID, EVENT) VALUES (1, '{marker}')"
    outcome = pipeline.submit(sql, token)
    assert outcome.status == "completed", outcome.to_json()
    count = f"SELECT COUNT(*) FROM ANALYTICS.PUBLIC.SCRATCH_EVENTS WHERE EVENT = '{marker}'"
    assert scalar(pipeline, count) == 1
    rid = outcome.request_id
    auth = next(e for e in events(pipeline, "executions", rid) if isinstance(e, ExecutionAuthorized))

    # Redeliver the identical record twice, and a tampered copy (a different statement).
    from dataclasses import replace

    from querytrail.publishing import Publisher

    publisher = Publisher(pipeline.settings, "test")
    tampered = replace(auth, event_id=str(uuid.uuid4()), statement=auth.statement.replace(marker, "evil"))
    publisher.publish([auth, auth, tampered])
    wait_for(pipeline, "results", lambda e: isinstance(e, QueryRejected) and e.request_id == rid)
    time.sleep(3)  # give a (wrong) second execution every chance to happen
    assert scalar(pipeline, count) == 1
    started = [e for e in events(pipeline, "executions", rid) if isinstance(e, ExecutionStarted)]
    assert len(started) == 1
    rejected = [e for e in events(pipeline, "results", rid) if isinstance(e, QueryRejected)]
    assert [(r.stage, r.reason_code) for r in rejected] == [("authorization", "bad_signature")]
    assert scalar(pipeline, "SELECT COUNT(*) FROM ANALYTICS.PUBLIC.SCRATCH_EVENTS WHERE EVENT = 'evil'") == 0


def test_duplicate_request_is_decided_once_and_garbage_is_dead_lettered(pipeline: Pipeline) -> None:
    from ingress.client import QueryClient
    from querytrail.publishing import Publisher
    from schemas.events import ClientContext, Target

    client = QueryClient(pipeline.settings)
    request = client.build_request(
        request_id=f"req-{uuid.uuid4()}",
        prompt="p",
        sql="SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 2",
        model="m",
        token=pipeline.token("ci-bot", ("ci",)),
        target=Target(profile="analytics"),
        context=ClientContext(),
    )
    publisher = Publisher(pipeline.settings, "test")
    publisher.publish([request, request])
    raw = b"\x00not avro at all"
    publisher.producer.produce(f"{pipeline.prefix}.requests", value=raw, key=b"garbage-key")
    publisher.producer.flush(10)
    wait_for(
        pipeline, "results", lambda e: e.request_id == request.request_id and e.event_type == "QueryCompleted"
    )
    dead = wait_for(pipeline, "deadletter", lambda e: isinstance(e, DeadLetter) and e.value == raw)
    assert dead[0].reason == "undecodable" and dead[0].source_topic == f"{pipeline.prefix}.requests"
    time.sleep(2)
    decided = [e for e in events(pipeline, "decisions", request.request_id) if isinstance(e, PolicyDecided)]
    assert len(decided) == 1
    assert CODEC.decode(CODEC.encode(decided[0])) == decided[0]


def test_invalid_policy_is_refused_and_the_last_valid_one_kept(pipeline: Pipeline) -> None:
    good = pipeline.policy_path.read_text()
    try:
        pipeline.policy_path.write_text(good.replace("rules:", "rules: [oops"))
        pipeline.wait_log("worker", "policy reload refused", timeout=20)
        outcome = pipeline.submit(
            "SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 3", pipeline.token("c", ("ci",))
        )
        assert outcome.status == "completed"
    finally:
        pipeline.policy_path.write_text(good)


def test_one_denial_denies(pipeline: Pipeline) -> None:
    token = pipeline.token("ci-bot", ("ci",))
    first = pipeline.submit(PRIVILEGED, token, wait=8)
    assert first.status == "awaiting_approval"
    rid = first.request_id
    no_comment = pipeline.cli("deny", rid, "--token", pipeline.token("bob", ("data-security",)))
    assert no_comment.returncode == 2  # a denial must say why
    bob = pipeline.cli(
        "deny", rid, "--token", pipeline.token("bob", ("data-security",)), "--comment", "not today"
    )
    assert bob.returncode == 0 and "accepted" in bob.stdout, bob.stdout + bob.stderr
    rejected = wait_for(pipeline, "results", lambda e: isinstance(e, QueryRejected) and e.request_id == rid)
    assert (rejected[0].stage, rejected[0].reason_code) == ("approval", "approval_denied")
    assert "bob" in rejected[0].reason
    assert not [e for e in events(pipeline, "executions", rid)]


def test_huge_undecodable_records_are_dead_lettered_intact(pipeline: Pipeline) -> None:
    """2 MiB of garbage (within the topics' 8 MiB limit) on the worker's and the executor's input."""
    from querytrail.publishing import Publisher

    huge = b"\xc3\x01" + bytes(2 * 1024 * 1024)
    publisher = Publisher(pipeline.settings, "test")
    for suffix in ("requests", "executions"):
        publisher.producer.produce(f"{pipeline.prefix}.{suffix}", value=huge, key=b"junk-huge")
    publisher.producer.flush(30)
    dead = wait_for(
        pipeline, "deadletter", lambda e: isinstance(e, DeadLetter) and e.value == huge, count=2, timeout=60
    )
    assert {d.source_topic for d in dead} == {f"{pipeline.prefix}.requests", f"{pipeline.prefix}.executions"}
    outcome = pipeline.submit(
        "SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 5", pipeline.token("c", ("ci",))
    )
    assert outcome.status == "completed"  # both still serving

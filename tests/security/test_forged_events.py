"""Forged events around the signed authorisations change nothing (issue 13, items 1 and 2).

An attacker who can write one topic with the project's own codec, holding no service key
(unsigned records, or records signed with a key of its own), forges what the independent
review forged: a catalog entry that drops a PII table's columns, an approval request that shows
approvers another statement, an approver's sealed approval re-sent as a denial, and results
that complete a pending request or reject a completed one. Against the real pipeline (worker,
executor, sink, HTTP ingress as processes), each forgery leaves every decision, approval,
execution, outcome and display as it was, and is dead-lettered with the reason (or, for a
verdict, recorded as refused).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from querytrail.kafka_clients import make_producer, produce_sync
from querytrail.keys import EventSigner
from querytrail.settings import SnowflakeProfile
from schemas.codec import EventCodec, key_for
from schemas.events import (
    ApprovalRequested,
    ApprovalResolved,
    ApprovalVerdict,
    ApprovalVerdictRecorded,
    CatalogColumn,
    DeadLetter,
    QueryCompleted,
    QueryRejected,
    ResultPage,
    new_event_id,
    producer,
    utcnow,
)
from tests.reliability.reliability_stack import Stack, events, iceberg_rows, stacks, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CODEC = EventCodec()
PRIVILEGED = "SELECT USERNAME, ROLE FROM SECURITY.ADMIN.USERS WHERE ROLE = 'ACCOUNTADMIN'"
_POLICY = Path(__file__).parents[1] / "pipeline" / "policy.yaml"
_TWO_APPROVALS = """
  - id: two-approvals
    description: the re-sent approval test needs a request still pending after one approval
    when: {identity: {claims: {purpose: two-approvals}}, tables_tagged: [privileged]}
    then: {require_approval: {approvers: [data-security], min_approvals: 2, ttl: 10m}}
"""


class Attacker:
    """Writes any one topic with the project's codec, holding no service key."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.producer = make_producer(stack.settings.kafka)

    def write(self, suffix: str, event: Any, key: str = "none") -> bytes:
        """Produce ``event``: unsigned (``none``) or signed with the attacker's own key
        (``stranger``); returns the record's bytes."""
        topic = f"{self.stack.prefix}.{suffix}"
        value = CODEC.encode(event)
        headers = None if key == "none" else EventSigner(Ed25519PrivateKey.generate()).headers(topic, value)
        produce_sync(self.producer, topic, value, key=key_for(event), headers=headers)
        return value


@pytest.fixture(scope="module")
def forged_stack(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, fakesnow_profile: SnowflakeProfile
) -> Iterator[Stack]:
    """A whole stack deciding on the catalog topic (no catalog file), re-read every second."""
    base = tmp_path_factory.mktemp("forged")
    policy = base / "policy.yaml"
    policy.write_text(_POLICY.read_text(encoding="utf-8") + _TWO_APPROVALS, encoding="utf-8")
    with stacks(base, kafka_bootstrap, fakesnow_profile) as make:
        s = make(catalog=None, policy=policy, extra={"worker": {"catalog_reload_s": 1.0}})
        s.start_everything()
        s.supervise()
        s.wait_log("worker", "catalog loaded", timeout=90)
        yield s


@pytest.fixture(scope="module")
def attacker(forged_stack: Stack) -> Attacker:
    return Attacker(forged_stack)


def _dead_lettered(stack: Stack, values: dict[bytes, str], timeout: float = 90.0) -> None:
    """Each forged record is dead-lettered once with its expected reason."""
    found = wait_for(
        stack,
        "deadletter",
        lambda e: isinstance(e, DeadLetter) and e.value in values,
        timeout=timeout,
        count=len(values),
    )
    assert sorted((e.value, e.reason) for e in found) == sorted(values.items())


def _post(stack: Stack, token: str, sql: str) -> str:
    status, body = stack.post_query(token, sql)
    assert status == 202, body
    return str(body["request_id"])


def _get(stack: Stack, token: str, rid: str, wait: float = 0) -> dict[str, Any]:
    status, body = stack.http("GET", f"/v1/queries/{rid}?wait={wait}", token=token, timeout=wait + 15)
    assert status == 200, body
    return body


def _asked(stack: Stack, rid: str) -> ApprovalRequested:
    found = wait_for(stack, "decisions", lambda e: isinstance(e, ApprovalRequested) and e.request_id == rid)
    return found[0]  # type: ignore[no-any-return]


def test_fake_catalog_entry_switches_no_masking_off(forged_stack: Stack, attacker: Attacker) -> None:
    s = forged_stack
    real = next(e for e in events(s, "catalog") if e.table == "ANALYTICS.PUBLIC.CUSTOMERS")
    harmless = (CatalogColumn(name="ID", type="NUMBER"), CatalogColumn(name="NOTE", type="TEXT"))
    sent = {}
    for key in ("none", "stranger"):
        fake = replace(real, event_id=new_event_id(), occurred_at=utcnow(), columns=harmless, row_count=10)
        sent[attacker.write("catalog", fake, key)] = "unsigned" if key == "none" else "unknown_key"
    time.sleep(4)  # the worker re-reads the catalog topic every second
    token = s.token("ci-bot", ("ci",))
    outcome = s.submit("SELECT * FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID <= 3", token)
    assert outcome.status == "completed", outcome.to_json()
    sources = {m["source"] for m in outcome.decision["masked_columns"]}
    assert "ANALYTICS.PUBLIC.CUSTOMERS.EMAIL" in sources, sources
    emails = [v for row in outcome.rows() for v in row if isinstance(v, str) and "@" in v]
    assert emails and all(v.startswith("****@") for v in emails), emails
    _dead_lettered(s, sent)


def test_fake_approval_request_is_not_shown_to_approvers(forged_stack: Stack, attacker: Attacker) -> None:
    s = forged_stack
    rid = _post(s, s.token("ci-bot", ("ci",)), PRIVILEGED)
    real = _asked(s, rid)
    harmless = "SELECT COUNT(*) FROM SECURITY.ADMIN.USERS"
    fake = replace(real, event_id=new_event_id(), statement=harmless, sql_text=harmless, prompt="count users")
    value = attacker.write("decisions", fake)  # the real statement's hash, a harmless-looking statement
    _dead_lettered(s, {value: "unsigned"})
    shown = s.cli("approvals", "show", rid)
    assert shown.returncode == 0, shown.stderr
    assert "COUNT(*)" not in shown.stdout and "USERNAME" in shown.stdout, shown.stdout
    assert real.statement_sha256 in shown.stdout


def test_approvals_show_refuses_a_statement_its_hash_does_not_name(forged_stack: Stack) -> None:
    """Even signed (a worker bug, or a stolen key), a mismatched hash is never displayed."""
    from querytrail.publishing import Publisher

    s = forged_stack
    rid = _post(s, s.token("ci-bot", ("ci",)), PRIVILEGED)
    real = _asked(s, rid)
    other = f"other-{uuid.uuid4()}"
    harmless = "SELECT COUNT(*) FROM SECURITY.ADMIN.USERS"
    Publisher(s.settings, "worker").publish(
        [replace(real, event_id=new_event_id(), request_id=other, statement=harmless)]
    )
    wait_for(s, "decisions", lambda e: isinstance(e, ApprovalRequested) and e.request_id == other)
    shown = s.cli("approvals", "show", other)
    assert shown.returncode != 0 and "does not match its sha256" in shown.stderr, shown.stdout + shown.stderr
    assert "COUNT(*)" not in shown.stdout
    sent = s.cli("approve", other, "--token", s.token("alice", ("data-security",)))
    assert sent.returncode != 0 and "does not match" in sent.stderr


def test_a_sealed_approval_resent_as_a_denial_is_refused(forged_stack: Stack, attacker: Attacker) -> None:
    s = forged_stack
    requester = s.token("ci-bot", ("ci",), purpose="two-approvals")
    rid = _post(s, requester, PRIVILEGED)
    _asked(s, rid)
    alice = s.cli("approve", rid, "--token", s.token("alice", ("data-security",)))
    assert alice.returncode == 0 and "accepted" in alice.stdout, alice.stdout + alice.stderr
    copied = next(e for e in events(s, "approvals", rid) if isinstance(e, ApprovalVerdict))
    for changes in (
        {"verdict": "deny", "comment": "forged denial"},  # a denial in alice's name
        {"verdict": "deny", "comment": copied.comment},
        {"comment": "a second approval"},  # the same approval again as another event
    ):
        forged = replace(copied, event_id=new_event_id(), **changes)
        attacker.write("approvals", forged)
        judged = wait_for(
            s,
            "decisions",
            lambda e, f=forged: isinstance(e, ApprovalVerdictRecorded) and e.verdict_event_id == f.event_id,
        )
        assert [(j.accepted, j.reason) for j in judged] == [(False, "invalid_credential: bad_seal")]
    assert _get(s, requester, rid)["status"] == "awaiting_approval"
    bob = s.cli("approve", rid, "--token", s.token("bob", ("data-security",)))
    assert bob.returncode == 0 and "accepted" in bob.stdout, bob.stdout + bob.stderr
    assert _get(s, requester, rid, wait=60)["status"] == "completed"
    resolved = [e for e in events(s, "decisions", rid) if isinstance(e, ApprovalResolved)]
    assert [r.outcome for r in resolved] == ["approved"]


def test_a_replayed_verdict_is_recorded_every_time(forged_stack: Stack, attacker: Attacker) -> None:
    """A verdict copied byte for byte (its event id repeats) is refused and recorded per copy."""
    s = forged_stack
    requester = s.token("ci-bot", ("ci",), purpose="replayed-verdict")
    rid = _post(s, requester, PRIVILEGED)
    _asked(s, rid)
    alice = s.cli("approve", rid, "--token", s.token("alice", ("data-security",)))
    assert alice.returncode == 0 and "accepted" in alice.stdout, alice.stdout + alice.stderr
    copied = next(e for e in events(s, "approvals", rid) if isinstance(e, ApprovalVerdict))
    wait_for(
        s,
        "decisions",
        lambda e: isinstance(e, ApprovalVerdictRecorded) and e.verdict_event_id == copied.event_id,
    )
    values = [attacker.write("approvals", copied) for _ in range(2)]
    found = wait_for(
        s,
        "deadletter",
        lambda e: isinstance(e, DeadLetter) and e.value == values[0] and e.reason == "verdict_replayed",
        count=2,
        timeout=90.0,
    )
    assert len(found) == 2 and len({e.source_offset for e in found}) == 2
    recorded = [
        e
        for e in events(s, "decisions", rid)
        if isinstance(e, ApprovalVerdictRecorded) and e.verdict_event_id == copied.event_id
    ]
    assert len(recorded) == 1  # the genuine verdict counted once; the copies changed nothing
    resolved = [e for e in events(s, "decisions", rid) if isinstance(e, ApprovalResolved)]
    assert [r.outcome for r in resolved] == ["approved"]  # one approval (this rule needs one), once


def test_fake_results_change_no_outcome(forged_stack: Stack, attacker: Attacker) -> None:
    s = forged_stack
    token = s.token("ci-bot", ("ci",))
    done = _post(s, token, "SELECT ID, EMAIL FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID = 7")
    before = _get(s, token, done, wait=60)
    assert before["status"] == "completed", before
    pending = _post(s, token, PRIVILEGED)
    _asked(s, pending)
    real = events(s, "results", done)
    completed = next(e for e in real if isinstance(e, QueryCompleted))
    page = next(e for e in real if isinstance(e, ResultPage))
    sent = {}
    for key, reason in (("none", "unsigned"), ("stranger", "unknown_key")):
        for event in (replace(completed, request_id=pending), replace(page, request_id=pending)):
            sent[attacker.write("results", replace(event, event_id=new_event_id()), key)] = reason
        flip = QueryRejected(
            event_id=new_event_id(),
            request_id=done,
            occurred_at=utcnow(),
            producer=producer("executor"),
            stage="policy",
            reason_code="denied_by_policy",
            reason="forged",
        )
        sent[attacker.write("results", flip, key)] = reason
    _dead_lettered(s, sent)
    assert _get(s, token, pending)["status"] == "awaiting_approval"
    after = _get(s, token, done)
    assert after["status"] == "completed" and after.get("result") == before.get("result"), after
    # the CI client reading the topics itself sees the same
    from ingress.client import QueryClient

    client = QueryClient(s.settings)
    sub = client.submit(
        token=token,
        request_id=f"req-{uuid.uuid4()}",
        prompt="p",
        sql=PRIVILEGED,
        model="m",
        target=_target(),
        context=_context(),
    )
    try:
        _asked(s, sub.request_id)
        fake = replace(completed, event_id=new_event_id(), request_id=sub.request_id)
        sent = {attacker.write("results", fake): "unsigned"}
        assert sub.wait(5).status == "awaiting_approval"
    finally:
        sub.close()
    _dead_lettered(s, sent)


def _target() -> Any:
    from schemas.events import Target

    return Target(profile="analytics")


def _context() -> Any:
    from schemas.events import ClientContext

    return ClientContext(ci_provider="local")


def test_the_audit_log_keeps_each_records_signature(forged_stack: Stack) -> None:
    """The sink stores the producer's signature and key id with the row: the witness stays."""
    from querytrail.keys import event_signer, event_verifier

    s = forged_stack
    completed = next(e for e in events(s, "results") if isinstance(e, QueryCompleted))
    executor = event_signer(s.settings, "executor")
    assert executor is not None
    fields = ("event_id", "topic", "avro", "signature", "signing_key_id")
    deadline = time.monotonic() + 60
    row: dict[str, Any] = {}
    while time.monotonic() < deadline and not row:
        rows = iceberg_rows(s, fields)
        found = [] if rows is None else [r for r in rows.to_pylist() if r["event_id"] == completed.event_id]
        row = found[0] if found else {}
        time.sleep(0.5 if not row else 0)
    assert row, "the completed event is not in the audit log"
    assert row["signing_key_id"] == executor.key_id
    headers = [("qt-sig", row["signature"]), ("qt-kid", row["signing_key_id"].encode())]
    assert event_verifier(s.settings).verify(row["topic"], row["avro"], headers) == executor.key_id

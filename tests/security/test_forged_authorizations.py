"""Forged ExecutionAuthorized records written straight to the executions topic run nothing.

Bad signature (a real authorisation with another statement), an attacker's key, an expired one,
a verbatim replay, and a spent nonce reused under another request: each is refused, the refusal
is recorded (QueryRejected, stage authorization) where it is not a plain redelivery, the forged
record itself is in the audit log, and the scratch table shows that nothing ran.

Where a forgery must carry a *valid* signature (expired, spent nonce) the test signs with the
worker's key read from the stack's home: that is the shape of an authorisation captured in the
past, or of a worker bug; only the executor's checks stand between it and Snowflake.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from processors.decision.authz import Signer, statement_sha256
from schemas.events import ExecutionAuthorized, ExecutionStarted, QueryRejected, new_event_id, utcnow
from tests.pipeline.pipeline_events import scalar
from tests.reliability.reliability_stack import Stack, events, iceberg_rows, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _count(stack: Stack, marker: str) -> int:
    return int(
        scalar(stack, f"SELECT COUNT(*) FROM ANALYTICS.PUBLIC.SCRATCH_EVENTS WHERE EVENT = '{marker}'")
    )


@pytest.fixture(scope="module")
def genuine(stack: Stack) -> ExecutionAuthorized:
    """A real authorisation the worker signed for an INSERT that ran once."""
    marker = f"genuine-{uuid.uuid4().hex[:8]}"
    sql = f"INSERT INTO ANALYTICS.PUBLIC.SCRATCH_EVENTS (ID, EVENT) VALUES (1, '{marker}')"
    outcome = stack.submit(sql, stack.token("writer", ("scratch-writer",)))
    assert outcome.status == "completed", outcome.to_json()
    auth = next(
        e for e in events(stack, "executions", outcome.request_id) if isinstance(e, ExecutionAuthorized)
    )
    assert _count(stack, marker) == 1
    return auth


def _forge(auth: ExecutionAuthorized, marker: str, **changes: Any) -> ExecutionAuthorized:
    statement = f"INSERT INTO ANALYTICS.PUBLIC.SCRATCH_EVENTS (ID, EVENT) VALUES (666, '{marker}')"
    fields: dict[str, Any] = {
        "event_id": new_event_id(),
        "request_id": f"forged-{uuid.uuid4()}",
        "statement": statement,
        "statement_sha256": statement_sha256(statement),
        "nonce": uuid.uuid4().hex,
        **changes,
    }
    return replace(auth, **fields)


def _publish(stack: Stack, *auths: ExecutionAuthorized) -> None:
    from querytrail.publishing import Publisher

    Publisher(stack.settings, "attacker").publish(list(auths))


def _worker_signer(stack: Stack) -> Signer:
    return Signer.from_pem(stack.settings.key_path("authz_signing_key"))


@pytest.mark.parametrize("kind", ["bad_signature", "attacker_key", "unsigned", "expired", "hash_mismatch"])
def test_forged_authorisation_is_refused_recorded_and_runs_nothing(
    stack: Stack, genuine: ExecutionAuthorized, kind: str
) -> None:
    marker = f"forged-{kind}-{uuid.uuid4().hex[:6]}"
    expected = {"bad_signature": "bad_signature", "attacker_key": "unknown_key", "unsigned": "bad_signature",
                "expired": "expired", "hash_mismatch": "hash_mismatch"}[kind]  # fmt: skip
    if kind == "bad_signature":  # the genuine signature over another statement
        forged = _forge(genuine, marker)
    elif kind == "attacker_key":
        forged = Signer(Ed25519PrivateKey.generate()).sign(_forge(genuine, marker))
    elif kind == "unsigned":
        forged = _forge(genuine, marker, signature=b"")
    elif kind == "expired":  # validly signed, but its time is over
        past = utcnow() - timedelta(minutes=10)
        forged = _worker_signer(stack).sign(_forge(genuine, marker, occurred_at=past, expires_at=past))
    else:  # validly signed, but the statement is not the one its hash names
        forged = _worker_signer(stack).sign(_forge(genuine, marker, statement_sha256="0" * 64))
    _publish(stack, forged)
    rid = forged.request_id
    rejected = wait_for(stack, "results", lambda e: isinstance(e, QueryRejected) and e.request_id == rid)
    assert [(r.stage, r.reason_code) for r in rejected] == [("authorization", expected)]
    time.sleep(2)  # a (wrong) execution would have started by now
    assert not [e for e in events(stack, "executions", rid) if isinstance(e, ExecutionStarted)]
    assert _count(stack, marker) == 0
    _assert_in_audit_log(stack, forged.event_id, 1)


def test_replayed_authorisation_runs_nothing_again(stack: Stack, genuine: ExecutionAuthorized) -> None:
    """A verbatim replay (same event, same nonce) of an authorisation that already ran."""
    before = _count_genuine(stack, genuine)
    _publish(stack, genuine, genuine)
    stack.wait_log("executor", "not running again", timeout=30)
    time.sleep(2)
    assert _count_genuine(stack, genuine) == before == 1
    started = [e for e in events(stack, "executions", genuine.request_id) if isinstance(e, ExecutionStarted)]
    assert len(started) == 1
    _assert_in_audit_log(stack, genuine.event_id, 3)  # the original and both replays are audited


def test_spent_nonce_under_another_request_runs_nothing(stack: Stack, genuine: ExecutionAuthorized) -> None:
    marker = f"nonce-{uuid.uuid4().hex[:6]}"
    forged = _worker_signer(stack).sign(_forge(genuine, marker, nonce=genuine.nonce))
    _publish(stack, forged)
    time.sleep(4)
    assert _count(stack, marker) == 0
    assert not [e for e in events(stack, "executions", forged.request_id) if isinstance(e, ExecutionStarted)]
    _assert_in_audit_log(stack, forged.event_id, 1)


def test_spent_nonce_under_another_request_is_recorded_as_refused(
    stack: Stack, genuine: ExecutionAuthorized
) -> None:
    forged = _worker_signer(stack).sign(
        _forge(genuine, f"nonce2-{uuid.uuid4().hex[:6]}", nonce=genuine.nonce)
    )
    _publish(stack, forged)
    rid = forged.request_id
    wait_for(stack, "results", lambda e: isinstance(e, QueryRejected) and e.request_id == rid, timeout=15)


def _count_genuine(stack: Stack, auth: ExecutionAuthorized) -> int:
    marker = auth.statement.rsplit("'", 2)[1]
    return _count(stack, marker)


def _assert_in_audit_log(stack: Stack, event_id: str, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    found = 0
    while time.monotonic() < deadline:
        rows = iceberg_rows(stack, ("event_id", "event_type"))
        found = 0 if rows is None else rows["event_id"].to_pylist().count(event_id)
        if found >= n:
            break
        time.sleep(1)
    assert found == n, f"{event_id} is {found} times in the audit log, expected {n}"


def test_a_forgery_repeating_an_event_id_is_recorded_each_time(
    stack: Stack, genuine: ExecutionAuthorized
) -> None:
    """The same forged record sent three times (one event id): three refusals in the log."""
    forged = _forge(genuine, f"repeat-{uuid.uuid4().hex[:6]}")
    _publish(stack, forged)
    _publish(stack, forged)
    _publish(stack, forged)
    rid = forged.request_id
    rejected = wait_for(
        stack, "results", lambda e: isinstance(e, QueryRejected) and e.request_id == rid, count=3, timeout=30
    )
    assert [r.stage for r in rejected] == ["authorization"] * 3

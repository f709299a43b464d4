"""The approval state machine: who may approve, when, and what each verdict produces."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from processors.decision import approvals
from processors.decision.approvals import ApprovalState, decide, evolve, expire
from processors.decision.authz import Signer, make_authorization
from schemas.events import (
    ApprovalRequested,
    ApprovalResolved,
    ApprovalVerdict,
    ApprovalVerdictRecorded,
    ClientContext,
    Credential,
    Event,
    ExecutionAuthorized,
    PolicyDecided,
    QueryRejected,
    QueryRequested,
    Target,
    VerifiedIdentity,
    new_event_id,
    producer,
    utcnow,
)

NOW = utcnow()
SHA = "ab" * 32
SIGNER = Signer(Ed25519PrivateKey.generate())


def ident(sub: str, groups: tuple[str, ...] = (), iss: str = "https://issuer") -> VerifiedIdentity:
    return VerifiedIdentity(subject=sub, issuer=iss, groups=groups, claims_json="{}", token_sha256="00")


REQUESTER = ident("ci-bot", ("ci", "data-security"))


def _authorize(state: ApprovalState, now: datetime) -> ExecutionAuthorized:
    assert state.target is not None
    return make_authorization(
        SIGNER,
        request_id=state.request_id,
        session_id=state.session_id,
        statement=state.statement,
        masked_columns=state.masked_columns,
        target=state.target,
        max_rows=10,
        timeout_s=5,
        requester=state.requester,
        now=now,
        ttl_s=60,
    )


def pending(min_approvals: int = 1, ttl: float = 600) -> ApprovalState:
    request = QueryRequested(
        event_id=new_event_id(),
        request_id="r1",
        occurred_at=NOW,
        producer=producer("cli"),
        prompt="p",
        model="m",
        sql="SELECT 1",
        target=Target(profile="analytics"),
        context=ClientContext(),
        credential=Credential(token_sha256="00"),
    )
    asked = ApprovalRequested(
        event_id=new_event_id(),
        request_id="r1",
        occurred_at=NOW,
        producer=producer("worker"),
        statement_sha256=SHA,
        statement="SELECT 1",
        rule_id="privileged",
        approver_groups=("data-security",),
        min_approvals=min_approvals,
        expires_at=NOW + timedelta(seconds=ttl),
        requester=REQUESTER,
        prompt="p",
        sql_text="SELECT 1",
        findings=(),
        masked_columns=(),
    )
    state = evolve(evolve(None, request), asked)
    assert state is not None and state.pending
    return state


def verdict(kind: str = "approve", sha: str = SHA) -> ApprovalVerdict:
    return ApprovalVerdict(
        event_id=new_event_id(),
        request_id="r1",
        occurred_at=NOW,
        producer=producer("cli"),
        verdict=kind,
        statement_sha256=sha,
        credential=Credential(token_sha256="00"),
    )


def judge(
    state: ApprovalState, v: ApprovalVerdict, who: VerifiedIdentity | None, at: datetime = NOW
) -> list[Event]:
    return decide(
        v, state, at, approver=who, credential_error=None if who else "expired", authorize=_authorize
    )


def fold(state: ApprovalState | None, events: list[Event]) -> ApprovalState | None:
    for e in events:
        state = evolve(state, e)
    return state


@pytest.mark.parametrize(
    ("who", "sha", "reason"),
    [
        (REQUESTER, SHA, "self_approval"),
        (ident("mallory", ("ci",)), SHA, "not_in_approver_group"),
        (ident("alice", ("data-security",)), "cd" * 32, "hash_mismatch"),
        (None, SHA, "invalid_credential: expired"),
    ],
)
def test_refused_verdicts_are_recorded_and_change_nothing(
    who: VerifiedIdentity | None, sha: str, reason: str
) -> None:
    state = pending()
    out = judge(state, verdict(sha=sha), who)
    assert len(out) == 1 and isinstance(out[0], ApprovalVerdictRecorded)
    assert (out[0].accepted, out[0].reason) == (False, reason)
    after = fold(state, out)
    assert after is not None and after.pending and after.approvers == ()


def test_same_subject_at_another_issuer_is_not_the_requester() -> None:
    out = judge(pending(), verdict(), ident("ci-bot", ("data-security",), iss="https://other"))
    assert isinstance(out[-1], ExecutionAuthorized)


def test_one_valid_approval_releases_a_signed_authorisation() -> None:
    state = pending()
    out = judge(state, verdict(), ident("alice", ("data-security",)))
    kinds = [type(e) for e in out]
    assert kinds == [ApprovalVerdictRecorded, ApprovalResolved, ExecutionAuthorized]
    assert out[1].outcome == "approved" and out[1].approvers == ("alice",)  # type: ignore[union-attr]
    assert out[2].statement == "SELECT 1"  # type: ignore[union-attr]
    after = fold(state, out)
    assert after is not None and after.status == "approved"
    late = judge(after, verdict(), ident("bob", ("data-security",)))
    assert [(e.accepted, e.reason) for e in late] == [(False, "already_approved")]  # type: ignore[union-attr]


def test_min_approvals_needs_distinct_approvers() -> None:
    state = pending(min_approvals=2)
    alice = ident("alice", ("data-security",))
    first = judge(state, verdict(), alice)
    assert [type(e) for e in first] == [ApprovalVerdictRecorded]
    state = fold(state, first)
    assert state is not None
    again = judge(state, verdict(), alice)
    assert [(e.accepted, e.reason) for e in again] == [(False, "duplicate_approver")]  # type: ignore[union-attr]
    state = fold(state, again)
    assert state is not None
    second = judge(state, verdict(), ident("bob", ("data-security",)))
    assert isinstance(second[-1], ExecutionAuthorized)


def test_one_denial_denies() -> None:
    out = judge(pending(min_approvals=3), verdict("deny"), ident("alice", ("data-security",)))
    assert [type(e) for e in out] == [ApprovalVerdictRecorded, ApprovalResolved, QueryRejected]
    assert out[2].stage == "approval" and out[2].reason_code == "approval_denied"  # type: ignore[union-attr]


def test_expiry_denies_and_late_verdicts_are_refused() -> None:
    state = pending(ttl=60)
    assert expire(state, NOW + timedelta(seconds=59)) == []
    out = expire(state, NOW + timedelta(seconds=60))
    assert [type(e) for e in out] == [ApprovalResolved, QueryRejected]
    assert out[0].outcome == "expired"  # type: ignore[union-attr]
    late_at = NOW + timedelta(seconds=61)
    late = judge(state, verdict(), ident("alice", ("data-security",)), at=late_at)
    assert (late[0].accepted, late[0].reason) == (False, "expired")  # type: ignore[union-attr]
    expired = fold(state, out)
    assert expired is not None and expire(expired, late_at) == []


def test_redelivered_verdict_is_judged_once() -> None:
    state = pending(min_approvals=2)
    v = verdict()
    out = judge(state, v, ident("alice", ("data-security",)))
    state = fold(state, out)
    assert state is not None
    assert judge(state, v, ident("alice", ("data-security",))) == []


def test_unknown_request_and_settled_requests_are_forgotten() -> None:
    assert judge(None, verdict(), ident("alice", ("data-security",)))[0].reason == "unknown_request"  # type: ignore[arg-type, union-attr]
    # a request settled by allow/deny leaves no state behind (bounded state)
    allowed = PolicyDecided.__new__(PolicyDecided)  # only .decision is read by evolve
    object.__setattr__(allowed, "decision", "allow")
    assert approvals.evolve(ApprovalState(request_id="r1"), allowed) is None

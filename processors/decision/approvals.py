"""The just-in-time approval state machine, pure: ``evolve(state, event)`` and ``decide``.

One ``ApprovalState`` per request id. It is built only from events (QueryRequested for where
and how to run, ApprovalRequested, ApprovalVerdictRecorded, ApprovalResolved), so replaying
the requests and decisions topics rebuilds it exactly. ``decide`` judges an ApprovalVerdict
whose credential the caller has already verified (I/O stays at the edge) and returns the
events to publish; ``expire`` is the timer's decision.

Rules (docs/pipeline.md): a verdict counts only from a verified identity in the rule's approver
groups, never from the requester (same issuer and subject), before expiry, for the statement
hash the approver saw; ``min_approvals`` distinct approvers allow; one denial denies; expiry
denies. Every judged verdict yields an ApprovalVerdictRecorded, accepted or refused with why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from schemas.events import (
    ApprovalRequested,
    ApprovalResolved,
    ApprovalVerdict,
    ApprovalVerdictRecorded,
    Event,
    ExecutionAuthorized,
    MaskedColumn,
    PolicyDecided,
    QueryRejected,
    QueryRequested,
    Target,
    VerifiedIdentity,
    envelope,
)

__all__ = [
    "PENDING",
    "ApprovalState",
    "Authorize",
    "Satisfied",
    "decide",
    "evolve",
    "expire",
    "identity_key",
]

PENDING = "pending"
_REQUESTED = "requested"  # QueryRequested seen, no approval asked (yet)

#: Builds the signed ExecutionAuthorized once an approval completes: (state, now) -> event.
Authorize = Callable[["ApprovalState", datetime], ExecutionAuthorized]
#: Whether the accepted approvers meet the rule(s); default: ``min_approvals`` distinct ones.
Satisfied = Callable[["ApprovalState"], bool]


def identity_key(identity: VerifiedIdentity) -> str:
    """Who someone is, across issuers: the same subject at two issuers is two people."""
    return f"{identity.issuer}\x00{identity.subject}"


@dataclass(frozen=True)
class ApprovalState:
    """Everything known about one request's approval."""

    request_id: str
    status: str = _REQUESTED  # requested | pending | approved | denied | expired
    session_id: str | None = None
    target: Target | None = None
    requested_max_rows: int | None = None
    statement: str = ""
    statement_sha256: str = ""
    rule_id: str = ""
    approver_groups: tuple[str, ...] = ()
    min_approvals: int = 1
    expires_at: datetime | None = None
    requester: VerifiedIdentity | None = None
    masked_columns: tuple[MaskedColumn, ...] = ()
    approvers: tuple[VerifiedIdentity, ...] = ()  # accepted approvals, in order
    judged: frozenset[str] = frozenset()  # verdict event ids already judged (dedupe)
    # for the QUERY_TAG and the cost alert of the released statement (querytrail.query_tag)
    model: str | None = None
    repository: str | None = None
    run_id: str | None = None
    policy_sha256: str | None = None
    estimated_bytes: int | None = None

    @property
    def pending(self) -> bool:
        return self.status == PENDING


def evolve(state: ApprovalState | None, event: Event) -> ApprovalState | None:
    """Apply one event. Returns None when nothing is worth keeping for this request."""
    if isinstance(event, QueryRequested):
        base = state or ApprovalState(request_id=event.request_id)
        return replace(
            base,
            session_id=event.session_id,
            target=event.target,
            requested_max_rows=event.max_rows,
            model=event.model,
            repository=event.context.repository,
            run_id=event.context.run_id,
        )
    if isinstance(event, PolicyDecided):
        # allow/deny settle the request without an approval: forget it (bounded state)
        if event.decision != "require_approval" and (state is None or state.status == _REQUESTED):
            return None
        if state is not None and event.decision == "require_approval":
            # the role and warehouse are the ones the policy chose (processors.decision.run_as), not the caller's
            target = state.target
            if target is not None:
                target = replace(target, role=event.run_as_role, warehouse=event.run_as_warehouse)
            return replace(
                state, policy_sha256=event.policy_sha256, estimated_bytes=event.estimated_bytes, target=target
            )
        return state
    if isinstance(event, ApprovalRequested):
        base = state or ApprovalState(request_id=event.request_id, session_id=event.session_id)
        if base.status != _REQUESTED:
            return base  # a redelivered request must not reopen or reset an approval
        return replace(
            base,
            status=PENDING,
            statement=event.statement,
            statement_sha256=event.statement_sha256,
            rule_id=event.rule_id,
            approver_groups=tuple(event.approver_groups),
            min_approvals=max(1, event.min_approvals),
            expires_at=event.expires_at,
            requester=event.requester,
            masked_columns=tuple(event.masked_columns),
        )
    if state is None:
        return None
    if isinstance(event, ApprovalVerdictRecorded):
        if event.verdict_event_id in state.judged:
            return state
        judged = state.judged | {event.verdict_event_id}
        approvers = state.approvers
        if event.accepted and event.verdict == "approve" and event.approver is not None:
            approvers = (*approvers, event.approver)
        return replace(state, judged=judged, approvers=approvers)
    if isinstance(event, ApprovalResolved):
        return replace(state, status=event.outcome)
    return state


def _recorded(
    verdict: ApprovalVerdict, now: datetime, accepted: bool, reason: str, who: VerifiedIdentity | None
) -> ApprovalVerdictRecorded:
    return ApprovalVerdictRecorded(
        **envelope(verdict.request_id, "worker", at=now, session_id=verdict.session_id),
        verdict_event_id=verdict.event_id,
        verdict=str(verdict.verdict),
        accepted=accepted,
        reason=reason,
        approver=who,
    )


def _close(state: ApprovalState, now: datetime, outcome: str, reason: str) -> list[Event]:
    """ApprovalResolved, then (unless approved) the QueryRejected the caller waits for."""
    subjects = tuple(a.subject for a in state.approvers)
    events: list[Event] = [
        ApprovalResolved(
            **envelope(state.request_id, "worker", at=now, session_id=state.session_id),
            outcome=outcome,
            approvers=subjects,
            statement_sha256=state.statement_sha256,
            reason=reason,
        )
    ]
    if outcome != "approved":
        events.append(
            QueryRejected(
                **envelope(state.request_id, "worker", at=now, session_id=state.session_id),
                stage="approval",
                reason_code="approval_" + outcome,
                reason=reason,
                rules=(state.rule_id,) if state.rule_id else (),
                identity=state.requester,
                token_sha256=state.requester.token_sha256 if state.requester else None,
            )
        )
    return events


def expire(state: ApprovalState | None, now: datetime) -> list[Event]:
    """The timer's decision: a pending approval past its expiry is denied."""
    if state is None or not state.pending or state.expires_at is None or now < state.expires_at:
        return []
    return _close(state, now, "expired", f"no decision before {state.expires_at.isoformat()}")


def decide(
    verdict: ApprovalVerdict,
    state: ApprovalState | None,
    now: datetime,
    *,
    approver: VerifiedIdentity | None,
    credential_error: str | None,
    authorize: Authorize,
    satisfied: Satisfied | None = None,
) -> list[Event]:
    """Judge one verdict. ``approver`` is the verified identity (None when verification failed,
    with ``credential_error`` saying why)."""
    if state is not None and verdict.event_id in state.judged:
        return []  # redelivered verdict: already judged and recorded
    if state is None or state.status == _REQUESTED:
        return [_recorded(verdict, now, False, "unknown_request", approver)]
    if not state.pending:
        return [_recorded(verdict, now, False, f"already_{state.status}", approver)]
    if state.expires_at is not None and now >= state.expires_at:
        return [_recorded(verdict, now, False, "expired", approver), *expire(state, now)]
    if approver is None:
        return [_recorded(verdict, now, False, f"invalid_credential: {credential_error}", None)]
    if verdict.statement_sha256 != state.statement_sha256:
        return [_recorded(verdict, now, False, "hash_mismatch", approver)]
    if state.requester is not None and identity_key(approver) == identity_key(state.requester):
        return [_recorded(verdict, now, False, "self_approval", approver)]
    if not set(approver.groups) & set(state.approver_groups):
        return [_recorded(verdict, now, False, "not_in_approver_group", approver)]
    if str(verdict.verdict) == "deny":
        accepted = _recorded(verdict, now, True, "denied", approver)
        return [accepted, *_close(state, now, "denied", f"denied by {approver.subject}")]
    if any(identity_key(a) == identity_key(approver) for a in state.approvers):
        return [_recorded(verdict, now, False, "duplicate_approver", approver)]
    recorded = _recorded(verdict, now, True, "approved", approver)
    after = evolve(state, recorded)
    assert after is not None
    # Several require_approval rules combine strictly (each its own groups and count): the
    # caller's ``satisfied`` knows them; the event alone carries only their union.
    done = satisfied(after) if satisfied is not None else len(after.approvers) >= state.min_approvals
    if not done:
        return [recorded]
    reason = f"approved by {', '.join(a.subject for a in after.approvers)}"
    return [recorded, *_close(after, now, "approved", reason), authorize(after, now)]

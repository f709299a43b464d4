"""The worker's decisions, pure: one QueryRequested in, the events to publish out.

``decide_request`` takes the caller's identity already verified (or the reason it was not:
``processors.worker.credentials.CredentialChecker`` does that I/O at the edge) and returns, in order, PolicyDecided then
exactly one of QueryRejected, ApprovalRequested or a signed ExecutionAuthorized. A request
whose identity failed verification gets only QueryRejected(stage="identity"): nothing was
decided for an unknown caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from processors.decision.approvals import ApprovalState
from processors.decision.authz import Signer, make_authorization, statement_sha256
from processors.decision.policy import ApprovalRequirement, ApprovalRule, IdentityClaims, Policy
from processors.decision.run_as import RunAsDenied, resolve_run_as
from processors.decision.statement import Decision, DecisionCache, evaluate_request
from processors.decision.warehouse_catalog import Catalog
from querytrail.query_tag import build_query_tag
from schemas.events import (
    ApprovalRequested,
    Event,
    ExecutionAuthorized,
    Finding,
    MaskedColumn,
    PolicyDecided,
    QueryRejected,
    QueryRequested,
    UnmaskedColumn,
    VerifiedIdentity,
    envelope,
)

__all__ = [
    "CredentialError",
    "WorkerConfig",
    "approval_satisfied",
    "authorize_approved",
    "decide_request",
    "decided_at",
    "identity_claims",
    "owner_record",
    "replay_refusal",
]

log = logging.getLogger(__name__)


class CredentialError(Exception):
    """A credential that does not prove an identity; ``code`` goes into QueryRejected."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class WorkerConfig:
    """The knobs decide_request needs besides policy and catalog."""

    signer: Signer
    statement_timeout_s: int = 60
    authorization_ttl_s: float = 300.0
    max_prompt_bytes: int = 65_536
    max_sql_bytes: int = 262_144


def identity_claims(identity: VerifiedIdentity) -> IdentityClaims:
    """The policy's view of a verified identity (all verified claims, groups as a set)."""
    try:
        claims = json.loads(identity.claims_json) if identity.claims_json else {}
    except ValueError:
        claims = {}
    return IdentityClaims(
        subject=identity.subject,
        issuer=identity.issuer,
        groups=frozenset(identity.groups),
        claims=claims if isinstance(claims, dict) else {},
    )


def _meta(request: Any, now: datetime) -> dict[str, Any]:
    return envelope(request.request_id, "worker", at=now, session_id=request.session_id)


def _rejected(
    request: QueryRequested,
    now: datetime,
    stage: str,
    code: str,
    reason: str,
    identity: VerifiedIdentity | None,
    rules: tuple[str, ...] = (),
) -> QueryRejected:
    return QueryRejected(
        **_meta(request, now),
        stage=stage,
        reason_code=code,
        reason=reason,
        rules=rules,
        identity=identity,
        token_sha256=request.credential.token_sha256,
    )


def _masked(decision: Decision) -> tuple[MaskedColumn, ...]:
    return tuple(
        MaskedColumn(output=m.output, source=m.source, classification=m.classification, mask=m.mask)
        for m in decision.masked_columns
    )


def _unmasked(decision: Decision) -> tuple[UnmaskedColumn, ...]:
    return tuple(
        UnmaskedColumn(column=u.column, classification=u.classification, rule=u.grant, reason=u.reason)
        for u in decision.released
    )


def _max_rows(policy_cap: int, requested: int | None) -> int:
    cap = policy_cap if policy_cap > 0 else 10_000
    return min(cap, requested) if requested and requested > 0 else cap


def decide_request(
    request: QueryRequested,
    identity: VerifiedIdentity | CredentialError,
    policy: Policy,
    catalog: Catalog,
    now: datetime,
    config: WorkerConfig,
    cache: DecisionCache | None = None,
) -> list[Event]:
    """PolicyDecided then QueryRejected | ApprovalRequested | ExecutionAuthorized."""
    if isinstance(identity, CredentialError):
        return [_rejected(request, now, "identity", identity.code, identity.message, None)]
    if len(request.prompt.encode()) > config.max_prompt_bytes:
        return [
            _rejected(request, now, "validation", "prompt_too_large", "prompt exceeds the limit", identity)
        ]
    if len(request.sql.encode()) > config.max_sql_bytes:
        return [_rejected(request, now, "validation", "sql_too_large", "SQL exceeds the limit", identity)]
    try:
        decision = evaluate_request(request, identity_claims(identity), catalog, policy, now, cache)
    except Exception as exc:  # fail closed: an engine error never lets anything run
        log.exception("decision engine failed", extra={"request_id": request.request_id})
        return [_rejected(request, now, "policy", "engine_error", f"{type(exc).__name__}: {exc}", identity)]
    masked = _masked(decision)
    outcome = decision.decision
    if outcome != "deny" and not decision.rewritten_sql:
        outcome = "deny"  # nothing to run: never fall back to the unmasked SQL
    reasons, deny_code, target = decision.reasons, "denied_by_policy", request.target
    if outcome != "deny":  # the role and warehouse are the policy's to choose (processors.decision.run_as)
        run_as = resolve_run_as(policy, outcome, decision.rules, target.role, target.warehouse)
        if isinstance(run_as, RunAsDenied):
            outcome, deny_code = "deny", "run_as_not_allowed"
            reasons = (*reasons, f"run_as: {run_as.reason}")
        else:
            target = replace(target, role=run_as.role, warehouse=run_as.warehouse)
    decided = PolicyDecided(
        **_meta(request, now),
        decision=outcome,
        rules=decision.rules,
        reasons=reasons,
        statement=decision.statement,
        tables=decision.tables,
        findings=tuple(Finding(code=f.code, detail=f.detail) for f in decision.findings),
        masked_columns=masked,
        rewritten_sql=decision.rewritten_sql,
        estimated_bytes=decision.estimated_bytes,
        policy_sha256=decision.policy_sha256,
        identity=identity,
        sql_text=request.sql,
        classifications_touched=decision.classifications_touched,
        tags=decision.tags,
        unmasked_columns=_unmasked(decision),
        run_as_role=target.role if outcome != "deny" else None,
        run_as_warehouse=target.warehouse if outcome != "deny" else None,
    )
    max_rows = _max_rows(decision.max_result_rows, request.max_rows)
    if outcome == "deny":
        reason = "; ".join(reasons) or "denied by policy"
        rejected = _rejected(request, now, "policy", deny_code, reason, identity, decision.rules)
        return [decided, rejected]
    statement = decision.rewritten_sql or ""
    if outcome == "require_approval":
        rule = decision.approval
        if rule is None:  # no approver configured: nobody could ever release it
            reason = "approval required but no approvers are configured"
            return [
                decided,
                _rejected(request, now, "policy", "no_approvers", reason, identity, decision.rules),
            ]
        asked = ApprovalRequested(
            **_meta(request, now),
            statement_sha256=statement_sha256(statement),
            statement=statement,
            rule_id=rule.rule_id,
            approver_groups=rule.approvers,
            min_approvals=rule.min_approvals,
            expires_at=now + timedelta(seconds=rule.ttl_s),
            requester=identity,
            prompt=request.prompt,
            sql_text=request.sql,
            findings=decided.findings,
            masked_columns=masked,
            unmasked_columns=decided.unmasked_columns,
        )
        return [decided, asked]
    authorized = make_authorization(
        config.signer,
        request_id=request.request_id,
        session_id=request.session_id,
        statement=statement,
        masked_columns=masked,
        target=target,
        max_rows=max_rows,
        timeout_s=config.statement_timeout_s,
        requester=identity,
        now=now,
        ttl_s=config.authorization_ttl_s,
        query_tag=build_query_tag(
            request.request_id,
            subject=identity.subject,
            issuer=identity.issuer,
            service_account=identity.service_account,
            actor=identity.actor,
            model=request.model,
            repository=request.context.repository,
            run_id=request.context.run_id,
            policy_sha256=decision.policy_sha256,
        ),
        estimated_bytes=decision.estimated_bytes,
    )
    return [decided, authorized]


def authorize_approved(
    state: ApprovalState, now: datetime, config: WorkerConfig, default_max_rows: int
) -> ExecutionAuthorized:
    """The signed authorisation released when an approval completes."""
    if state.target is None:
        # The QueryRequested was not found (state rebuilt from a truncated log): fail closed
        raise CredentialError("unknown_target", "the request's target is unknown")
    who = state.requester
    tag = build_query_tag(
        state.request_id,
        subject=who.subject if who else None,
        issuer=who.issuer if who else None,
        service_account=who.service_account if who else None,
        actor=who.actor if who else None,
        model=state.model,
        repository=state.repository,
        run_id=state.run_id,
        policy_sha256=state.policy_sha256,
    )
    return make_authorization(
        config.signer,
        request_id=state.request_id,
        session_id=state.session_id,
        statement=state.statement,
        masked_columns=state.masked_columns,
        target=state.target,
        max_rows=_max_rows(default_max_rows, state.requested_max_rows),
        timeout_s=config.statement_timeout_s,
        requester=state.requester,
        now=now,
        ttl_s=config.authorization_ttl_s,
        query_tag=tag,
        estimated_bytes=state.estimated_bytes,
    )


def approval_satisfied(policy: Policy) -> Callable[[ApprovalState], bool]:
    """The exact test for a pending approval: every combined rule's own groups and count.

    Rules are found by id in the policy in force; one that is gone falls back to what the
    ApprovalRequested carried (the union of groups and the largest count), never to nothing.
    """
    by_id = {r.id: r.approval for r in policy.rules if r.approval is not None}

    def check(state: ApprovalState) -> bool:
        fallback = ApprovalRequirement(
            rule_id=state.rule_id,
            approvers=state.approver_groups,
            min_approvals=state.min_approvals,
            ttl_s=0,
        )
        found = [by_id.get(rid) for rid in state.rule_id.split("+")]
        reqs = tuple(r for r in found if r is not None) if all(found) else (fallback,)
        approvers: dict[str, tuple[str, ...]] = {}
        for a in state.approvers:
            approvers.setdefault(f"{a.issuer}\x00{a.subject}", tuple(a.groups))
        return ApprovalRule(reqs).is_satisfied(approvers) and len(approvers) >= 1

    return check


def owner_record(identity: VerifiedIdentity | None, event_id: str, where: str) -> bytes:
    """The ``seen`` table value of a decided request: who asked first, and which record it was.

    Kept forever (unlike the dedupe window), so a request id that was decided never decides
    again, however late a replay arrives (docs/ingress.md, "Request ids").
    """
    return json.dumps(
        {
            "issuer": identity.issuer if identity else None,
            "subject": identity.subject if identity else None,
            "event_id": event_id,
            "at": where,
        },
        sort_keys=True,
    ).encode()


def decided_at(prior: bytes | None) -> str | None:
    """The ``topic:partition:offset`` of the record a request id was decided from (None: not decided)."""
    if not prior:
        return None
    try:
        at = json.loads(prior).get("at")
    except (ValueError, AttributeError):
        return None
    return str(at) if at is not None else None


def replay_refusal(prior: bytes, identity: VerifiedIdentity | None) -> tuple[str, str]:
    """Why a QueryRequested for an already decided request id is refused: (reason, detail).

    ``request_id_taken`` when it does not come from the identity that owns the id (the first
    requester), ``request_replayed`` when it does: either way nothing is decided again.
    """
    try:
        owner = json.loads(prior)
    except ValueError:
        owner = None
    owner = owner if isinstance(owner, dict) else {}
    first = (owner.get("issuer"), owner.get("subject"))
    if identity is not None and first == (identity.issuer, identity.subject):
        return "request_replayed", f"already decided (first record {owner.get('at')}): not decided again"
    who = f"{identity.issuer} {identity.subject}" if identity is not None else "an unverified caller"
    return "request_id_taken", f"the request id belongs to its first requester; refused for {who}"

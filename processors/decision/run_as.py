"""Which Snowflake role and warehouse a decided statement runs with: the policy's, not the caller's.

A rule's ``run_as: {role: R | [R, ...], warehouse: W | [W, ...]}`` (docs/policy.md) names what its
statements run with; the first is the default and a caller may ask (``--role``/``--warehouse``,
the request's target) only for one of those. The rules that decided the outcome are asked in
file order; the first that names a role decides the role, likewise the warehouse. A caller
asking for a role or warehouse no deciding rule names is denied, with the reason: choosing a
role is choosing privileges, which is the policy's to grant. Nothing named by the rules or the
caller leaves the connection profile's role and warehouse in force, as before.

Pure: no I/O. The worker applies it to the decision and signs the result into the target.
"""

from __future__ import annotations

from dataclasses import dataclass

from processors.decision.policy import Policy, Rule

__all__ = ["RunAsChoice", "RunAsDenied", "resolve_run_as"]


@dataclass(frozen=True)
class RunAsChoice:
    """The role and warehouse to run with (None: the profile's), and the rule that chose each."""

    role: str | None = None
    warehouse: str | None = None
    role_rule: str | None = None
    warehouse_rule: str | None = None


@dataclass(frozen=True)
class RunAsDenied:
    """A caller asked for a role or warehouse its rules do not allow."""

    reason: str


def _norm(name: str | None) -> str | None:
    if name is None or not name.strip():
        return None
    name = name.strip()
    return name[1:-1] if len(name) > 1 and name[0] == name[-1] == '"' else name.upper()


def _pick(
    kind: str, rules: list[Rule], asked: str | None, options: dict[str, tuple[str, ...]]
) -> tuple[str | None, str | None] | RunAsDenied:
    for rule in rules:
        names = options[rule.id]
        if not names:
            continue
        if asked is None:
            return names[0], rule.id
        if asked in names:
            return asked, rule.id
        return RunAsDenied(
            f"{kind} {asked} is not allowed by rule {rule.id} (run_as {kind}: {', '.join(names)})"
        )
    if asked is not None:
        ids = ", ".join(r.id for r in rules) or "none"
        return RunAsDenied(
            f"{kind} {asked} was asked for but no deciding rule names a run_as {kind} (rules: {ids})"
        )
    return None, None


def resolve_run_as(
    policy: Policy,
    decision: str,
    matched: tuple[str, ...],
    role: str | None = None,
    warehouse: str | None = None,
) -> RunAsChoice | RunAsDenied:
    """The role/warehouse for a decision ``decision`` reached by the ``matched`` rule ids.

    >>> from processors.decision.policy import parse_policy
    >>> p = parse_policy("version: 1\\nrules:\\n- {id: a, then: allow, run_as: {role: [RO, RW]}}\\n")
    >>> resolve_run_as(p, "allow", ("a",), role="rw").role
    'RW'
    >>> resolve_run_as(p, "allow", ("a",), role="admin").reason
    'role ADMIN is not allowed by rule a (run_as role: RO, RW)'
    """
    deciding = [r for r in policy.rules if r.id in matched and r.then == decision]
    roles = {r.id: r.run_as.roles if r.run_as else () for r in deciding}
    warehouses = {r.id: r.run_as.warehouses if r.run_as else () for r in deciding}
    picked_role = _pick("role", deciding, _norm(role), roles)
    if isinstance(picked_role, RunAsDenied):
        return picked_role
    picked_wh = _pick("warehouse", deciding, _norm(warehouse), warehouses)
    if isinstance(picked_wh, RunAsDenied):
        return picked_wh
    return RunAsChoice(
        role=picked_role[0], warehouse=picked_wh[0], role_rule=picked_role[1], warehouse_rule=picked_wh[1]
    )

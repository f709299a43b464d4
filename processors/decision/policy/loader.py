"""Load and validate a policy file, naming the file, line and reason of every mistake.

The YAML is composed to nodes (not loaded to plain objects) so each value keeps its line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from processors.decision.policy.model import (
    DAYS,
    FINDING_CODES,
    KNOWN_MASKS,
    RULE_STATEMENT_KINDS,
    ApprovalRequirement,
    Conditions,
    Glob,
    Policy,
    PolicyError,
    Rule,
    RunAs,
    UnmaskGrant,
)
from processors.decision.policy.units import parse_duration, parse_glob, parse_hours, parse_size

__all__ = ["load_policy", "parse_policy"]

T = TypeVar("T")
_TOP = {"version", "defaults", "classifications", "columns", "tables", "rules", "unmask"}
_DEFAULTS = {"decision", "max_result_rows", "approval_ttl", "approvers", "min_approvals"}
_WHEN = {
    "identity", "statement", "tables", "tables_tagged", "findings", "estimated_bytes_gt", "time",
    "role", "warehouse",
}  # fmt: skip
_RULE_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


class _Mistake(Exception):
    def __init__(self, node: Node | None, reason: str) -> None:
        self.line = None if node is None else node.start_mark.line + 1
        self.reason = reason


def _fail(node: Node | None, reason: str) -> NoReturn:
    raise _Mistake(node, reason)


class _Reader:
    """Typed access to YAML nodes; records mistakes and lets parsing go on where it can."""

    def __init__(self) -> None:
        self.mistakes: list[_Mistake] = []
        self._scalars = SafeConstructor()

    def attempt(self, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except _Mistake as m:
            self.mistakes.append(m)
            return None

    def mapping(
        self, node: Node, what: str, allowed: set[str], required: tuple[str, ...] = ()
    ) -> dict[str, Node]:
        if not isinstance(node, MappingNode):
            _fail(node, f"{what} must be a mapping")
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node)
            if not isinstance(key, str):
                _fail(key_node, f"{what}: keys must be strings, got {key!r}")
            if key in out:
                _fail(key_node, f"{what}: duplicate key {key!r}")
            if key not in allowed:
                _fail(key_node, f"{what}: unknown key {key!r} (expected one of {', '.join(sorted(allowed))})")
            out[key] = value_node
        for key in required:
            if key not in out:
                _fail(node, f"{what}: missing required key {key!r}")
        return out

    def scalar(self, node: Node) -> Any:
        if not isinstance(node, ScalarNode):
            _fail(node, "expected a single value, got a list or mapping")
        return self._scalars.construct_object(node)

    def string(self, node: Node, what: str) -> str:
        value = self.scalar(node)
        if not isinstance(value, str) or not value.strip():
            _fail(node, f"{what} must be a non-empty string, got {value!r}")
        return value

    def integer(self, node: Node, what: str, minimum: int) -> int:
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(node, f"{what} must be an integer, got {value!r}")
        if value < minimum:
            _fail(node, f"{what} must be >= {minimum}, got {value}")
        return value

    def strings(self, node: Node, what: str) -> list[tuple[Node, str]]:
        if not isinstance(node, SequenceNode) or not node.value:
            _fail(node, f"{what} must be a non-empty list")
        return [(item, self.string(item, f"{what} item")) for item in node.value]

    def convert(self, node: Node, fn: Callable[[object], T]) -> T:
        value = self.scalar(node)
        try:
            return fn(value)
        except ValueError as exc:
            _fail(node, str(exc))


def parse_policy(text: str, source: str = "<policy>", *, sha256: str | None = None) -> Policy:
    """Validate policy YAML text; raise PolicyError naming every mistake (the first in ``line``)."""
    digest = sha256 or hashlib.sha256(text.encode("utf-8")).hexdigest()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        raise PolicyError(f"invalid YAML: {exc.problem or exc}", source=source, line=line) from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"invalid YAML: {exc}", source=source) from None
    if root is None:
        raise PolicyError("empty policy", source=source, line=1)
    reader = _Reader()
    policy = reader.attempt(lambda: _build(reader, root, source, digest))
    if reader.mistakes or policy is None:
        mistakes = sorted(reader.mistakes, key=lambda m: m.line or 0)
        errors = tuple((m.line, m.reason) for m in mistakes)
        raise PolicyError(mistakes[0].reason, source=source, line=mistakes[0].line, errors=errors)
    return policy


def load_policy(path: Path | str) -> Policy:
    """Read and validate a policy file; the SHA-256 is over the file's exact bytes."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read policy: {exc.strerror or exc}", source=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy is not UTF-8", source=str(path)) from None
    return parse_policy(text, str(path), sha256=hashlib.sha256(data).hexdigest())


def _build(r: _Reader, root: Node, source: str, digest: str) -> Policy:
    top = r.mapping(root, "policy", _TOP, required=("version",))
    version = r.scalar(top["version"])
    if version != 1:
        r.mistakes.append(_Mistake(top["version"], f"unsupported version {version!r} (expected 1)"))
    classifications: dict[str, str] = {}
    if "classifications" in top:
        classifications = r.attempt(lambda: _classifications(r, top["classifications"])) or {}
    columns: list[tuple[Glob, str]] = []
    tables: list[tuple[Glob, frozenset[str]]] = []
    if "columns" in top:
        for item in _items(r, top["columns"], "columns"):
            col = r.attempt(lambda item=item: _column(r, item, classifications))  # type: ignore[misc]
            if col:
                columns.append(col)
    if "tables" in top:
        for item in _items(r, top["tables"], "tables"):
            tab = r.attempt(lambda item=item: _table(r, item))  # type: ignore[misc]
            if tab:
                tables.append(tab)
    known_tags = frozenset(t for _, tags in tables for t in tags)
    defaults = r.mapping(top["defaults"], "defaults", _DEFAULTS) if "defaults" in top else {}
    ttl = (
        r.attempt(lambda: r.convert(defaults["approval_ttl"], parse_duration))
        if "approval_ttl" in defaults
        else None
    )
    ttl = ttl or 3600
    max_rows = 10000
    if "max_result_rows" in defaults:
        max_rows = r.attempt(lambda: r.integer(defaults["max_result_rows"], "max_result_rows", 1)) or max_rows
    default_decision, default_approval = "deny", None
    if "decision" in defaults:
        got = r.attempt(lambda: _default_decision(r, defaults, ttl))
        if got:
            default_decision, default_approval = got
    elif "approvers" in defaults or "min_approvals" in defaults:
        r.mistakes.append(_Mistake(root, "defaults: approvers/min_approvals need decision: require_approval"))
    rules: list[Rule] = []
    seen: dict[str, int | None] = {}
    if "rules" in top:
        for item in _items(r, top["rules"], "rules"):
            rule = r.attempt(lambda item=item: _rule(r, item, ttl, known_tags))  # type: ignore[misc]
            if rule is None:
                continue
            if rule.id in seen:
                r.mistakes.append(
                    _Mistake(item, f"duplicate rule id {rule.id!r} (first on line {seen[rule.id]})")
                )
                continue
            seen[rule.id] = rule.line
            rules.append(rule)
    grants: list[UnmaskGrant] = []
    if "unmask" in top:
        for item in _items(r, top["unmask"], "unmask"):
            grant = r.attempt(lambda item=item: _grant(r, item, classifications))  # type: ignore[misc]
            if grant is None:
                continue
            if grant.id in seen or any(g.id == grant.id for g in grants):
                r.mistakes.append(
                    _Mistake(item, f"duplicate id {grant.id!r} (rule and unmask ids are one namespace)")
                )
                continue
            grants.append(grant)
    for rule in rules:
        unknown = rule.approval.unmask - classifications.keys() if rule.approval is not None else set()
        if unknown:
            r.mistakes.append(
                _Mistake(
                    None,
                    f"rule {rule.id!r} (line {rule.line}): unmask names unknown classification(s) "
                    f"{', '.join(sorted(unknown))}",
                )
            )
    return Policy(
        sha256=digest,
        source=source,
        default_decision=default_decision,
        default_approval=default_approval,
        max_result_rows=max_rows,
        approval_ttl_s=ttl,
        classifications=classifications,
        columns=tuple(columns),
        tables=tuple(tables),
        rules=tuple(rules),
        unmask=tuple(grants),
    )


def _items(r: _Reader, node: Node, what: str) -> list[Node]:
    if not isinstance(node, SequenceNode):
        r.mistakes.append(_Mistake(node, f"{what} must be a list"))
        return []
    return list(node.value)


def _classifications(r: _Reader, node: Node) -> dict[str, str]:
    if not isinstance(node, MappingNode):
        _fail(node, "classifications must be a mapping of name -> {mask: ...}")
    out: dict[str, str] = {}
    for key_node, value_node in node.value:
        name = r.string(key_node, "classification name")
        if name in out:
            _fail(key_node, f"duplicate classification {name!r}")
        spec = r.mapping(value_node, f"classification {name!r}", {"mask", "description"}, required=("mask",))
        mask = r.string(spec["mask"], "mask")
        if mask not in KNOWN_MASKS:
            _fail(spec["mask"], f"unknown mask {mask!r} (expected one of {', '.join(sorted(KNOWN_MASKS))})")
        out[name] = mask
    return out


def _column(r: _Reader, node: Node, classifications: dict[str, str]) -> tuple[Glob, str]:
    spec = r.mapping(node, "columns entry", {"match", "classification"}, required=("match", "classification"))
    glob = r.convert(spec["match"], parse_glob)
    name = r.string(spec["classification"], "classification")
    if name not in classifications:
        _fail(spec["classification"], f"unknown classification {name!r} (not under classifications)")
    return glob, name


def _table(r: _Reader, node: Node) -> tuple[Glob, frozenset[str]]:
    spec = r.mapping(node, "tables entry", {"match", "tags"}, required=("match", "tags"))
    glob = r.convert(spec["match"], parse_glob)
    return glob, frozenset(tag for _, tag in r.strings(spec["tags"], "tags"))


def _identity(r: _Reader, node: Node, kw: dict[str, Any]) -> None:
    ident = r.mapping(node, "identity", {"groups", "claims"})
    if "groups" in ident:
        kw["groups"] = frozenset(g for _, g in r.strings(ident["groups"], "groups"))
    if "claims" in ident:
        claims_node = ident["claims"]
        if not isinstance(claims_node, MappingNode) or not claims_node.value:
            _fail(claims_node, "claims must be a non-empty mapping of claim -> glob")
        kw["claims"] = tuple(
            (r.string(k, "claim name"), r.convert(v, parse_glob)) for k, v in claims_node.value
        )


def _grant(r: _Reader, node: Node, classifications: dict[str, str]) -> UnmaskGrant:
    spec = r.mapping(
        node, "unmask entry", {"id", "identity", "classifications", "reason"},
        required=("id", "identity", "classifications", "reason"),
    )  # fmt: skip
    grant_id = r.string(spec["id"], "unmask id")
    if not set(grant_id) <= _RULE_ID_CHARS:
        _fail(spec["id"], f"unmask id {grant_id!r} may only hold letters, digits and - _ . :")
    kw: dict[str, Any] = {}
    _identity(r, spec["identity"], kw)
    if not kw:
        _fail(
            spec["identity"],
            "an unmask grant needs identity groups and/or claims: it never applies to everyone",
        )
    names = r.strings(spec["classifications"], "classifications")
    for name_node, name in names:
        if name not in classifications:
            _fail(name_node, f"unknown classification {name!r} (not under classifications)")
    reason = r.string(spec["reason"], "reason")
    return UnmaskGrant(
        id=grant_id,
        classifications=frozenset(n for _, n in names),
        when=Conditions(**kw),
        reason=reason,
        line=node.start_mark.line + 1,
    )


def _approval(r: _Reader, node: Node, rule_id: str, ttl: int) -> ApprovalRequirement:
    spec = r.mapping(node, "require_approval", {"approvers", "min_approvals", "ttl", "unmask"})
    if "approvers" not in spec:
        _fail(node, "require_approval needs approvers (a list of groups)")
    approvers = tuple(sorted({g for _, g in r.strings(spec["approvers"], "approvers")}))
    min_approvals = r.integer(spec["min_approvals"], "min_approvals", 1) if "min_approvals" in spec else 1
    if "ttl" in spec:
        ttl = r.convert(spec["ttl"], parse_duration)
    unmask = frozenset(c for _, c in r.strings(spec["unmask"], "unmask")) if "unmask" in spec else frozenset()
    return ApprovalRequirement(
        rule_id=rule_id, approvers=approvers, min_approvals=min_approvals, ttl_s=ttl, unmask=unmask
    )


def _default_decision(
    r: _Reader, defaults: dict[str, Node], ttl: int
) -> tuple[str, ApprovalRequirement | None]:
    node = defaults["decision"]
    if isinstance(node, MappingNode):
        spec = r.mapping(node, "defaults.decision", {"require_approval"}, required=("require_approval",))
        return "require_approval", _approval(r, spec["require_approval"], "default", ttl)
    decision = r.string(node, "defaults.decision")
    if decision == "deny":
        if "approvers" in defaults or "min_approvals" in defaults:
            _fail(node, "defaults: approvers/min_approvals only apply to decision: require_approval")
        return "deny", None
    if decision != "require_approval":
        _fail(node, f"defaults.decision must be deny or require_approval, got {decision!r}")
    if "approvers" not in defaults:
        _fail(node, "defaults.decision require_approval needs defaults.approvers (a list of groups)")
    approvers = tuple(sorted({g for _, g in r.strings(defaults["approvers"], "approvers")}))
    n = r.integer(defaults["min_approvals"], "min_approvals", 1) if "min_approvals" in defaults else 1
    return "require_approval", ApprovalRequirement("default", approvers, n, ttl)


def _rule(r: _Reader, node: Node, ttl: int, known_tags: frozenset[str]) -> Rule:
    spec = r.mapping(node, "rule", {"id", "description", "when", "then", "run_as"}, required=("id", "then"))
    rule_id = r.string(spec["id"], "rule id")
    if not set(rule_id) <= _RULE_ID_CHARS:
        _fail(spec["id"], f"rule id {rule_id!r} may only hold letters, digits and - _ . :")
    description = r.string(spec["description"], "description") if "description" in spec else None
    when = _when(r, spec["when"], known_tags) if "when" in spec else Conditions()
    then_node = spec["then"]
    approval = None
    if isinstance(then_node, MappingNode):
        then_spec = r.mapping(then_node, "then", {"require_approval"}, required=("require_approval",))
        then = "require_approval"
        approval = _approval(r, then_spec["require_approval"], rule_id, ttl)
    else:
        then = r.string(then_node, "then")
        if then == "require_approval":
            _fail(
                then_node, "require_approval needs approvers: then: {require_approval: {approvers: [group]}}"
            )
        if then not in ("allow", "deny"):
            _fail(then_node, f"then must be allow, deny or {{require_approval: ...}}, got {then!r}")
    line = node.start_mark.line + 1
    run_as = _run_as(r, spec["run_as"]) if "run_as" in spec else None
    if run_as is not None and then == "deny":
        _fail(spec["run_as"], "run_as on a deny rule means nothing: a denied statement never runs")
    return Rule(
        id=rule_id, when=when, then=then, approval=approval, description=description, line=line, run_as=run_as
    )


def _snowflake_names(r: _Reader, node: Node, what: str) -> tuple[str, ...]:
    """One name or a list of names; unquoted identifiers upper-cased as Snowflake resolves them."""
    items = [(node, r.string(node, what))] if isinstance(node, ScalarNode) else r.strings(node, what)
    if not items:
        _fail(node, f"run_as {what} must name at least one")
    out: list[str] = []
    for item_node, name in items:
        if not name or any(c in name for c in "'\";\n"):
            _fail(item_node, f"run_as {what} {name!r} is not a Snowflake identifier")
        out.append(name.upper())
    return tuple(dict.fromkeys(out))


def _run_as(r: _Reader, node: Node) -> RunAs:
    spec = r.mapping(node, "run_as", {"role", "warehouse"})
    if not spec:
        _fail(node, "run_as needs role and/or warehouse")
    return RunAs(
        roles=_snowflake_names(r, spec["role"], "role") if "role" in spec else (),
        warehouses=_snowflake_names(r, spec["warehouse"], "warehouse") if "warehouse" in spec else (),
    )


def _when(r: _Reader, node: Node, known_tags: frozenset[str]) -> Conditions:
    spec = r.mapping(node, "when", _WHEN)
    kw: dict[str, Any] = {}
    if "identity" in spec:
        _identity(r, spec["identity"], kw)
    if "statement" in spec:
        kinds = r.strings(spec["statement"], "statement")
        for kind_node, kind in kinds:
            if kind in ("unknown", "multi"):
                _fail(kind_node, f"statement kind {kind!r} is always denied and cannot be named in a rule")
            if kind not in RULE_STATEMENT_KINDS:
                _fail(
                    kind_node,
                    f"unknown statement kind {kind!r} (expected {', '.join(sorted(RULE_STATEMENT_KINDS))})",
                )
        kw["statement"] = frozenset(k for _, k in kinds)
    if "tables" in spec:
        if not isinstance(spec["tables"], SequenceNode) or not spec["tables"].value:
            _fail(spec["tables"], "tables must be a non-empty list of globs")
        kw["tables"] = tuple(r.convert(item, parse_glob) for item in spec["tables"].value)
    if "tables_tagged" in spec:
        tags = r.strings(spec["tables_tagged"], "tables_tagged")
        for tag_node, tag in tags:
            if tag not in known_tags:
                _fail(tag_node, f"tag {tag!r} is not given by any entry of tables")
        kw["tables_tagged"] = frozenset(t for _, t in tags)
    if "findings" in spec:
        codes = r.strings(spec["findings"], "findings")
        for code_node, code in codes:
            if code not in FINDING_CODES:
                _fail(
                    code_node,
                    f"unknown finding {code!r} (expected one of {', '.join(sorted(FINDING_CODES))})",
                )
        kw["findings"] = frozenset(c for _, c in codes)
    for key, field_ in (("role", "roles"), ("warehouse", "warehouses")):
        if key in spec:
            if not isinstance(spec[key], SequenceNode) or not spec[key].value:
                _fail(spec[key], f"{key} must be a non-empty list of globs (the requested {key})")
            kw[field_] = tuple(r.convert(item, parse_glob) for item in spec[key].value)
    if "estimated_bytes_gt" in spec:
        kw["estimated_bytes_gt"] = r.convert(spec["estimated_bytes_gt"], parse_size)
    if "time" in spec:
        tspec = r.mapping(spec["time"], "time", {"hours_utc", "days"})
        if not tspec:
            _fail(spec["time"], "time needs hours_utc and/or days")
        if "hours_utc" in tspec:
            kw["hours_utc"] = r.convert(tspec["hours_utc"], parse_hours)
        if "days" in tspec:
            days = set()
            for day_node, day in r.strings(tspec["days"], "days"):
                if day.lower()[:3] not in DAYS or day.lower() not in (day.lower()[:3], _full_day(day)):
                    _fail(day_node, f"unknown day {day!r} (expected mon, tue, wed, thu, fri, sat, sun)")
                days.add(DAYS.index(day.lower()[:3]))
            kw["days"] = frozenset(days)
    return Conditions(**kw)


def _full_day(day: str) -> str:
    names = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    return next((n for n in names if n.startswith(day.lower()[:3])), "")

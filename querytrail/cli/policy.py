"""CLI sub-commands of the processors package, one ``register_*`` function per group.

``register(subparsers)`` is what querytrail/cli/__init__.py calls. Handlers import heavy modules lazily
so ``querytrail --help`` stays fast, and return the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from querytrail.escape import terminal

__all__ = ["register", "register_policy"]


def register(subparsers: Any) -> None:
    """Add the ``policy`` command group."""
    register_policy(subparsers)


# -- policy check / lint ------------------------------------------------------------------------


def register_policy(subparsers: Any) -> None:
    policy = subparsers.add_parser("policy", help="check statements against a policy, lint policies")
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")

    check = sub.add_parser("check", help="decide one statement and print the decision as JSON")
    check.add_argument("--policy", required=True, type=Path, help="policy YAML file")
    check.add_argument("--catalog", required=True, type=Path, help="catalog YAML or JSON file")
    check.add_argument("--claims", type=Path, help="JSON object of verified identity claims")
    check.add_argument("--at", help="decision time, ISO-8601 (default: now; naive means UTC)")
    check.add_argument("--database", help="session default database for unqualified names")
    check.add_argument("--schema", help="session default schema for unqualified names")
    check.add_argument("--role", help="the Snowflake role the caller asks for (rules' role conditions)")
    check.add_argument("--warehouse", help="the warehouse the caller asks for (rules' warehouse conditions)")
    src = check.add_mutually_exclusive_group(required=True)
    src.add_argument("--sql", help="the statement text")
    src.add_argument("--sql-file", type=Path, help="file holding the statement text ('-' for stdin)")
    check.add_argument("--format", choices=("json", "text"), default="json")
    check.set_defaults(func=_policy_check)

    lint = sub.add_parser("lint", help="validate a policy file (exit 0 valid, 2 invalid)")
    lint.add_argument("path", type=Path)
    lint.set_defaults(func=_policy_lint)


def _bad(message: str) -> int:
    print(f"querytrail policy: {message}", file=sys.stderr)
    return 2


def _parse_at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _policy_check(args: argparse.Namespace) -> int:
    from processors.decision.policy import IdentityClaims, PolicyError, load_policy
    from processors.decision.statement import evaluate
    from processors.decision.warehouse_catalog import Catalog, CatalogError

    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        return _bad(f"invalid policy:\n{exc}")
    try:
        catalog = Catalog.load(args.catalog)
    except CatalogError as exc:
        return _bad(f"invalid catalog: {exc}")
    claims: dict[str, Any] = {}
    if args.claims is not None:
        try:
            claims = json.loads(args.claims.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return _bad(f"cannot read claims {args.claims}: {exc}")
        if not isinstance(claims, dict):
            return _bad(f"claims {args.claims} must hold a JSON object")
    groups = claims.get("groups", [])
    if not isinstance(groups, list | str) or any(not isinstance(g, str) for g in groups):
        return _bad("claims: groups must be a list of strings")
    try:
        now = _parse_at(args.at)
    except ValueError:
        return _bad(f"--at {args.at!r} is not an ISO-8601 time")
    if args.sql is not None:
        sql = args.sql
    else:
        try:
            sql = sys.stdin.read() if str(args.sql_file) == "-" else args.sql_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return _bad(f"cannot read --sql-file {args.sql_file}: {exc}")
    identity = IdentityClaims.from_claims(claims)
    decision = evaluate(
        sql,
        identity,
        catalog,
        policy,
        now,
        database=args.database,
        schema=args.schema,
        role=args.role,
        warehouse=args.warehouse,
    )
    if args.format == "json":
        print(json.dumps(decision.to_json(), ensure_ascii=False))
    else:
        print(_as_text(decision.to_json(), decision.approval))
    return 0


def _as_text(data: dict[str, Any], approval: Any) -> str:
    lines = [f"decision:        {data['decision'].upper()}"]
    if approval is not None:
        lines.append(
            f"approval:        {approval.min_approvals} of {', '.join(approval.approvers)} "
            f"within {approval.ttl_s}s ({approval.rule_id})"
        )
    lines.append(f"rules matched:   {', '.join(data['rules']) or '(none)'}")
    lines.append(f"statement:       {data['statement']}")
    lines.append(f"tables:          {', '.join(data['tables']) or '(none)'}")
    est = data["estimated_bytes"]
    lines.append(f"estimated bytes: {'unknown' if est is None else f'{est:,}'}")
    lines.append("reasons:")
    lines.extend(f"  - {r}" for r in data["reasons"])
    lines.append("findings:" if data["findings"] else "findings:        (none)")
    lines.extend(f"  - {f['code']}: {f['detail']}" for f in data["findings"])
    lines.append("masked columns:" if data["masked_columns"] else "masked columns:  (none)")
    lines.extend(
        f"  - {m['output']} <- {m['source']} [{m['classification']} -> {m['mask']}]"
        for m in data["masked_columns"]
    )
    if data["rewritten_sql"] is None:
        lines.append("rewritten sql:   (none: the statement will not run)")
    else:
        lines.append("rewritten sql:")
        lines.extend(f"  {line}" for line in data["rewritten_sql"].splitlines())
    lines.append(f"policy sha256:   {data['policy_sha256']}")
    return terminal("\n".join(lines), indent="")  # crafted SQL or claims cannot drive the terminal


def _policy_lint(args: argparse.Namespace) -> int:
    from processors.decision.policy import PolicyError, load_policy

    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        return _bad(f"invalid policy:\n{exc}")
    print(f"{args.path}: ok ({len(policy.rules)} rules, sha256 {policy.sha256})")
    return 0

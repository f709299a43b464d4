"""CLI sub-commands of the ingress package: ``token``, ``submit``, ``ingress``, ``mcp``.

Exit codes of ``submit``: 0 completed, 3 denied or rejected, 4 failed in Snowflake, 5 timed
out, 2 usage errors. Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["EXIT_COMPLETED", "EXIT_FAILED", "EXIT_REJECTED", "EXIT_TIMEOUT", "EXIT_USAGE", "register"]

EXIT_COMPLETED, EXIT_USAGE, EXIT_REJECTED, EXIT_FAILED, EXIT_TIMEOUT = 0, 2, 3, 4, 5


def register(sub: Any) -> None:
    p = sub.add_parser("token", help="mint a dev-issuer token for the local stack")
    p.add_argument("--sub", required=True, help="subject claim")
    p.add_argument("--groups", action="append", default=[], help="group(s), comma separated, repeatable")
    p.add_argument(
        "--claim", action="append", default=[], metavar="KEY=VALUE", help="extra claim, repeatable"
    )
    p.add_argument("--ttl", default="10m", help="lifetime, e.g. 30s, 10m, 1h (default 10m)")
    p.add_argument("--aud", default="querytrail", help="audience (default querytrail)")
    p.add_argument("--alg", default="EdDSA", choices=["EdDSA", "ES256"])
    p.add_argument("--service-account", action="store_true", help="mark the subject as a non-human account")
    p.set_defaults(func=_token)

    p = sub.add_parser("submit", help="submit AI-generated SQL to querytrail and wait for the outcome")
    p.add_argument("--sql-file", required=True, type=Path)
    p.add_argument("--prompt-file", required=True, type=Path)
    p.add_argument("--model", required=True, help="the model that generated the SQL, e.g. claude-sonnet-4")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--token-file", type=Path, help="file holding the bearer token")
    src.add_argument("--token-from", choices=["github-actions"], help="fetch an OIDC token from the CI")
    p.add_argument("--audience", default="querytrail", help="audience for --token-from (default querytrail)")
    p.add_argument("--target", default=None, help="Snowflake connection profile (default: settings)")
    for name in ("database", "schema", "warehouse", "role"):
        p.add_argument(f"--{name}", default=None)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--session-id", default=None)
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the outcome (default 120)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.set_defaults(func=_submit)

    p = sub.add_parser("ingress", help="run the HTTP ingress (uvicorn)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=_ingress)

    p = sub.add_parser("mcp", help="the MCP server over stdio (Claude Code, Claude Desktop); see docs/mcp.md")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--token-file", type=Path, help="file holding the bearer token (read again when it changes)"
    )
    src.add_argument("--token-command", help="command that prints a bearer token (run again before expiry)")
    p.add_argument("--url", default=None, help="the ingress's MCP endpoint (default: http://HOST:PORT/mcp)")
    p.set_defaults(func=_mcp)


def _err(message: str) -> None:
    print(f"querytrail: {message}", file=sys.stderr)


def _token(args: argparse.Namespace) -> int:
    from querytrail import devissuer
    from querytrail.settings import get_settings

    settings = get_settings()
    claims: dict[str, Any] = {}
    for item in args.claim:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _err(f"--claim wants KEY=VALUE, got {item!r}")
            return EXIT_USAGE
        claims[key] = value
    groups = [g for chunk in args.groups for g in chunk.split(",") if g]
    if args.service_account:
        claims["service_account"] = True
    try:
        ttl = devissuer.parse_duration(args.ttl)
        token = devissuer.mint_token(
            settings, sub=args.sub, groups=groups, claims=claims, ttl_s=ttl, audience=args.aud, alg=args.alg
        )
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if not settings.identity.dev_issuer_enabled:
        _err("warning: identity.dev_issuer_enabled is false, so querytrail will not trust this token")
    print(token)
    return 0


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None


def _print_rows(outcome: Any, fmt: str) -> None:
    body = outcome.to_json()
    if fmt == "json":
        print(json.dumps(body, indent=2, default=str))
        return
    columns = [c["name"] for c in body["result"]["columns"]]
    rows = [r if isinstance(r, list) else [r.get(c) for c in columns] for r in outcome.rows()]
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
        return
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells if i < len(r))]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)))
    result = body["result"]
    print(f"({result['row_count']} rows{', truncated' if result['truncated'] else ''})", file=sys.stderr)


def _on_update(outcome: Any) -> None:
    if outcome.status == "awaiting_approval":
        groups = ", ".join(outcome.approval.get("approver_groups", []))
        _err(f"request {outcome.request_id} is held for approval by {groups}; waiting")


def _submit(args: argparse.Namespace) -> int:
    from ingress.client import ClientError, QueryClient, ci_context_from_env, fetch_github_actions_token
    from querytrail.settings import get_settings
    from schemas.events import Target

    settings = get_settings()
    try:
        sql, prompt = _read(args.sql_file, "SQL file"), _read(args.prompt_file, "prompt file")
        if args.token_file is not None:
            token = _read(args.token_file, "token file").strip()
        else:
            token = fetch_github_actions_token(args.audience)
        if not token:
            raise ValueError("the token is empty")
        client = QueryClient(settings)
    except (ValueError, ClientError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    target = Target(
        profile=args.target or settings.default_target,
        database=args.database,
        schema=args.schema,
        warehouse=args.warehouse,
        role=args.role,
    )
    submission = client.submit(
        token=token,
        prompt=prompt,
        sql=sql,
        model=args.model,
        target=target,
        context=ci_context_from_env(),
        session_id=args.session_id,
        max_rows=args.max_rows,
    )
    _err(f"submitted request {submission.request_id}")
    try:
        outcome = submission.wait(args.wait, on_update=_on_update)
    finally:
        submission.close()
    return _report(outcome, args.format, args.wait)


def _report(outcome: Any, fmt: str, wait: float) -> int:
    status = outcome.status
    if status == "completed":
        _print_rows(outcome, fmt)
        return EXIT_COMPLETED
    if status == "rejected":
        rej = outcome.rejected
        rules = f" (rules: {', '.join(rej['rules'])})" if rej["rules"] else ""
        _err(
            f"request {outcome.request_id} rejected at {rej['stage']}: {rej['reason_code']}: {rej['reason']}{rules}"
        )
        return EXIT_REJECTED
    by_policy = outcome.decision is not None and outcome.decision.get("decision") == "deny"
    if status == "denied" and not by_policy:
        approval = outcome.approval or {}
        _err(
            f"request {outcome.request_id} not approved: {approval.get('state')}"
            f"{': ' + approval['reason'] if approval.get('reason') else ''}"
        )
        return EXIT_REJECTED
    if status == "denied":
        dec = outcome.decision
        _err(
            f"request {outcome.request_id} denied by {', '.join(dec['rules']) or 'default'}: "
            f"{'; '.join(dec['reasons'])}"
        )
        return EXIT_REJECTED
    if status == "failed":
        fail = outcome.failed
        _err(f"request {outcome.request_id} failed in Snowflake ({fail['outcome']}): {fail['message']}")
        return EXIT_FAILED
    _err(f"timed out after {wait:g}s waiting for request {outcome.request_id} (status: {status})")
    return EXIT_TIMEOUT


def _ingress(args: argparse.Namespace) -> int:
    import uvicorn

    from ingress.app import create_app
    from querytrail.observability import configure_logging, serve_metrics
    from querytrail.sealing import ensure_keys
    from querytrail.settings import get_settings

    settings = get_settings()
    configure_logging("ingress", settings.log_level, settings.log_format)
    serve_metrics("ingress", settings.metrics_port_base, settings.metrics_host)
    if settings.environment == "local":
        ensure_keys(settings)
    try:
        app = create_app(settings)
    except FileNotFoundError as exc:
        _err(f"the ingress signing key is missing: {exc.filename}")
        return EXIT_USAGE
    uvicorn.run(
        app,
        host=args.host or settings.ingress.host,
        port=args.port or settings.ingress.port,
        log_config=None,  # keep our JSON logging; uvicorn's access log carries no headers
    )
    return 0


def _mcp(args: argparse.Namespace) -> int:
    import logging

    from ingress.mcp_stdio import TokenSource, serve_stdio
    from querytrail.settings import get_settings

    settings = get_settings()
    # stdout carries the protocol: log to stderr only
    logging.basicConfig(level=settings.log_level, stream=sys.stderr)
    url = args.url or f"http://{settings.ingress.host}:{settings.ingress.port}/mcp"
    if args.token_file is not None and not args.token_file.is_file():
        _err(f"--token-file {args.token_file} does not exist")
        return EXIT_USAGE
    serve_stdio(url, TokenSource(file=args.token_file, command=args.token_command))
    return 0

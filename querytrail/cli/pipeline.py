"""CLI: ``worker``, ``executor``, ``approvals list|show``, ``approve``, ``deny``.

Everything shown to an approver (prompt, SQL, claims, comments) is untrusted text, printed
through ``querytrail.escape.terminal``: control, bidi and invisible characters are shown as
escapes, so a crafted prompt cannot repaint the terminal or forge lines of the display, and
everything else, the SQL that will run above all, is shown character for character.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from querytrail.escape import hidden, terminal
from schemas.topics import group_id

__all__ = ["register"]

_FIELD = "    | "  # continuation lines stay visibly inside their field


def register(subparsers: Any) -> None:
    """Add the pipeline's sub-commands."""
    worker = subparsers.add_parser("worker", help="run the processors (faust app)")
    worker.add_argument("--loglevel", default="info")
    worker.set_defaults(func=_worker)

    executor = subparsers.add_parser("executor", help="run the Snowflake executor")
    executor.set_defaults(func=_executor)

    notifier = subparsers.add_parser("notifier", help="send approval webhooks (settings.notifications)")
    notifier.set_defaults(func=_notifier)

    approvals = subparsers.add_parser("approvals", help="pending approvals")
    sub = approvals.add_subparsers(dest="approvals_command", required=True, metavar="SUBCOMMAND")
    lst = sub.add_parser("list", help="pending approvals (from the decisions topic)")
    lst.add_argument("--all", action="store_true", help="include resolved ones")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)
    show = sub.add_parser("show", help="one approval: prompt, SQL, findings, masking, requester")
    show.add_argument("request_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_show)

    for name, verdict in (("approve", "approve"), ("deny", "deny")):
        p = subparsers.add_parser(name, help=f"{name} a pending statement with your own token")
        p.add_argument("request_id")
        p.add_argument("--token", help="your bearer token (default: $QUERYTRAIL_TOKEN); visible in ps")
        p.add_argument("--token-file", help="read your bearer token from this file (keeps it off argv)")
        p.add_argument("--comment", required=verdict == "deny")
        p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the judgement")
        p.add_argument("--statement-sha256", help="the hash `approvals show` printed: refuse if it changed")
        p.set_defaults(func=_verdict, verdict=verdict)


def _settings() -> Any:
    from querytrail.settings import get_settings

    return get_settings()


def _worker(args: argparse.Namespace) -> int:
    from processors.worker.app import main
    from querytrail.observability import serve_metrics, start_lag_reporter

    settings = _settings()
    serve_metrics("worker", settings.metrics_port_base, settings.metrics_host)
    start_lag_reporter("worker", settings, group_id("worker", settings.kafka.topic_prefix))
    return main(settings, loglevel=args.loglevel)


def _notifier(args: argparse.Namespace) -> int:
    from processors.notifier.service import main

    return main(_settings())


def _executor(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from processors.executor.service import serve
    from querytrail.observability import configure_logging, serve_metrics, start_lag_reporter

    settings = _settings()
    configure_logging("executor", settings.log_level, settings.log_format)
    serve_metrics("executor", settings.metrics_port_base, settings.metrics_host)
    start_lag_reporter("executor", settings, group_id("executor", settings.kafka.topic_prefix))
    logging.getLogger(__name__).info("executor starting")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return serve(settings, stop)


def _states(settings: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(approval states, ApprovalRequested events) folded from the decisions topic."""
    from processors.decision.approvals import evolve
    from querytrail.keys import SignatureError, event_verifier
    from querytrail.publishing import read_topic
    from schemas.codec import DecodeError, EventCodec
    from schemas.events import ApprovalRequested

    codec = EventCodec(settings.kafka.schema_registry_url)
    records = event_verifier(settings)  # an approver is shown only what the worker signed
    states: dict[str, Any] = {}
    asked: dict[str, Any] = {}
    for msg in read_topic(settings, "decisions"):
        try:
            event = codec.decode(msg.value() or b"")
            records.verify(msg.topic() or "", msg.value() or b"", msg.headers())
        except DecodeError:
            continue
        except SignatureError as exc:
            print(
                f"querytrail: ignoring a decisions record the worker did not sign ({exc.reason})",
                file=sys.stderr,
            )
            continue
        if isinstance(event, ApprovalRequested):
            asked[event.request_id] = event
        state = evolve(states.get(event.request_id), event)
        if state is None:
            states.pop(event.request_id, None)
        else:
            states[event.request_id] = state
    return {k: v for k, v in states.items() if k in asked}, asked


def _list(args: argparse.Namespace) -> int:
    from schemas.events import utcnow

    states, asked = _states(_settings())
    now = utcnow()
    rows = []
    for rid, state in sorted(states.items(), key=lambda kv: asked[kv[0]].occurred_at):
        status = "expired" if state.pending and state.expires_at <= now else state.status
        if not args.all and status != "pending":
            continue
        rows.append(
            {
                "request_id": rid,
                "status": status,
                "rule": state.rule_id,
                "requester": state.requester.subject if state.requester else None,
                "approvals": f"{len(state.approvers)}/{state.min_approvals}",
                "approver_groups": list(state.approver_groups),
                "expires_at": state.expires_at.isoformat() if state.expires_at else None,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no pending approvals")
    for r in rows:
        print(
            f"{terminal(r['request_id'])}  {r['status']:<8} {terminal(r['rule'])}  "
            f"requester={terminal(r['requester'])}  approvals={r['approvals']}  expires={r['expires_at']}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    from processors.decision.authz import statement_sha256

    states, asked = _states(_settings())
    event = asked.get(args.request_id)
    if event is None:
        print(f"querytrail approvals: no approval for {terminal(args.request_id)}", file=sys.stderr)
        return 1
    state = states[args.request_id]
    if statement_sha256(event.statement) != event.statement_sha256:
        # the hash is what an approval releases: never show one statement and release another
        print(
            f"querytrail approvals: the statement of {terminal(args.request_id)} does not match its "
            "sha256; refusing to show it (the approval request is not genuine)",
            file=sys.stderr,
        )
        return 4
    req = event.requester
    if args.json:
        from schemas.codec import to_json_dict

        print(json.dumps({"status": state.status, "event": to_json_dict(event)}, indent=2, default=str))
        return 0
    lines = [
        f"request:    {terminal(event.request_id)}",
        f"status:     {state.status} ({len(state.approvers)}/{state.min_approvals} approvals)",
        f"rule:       {terminal(event.rule_id)}  approvers: {terminal(', '.join(event.approver_groups))}",
        f"expires:    {event.expires_at.isoformat()}",
        f"requester:  {terminal(req.subject)} @ {terminal(req.issuer)} groups={terminal(','.join(req.groups))}",
        f"claims:     {terminal(req.claims_json)}",
        f"prompt:     {terminal(event.prompt, indent=_FIELD)}",
        f"sql:        {terminal(event.sql_text, indent=_FIELD)}",
        f"will run:   {terminal(event.statement, indent=_FIELD)}",
        f"sha256:     {event.statement_sha256}",
        *_hidden_note(event.prompt, event.sql_text, event.statement),
        "findings:   "
        + (", ".join(f"{terminal(f.code)} ({terminal(f.detail)})" for f in event.findings) or "none"),
        "masking:    "
        + (
            ", ".join(
                f"{terminal(m.output)}<-{terminal(m.source)} [{terminal(m.mask)}]"
                for m in event.masked_columns
            )
            or "none"
        ),
        # what approving hands out unmasked: the approver must see it before saying yes
        "releases raw: "
        + (
            "; ".join(
                f"{terminal(u.column)} ({terminal(u.classification)}) by {terminal(u.rule)}: {terminal(u.reason)}"
                for u in event.unmasked_columns
            )
            or "nothing (every classified column is masked)"
        ),
    ]
    print("\n".join(lines))
    return 0


def _hidden_note(*texts: str | None) -> list[str]:
    """A line saying escapes are present: the SQL itself may spell ``\\x1b`` as plain text."""
    n = sum(hidden(t) for t in texts)
    if not n:
        return []
    return [f"note:       {n} control or invisible character(s) above are shown as \\x.. / \\u.... escapes"]


def _verdict(args: argparse.Namespace) -> int:
    from ingress.verdicts import send_verdict
    from processors.decision.authz import statement_sha256
    from schemas.codec import EventCodec

    settings = _settings()
    token = args.token or os.environ.get("QUERYTRAIL_TOKEN")
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"querytrail: cannot read --token-file: {exc.strerror}", file=sys.stderr)
            return 2
    if not token:
        print("querytrail: --token, --token-file or QUERYTRAIL_TOKEN is required", file=sys.stderr)
        return 2
    _, asked = _states(settings)
    event = asked.get(args.request_id)
    if event is None:
        print(f"querytrail: no approval for {terminal(args.request_id)}", file=sys.stderr)
        return 1
    if statement_sha256(event.statement) != event.statement_sha256:
        print("querytrail: the pending statement does not match its sha256; not sending", file=sys.stderr)
        return 4
    if args.statement_sha256 and args.statement_sha256 != event.statement_sha256:
        print("querytrail: the pending statement is not the one you reviewed (hash differs)", file=sys.stderr)
        return 1
    sent, judged = send_verdict(
        settings,
        EventCodec(settings.kafka.schema_registry_url),
        request_id=args.request_id,
        statement_sha256=event.statement_sha256,  # the statement this approver was shown
        token=token,
        verdict=args.verdict,
        comment=args.comment,
        wait_s=args.wait,
        session_id=event.session_id,
    )
    if judged is None:
        print(f"{args.verdict} sent ({sent.event_id}); no judgement within {args.wait:.0f}s")
        return 3
    state = "accepted" if judged.accepted else "refused"
    print(f"{args.verdict} {state}: {terminal(judged.reason)}")
    return 0 if judged.accepted else 1

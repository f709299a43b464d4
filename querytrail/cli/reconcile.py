"""CLI: ``querytrail reconcile`` (sinks/reconcile.py): once, or every N seconds as a service.

Glue of three services, so it lives with the CLI: the history is read with the executor's
Snowflake credentials (processors.executor.warehouse_history), the audit log through the sink's table
(sinks.reports.load_events), and findings are published as BypassDetected events signed with
the executor's key (the process holding Snowflake credentials is the executor's side).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timedelta
from typing import Any

__all__ = ["register", "run_once"]

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reconcile", help="match Snowflake's query history against the audit log (bypass findings)"
    )
    p.add_argument("--every", type=float, help="run as a service, every this many seconds (default: once)")
    p.add_argument("--service", action="store_true", help="run as a service, every reconcile.interval_s")
    p.add_argument("--json", action="store_true", help="print the findings as JSON lines")
    p.add_argument("--dry-run", action="store_true", help="print findings; publish nothing, remember nothing")
    p.set_defaults(func=_reconcile)


def _service_users(settings: Any) -> list[str]:
    users = {p.user.upper() for p in settings.snowflake_profiles.values()}
    return sorted(users | {u.upper() for u in settings.reconcile.service_users})


def run_once(
    settings: Any,
    *,
    now: datetime | None = None,
    audit_rows: list[dict[str, Any]] | None = None,
    publisher: Any = None,
    dry_run: bool = False,
) -> list[Any]:
    """One reconcile pass; returns the BypassDetected events it published (new findings only)."""
    from processors.executor.warehouse_history import connect_for_history, read_history
    from schemas.events import utcnow
    from sinks.reconcile import ReconcileState, audit_index, find_bypasses, finding_events, plan_window

    cfg = settings.reconcile
    state = ReconcileState.load(settings.home / "reconcile" / "state.json")
    window = plan_window(state, now or utcnow(), cfg.latency_s, cfg.lookback_s, cfg.settle_s)
    conn = connect_for_history(settings)
    try:
        history = read_history(
            conn,
            window.since,
            window.until,
            [*_service_users(settings), *cfg.agent_users],
            list(cfg.agent_tags),
        )
    finally:
        conn.close()
    if audit_rows is None:
        from sinks.reports import load_events

        # an authorisation may precede its statement by its ttl (and approvals): read a day more
        audit_rows = load_events(settings, since=window.since - timedelta(days=1)).to_pylist()
    index = audit_index(audit_rows)
    findings = find_bypasses(
        history,
        index,
        service_users=_service_users(settings),
        agent_users=cfg.agent_users,
        agent_tags=cfg.agent_tags,
        settled_before=window.settled_before,
        expected_since=window.expected_since,
    )
    new = [f for f in findings if f.key not in state.reported and f.key not in index.reported]
    events = finding_events(new)
    log.info(
        "reconcile %s..%s: %d history row(s), %d finding(s), %d new",
        window.since.isoformat(), window.until.isoformat(), len(history), len(findings), len(new),
    )  # fmt: skip
    if dry_run:
        return events
    if events:
        if publisher is None:
            from querytrail.publishing import Publisher

            publisher = Publisher(settings, "executor")
        publisher.publish(events)
    stamp = window.until.isoformat()
    for f in new:
        state.reported[f.key] = stamp
    state.watermark = window.until
    state.save()
    return events


def _print(events: list[Any], as_json: bool) -> None:
    from querytrail.escape import terminal

    for e in events:
        if as_json:
            print(json.dumps({"finding": e.request_id, "kind": e.reason_code, "detail": e.detail,
                              "snowflake_query_id": e.snowflake_query_id, "user_name": e.user_name,
                              "related_request_id": e.related_request_id}))  # fmt: skip
        else:
            print(f"{e.reason_code:<20} {terminal(e.snowflake_query_id or '-')}  {terminal(e.detail)}")


def _reconcile(args: argparse.Namespace) -> int:
    from querytrail.observability import configure_logging
    from querytrail.settings import get_settings

    settings = get_settings()
    configure_logging("reconcile", settings.log_level, "text" if sys.stderr.isatty() else settings.log_format)
    every = args.every or (settings.reconcile.interval_s if args.service else None)
    while True:
        events = run_once(settings, dry_run=args.dry_run)
        _print(events, args.json)
        if not args.json:
            print(f"reconcile: {len(events)} new finding(s)")
        if not every:
            return 0
        time.sleep(every)

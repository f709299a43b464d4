"""Sub-commands of the audit log: sink, verify, replay, query, report, compact."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["register"]


def _date(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sink", help="consume every topic into the Iceberg audit log")
    p.set_defaults(func=_sink)

    p = subparsers.add_parser("verify", help="recompute the chains, signatures and snapshot history")
    p.add_argument("--since", type=_date, help="only rows that occurred at or after this date")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--no-witness-topic",
        action="store_true",
        help="do not compare the witness file with the witness topic (Kafka unreachable from here)",
    )
    p.set_defaults(func=_verify)

    p = subparsers.add_parser("replay", help="a request's story, or re-decide past requests")
    p.add_argument("request_id", nargs="?")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--policy", help="re-decide past QueryRequested events with this policy")
    p.add_argument("--catalog", help="catalog file (default: settings, else CatalogTable events in the log)")
    p.add_argument("--since", type=_date)
    p.set_defaults(func=_replay)

    p = subparsers.add_parser("query", help="SQL over audit.events (DuckDB; tables events/audit_events)")
    p.add_argument("sql")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=_query)

    p = subparsers.add_parser("report", help="the auditors' questions")
    p.add_argument("name", choices=("pii-exposure", "privileged-access", "costly-scans", "bypass"))
    p.add_argument("--since", type=_date)
    p.add_argument("--until", type=_date)
    p.add_argument(
        "--bytes-threshold", type=int, default=None, help="costly-scans: estimated bytes over this"
    )
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=_report)

    p = subparsers.add_parser("compact", help="rewrite small data files without changing a row")
    p.add_argument("--min-files", type=int, default=2, help="rewrite days holding at least this many files")
    p.set_defaults(func=_compact)


def _settings() -> Any:
    from querytrail.settings import get_settings

    return get_settings()


def _sink(args: argparse.Namespace) -> int:
    from querytrail.observability import configure_logging, serve_metrics, start_lag_reporter
    from sinks.consumer import consumer_config, run_sink

    settings = _settings()
    configure_logging("sink", settings.log_level, settings.log_format)
    serve_metrics("sink", settings.metrics_port_base, settings.metrics_host)
    start_lag_reporter("sink", settings, str(consumer_config(settings)["group.id"]))
    return run_sink(settings)


def _verify(args: argparse.Namespace) -> int:
    from querytrail.cli.retention import run_verify
    from querytrail.escape import terminal

    report = run_verify(_settings(), args.since, args.no_witness_topic)
    if isinstance(report, str):
        print(report, file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        status = "OK" if report.ok else "FAILED"
        print(
            f"verify {status}: {report.rows} rows, {report.partitions} chains, {report.snapshots} snapshots, "
            f"{report.witness_entries} witness entries"
            + (
                f", {report.witness_published} on the witness topic"
                if report.witness_published is not None
                else ""
            )
        )
        for note in report.notes:
            print(f"  note: {terminal(note, 500)}")
        for problem in report.problems[:50]:
            print(f"  {problem}")
        if len(report.problems) > 50:
            print(f"  ... and {len(report.problems) - 50} more")
    return 0 if report.ok else 1


def _replay(args: argparse.Namespace) -> int:
    from sinks.replay import redecide, request_story, story_json, story_text
    from sinks.reports import load_events

    settings = _settings()
    if args.policy:
        return _redecide(args, settings, load_events, redecide)
    if not args.request_id:
        print("replay needs a REQUEST_ID or --policy", file=sys.stderr)
        return 2
    from sinks.table import open_table

    scan = open_table(settings).scan(row_filter=f"request_id == '{_quote(args.request_id)}'")
    rows = [
        r for r in scan.to_arrow().drop_columns(["avro"]).to_pylist() if r["request_id"] == args.request_id
    ]
    story = request_story(rows)
    print(story_json(args.request_id, story) if args.format == "json" else story_text(args.request_id, story))
    return 0 if story else 1


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _redecide(args: argparse.Namespace, settings: Any, load_events: Any, redecide: Any) -> int:
    from processors.decision.policy import PolicyError, load_policy
    from querytrail.escape import terminal

    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(f"invalid policy: {exc}", file=sys.stderr)
        return 2
    rows = load_events(settings, since=args.since).drop_columns(["avro"]).to_pylist()
    catalog = _catalog(args, settings, rows)
    changes = redecide(rows, policy, catalog)
    if args.format == "json":
        print(json.dumps({"policy_sha256": policy.sha256, "changes": changes}, default=str, indent=2))
        return 0
    print(f"{len(changes)} request(s) would be decided differently under {terminal(args.policy)}")
    for c in changes:
        print(
            f"{c['requested_at'].isoformat()} {terminal(c['request_id'])} {terminal(c['subject'])}: "
            f"{c['old_decision']} {c['old_rules']} -> {c['new_decision']} {c['new_rules']}"
        )
        print(f"    sql: {terminal(c['sql'], 300)}")
    return 0


def _catalog(args: argparse.Namespace, settings: Any, rows: list[dict[str, Any]]) -> Any:
    from processors.decision.warehouse_catalog import Catalog, ColumnInfo, TableInfo

    path = args.catalog or settings.catalog_path
    if path:
        return Catalog.load(path)
    latest: dict[str, dict[str, Any]] = {}
    for row in sorted((r for r in rows if r["event_type"] == "CatalogTable"), key=lambda r: r["occurred_at"]):
        payload = json.loads(row["payload_json"])
        latest[payload["table"]] = payload
    tables = [
        TableInfo(
            name=t["table"],
            columns=tuple(ColumnInfo(c["name"], c["type"], c.get("classification")) for c in t["columns"]),
            row_count=t.get("row_count"),
            bytes=t.get("bytes"),
        )
        for t in latest.values()
        if not t.get("deleted")
    ]
    return Catalog.from_tables(tables)


def _query(args: argparse.Namespace) -> int:
    from sinks.reports import format_result, load_events, run_sql

    names, rows = run_sql(load_events(_settings()), args.sql)
    print(format_result(names, rows, args.format))
    return 0


def _report(args: argparse.Namespace) -> int:
    from sinks.reports import DEFAULT_BYTES_THRESHOLD, format_result, load_events, run_report

    names, rows = run_report(
        load_events(_settings()),
        args.name,
        since=args.since,
        until=args.until,
        bytes_threshold=args.bytes_threshold if args.bytes_threshold is not None else DEFAULT_BYTES_THRESHOLD,
    )
    print(format_result(names, rows, args.format))
    return 0


def _compact(args: argparse.Namespace) -> int:
    from sinks.compact import compact
    from sinks.table import open_table

    result = compact(open_table(_settings()), min_files=args.min_files)
    print(json.dumps(result))
    return 0

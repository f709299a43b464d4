"""What the console reads from the audit table: search, timelines, reports and the verify result.

Every query runs in DuckDB over a pyiceberg scan (``sinks.reports.load_events``), with the
user's filter values passed as bound parameters, never pasted into SQL.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["SEARCH_FIELDS", "Audit", "SearchQuery", "VerifyResult"]

log = logging.getLogger(__name__)

PAGE_SIZE = 50
#: form field -> (SQL condition on audit_events with one ? parameter)
SEARCH_FIELDS: dict[str, str] = {
    "identity": "(subject ILIKE ? OR actor ILIKE ?)",
    "table": "list_contains(tables, upper(?))",
    "classification": "list_contains(classifications_touched, ?)",
    "decision": "decision = ?",
    "rule": "list_contains(rules, ?)",
    "outcome": "outcome = ?",
}
_COLUMNS = (
    "occurred_at",
    "event_type",
    "request_id",
    "session_id",
    "subject",
    "decision",
    "rules",
    "tables",
    "classifications_touched",
    "outcome",
    "reason_code",
)


@dataclass(frozen=True)
class SearchQuery:
    """A search form, parsed; values are plain strings the SQL binds as parameters."""

    filters: dict[str, str] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None
    page: int = 1

    @classmethod
    def parse(cls, params: Any) -> SearchQuery:
        filters = {
            k: str(params.get(k)).strip()[:200] for k in SEARCH_FIELDS if str(params.get(k) or "").strip()
        }
        return cls(
            filters=filters,
            since=_parse_time(params.get("since")),
            until=_parse_time(params.get("until")),
            page=max(1, min(_int(params.get("page"), 1), 100_000)),
        )


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def _parse_time(value: Any) -> datetime | None:
    """``2026-12-04``, ``2026-12-04T10:00`` (datetime-local inputs); UTC; junk means no bound."""
    text = str(value or "").strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclass
class VerifyResult:
    """The latest ``querytrail verify`` run the console made."""

    ran_at: datetime
    seconds: float
    ok: bool
    summary: dict[str, Any]
    problems: list[str]
    error: str | None = None


class Audit:
    """Reads the audit table; runs ``verify`` in the background every ``verify_interval_s``."""

    def __init__(self, settings: Any, verify_interval_s: float = 300.0) -> None:
        self.settings = settings
        self.verify_interval_s = verify_interval_s
        self.latest_verify: VerifyResult | None = None
        self._verify_lock = threading.Lock()
        self._stop = threading.Event()

    def _events(self, since: datetime | None = None) -> Any:
        from pyiceberg.exceptions import NoSuchTableError

        from sinks.reports import load_events

        try:
            return load_events(self.settings, since=since).drop_columns(["avro"])
        except NoSuchTableError:
            return None

    def _run(
        self, sql: str, params: list[Any], since: datetime | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        import duckdb

        events = self._events(since)
        if events is None:
            return [], []
        con = duckdb.connect(":memory:")
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.register("audit_events", events)
            cur = con.execute(sql, params)
            return [d[0] for d in cur.description or []], cur.fetchall()
        finally:
            con.close()

    def search(self, q: SearchQuery) -> tuple[list[dict[str, Any]], bool]:
        """One page of matching events (newest first) and whether a next page exists."""
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        for name, value in q.filters.items():
            cond = SEARCH_FIELDS[name]
            where.append(cond)
            params += [f"%{value}%", f"%{value}%"] if name == "identity" else [value]
        if q.since is not None:
            where.append("occurred_at >= ?")
            params.append(q.since)
        if q.until is not None:
            where.append("occurred_at < ?")
            params.append(q.until)
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM audit_events WHERE {' AND '.join(where)} "
            f'ORDER BY occurred_at DESC, "offset" DESC LIMIT {PAGE_SIZE + 1} OFFSET {(q.page - 1) * PAGE_SIZE}'
        )
        names, rows = self._run(sql, params, since=q.since)
        out = [dict(zip(names, r, strict=True)) for r in rows]
        return out[:PAGE_SIZE], len(out) > PAGE_SIZE

    def request_story(self, request_id: str) -> list[dict[str, Any]]:
        """Every event of one request in order, as ``querytrail replay`` orders them."""
        from sinks.replay import request_story

        names, rows = self._run("SELECT * FROM audit_events WHERE request_id = ?", [request_id])
        return request_story(dict(zip(names, r, strict=True)) for r in rows)

    def session_requests(self, session_id: str) -> list[tuple[str, list[dict[str, Any]]]]:
        """All requests of one agent session, oldest first, each with its story."""
        from sinks.replay import request_story

        names, rows = self._run("SELECT * FROM audit_events WHERE session_id = ?", [session_id])
        by_request: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            row = dict(zip(names, r, strict=True))
            by_request.setdefault(str(row["request_id"]), []).append(row)
        stories = [(rid, request_story(rs)) for rid, rs in by_request.items()]
        return sorted(
            stories,
            key=lambda s: (s[1][0]["occurred_at"] if s[1] else datetime.max.replace(tzinfo=UTC), s[0]),
        )

    def report(
        self, name: str, since: datetime | None = None, until: datetime | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        from sinks.reports import run_report

        events = self._events()
        if events is None:
            return [], []
        return run_report(events, name, since=since, until=until)

    # -- verify ------------------------------------------------------------------------------

    def run_verify(self) -> VerifyResult:
        """Run ``querytrail verify`` (hash chains, signed heads, witness) and keep the result."""
        from pyiceberg.exceptions import NoSuchTableError

        from schemas.codec import EventCodec
        from sinks.chain import load_verifier
        from sinks.consumer import witness_path
        from sinks.table import open_table
        from sinks.verify import first_lines, verify_table
        from sinks.witness import read_witness_topic

        started = time.monotonic()
        ran_at = datetime.now(UTC)
        with self._verify_lock:
            try:
                tbl = open_table(self.settings)
                verifier = load_verifier(self.settings.key_path("chain_verify_key"))
                codec = EventCodec(self.settings.kafka.schema_registry_url)
                report = verify_table(
                    tbl,
                    verifier,
                    codec.decode,
                    witness_path(self.settings),
                    published=read_witness_topic(self.settings),
                )
                result = VerifyResult(
                    ran_at=ran_at,
                    seconds=time.monotonic() - started,
                    ok=report.ok,
                    summary=report.to_json(),
                    problems=list(first_lines(report, 50)),
                )
            except NoSuchTableError:
                result = VerifyResult(ran_at, time.monotonic() - started, False, {}, [], "no audit table yet")
            except Exception as exc:  # verify could not run: shown as not verified, never as OK
                log.exception("console verify failed")
                result = VerifyResult(
                    ran_at, time.monotonic() - started, False, {}, [], f"verify could not run: {exc}"
                )
            self.latest_verify = result
        return result

    def start_verifier(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.run_verify()
                self._stop.wait(self.verify_interval_s)

        threading.Thread(target=loop, name="console-verify", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

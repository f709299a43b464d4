"""The executor: the only process holding Snowflake credentials; runs each authorisation once.

For each ExecutionAuthorized: verify signature, hash, freshness (``processors.decision.authz``) and
single use (``processors.executor.ledger``); refuse with QueryRejected(stage="authorization") otherwise.
Then record the request in the ledger (fsynced), publish ExecutionStarted (acks=all, flushed),
and only then run the statement with its QUERY_TAG (a JSON record, querytrail.query_tag), a
statement timeout and the row cap; read Snowflake's record of what it cost
(processors.executor.cost); apply the result-value detectors; publish ResultPage events then
QueryCompleted, or
QueryFailed with Snowflake's error. A request found started-but-unfinished on restart is
reported ``outcome_unknown`` and never rerun.

Fault injection for the crash test: when ``QUERYTRAIL_FAULT_EXECUTOR_SLEEP_AFTER_RUN_S`` is set,
the executor sleeps that long after the statement ran and before its finish is recorded, so a
test can SIGKILL it in exactly the window that makes the outcome unknown.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any

import snowflake.connector
from snowflake.connector.constants import FIELD_ID_TO_NAME

from processors.decision.authz import AuthzError, Verifier
from processors.decision.detectors import mask_rows
from processors.executor.cost import QueryCost, cost_alert, read_cost
from processors.executor.ledger import Ledger, LedgerRow
from processors.executor.results import jsonable, paginate, result_sha256
from processors.executor.scrub import error_summary
from querytrail.observability import COST_ALERTS
from querytrail.query_tag import executor_tag
from querytrail.settings import Settings, SnowflakeProfile
from schemas.events import (
    DetectorHit,
    Event,
    ExecutionAuthorized,
    ExecutionStarted,
    QueryCompleted,
    QueryFailed,
    QueryRejected,
    ResultColumn,
    ResultPage,
    envelope,
    new_event_id,
    producer,
    utcnow,
)

__all__ = [
    "FAULT_SLEEP_ENV",
    "ConnectionPool",
    "Executor",
    "Outcome",
    "connect",
    "recovery_event",
    "run_statement",
]

log = logging.getLogger(__name__)

FAULT_SLEEP_ENV = "QUERYTRAIL_FAULT_EXECUTOR_SLEEP_AFTER_RUN_S"


def _meta(auth: Any) -> dict[str, Any]:
    return envelope(auth.request_id, "executor", session_id=auth.session_id)


def connect(profile: SnowflakeProfile, session_parameters: dict[str, Any]) -> Any:
    """A Snowflake connection for ``profile``: password (emulator) or key-pair JWT (real account)."""
    kwargs: dict[str, Any] = {
        "account": profile.account,
        "user": profile.user,
        "login_timeout": profile.login_timeout_s,
        "network_timeout": profile.network_timeout_s,
        "session_parameters": session_parameters,
        "client_session_keep_alive": False,
    }
    for name, value in (
        ("host", profile.host),
        ("port", profile.port),
        ("database", profile.database),
        ("schema", profile.schema_),
        ("warehouse", profile.warehouse),
        ("role", profile.role),
    ):
        if value is not None:
            kwargs[name] = value
    kwargs["protocol"] = profile.protocol
    if profile.private_key_path is not None:
        from cryptography.hazmat.primitives import serialization

        passphrase = profile.private_key_passphrase
        key = serialization.load_pem_private_key(
            profile.private_key_path.read_bytes(),
            password=passphrase.get_secret_value().encode() if passphrase else None,
        )
        kwargs["authenticator"] = "SNOWFLAKE_JWT"
        kwargs["private_key"] = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    elif profile.password is not None:
        kwargs["password"] = profile.password.get_secret_value()
    return snowflake.connector.connect(**kwargs)


@dataclass(frozen=True)
class Outcome:
    """What one run produced: the events to publish and the ledger outcome."""

    events: list[Event]
    outcome: str


def _failed(auth: Any, outcome: str, exc: BaseException, sfqid: str | None = None) -> QueryFailed:
    # Snowflake quotes the values it failed on: only the scrubbed text leaves this process
    code, sqlstate, message = error_summary(exc)
    return QueryFailed(
        **_meta(auth),
        outcome=outcome,
        error_code=code,
        sqlstate=sqlstate,
        message=message,
        snowflake_query_id=sfqid or getattr(exc, "sfqid", None),
    )


def _described(exc: BaseException) -> str:
    """An exception for a log line: its type, code and scrubbed message (never the raw text)."""
    code, sqlstate, message = error_summary(exc)
    return f"{type(exc).__name__} {code or '-'} ({sqlstate or '-'}): {message}"


class ConnectionPool:
    """Open Snowflake sessions of one profile, reused across requests.

    Each request tags its session first: ``ALTER SESSION SET QUERY_TAG``, and
    ``STATEMENT_TIMEOUT_IN_SECONDS`` when the session does not have that timeout already. A
    target that refuses ALTER SESSION (plain fakesnow answers "not implemented"; the local
    server, infra/fakesnow_server.py, keeps QUERY_TAG) is noted once; QUERY_TAG then cannot be
    applied there, and the client-side timeout still holds.
    """

    def __init__(self, profile: SnowflakeProfile, size: int = 8) -> None:
        self.profile = profile
        self.size = size
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self.alter_session = True
        self._timeouts: dict[int, int] = {}  # id(session) -> the STATEMENT_TIMEOUT it was given

    def acquire(self, query_tag: str, timeout_s: int) -> Any:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = connect(self.profile, {"QUERY_TAG": query_tag, "STATEMENT_TIMEOUT_IN_SECONDS": timeout_s})
        if self.alter_session:
            # the tag is at most 2,000 characters (querytrail.query_tag); escaped for the literal only
            tag = query_tag.replace("\\", "\\\\").replace("'", "\\'")
            cur = conn.cursor()
            try:
                cur.execute(f"ALTER SESSION SET QUERY_TAG = '{tag}'")
                # a pooled session keeps its timeout: set it again only when it changes (each
                # statement is a cloud-services round trip on an account)
                if self._timeouts.get(id(conn)) != int(timeout_s):
                    cur.execute(f"ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS = {int(timeout_s)}")
                    self._timeouts[id(conn)] = int(timeout_s)
            except snowflake.connector.errors.ProgrammingError as exc:
                if "not implemented" not in str(exc):
                    with self._lock:
                        self._timeouts.pop(id(conn), None)
                    conn.close()
                    raise
                self.alter_session = False
                log.warning(
                    "target %s does not support ALTER SESSION (emulator): QUERY_TAG not applied",
                    self.profile.account,
                )
            finally:
                cur.close()
        return conn

    def release(self, conn: Any, healthy: bool) -> None:
        with self._lock:
            if healthy and len(self._idle) < self.size:
                self._idle.append(conn)
                return
            self._timeouts.pop(id(conn), None)
        conn.close()


_TIMEOUT_GRACE_S = 5.0


def _execute(conn: Any, auth: ExecutionAuthorized) -> tuple[str | None, list[str], list[str], list[Any]]:
    """Run the statement and fetch up to the cap plus one row (to detect truncation)."""
    cur = conn.cursor()
    try:
        cur.execute(auth.statement, timeout=auth.timeout_s)
        names = [d.name for d in cur.description or []]
        types = [FIELD_ID_TO_NAME.get(d.type_code, "UNKNOWN") for d in cur.description or []]
        raw = cur.fetchmany(auth.max_rows + 1) if names else []
        return cur.sfqid, names, types, list(raw)
    except snowflake.connector.errors.Error as exc:
        exc.sfqid = exc.sfqid or cur.sfqid  # type: ignore[attr-defined]
        raise
    finally:
        cur.close()


def run_statement(
    auth: ExecutionAuthorized,
    profile: SnowflakeProfile,
    settings: Settings,
    pool: ConnectionPool | None = None,
) -> Outcome:
    """Run one verified authorisation on Snowflake; never raises for Snowflake errors."""
    pool = pool or ConnectionPool(profile, size=0)
    try:
        conn = pool.acquire(executor_tag(auth), auth.timeout_s)
    except Exception as exc:  # login failures, DNS, refused connections: the statement never ran
        log.warning("snowflake unreachable: %s", _described(exc), extra={"request_id": auth.request_id})
        return Outcome([_failed(auth, "unreachable", exc)], "unreachable")
    started = time.monotonic()
    box: Future[tuple[str | None, list[str], list[str], list[Any]]] = Future()

    def execute() -> None:
        try:
            box.set_result(_execute(conn, auth))
        except BaseException as exc:
            box.set_exception(exc)
        finally:
            if abandoned.is_set():  # the caller gave up: this thread owns the session now
                pool.release(conn, healthy=False)

    abandoned = threading.Event()
    threading.Thread(target=execute, name=f"stmt-{auth.request_id[:24]}", daemon=True).start()
    try:
        sfqid, names, types, raw = box.result(timeout=auth.timeout_s + _TIMEOUT_GRACE_S)
    except FuturesTimeout:
        # Snowflake enforces STATEMENT_TIMEOUT_IN_SECONDS and the connector cancels after
        # ``timeout``; a server that honours neither (the emulator) must not hang the executor.
        abandoned.set()
        if box.done():  # finished in the meantime: the thread may have missed the flag
            pool.release(conn, healthy=False)
        log.warning(
            "statement exceeded %ss; gave up waiting", auth.timeout_s, extra={"request_id": auth.request_id}
        )
        message = (
            f"no result within {auth.timeout_s}s; cancellation was requested but not confirmed, "
            "so the statement may still complete on the server"
        )
        failed = QueryFailed(**_meta(auth), outcome="timeout", message=message)
        return Outcome([failed], "timeout")
    except snowflake.connector.errors.Error as exc:
        # a statement error leaves the session usable; anything else closes it
        pool.release(conn, isinstance(exc, snowflake.connector.errors.ProgrammingError))
        timed_out = getattr(exc, "errno", None) in (604, 630) or "timeout" in str(exc).lower()
        outcome = "timeout" if timed_out else "failed"
        log.info("statement failed: %s", _described(exc), extra={"request_id": auth.request_id})
        return Outcome([_failed(auth, outcome, exc)], outcome)
    except BaseException as exc:
        pool.release(conn, healthy=False)
        if isinstance(exc, Exception):  # fail fast, but the traceback must not carry a value
            raise RuntimeError(f"statement execution raised {_described(exc)}") from None
        raise
    cost = read_cost(conn, sfqid, profile.database) if settings.executor.read_cost else None
    pool.release(conn, healthy=True)
    elapsed_ms = int((time.monotonic() - started) * 1000)
    fault = os.environ.get(FAULT_SLEEP_ENV)
    if fault:  # test-only crash window, see module docstring
        log.warning("fault injection: sleeping %ss after run", fault, extra={"request_id": auth.request_id})
        time.sleep(float(fault))
    truncated = len(raw) > auth.max_rows
    rows = [[jsonable(v) for v in row] for row in raw[: auth.max_rows]]
    masked_rows, hits = mask_rows(names, rows)
    plan = {m.output.upper(): m for m in auth.masked_columns}
    hit_columns = {column for column, _ in hits}
    columns = tuple(
        ResultColumn(
            name=name,
            type=typ,
            masked=name.upper() in plan or name in hit_columns,
            classification=plan[name.upper()].classification if name.upper() in plan else None,
        )
        for name, typ in zip(names, types, strict=True)
    )
    pages = paginate(masked_rows, settings.executor.page_max_rows, settings.executor.page_max_bytes)
    events: list[Event] = [
        ResultPage(**_meta(auth), page=i, rows_json=body, row_offset=offset, last=i == len(pages) - 1)
        for i, (offset, body) in enumerate(pages)
    ]
    events.append(
        QueryCompleted(
            **_meta(auth),
            row_count=len(masked_rows),
            columns=columns,
            snowflake_query_id=sfqid,
            elapsed_ms=elapsed_ms,
            **_cost_fields(auth, cost, settings),
            result_sha256=result_sha256(names, masked_rows),
            pages=len(pages),
            truncated=truncated,
            detector_hits=tuple(
                DetectorHit(column=c, detector=d, count=n) for (c, d), n in sorted(hits.items())
            ),
            classifications_touched=tuple(sorted({m.classification for m in auth.masked_columns})),
        )
    )
    return Outcome(events, "completed")


def _cost_fields(auth: ExecutionAuthorized, cost: QueryCost | None, settings: Settings) -> dict[str, Any]:
    """QueryCompleted's cost fields from Snowflake's record (processors.executor.cost)."""
    fields: dict[str, Any] = {"estimated_bytes": auth.estimated_bytes}
    if cost is None:
        return fields
    alert = cost_alert(
        auth.estimated_bytes,
        cost.bytes_scanned,
        settings.executor.cost_alert_factor,
        settings.executor.cost_alert_min_bytes,
    )
    if alert:
        COST_ALERTS.inc()
        log.warning(
            "cost alert: scanned %d bytes, %.1fx the estimate of %d bytes (query %s)",
            cost.bytes_scanned or 0,
            (cost.bytes_scanned or 0) / max(auth.estimated_bytes or 1, 1),
            auth.estimated_bytes or 0,
            cost.query_id,
            extra={"request_id": auth.request_id},
        )
    fields.update(
        bytes_scanned=cost.bytes_scanned,
        partitions_scanned=cost.partitions_scanned,
        partitions_total=cost.partitions_total,
        rows_produced=cost.rows_produced,
        queued_ms=cost.queued_ms,
        execution_ms=cost.execution_ms,
        warehouse_name=cost.warehouse_name,
        warehouse_size=cost.warehouse_size,
        role_name=cost.role_name,
        cost_alert=alert,
    )
    return fields


def started_event(auth: ExecutionAuthorized) -> ExecutionStarted:
    return ExecutionStarted(
        **_meta(auth),
        authorization_event_id=auth.event_id,
        statement_sha256=auth.statement_sha256,
        query_tag=executor_tag(auth),
        target_profile=auth.target.profile,
    )


def rejected(auth: ExecutionAuthorized, error: AuthzError) -> QueryRejected:
    return QueryRejected(
        **_meta(auth),
        stage="authorization",
        reason_code=error.code,
        reason=error.reason,
        rules=(),
        identity=auth.requester,
        token_sha256=auth.requester.token_sha256 if auth.requester else None,
    )


def recovery_event(row: LedgerRow) -> QueryFailed:
    """What a restart reports for a request a previous run left unreported (never reruns it)."""
    meta: dict[str, Any] = {
        "event_id": new_event_id(),
        "request_id": row.request_id,
        "session_id": row.session_id,
        "occurred_at": utcnow(),
        "producer": producer("executor"),
    }
    if row.state == "recorded":  # ExecutionStarted may be out, but the statement was never sent
        return QueryFailed(
            **meta,
            outcome="failed",
            message="executor stopped before sending the statement; it did not run and will not",
        )
    detail = f" (it finished: {row.outcome}, results were not delivered)" if row.state == "finished" else ""
    return QueryFailed(
        **meta,
        outcome="outcome_unknown",
        message=f"executor stopped after the statement started{detail}; not rerun",
    )


def _refusal_key(auth: ExecutionAuthorized, where: str | None) -> str:
    """The ledger's key of a refusal: the event id, and the record carrying it when known."""
    return auth.event_id if where is None else f"{auth.event_id}@{where}"


class Executor:
    """The I/O shell: ledger, verifier and publisher around the functions above."""

    def __init__(self, settings: Settings, verifier: Verifier, ledger: Ledger, publisher: Any) -> None:
        self.settings = settings
        self.verifier = verifier
        self.ledger = ledger
        self.publisher = publisher
        self._pools: dict[tuple[str | None, ...], ConnectionPool] = {}
        self._pools_lock = threading.Lock()

    def recover(self) -> int:
        """Report every request a previous run left unreported; returns how many."""
        rows = self.ledger.unreported()
        for row in rows:
            event = recovery_event(row)
            log.warning("recovering: %s", event.outcome, extra={"request_id": row.request_id})
            self.publisher.publish([event])
            self.ledger.mark_reported(row.request_id, row.outcome or event.outcome)
        return len(rows)

    def handle(
        self, auth: ExecutionAuthorized, record_error: str | None = None, where: str | None = None
    ) -> str:
        """Process one authorisation; returns what happened (for logs and tests).

        ``record_error``: the record carrying it was not signed by a trusted key (its reason,
        querytrail.keys); such an authorisation never runs, and its refusal is recorded.
        ``where``: the record's ``topic:partition:offset``. A refusal is recorded once per
        record, so a redelivery is not recorded twice but a forgery that repeats an event id
        (a copy at another offset) is recorded again.
        """
        rid = auth.request_id
        try:
            self.verifier.verify(auth, utcnow())
            if record_error is not None:
                if self.ledger.get(rid) is not None:
                    log.info("authorisation already used; not running again", extra={"request_id": rid})
                    return "duplicate"
                raise AuthzError(record_error, "the record is not signed by a key trusted for executions")
        except AuthzError as exc:
            if self.ledger.refuse(_refusal_key(auth, where), rid, exc.code):
                log.warning("authorisation refused: %s", exc.code, extra={"request_id": rid})
                self.publisher.publish([rejected(auth, exc)])
            else:
                log.info("authorisation refused again (redelivered): %s", exc.code, extra={"request_id": rid})
            return "refused"
        # A validly signed second authorisation for a request that already has an execution is
        # a redelivery or a duplicate from the worker's at-least-once retry: never run it again,
        # silently. A nonce already spent by another request is refused as an audit event.
        claimed = self.ledger.get(rid) is None and self.ledger.record(
            request_id=rid,
            nonce=auth.nonce,
            authorization_event_id=auth.event_id,
            session_id=auth.session_id,
            statement_sha256=auth.statement_sha256,
        )
        if not claimed:
            if self.ledger.get(rid) is not None:
                log.info("authorisation already used; not running again", extra={"request_id": rid})
                return "duplicate"
            reused = AuthzError("nonce_reused", "this authorisation's nonce was already spent")
            if self.ledger.refuse(_refusal_key(auth, where), rid, reused.code):
                log.warning("authorisation refused: nonce_reused", extra={"request_id": rid})
                self.publisher.publish([rejected(auth, reused)])
            return "refused"
        self.publisher.publish([started_event(auth)])
        self.ledger.mark_started(rid)
        profile = self.settings.snowflake_profiles.get(auth.target.profile)
        if profile is not None:  # the signed target's session defaults win over the profile's
            t = auth.target
            overrides = {
                "database": t.database,
                "schema_": t.schema,
                "warehouse": t.warehouse,
                "role": t.role,
            }
            profile = profile.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        if profile is None:
            unknown = f"unknown target profile {auth.target.profile!r}"  # the request's text, not data
            outcome = Outcome([QueryFailed(**_meta(auth), outcome="failed", message=unknown)], "failed")
        else:
            log.info("running statement", extra={"request_id": rid})
            t = auth.target
            key = (t.profile, t.database, t.schema, t.warehouse, t.role)
            with self._pools_lock:
                pool = self._pools.get(key)
                if pool is None:
                    pool = self._pools[key] = ConnectionPool(profile, self.settings.executor.concurrency)
            outcome = run_statement(auth, profile, self.settings, pool)
        self.ledger.mark_finished(rid, outcome.outcome)
        self.publisher.publish(outcome.events)
        self.ledger.mark_reported(rid)
        log.info("execution %s", outcome.outcome, extra={"request_id": rid})
        return outcome.outcome

"""Query history for the local fakesnow server: what Snowflake's QUERY_HISTORY would say.

fakesnow 0.12.1 keeps no record of the statements it runs, has no ``QUERY_TAG`` (it refuses
``ALTER SESSION``) and reports ``BYTES`` as 0 in ``INFORMATION_SCHEMA.TABLES``. A real account
records every statement (docs.snowflake.com: "QUERY_HISTORY view", "QUERY_HISTORY,
QUERY_HISTORY_BY_*" table functions), and querytrail's cost read-back, query tag, roles and
reconcile rest on that record. This module wraps the server's login and query endpoints:

- login: the session gets a numeric SESSION_ID, the login's user, role and warehouse
  (``roleName``/``warehouseName``, echoed back in ``sessionInfo`` as an account does) and the
  QUERY_TAG of its session parameters;
- ``ALTER SESSION SET/UNSET QUERY_TAG``, ``USE ROLE``, ``USE WAREHOUSE``: change the session;
- every statement that is not describe-only is appended to ``SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY``
  (a table in the emulator, a view on an account; same column names) with its query id, text,
  user, role, warehouse, tag, status and error, start/end, rows produced, and an estimated
  BYTES_SCANNED: the sum of the ``BYTES`` of every table it reads (no pruning in the emulator);
- ``TABLE([db.]INFORMATION_SCHEMA.QUERY_HISTORY[_BY_SESSION|_BY_USER|_BY_WAREHOUSE](...))`` is
  rewritten to a filtered read of that table (``SESSION_ID``/``USER_NAME``/``WAREHOUSE_NAME``,
  ``END_TIME_RANGE_START/END``, ``RESULT_LIMIT`` default 100, newest first).

``INFORMATION_SCHEMA.TABLES.BYTES`` becomes ROW_COUNT times a per-type width estimate, so the
catalog sync carries sizes and the policy's cost estimate is known.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from string import Template
from typing import Any

import sqlglot
from sqlglot import exp

__all__ = [
    "HISTORY_COLUMNS",
    "HISTORY_TABLE",
    "QueryHistory",
    "install",
    "patch_tables_view",
    "rewrite_history_functions",
]

log = logging.getLogger(__name__)

HISTORY_TABLE = "SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY"
# Snowflake's column names (ACCOUNT_USAGE.QUERY_HISTORY), the subset the emulator can fill.
HISTORY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("QUERY_ID", "VARCHAR"),
    ("QUERY_TEXT", "VARCHAR"),
    ("DATABASE_NAME", "VARCHAR"),
    ("SCHEMA_NAME", "VARCHAR"),
    ("QUERY_TYPE", "VARCHAR"),
    ("SESSION_ID", "NUMBER(38,0)"),
    ("USER_NAME", "VARCHAR"),
    ("ROLE_NAME", "VARCHAR"),
    ("WAREHOUSE_NAME", "VARCHAR"),
    ("WAREHOUSE_SIZE", "VARCHAR"),
    ("WAREHOUSE_TYPE", "VARCHAR"),
    ("QUERY_TAG", "VARCHAR"),
    ("EXECUTION_STATUS", "VARCHAR"),
    ("ERROR_CODE", "VARCHAR"),
    ("ERROR_MESSAGE", "VARCHAR"),
    ("START_TIME", "TIMESTAMP_LTZ"),
    ("END_TIME", "TIMESTAMP_LTZ"),
    ("TOTAL_ELAPSED_TIME", "NUMBER(38,0)"),
    ("COMPILATION_TIME", "NUMBER(38,0)"),
    ("EXECUTION_TIME", "NUMBER(38,0)"),
    ("QUEUED_PROVISIONING_TIME", "NUMBER(38,0)"),
    ("QUEUED_REPAIR_TIME", "NUMBER(38,0)"),
    ("QUEUED_OVERLOAD_TIME", "NUMBER(38,0)"),
    ("BYTES_SCANNED", "NUMBER(38,0)"),
    ("PERCENTAGE_SCANNED_FROM_CACHE", "FLOAT"),
    ("ROWS_PRODUCED", "NUMBER(38,0)"),
    ("PARTITIONS_SCANNED", "NUMBER(38,0)"),
    ("PARTITIONS_TOTAL", "NUMBER(38,0)"),
)
_NAMES = tuple(c for c, _ in HISTORY_COLUMNS)
DEFAULT_WAREHOUSE_SIZE = "X-Small"
_PARTITION_BYTES = 16 * 1024 * 1024  # a micro-partition holds 50-500 MB raw, ~16 MB compressed
_DEFAULT_RESULT_LIMIT = 100

# DuckDB type -> bytes per value; VARCHAR and anything else: 32 (a guess, the emulator does not
# read the data to size it). Used by INFORMATION_SCHEMA.TABLES.BYTES and BYTES_SCANNED alike.
_WIDTH = (
    "CASE WHEN c.data_type IN ('BOOLEAN', 'TINYINT', 'UTINYINT') THEN 1 "
    "WHEN c.data_type IN ('SMALLINT', 'USMALLINT') THEN 2 "
    "WHEN c.data_type IN ('INTEGER', 'UINTEGER', 'DATE', 'FLOAT') THEN 4 "
    "WHEN c.data_type IN ('BIGINT', 'UBIGINT', 'DOUBLE', 'TIME') OR c.data_type LIKE 'TIMESTAMP%' THEN 8 "
    "WHEN c.data_type LIKE 'DECIMAL%' OR c.data_type IN ('HUGEINT', 'UUID', 'INTERVAL') THEN 16 "
    "ELSE 32 END"
)
_BYTES_EXPR = (
    "(tables.estimated_size * coalesce((select sum("
    + _WIDTH
    + ") from duckdb_columns() c where c.database_name = tables.database_name "
    "and c.schema_name = tables.schema_name and c.table_name = tables.table_name), 0))"
)


def patch_tables_view(info_schema: Any) -> None:
    """Make fakesnow's per-database TABLES view report BYTES (for databases created from now)."""
    template: Template = info_schema.SQL_CREATE_INFORMATION_SCHEMA_TABLES_VIEW
    text = template.template
    if '0 AS "BYTES"' in text:
        text = text.replace('0 AS "BYTES"', f'{_BYTES_EXPR}::BIGINT AS "BYTES"')
        info_schema.SQL_CREATE_INFORMATION_SCHEMA_TABLES_VIEW = Template(text)


def replace_tables_view(duck: Any, info_schema: Any, database: str) -> None:
    """Redefine an existing database's TABLES view (its file keeps the view it was created with)."""
    sql = info_schema.SQL_CREATE_INFORMATION_SCHEMA_TABLES_VIEW.substitute(catalog=database)
    duck.execute(sql.replace("create view if not exists", "create or replace view", 1))


@dataclass
class _Session:
    session_id: int
    user: str
    role: str | None
    warehouse: str | None
    query_tag: str


_TAG_SET = re.compile(
    r"^\s*ALTER\s+SESSION\s+SET\s+QUERY_TAG\s*=\s*'((?:[^'\\]|\\.|'')*)'\s*;?\s*$", re.I | re.S
)
_TAG_UNSET = re.compile(r"^\s*ALTER\s+SESSION\s+UNSET\s+QUERY_TAG\s*;?\s*$", re.I)
_USE = re.compile(r"^\s*USE\s+(ROLE|WAREHOUSE)\s+(\"[^\"]+\"|[\w$]+)\s*;?\s*$", re.I)
_HISTORY_FN = re.compile(r"^QUERY_HISTORY(_BY_SESSION|_BY_USER|_BY_WAREHOUSE)?$", re.I)


def _unquote_tag(body: str) -> str:
    return re.sub(r"\\(.)", r"\1", body.replace("''", "'"))


def _ident(text: str) -> str:
    return text[1:-1] if text.startswith('"') else text.upper()


def _history_call(node: sqlglot.Expr) -> exp.Anonymous | None:
    """The QUERY_HISTORY* call inside ``TABLE(...)``, qualified or not (``db.INFORMATION_SCHEMA.``)."""
    call = node.this if isinstance(node, exp.TableFromRows) else None
    parts: list[str] = []
    while isinstance(call, exp.Dot):
        parts.append(call.this.name if not isinstance(call.this, exp.Dot) else "")
        call = call.expression
    if not isinstance(call, exp.Anonymous) or not _HISTORY_FN.match(str(call.this)):
        return None
    qualifier = node.this.sql(dialect="snowflake").upper() if isinstance(node.this, exp.Dot) else ""
    if qualifier and ".INFORMATION_SCHEMA." not in "." + qualifier:
        return None
    return call


def rewrite_history_functions(sql: str, session_id: int, user: str, warehouse: str | None) -> str | None:
    """``sql`` with every QUERY_HISTORY* table function replaced by a read of HISTORY_TABLE, or
    None when it calls none."""
    if "QUERY_HISTORY" not in sql.upper():
        return None
    try:
        tree = sqlglot.parse_one(sql, dialect="snowflake")
    except sqlglot.errors.ParseError:
        return None
    changed = False
    for node in list(tree.find_all(exp.TableFromRows)):
        call = _history_call(node)
        if call is None:
            continue
        matched = _HISTORY_FN.match(str(call.this))
        kind = (matched.group(1) if matched else None) or ""
        args = {str(k.this.name).upper(): k.expression for k in call.expressions if isinstance(k, exp.Kwarg)}
        where: list[sqlglot.Expr] = []
        if kind.upper() == "_BY_SESSION":
            where.append(exp.column("SESSION_ID").eq(args.get("SESSION_ID", exp.Literal.number(session_id))))
        elif kind.upper() == "_BY_USER":
            where.append(exp.column("USER_NAME").eq(args.get("USER_NAME", exp.Literal.string(user))))
        elif kind.upper() == "_BY_WAREHOUSE":
            where.append(
                exp.column("WAREHOUSE_NAME").eq(
                    args.get("WAREHOUSE_NAME", exp.Literal.string(warehouse or ""))
                )
            )
        if "END_TIME_RANGE_START" in args:
            where.append(exp.GTE(this=exp.column("END_TIME"), expression=args["END_TIME_RANGE_START"]))
        if "END_TIME_RANGE_END" in args:
            where.append(exp.LT(this=exp.column("END_TIME"), expression=args["END_TIME_RANGE_END"]))
        limit = args.get("RESULT_LIMIT", exp.Literal.number(_DEFAULT_RESULT_LIMIT))
        select = exp.select("*").from_(HISTORY_TABLE).order_by("START_TIME DESC").limit(limit)
        for cond in where:
            select = select.where(cond)
        alias = node.args.get("alias")
        node.replace(exp.Subquery(this=select, alias=alias.copy() if alias else None))
        changed = True
    return tree.sql(dialect="snowflake") if changed else None


def _query_type(sql: str) -> tuple[str, sqlglot.Expr | None]:
    try:
        tree = sqlglot.parse_one(sql, dialect="snowflake")
    except sqlglot.errors.ParseError:
        return "UNKNOWN", None
    if isinstance(tree, exp.Create):
        return f"CREATE_{str(tree.args.get('kind') or '').upper()}".rstrip("_"), tree
    if isinstance(tree, exp.Command):
        return str(tree.this).upper().replace(" ", "_"), tree
    return tree.key.upper(), tree


def _tables_read(
    tree: sqlglot.Expr | None, database: str | None, schema: str | None
) -> list[tuple[str, str, str]]:
    if tree is None or isinstance(tree, exp.Command | exp.Create):
        return []
    ctes = {cte.alias_or_name.upper() for cte in tree.find_all(exp.CTE)}
    written = tree.this if isinstance(tree, exp.Insert | exp.Update | exp.Delete | exp.Merge) else None
    written_tables = (
        set(id(t) for t in written.find_all(exp.Table)) if isinstance(written, sqlglot.Expr) else set()
    )
    out: list[tuple[str, str, str]] = []
    for t in tree.find_all(exp.Table):
        if id(t) in written_tables or not t.name or (not t.db and t.name.upper() in ctes):
            continue
        db = (t.catalog or database or "").upper()
        sch = (t.db or schema or "").upper()
        key = (db, sch, t.name.upper())
        if db and sch and key not in out:
            out.append(key)
    return out


class QueryHistory:
    """Sessions and the history table of one emulator (the shared DuckDB instance)."""

    def __init__(self, fs: Any, default_user: str = "FAKESNOW") -> None:
        self._fs = fs
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self.default_user = default_user
        conn = fs.connect()
        try:
            cur = conn.cursor()
            cur.execute("CREATE DATABASE IF NOT EXISTS SNOWFLAKE")
            cur.execute("CREATE SCHEMA IF NOT EXISTS SNOWFLAKE.ACCOUNT_USAGE")
            cols = ", ".join(f"{n} {t}" for n, t in HISTORY_COLUMNS)
            cur.execute(f"CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} ({cols})")
        finally:
            conn.close()
        self._duck = fs.duck_conn.cursor()
        row = self._duck.execute(f"SELECT max(SESSION_ID) FROM {HISTORY_TABLE}").fetchone()
        self._next_session = int(row[0] or 0) + 1 if row else 1

    def login(
        self, token: str, user: str, role: str | None, warehouse: str | None, query_tag: str
    ) -> _Session:
        with self._lock:
            session = _Session(self._next_session, user.upper(), role, warehouse, query_tag)
            self._next_session += 1
            self._sessions[token] = session
        return session

    def session(self, token: str) -> _Session:
        with self._lock:
            found = self._sessions.get(token)
            if found is None:  # a session from before a restart: unknown identity
                found = self._sessions[token] = _Session(
                    self._next_session, self.default_user, None, None, ""
                )
                self._next_session += 1
            return found

    def apply(self, session: _Session, sql: str) -> None:
        """Session state a statement changes (QUERY_TAG, USE ROLE, USE WAREHOUSE)."""
        if m := _TAG_SET.match(sql):
            session.query_tag = _unquote_tag(m.group(1))
        elif _TAG_UNSET.match(sql):
            session.query_tag = ""
        elif m := _USE.match(sql):
            if m.group(1).upper() == "ROLE":
                session.role = _ident(m.group(2))
            else:
                session.warehouse = _ident(m.group(2))

    def bytes_of(self, tables: list[tuple[str, str, str]]) -> tuple[int, int]:
        """(estimated bytes, partitions) of full scans of ``tables``."""
        total = 0
        partitions = 0
        for db, schema, name in tables:
            try:
                with self._lock:  # one DuckDB cursor: never used by two request threads at once
                    row = self._duck.execute(
                        f"SELECT {_BYTES_EXPR} FROM duckdb_tables() tables WHERE upper(database_name) = ? "
                        "AND upper(schema_name) = ? AND upper(table_name) = ?",
                        [db, schema, name],
                    ).fetchone()
            except Exception as exc:  # a best-effort figure: an unknown table scans nothing
                log.warning("could not size %s.%s.%s: %s", db, schema, name, exc)
                row = None
            size = int(row[0] or 0) if row else 0
            total += size
            partitions += max(1, -(-size // _PARTITION_BYTES)) if row else 0
        return total, partitions

    def record(
        self,
        session: _Session,
        sql: str,
        *,
        query_id: str,
        database: str | None,
        schema: str | None,
        ok: bool,
        error_code: str | None,
        error_message: str | None,
        started: datetime,
        ended: datetime,
        rows: int,
    ) -> None:
        kind, tree = _query_type(sql)
        scanned, partitions = self.bytes_of(_tables_read(tree, database, schema)) if ok else (0, 0)
        elapsed = int((ended - started).total_seconds() * 1000)
        values = {
            "QUERY_ID": query_id,
            "QUERY_TEXT": sql,
            "DATABASE_NAME": database,
            "SCHEMA_NAME": schema,
            "QUERY_TYPE": kind,
            "SESSION_ID": session.session_id,
            "USER_NAME": session.user,
            "ROLE_NAME": session.role,
            "WAREHOUSE_NAME": session.warehouse,
            "WAREHOUSE_SIZE": DEFAULT_WAREHOUSE_SIZE if session.warehouse else None,
            "WAREHOUSE_TYPE": "STANDARD" if session.warehouse else None,
            "QUERY_TAG": session.query_tag,
            "EXECUTION_STATUS": "SUCCESS" if ok else "FAIL",
            "ERROR_CODE": error_code,
            "ERROR_MESSAGE": error_message,
            "START_TIME": started,
            "END_TIME": ended,
            "TOTAL_ELAPSED_TIME": elapsed,
            "COMPILATION_TIME": 0,
            "EXECUTION_TIME": elapsed,
            "QUEUED_PROVISIONING_TIME": 0,
            "QUEUED_REPAIR_TIME": 0,
            "QUEUED_OVERLOAD_TIME": 0,
            "BYTES_SCANNED": scanned,
            "PERCENTAGE_SCANNED_FROM_CACHE": 0.0,
            "ROWS_PRODUCED": rows,
            "PARTITIONS_SCANNED": partitions,
            "PARTITIONS_TOTAL": partitions,
        }
        marks = ", ".join("?" * len(_NAMES))
        with self._lock:
            self._duck.execute(
                f"INSERT INTO {HISTORY_TABLE} ({', '.join(_NAMES)}) VALUES ({marks})",
                [values[n] for n in _NAMES],
            )


def _json_body(raw: bytes, headers: Any) -> dict[str, Any]:
    if headers.get("Content-Encoding") == "gzip":
        raw = gzip.decompress(raw)
    body: dict[str, Any] = json.loads(raw)
    return body


def install(fs_server: Any, fs: Any, user: str = "FAKESNOW") -> QueryHistory:
    """Wrap ``fs_server``'s login and query endpoints so they keep history; returns the history."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    history = QueryHistory(fs, default_user=user)
    login_request = fs_server.login_request
    query_request = fs_server.query_request

    async def login(request: Request) -> Response:
        body = _json_body(await request.body(), request.headers)
        response: Response = await login_request(request)
        data = json.loads(bytes(response.body))
        if not data.get("success"):
            return response
        params = body.get("data", {}).get("SESSION_PARAMETERS", {}) or {}
        role = request.query_params.get("roleName")
        warehouse = request.query_params.get("warehouse")
        history.login(
            data["data"]["token"],
            str(body.get("data", {}).get("LOGIN_NAME") or user),
            role.upper() if role and not role.startswith('"') else role,
            warehouse.upper() if warehouse and not warehouse.startswith('"') else warehouse,
            str(params.get("QUERY_TAG") or ""),
        )
        info = data["data"].setdefault("sessionInfo", {})
        info["roleName"] = role.upper() if role else None
        info["warehouseName"] = warehouse.upper() if warehouse else None
        return JSONResponse(data)

    async def query(request: Request) -> Response:
        try:
            token = fs_server.to_token(request)
            conn = fs_server.to_conn(token)
        except fs_server.ServerError:
            return await query_request(request)  # the original answers "login again"
        body = _json_body(await request.body(), request.headers)
        sql = str(body.get("sqlText", ""))
        session = history.session(token)
        if body.get("describeOnly"):
            return await query_request(request)
        rewritten = rewrite_history_functions(sql, session.session_id, session.user, session.warehouse)
        if rewritten is not None:
            body["sqlText"] = rewritten
            raw = json.dumps(body).encode()
            request._body = gzip.compress(raw) if request.headers.get("Content-Encoding") == "gzip" else raw
        started = datetime.now(UTC)
        t0 = time.monotonic()
        response: Response = await query_request(request)
        ended = datetime.fromtimestamp(started.timestamp() + (time.monotonic() - t0), UTC)
        try:
            data = json.loads(bytes(response.body))
        except ValueError:
            return response
        ok = bool(data.get("success"))
        payload = data.get("data") or {}
        if ok:
            history.apply(session, sql)
        query_id = str(payload.get("queryId") or uuid.uuid4())
        if not ok and payload is not None and "queryId" not in payload:
            payload["queryId"] = query_id  # an account gives failed statements an id too
            data["data"] = payload
            response = JSONResponse(data, status_code=response.status_code)
        try:
            await run_in_threadpool(
                history.record,
                session,
                sql,
                query_id=query_id,
                database=conn.database,
                schema=conn.schema,
                ok=ok,
                error_code=None if ok else str(data.get("code") or ""),
                error_message=None if ok else str(data.get("message") or ""),
                started=started,
                ended=ended,
                rows=int(payload.get("total") or 0) if ok else 0,
            )
        except Exception:  # history is best effort: never fail the statement for it
            log.exception("could not record query %s in history", query_id)
        return response

    replaced = {"/session/v1/login-request": login, "/queries/v1/query-request": query}
    routes = [
        Route(r.path, replaced[r.path], methods=list(r.methods or ())) if r.path in replaced else r
        for r in fs_server.routes
    ]
    fs_server.app = Starlette(debug=False, routes=routes)
    return history

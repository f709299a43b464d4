"""The local Snowflake emulator keeps a query history with Snowflake's column names, honours
QUERY_TAG, USE ROLE/WAREHOUSE and reports table sizes (infra/fakesnow_history.py)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from infra.fakesnow_history import rewrite_history_functions
from querytrail.settings import SnowflakeProfile

pytestmark = pytest.mark.integration


def _connect(profile: SnowflakeProfile, **extra: Any) -> Any:
    import snowflake.connector

    from infra.fakesnow_server import connect_kwargs

    return snowflake.connector.connect(**connect_kwargs(int(profile.port or 0), **extra))


def _rows(cur: Any) -> list[dict[str, Any]]:
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def test_history_function_is_rewritten_to_the_history_table() -> None:
    sql = (
        "SELECT QUERY_ID FROM TABLE(ANALYTICS.INFORMATION_SCHEMA.QUERY_HISTORY_BY_SESSION("
        "RESULT_LIMIT => 5)) h WHERE h.QUERY_ID = 'x'"
    )
    out = rewrite_history_functions(sql, 7, "QT", None)
    assert out is not None and "SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY" in out
    assert "SESSION_ID = 7" in out and "LIMIT 5" in out and "h.QUERY_ID" in out
    assert rewrite_history_functions("SELECT 1", 1, "QT", None) is None
    # a user table of that name is not the table function
    assert rewrite_history_functions("SELECT * FROM MY.QUERY_HISTORY", 1, "QT", None) is None


def test_every_statement_is_recorded_with_session_role_warehouse_and_tag(
    fakesnow_profile: SnowflakeProfile,
) -> None:
    tag = json.dumps({"request_id": f"r-{uuid.uuid4()}", "note": "it's \\ quoted"})
    literal = tag.replace("\\", "\\\\").replace("'", "\\'")
    with _connect(fakesnow_profile, role="analyst_ro", warehouse="wh_ai") as conn:
        assert (conn.role, conn.warehouse) == ("ANALYST_RO", "WH_AI")
        cur = conn.cursor()
        cur.execute(f"ALTER SESSION SET QUERY_TAG = '{literal}'")
        cur.execute("SELECT ID FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID <= 3")
        assert len(cur.fetchall()) == 3
        select_id = cur.sfqid
        cur.execute("USE ROLE AUDITOR")
        with pytest.raises(Exception) as failed:
            cur.execute("SELECT NOPE FROM ANALYTICS.PUBLIC.ORDERS")
        failed_id = failed.value.sfqid  # type: ignore[attr-defined]
        assert failed_id
        cur.execute("SELECT * FROM TABLE(INFORMATION_SCHEMA.QUERY_HISTORY_BY_SESSION()) ORDER BY START_TIME")
        history = _rows(cur)
    by_id = {r["QUERY_ID"]: r for r in history}
    select = by_id[select_id]
    assert json.loads(select["QUERY_TAG"]) == json.loads(tag)
    assert (select["USER_NAME"], select["ROLE_NAME"], select["WAREHOUSE_NAME"]) == (
        "QUERYTRAIL",
        "ANALYST_RO",
        "WH_AI",
    )
    assert select["EXECUTION_STATUS"] == "SUCCESS" and select["QUERY_TYPE"] == "SELECT"
    assert select["ROWS_PRODUCED"] == 3 and select["BYTES_SCANNED"] > 0
    assert select["PARTITIONS_SCANNED"] >= 1 and select["WAREHOUSE_SIZE"]
    assert select["END_TIME"] >= select["START_TIME"] and select["TOTAL_ELAPSED_TIME"] >= 0
    assert "WHERE ID <= 3" in select["QUERY_TEXT"]
    failure = by_id[failed_id]
    assert failure["EXECUTION_STATUS"] == "FAIL" and failure["ROLE_NAME"] == "AUDITOR"
    assert failure["ERROR_CODE"] and failure["BYTES_SCANNED"] == 0
    assert len({r["SESSION_ID"] for r in history}) == 1  # only this session's statements


def test_account_usage_view_and_information_schema_function_see_all_sessions(
    fakesnow_profile: SnowflakeProfile,
) -> None:
    marker = f"m{uuid.uuid4().hex[:8]}"
    with _connect(fakesnow_profile) as first:
        cur = first.cursor()
        cur.execute(f"SELECT '{marker}' AS M")
        qid = cur.sfqid
    with _connect(fakesnow_profile) as second:
        cur = second.cursor()
        cur.execute(
            "SELECT QUERY_ID, USER_NAME, QUERY_TEXT FROM SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY "
            "WHERE QUERY_ID = %s",
            (qid,),
        )
        assert [r["USER_NAME"] for r in _rows(cur)] == ["QUERYTRAIL"]
        cur.execute(
            "SELECT QUERY_ID FROM TABLE(ANALYTICS.INFORMATION_SCHEMA.QUERY_HISTORY("
            "END_TIME_RANGE_START => DATEADD('hour', -1, CURRENT_TIMESTAMP()), RESULT_LIMIT => 10000)) "
            "WHERE QUERY_ID = %s",
            (qid,),
        )
        assert cur.fetchall() == [(qid,)]
        cur.execute(
            "SELECT COUNT(*) FROM TABLE(INFORMATION_SCHEMA.QUERY_HISTORY_BY_SESSION()) WHERE QUERY_ID = %s",
            (qid,),
        )
        assert cur.fetchone()[0] == 0  # another session's statement


def test_information_schema_tables_reports_bytes(fakesnow_profile: SnowflakeProfile) -> None:
    with _connect(fakesnow_profile) as conn:
        cur = conn.cursor()
        cur.execute(
            "SELECT TABLE_NAME, ROW_COUNT, BYTES FROM ANALYTICS.INFORMATION_SCHEMA.TABLES "
            "WHERE TABLE_SCHEMA = 'PUBLIC' ORDER BY TABLE_NAME"
        )
        sizes = {name: (rows, size) for name, rows, size in cur.fetchall()}
    rows, size = sizes["ORDERS"]
    assert rows == 3000 and 3000 * 7 <= size <= 3000 * 7 * 32
    assert sizes["CUSTOMERS"][1] > 0

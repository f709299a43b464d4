"""Read Snowflake's query history for ``querytrail reconcile``: querytrail's own service users and
any configured agent users or tags, over a window.

The source is ``SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY`` (docs.snowflake.com: one year of
history, every user, up to 45 minutes of latency; needs IMPORTED PRIVILEGES on the SNOWFLAKE
database or the GOVERNANCE_VIEWER database role, see docs/warehouse.md). The connection is the
executor's (processors.executor.runner.connect): only the process holding the credentials reads it.
Rows are plain dicts keyed by Snowflake's column names, so the matcher (sinks.reconcile) needs
no Snowflake import.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["HISTORY_COLUMNS", "RECONCILE_TAG", "history_sql", "read_history"]

RECONCILE_TAG = "querytrail-reconcile"  # this reader's own QUERY_TAG: its reads are not findings
HISTORY_COLUMNS = (
    "QUERY_ID",
    "QUERY_TEXT",
    "QUERY_TYPE",
    "USER_NAME",
    "ROLE_NAME",
    "WAREHOUSE_NAME",
    "QUERY_TAG",
    "EXECUTION_STATUS",
    "START_TIME",
    "END_TIME",
    "SESSION_ID",
)


def history_sql(n_users: int, n_tags: int) -> str:
    """The history read: window bounds, then ``n_users`` user names and ``n_tags`` LIKE patterns."""
    who = []
    if n_users:
        who.append(f"USER_NAME IN ({', '.join(['%s'] * n_users)})")
    who.extend(["QUERY_TAG LIKE %s"] * n_tags)
    where = f" AND ({' OR '.join(who)})" if who else ""
    return (
        f"SELECT {', '.join(HISTORY_COLUMNS)} FROM SNOWFLAKE.ACCOUNT_USAGE.QUERY_HISTORY "
        f"WHERE START_TIME >= %s AND START_TIME < %s{where} ORDER BY START_TIME, QUERY_ID"
    )


def _like(glob: str) -> str:
    return (
        glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%").replace("?", "_")
    )


def read_history(
    conn: Any, since: datetime, until: datetime, users: list[str], tag_globs: list[str]
) -> list[dict[str, Any]]:
    """History rows started in [since, until) by ``users`` or tagged like ``tag_globs``."""
    if not users and not tag_globs:
        return []
    params: list[Any] = [since, until, *[u.upper() for u in users], *[_like(g) for g in tag_globs]]
    cur = conn.cursor()
    try:
        cur.execute(history_sql(len(users), len(tag_globs)), params)
        names = [d.name.upper() for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        cur.close()


def connect_for_history(settings: Any) -> Any:
    """A connection as the default target's service user, tagged so its reads stand apart."""
    from processors.executor.runner import connect

    profile = settings.snowflake_profiles[settings.default_target]
    return connect(profile, {"QUERY_TAG": RECONCILE_TAG})

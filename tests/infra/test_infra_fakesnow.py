"""fakesnow over http with the real snowflake-connector-python, seeded with the demo warehouse."""

from __future__ import annotations

import re

import pytest
import snowflake.connector

from infra.seed import SEEDED_PII, SEEDED_SECRETS, catalog, demo_rows
from querytrail.settings import SnowflakeProfile

pytestmark = pytest.mark.integration


def _connect(p: SnowflakeProfile) -> snowflake.connector.SnowflakeConnection:
    assert p.password is not None
    return snowflake.connector.connect(
        account=p.account, user=p.user, password=p.password.get_secret_value(), host=p.host, port=p.port,
        protocol=p.protocol, database=p.database, schema=p.schema_,
    )  # fmt: skip


def test_seeded_tables_hold_the_demo_rows(fakesnow_profile: SnowflakeProfile) -> None:
    rows = demo_rows()
    with _connect(fakesnow_profile) as conn:
        cur = conn.cursor()
        for table in ("ANALYTICS.PUBLIC.CUSTOMERS", "ANALYTICS.PUBLIC.ORDERS", "SECURITY.ADMIN.USERS"):
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            assert cur.fetchone()[0] == len(rows[table]) > 0
        cur.execute("SELECT ID, EMAIL, SSN, CARD_NUMBER FROM CUSTOMERS ORDER BY ID LIMIT 3")
        got = cur.fetchall()
    assert [tuple(r) for r in got] == [
        (r[0], r[2], r[3], r[5]) for r in rows["ANALYTICS.PUBLIC.CUSTOMERS"][:3]
    ]


def _luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits))
    return total % 10 == 0


def test_seeded_pii_has_the_shapes_detectors_look_for() -> None:
    customers = demo_rows()["ANALYTICS.PUBLIC.CUSTOMERS"]
    assert all(re.fullmatch(r"\d{3}-\d{2}-\d{4}", r[3]) for r in customers)
    assert all(_luhn_ok(r[5]) and len(r[5]) in (15, 16) for r in customers)
    assert all(re.fullmatch(r"\(\d{3}\) 555-01\d\d", r[4]) for r in customers)
    for r in customers:
        assert {r[1], r[2], r[3], r[4], r[5]} <= set(SEEDED_PII)
    assert SEEDED_SECRETS and not set(SEEDED_SECRETS) & set(SEEDED_PII)


def test_query_tag_and_session_statements_are_accepted(fakesnow_profile: SnowflakeProfile) -> None:
    with _connect(fakesnow_profile) as conn:
        cur = conn.cursor()
        cur.execute("ALTER SESSION SET QUERY_TAG = 'req-0001'")
        cur.execute("SELECT COUNT(*) FROM SECURITY.ADMIN.USERS")
        assert cur.fetchone()[0] > 0
        assert cur.sfqid


def test_scratch_table_exists_empty(fakesnow_profile: SnowflakeProfile) -> None:
    # No write here: the session fakesnow is shared, and its INFORMATION_SCHEMA row_count does
    # not go down after a DELETE, so even a write-then-delete would change what other tests see.
    with _connect(fakesnow_profile) as conn:
        cur = conn.cursor()
        cur.execute(
            "SELECT column_name FROM ANALYTICS.INFORMATION_SCHEMA.COLUMNS "
            "WHERE table_schema = 'PUBLIC' AND table_name = 'SCRATCH_EVENTS' ORDER BY ordinal_position"
        )
        assert [r[0] for r in cur.fetchall()] == ["ID", "EVENT", "PAYLOAD", "CREATED_AT"]


def test_catalog_file_matches_the_seeded_tables() -> None:
    import yaml

    from infra.seed import CATALOG_PATH

    on_disk = yaml.safe_load(CATALOG_PATH.read_text(encoding="utf-8"))
    assert on_disk == catalog()
    orders = on_disk["tables"]["ANALYTICS.PUBLIC.ORDERS"]
    assert orders["bytes"] >= 10 * 1024**3 and orders["row_count"] >= 100_000_000
    assert on_disk["tables"]["ANALYTICS.PUBLIC.CUSTOMERS"]["columns"]["SSN"]["classification"] == "pii.ssn"

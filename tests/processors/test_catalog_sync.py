"""Catalog from INFORMATION_SCHEMA through the real connector, against the seeded fakesnow."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.decision.warehouse_catalog import Catalog
from processors.executor import catalog_sync
from querytrail.settings import Settings, SnowflakeProfile

pytestmark = pytest.mark.integration

DEMO_CATALOG = Path(__file__).resolve().parents[2] / "infra" / "catalog" / "demo.yaml"


def test_tables_columns_and_statistics_from_information_schema(fakesnow_profile: SnowflakeProfile) -> None:
    from infra.seed import SCRATCH_TABLE, TABLES, demo_rows

    conn = catalog_sync.connect(fakesnow_profile)
    try:
        catalog = catalog_sync.from_information_schema(conn, ["ANALYTICS", "SECURITY"])
    finally:
        conn.close()
    rows = demo_rows()
    for seeded in TABLES:
        table = catalog.table(seeded.name)
        assert table is not None, seeded.name
        assert [c.name for c in table.columns] == list(seeded.columns), seeded.name
        assert all(c.type for c in table.columns)
        # fakesnow's ROW_COUNT is DuckDB's estimate of the real rows; the local server reports
        # BYTES as rows times a per-type width (infra.fakesnow_history), so sizes are known
        if seeded.name == SCRATCH_TABLE:
            # other tests of the session write to the scratch table, and fakesnow's row count
            # never goes down after a DELETE: only its presence and columns are stable here
            assert table.row_count is not None and table.row_count >= 0
        else:
            assert table.row_count == len(rows[seeded.name])
            assert table.bytes is not None and table.bytes > 0 if table.row_count else table.bytes == 0
        assert all(c.classification is None for c in table.columns)
    assert catalog.column("ANALYTICS.PUBLIC.CUSTOMERS.EMAIL") is not None


def test_databases_are_listed_and_classifications_carried_from_a_base_catalog(
    fakesnow_profile: SnowflakeProfile,
) -> None:
    base = Catalog.load(DEMO_CATALOG)
    conn = catalog_sync.connect(fakesnow_profile)
    try:
        databases = catalog_sync.list_databases(conn)
        catalog = catalog_sync.from_information_schema(conn, base=base, count_rows=True)
    finally:
        conn.close()
    assert {"ANALYTICS", "SECURITY"} <= set(databases)
    ssn = catalog.column("ANALYTICS.PUBLIC.CUSTOMERS.SSN")
    assert ssn is not None and ssn.classification == "pii.ssn"
    secret = catalog.column("SECURITY.ADMIN.USERS.MFA_SECRET")
    assert secret is not None and secret.classification == "secret"
    # the version is content-based: syncing twice gives the same cache key
    conn = catalog_sync.connect(fakesnow_profile)
    try:
        again = catalog_sync.from_information_schema(conn, base=base, count_rows=True)
    finally:
        conn.close()
    assert again.version == catalog.version


def test_catalog_events_for_the_compacted_topic(fakesnow_profile: SnowflakeProfile, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        snowflake_profiles={"analytics": fakesnow_profile},
        default_target="analytics",
        catalog_path=DEMO_CATALOG,
    )
    events = catalog_sync.catalog_events(
        settings, databases=["ANALYTICS", "SECURITY"], previous=["ANALYTICS.PUBLIC.DROPPED"]
    )
    by_table = {e.table: e for e in events}
    customers = by_table["ANALYTICS.PUBLIC.CUSTOMERS"]
    assert customers.request_id == "ANALYTICS.PUBLIC.CUSTOMERS"
    assert {c.name: c.classification for c in customers.columns}["EMAIL"] == "pii.email"
    assert by_table["ANALYTICS.PUBLIC.DROPPED"].deleted is True
    assert not customers.deleted
    # the events rebuild the same catalog the processors resolve against
    rebuilt = Catalog.from_mapping(
        {
            "tables": {
                e.table: {
                    "columns": [
                        {"name": c.name, "type": c.type, "classification": c.classification}
                        for c in e.columns
                    ],
                    "row_count": e.row_count,
                    "bytes": e.bytes,
                }
                for e in events
                if not e.deleted
            }
        }
    )
    assert rebuilt.table("SECURITY.ADMIN.USERS") is not None


def test_a_failed_first_sync_is_retried_soon_not_at_the_next_refresh(
    fakesnow_profile: SnowflakeProfile, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Snowflake unreachable when the executor starts (nothing listens on the profile's port):
    the catalog still reaches the topic seconds after it is back, not an hour later."""
    import threading
    import time

    from processors.executor.service import _catalog_loop
    from querytrail.publishing import Publisher, read_topic
    from querytrail.settings import ExecutorSettings, KafkaSettings
    from schemas.codec import EventCodec
    from tests.conftest import free_port

    unreachable = fakesnow_profile.model_copy(update={"port": free_port(), "login_timeout_s": 2})
    settings = Settings(
        home=tmp_path,
        environment="local",
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        executor=ExecutorSettings(catalog_refresh_s=3600),
        snowflake_profiles={"analytics": unreachable},
    )
    stop = threading.Event()
    loop = threading.Thread(
        target=_catalog_loop, args=(settings, Publisher(settings, "test"), stop), daemon=True
    )
    loop.start()
    try:
        time.sleep(4)  # at least one attempt failed against the closed port
        assert not list(read_topic(settings, "catalog", timeout=10))
        settings.snowflake_profiles["analytics"] = fakesnow_profile  # Snowflake is back
        back, tables = time.monotonic(), set()
        while time.monotonic() - back < 60 and "ANALYTICS.PUBLIC.CUSTOMERS" not in tables:
            time.sleep(1)
            tables = {
                EventCodec().decode(m.value()).table for m in read_topic(settings, "catalog", timeout=10)
            }
        assert "ANALYTICS.PUBLIC.CUSTOMERS" in tables
        assert time.monotonic() - back < 60
    finally:
        stop.set()
        loop.join(30)

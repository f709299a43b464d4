"""Session fixtures of the engine tests: one audit table, and Spark and Trino reading it.

``audit_log`` writes the report scenario (plus bypass findings) once into a temp querytrail home;
``spark`` (pyspark + Iceberg runtime, Java 17) and ``trino`` (Trino from Maven, Java 24+) read that
same table through the same SQL catalog, each started once per session. Each skips, with the
reason, when its tools (pyspark, mvn, the Java it needs) are missing.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from querytrail.settings import Settings
from schemas import events as ev

from .helpers import local_settings, make_sink, write_events
from .scenario import DAY, _meta, scenario

REPO = Path(__file__).resolve().parents[2]
SPARK_JARS = ("iceberg-spark-runtime-4.0_2.13-1.10.0.jar", "sqlite-jdbc-3.46.1.3.jar")


@dataclass(frozen=True)
class AuditLog:
    home: Path
    settings: Settings
    events: list[Any]


def bypass_findings() -> list[Any]:
    """Two reconcile findings, one written twice (a redelivery the report must show once)."""

    def finding(rid: str, hours: int, kind: str, **extra: Any) -> Any:
        at = DAY + timedelta(hours=hours)
        return ev.BypassDetected(**_meta(rid, at, "reconcile"), reason_code=kind, **extra)

    stolen = finding(
        "bypass-stolen",
        3,
        "unauthorized",
        detail="querytrail's user ran a statement querytrail never authorised",
        snowflake_query_id="01b2-stolen",
        sql_text="select * from customers",
        user_name="QUERYTRAIL_SVC",
        role_name="ANALYST",
        warehouse_name="WH",
        started_at=DAY + timedelta(hours=2, minutes=59),
    )
    direct = finding(
        "bypass-direct",
        12,
        "agent_direct",
        detail="an agent's user went around querytrail",
        related_request_id="pii-unmasked",
        snowflake_query_id="01b2-direct",
        sql_text="select ssn from customers",
        user_name="AGENT_BOT",
    )
    return [stolen, direct, stolen]


@pytest.fixture(scope="session")
def audit_log(tmp_path_factory: pytest.TempPathFactory) -> AuditLog:
    home = tmp_path_factory.mktemp("engines-home")
    settings = local_settings(home)
    events = [*scenario(), *bypass_findings()]
    write_events(make_sink(settings), events)
    return AuditLog(home, settings, events)


def _spark_jars() -> Path:
    from tests.conftest import jar_cache

    cache = jar_cache() / "spark-jars"
    if all((cache / j).exists() for j in SPARK_JARS):
        return cache
    if shutil.which("mvn") is None:
        pytest.skip("mvn is not installed: cannot resolve the Iceberg Spark runtime from Maven Central")
    proc = subprocess.run(
        [
            "mvn",
            "-q",
            "-f",
            str(REPO / "infra" / "spark" / "pom.xml"),
            "dependency:copy-dependencies",
            "-DexcludeTransitive=true",
            f"-DoutputDirectory={cache}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0 or not all((cache / j).exists() for j in SPARK_JARS):
        pytest.skip(f"could not resolve the Spark jars from Maven Central: {proc.stderr[-500:]}")
    return cache


@pytest.fixture(scope="session")
def spark(audit_log: AuditLog) -> Iterator[Any]:
    """A local SparkSession whose catalog ``querytrail`` is ``audit_log``'s SQL catalog."""
    pyspark_sql = pytest.importorskip(
        "pyspark.sql", reason="pyspark not installed (pip install querytrail[spark])"
    )
    jars = _spark_jars()
    conf = (REPO / "infra" / "spark" / "spark-defaults.conf").read_text(encoding="utf-8")
    builder = pyspark_sql.SparkSession.builder.master("local[1]").appName("querytrail-test")
    for line in conf.splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split(None, 1)
            value = value.replace("@JARS@", str(jars)).replace("@HOME@", str(audit_log.home))
            builder = builder.config(key, value)
    builder = builder.config("spark.ui.enabled", "false").config("spark.driver.memory", "768m")
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def trino(audit_log: AuditLog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Trino (from Maven, on Java 24+) whose catalog ``iceberg`` is ``audit_log``'s SQL catalog."""
    from infra.kafka import ToolMissingError
    from infra.trino import TrinoServer
    from tests.conftest import free_port, jar_cache

    server = TrinoServer(
        audit_log.home,
        free_port(),
        tmp_path_factory.mktemp("trino"),
        catalog_name=audit_log.settings.iceberg.catalog_name,
        jar_cache=jar_cache(),
        owned_by_caller=True,
    )
    try:
        server.start(timeout=240)
    except ToolMissingError as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()

"""Spark with the Iceberg runtime reads the table the sink wrote and answers a report like DuckDB.

Needs pyspark (``pip install querytrail[spark]``), Java 17 and the jars of infra/spark/pom.xml
from Maven Central (resolved once into the jar cache). Skipped, with the reason, when any of
these is unavailable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sinks.reports import render_sql, report_sql, run_report
from sinks.table import open_table

from .helpers import local_settings, make_sink, write_events
from .scenario import scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
JARS = ("iceberg-spark-runtime-4.0_2.13-1.10.0.jar", "sqlite-jdbc-3.46.1.3.jar")


def _jars() -> Path:
    cache = (
        Path(os.environ.get("QUERYTRAIL_JAR_CACHE", str(Path.home() / ".querytrail" / "cache")))
        / "spark-jars"
    )
    if all((cache / j).exists() for j in JARS):
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
    if proc.returncode != 0 or not all((cache / j).exists() for j in JARS):
        pytest.skip(f"could not resolve the Spark jars from Maven Central: {proc.stderr[-500:]}")
    return cache


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pyspark_sql = pytest.importorskip(
        "pyspark.sql", reason="pyspark not installed (pip install querytrail[spark])"
    )
    jars = _jars()
    home = tmp_path_factory.mktemp("spark-home")
    conf = (REPO / "infra" / "spark" / "spark-defaults.conf").read_text(encoding="utf-8")
    builder = pyspark_sql.SparkSession.builder.master("local[1]").appName("querytrail-test")
    for line in conf.splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split(None, 1)
            builder = builder.config(key, value.replace("@JARS@", str(jars)).replace("@HOME@", str(home)))
    builder = builder.config("spark.ui.enabled", "false").config("spark.driver.memory", "768m")
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session, home
    session.stop()


def test_spark_reads_the_log_and_agrees_with_duckdb(spark: Any) -> None:
    session, home = spark
    settings = local_settings(home)
    write_events(make_sink(settings), scenario())
    events = open_table(settings).scan().to_arrow()

    count = session.sql("SELECT count(*) AS n FROM querytrail.audit.events").collect()[0]["n"]
    assert count == len(scenario())
    for name, key in (
        ("pii-exposure", "exposure"),
        ("privileged-access", "nightly"),
        ("costly-scans", "prompt"),
    ):
        names, rows = run_report(events, name)
        duck = sorted((r[0], r[names.index(key)]) for r in rows)
        spark_rows = session.sql(render_sql(report_sql(name, "spark"), "spark")).collect()
        got = sorted((r["request_id"], r[key]) for r in spark_rows)
        assert got == duck, name

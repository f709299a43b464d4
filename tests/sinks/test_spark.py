"""Spark with the Iceberg runtime reads the table the sink wrote.

Needs pyspark (``pip install querytrail[spark])``, Java 17 and the jars of infra/spark/pom.xml
from Maven Central (resolved once into the jar cache); the session fixtures are in conftest.py.
Every report is compared on every engine in test_engines.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from sinks.table import open_table

from .conftest import AuditLog

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_spark_reads_every_row_the_sink_wrote(spark: Any, audit_log: AuditLog) -> None:
    count = spark.sql("SELECT count(*) AS n FROM querytrail.audit.events").collect()[0]["n"]
    assert count == len(audit_log.events) == open_table(audit_log.settings).scan().to_arrow().num_rows
    ids = {r["event_id"] for r in spark.sql("SELECT event_id FROM querytrail.audit.events").collect()}
    assert ids == {e.event_id for e in audit_log.events}

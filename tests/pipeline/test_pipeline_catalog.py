"""Without a catalog file the worker decides on the catalog the executor publishes from
INFORMATION_SCHEMA to the compacted catalog topic."""

from __future__ import annotations

from pathlib import Path

import pytest

from querytrail.settings import SnowflakeProfile
from tests.pipeline.pipeline_harness import Pipeline, new_prefix

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_worker_uses_the_catalog_topic(
    tmp_path: Path, kafka_bootstrap: str, fakesnow_profile: SnowflakeProfile
) -> None:
    from infra.topics import create_topics

    prefix = new_prefix()
    create_topics(kafka_bootstrap, prefix)
    p = Pipeline(tmp_path / prefix, kafka_bootstrap, prefix, fakesnow_profile, catalog=None)
    try:
        p.start_all()
        p.wait_log("worker", "catalog loaded", timeout=120)
        token = p.token("ci-bot", ("ci",))
        outcome = p.submit("SELECT ID, EMAIL FROM ANALYTICS.PUBLIC.CUSTOMERS WHERE ID <= 3", token)
        assert outcome.status == "completed", outcome.to_json()
        assert outcome.decision["masked_columns"][0]["source"] == "ANALYTICS.PUBLIC.CUSTOMERS.EMAIL"
        assert all(str(email).startswith("****@") for _, email in outcome.rows())
        unknown = p.submit("SELECT X FROM ANALYTICS.PUBLIC.NOT_A_TABLE WHERE X = 1", token)
        assert unknown.status in ("denied", "rejected")  # unresolved: never treated as safe
    finally:
        p.stop()

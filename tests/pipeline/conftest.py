"""A running pipeline (worker + executor processes) over the session's broker and fakesnow."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from querytrail.settings import SnowflakeProfile
from tests.pipeline.pipeline_harness import Pipeline, new_prefix


def _make(tmp: Path, bootstrap: str, profile: SnowflakeProfile, **kw: Any) -> Pipeline:
    from infra.topics import create_topics

    prefix = new_prefix()
    create_topics(bootstrap, prefix)
    return Pipeline(tmp / prefix, bootstrap, prefix, profile, **kw)


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, fakesnow_profile: SnowflakeProfile
) -> Iterator[Pipeline]:
    p = _make(tmp_path_factory.mktemp("pipeline"), kafka_bootstrap, fakesnow_profile)
    try:
        p.start_all()
        yield p
    finally:
        p.stop()
        with contextlib.suppress(Exception):
            print("--- worker log ---\n" + p.tail("worker") + "\n--- executor log ---\n" + p.tail("executor"))


@pytest.fixture
def fresh_pipeline(
    tmp_path: Path, kafka_bootstrap: str, fakesnow_profile: SnowflakeProfile
) -> Iterator[Pipeline]:
    """A pipeline of this test alone (for tests that kill and restart its processes)."""
    p = _make(tmp_path, kafka_bootstrap, fakesnow_profile)
    try:
        yield p
    finally:
        p.stop()

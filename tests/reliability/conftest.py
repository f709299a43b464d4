"""Fixtures of the reliability tests: whole pipelines of this test alone, and its own broker."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from querytrail.settings import SnowflakeProfile
from tests.reliability.reliability_stack import REPORT_LINES, Stack, free_port, stacks


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The reliability counts, whatever the capture mode (also in the JUnit user properties)."""
    if REPORT_LINES:
        terminalreporter.section("querytrail reliability counts")
        for line in REPORT_LINES:
            terminalreporter.write_line(line)


@pytest.fixture
def make_stack(
    tmp_path: Path, kafka_bootstrap: str, fakesnow_profile: SnowflakeProfile
) -> Iterator[Callable[..., Stack]]:
    """``make_stack(bootstrap_=None, profile_=None, **kw) -> Stack`` on fresh topics; stopped after."""
    with stacks(tmp_path, kafka_bootstrap, fakesnow_profile) as make:
        yield make


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Any]:
    """A Kafka broker of this test alone (own ports and data dir), so the test may SIGKILL it."""
    from infra.kafka import KafkaBroker, PortInUseError

    cache = Path(os.environ.get("QUERYTRAIL_JAR_CACHE", str(Path.home() / ".querytrail" / "cache")))
    for attempt in range(3):
        broker = KafkaBroker(
            tmp_path / f"broker{attempt}",
            free_port(),
            free_port(),
            jar_cache=cache,
            heap="-Xms128m -Xmx512m",
            owned_by_caller=True,
        )
        try:
            broker.start(timeout=120)
            break
        except PortInUseError:
            if attempt == 2:
                raise
    try:
        yield broker
    finally:
        broker.stop()

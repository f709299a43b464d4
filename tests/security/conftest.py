"""Fixtures of the bad-input tests: one whole running pipeline for them all (own topics and home).

Shared on purpose: the leak scan then also covers every attack token and garbage record the
other tests sent, and the pipeline is started once on a 2-core CI machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from querytrail.settings import SnowflakeProfile
from tests.reliability.reliability_stack import Stack, stacks


@pytest.fixture(scope="package")  # stopped when the package's tests are done
def stack(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, fakesnow_profile: SnowflakeProfile
) -> Iterator[Stack]:
    """Worker, executor, sink and HTTP ingress running on this module's own topics."""
    with stacks(tmp_path_factory.mktemp("security"), kafka_bootstrap, fakesnow_profile) as make:
        s = make()
        s.start_everything()
        s.supervise()  # a crash is restarted (as in production) and counted in s.crashes
        yield s


@pytest.fixture
def make_stack(
    tmp_path: Path, kafka_bootstrap: str, fakesnow_profile: SnowflakeProfile
) -> Iterator[Callable[..., Stack]]:
    """A factory of stacks of this test alone (for inputs that may take a service down)."""
    with stacks(tmp_path, kafka_bootstrap, fakesnow_profile) as make:
        yield make

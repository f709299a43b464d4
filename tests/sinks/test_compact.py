"""Compaction rewrites small files and changes no row: verify passes afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from sinks.compact import compact
from sinks.table import open_table

from .helpers import local_settings, make_sink, verify, write_events
from .scenario import scenario

pytestmark = pytest.mark.slow  # seconds of work: kept out of `make unit`, run by `make test`


def test_compact_merges_files_and_keeps_every_row(tmp_path: Path) -> None:
    settings = local_settings(tmp_path / "home")
    sink = make_sink(settings)
    write_events(sink, scenario(), per_flush=3)
    tbl = open_table(settings)
    before = (
        tbl.scan()
        .to_arrow()
        .sort_by([("topic", "ascending"), ("partition", "ascending"), ("offset", "ascending")])
    )
    files_before = len(list(tbl.scan().plan_files()))
    assert files_before > 5

    result = compact(tbl)
    assert result["files_before"] == files_before
    assert result["files_after"] == 1  # the scenario is one day
    after = (
        open_table(settings)
        .scan()
        .to_arrow()
        .sort_by([("topic", "ascending"), ("partition", "ascending"), ("offset", "ascending")])
    )
    assert after.equals(before)
    report = verify(settings)
    assert report.ok, report.problems

    # the sink carries on after compaction, and compaction of a compact table does nothing
    write_events(sink, scenario()[:5], per_flush=2)
    assert verify(settings).ok
    assert compact(open_table(settings), min_files=10)["days"] == 0

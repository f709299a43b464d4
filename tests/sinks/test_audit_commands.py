"""``querytrail audit expire`` and ``audit rotate-key`` end to end on a local audit table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from querytrail.cli import audit as commands
from querytrail.cli import retention as audit_commands
from querytrail.settings import get_settings

from .helpers import local_settings, make_sink, write_events
from .scenario import scenario
from .test_commands import home  # noqa: F401 - the fixture: a written table under a fresh home

pytestmark = pytest.mark.slow  # seconds of work: kept out of `make unit`, run by `make test`


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    commands.register(sub)
    audit_commands.register(sub)
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_rotate_expire_verify(home: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    assert run("audit", "rotate-key", "--by", "ops") == 0
    rotated = json.loads(capsys.readouterr().out)
    write_events(make_sink(local_settings(home)), scenario()[:6])  # signed with the new key
    assert run("audit", "expire", "--keep", "1", "--by", "alice", "--no-witness-topic") == 0
    expired = json.loads(capsys.readouterr().out)
    assert expired["expired"] >= 2 and expired["key_id"] == rotated["new_key_id"]
    assert run("verify", "--no-witness-topic") == 0
    out = capsys.readouterr().out
    assert "verify OK" in out
    assert "snapshot(s) expired by retention" in out and "by alice" in out, out
    assert f"chain key {rotated['old_key_id']} handed over to {rotated['new_key_id']}" in out, out


def test_expire_refuses_a_table_that_fails_verify(home: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    from sinks.table import open_table

    tbl = open_table(get_settings())
    before = len(tbl.metadata.snapshots)
    tbl.manage_snapshots().rollback_to_snapshot(tbl.current_snapshot().parent_snapshot_id).commit()  # type: ignore[union-attr,arg-type]
    assert run("audit", "expire", "--keep", "1", "--no-witness-topic") == 1
    assert "refusing to expire: verify FAILED" in capsys.readouterr().err
    assert len(open_table(get_settings()).metadata.snapshots) == before

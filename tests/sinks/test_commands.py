"""The sub-commands end to end on a local audit table: verify, query, report, replay, compact."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from querytrail.cli import audit as commands
from querytrail.settings import get_settings

from .helpers import local_settings, make_sink, write_events
from .scenario import scenario

pytestmark = pytest.mark.slow  # seconds of work: kept out of `make unit`, run by `make test`

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    for name in list(__import__("os").environ):
        if name.startswith("QUERYTRAIL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("QUERYTRAIL_HOME", str(home))
    get_settings.cache_clear()
    write_events(make_sink(local_settings(home)), scenario())
    yield home
    get_settings.cache_clear()


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_verify_exit_codes(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # no broker here: the witness file is checked, its copy on the witness topic is not
    assert run("verify", "--no-witness-topic") == 0
    assert "verify OK" in capsys.readouterr().out
    from sinks.table import open_table

    tbl = open_table(get_settings())
    tbl.manage_snapshots().rollback_to_snapshot(tbl.current_snapshot().parent_snapshot_id).commit()  # type: ignore[union-attr]
    assert run("verify", "--no-witness-topic", "--format", "json") == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["first_problem"].startswith("rollback: snapshot ")


def test_query_and_reports(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("query", "select count(*) as n from audit_events", "--format", "json") == 0
    assert json.loads(capsys.readouterr().out) == [{"n": len(scenario())}]
    assert run("report", "pii-exposure", "--format", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["request_id"]: r["exposure"] for r in rows}["pii-unmasked"] == "unmasked"
    assert run("report", "privileged-access", "--format", "csv") == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("request_id,accessed_at,executed,nightly")
    assert run("report", "costly-scans") == 0
    table = capsys.readouterr().out
    assert "scan-full" in table and "how many orders ever" in table


def test_replay_text_and_json(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("replay", "priv-denied") == 0
    text = capsys.readouterr().out
    assert "QueryRejected" in text and "nightly-privileged" in text and "nightly-batch" in text
    assert run("replay", "pii-masked", "--format", "json") == 0
    story = json.loads(capsys.readouterr().out)
    assert story["events"][0]["event_type"] == "QueryRequested"
    assert run("replay", "no-such-request") == 1


def test_replay_with_another_policy_shows_what_changes(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strict = tmp_path / "deny-all.yaml"
    strict.write_text("version: 1\ndefaults: {decision: deny}\nrules: []\n", encoding="utf-8")
    catalog = REPO / "infra" / "catalog" / "demo.yaml"
    assert run("replay", "--policy", str(strict), "--catalog", str(catalog), "--format", "json") == 0
    changes = {c["request_id"]: c for c in json.loads(capsys.readouterr().out)["changes"]}
    allowed = {"pii-unmasked", "pii-masked", "pii-detector", "priv-night", "priv-day", "scan-full", "plain"}
    assert allowed <= set(changes)
    assert all(
        changes[r]["old_decision"] == "allow" and changes[r]["new_decision"] == "deny" for r in allowed
    )
    # the example policy decides the plain CI read of CUSTOMERS as the log says: allowed
    example = REPO / "infra" / "policies" / "example.yaml"
    assert run("replay", "--policy", str(example), "--catalog", str(catalog), "--format", "json") == 0
    changes = {c["request_id"]: c for c in json.loads(capsys.readouterr().out)["changes"]}
    assert "plain" not in changes


def test_compact_command(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("compact") == 0
    assert json.loads(capsys.readouterr().out)["files_after"] == 1
    assert run("verify", "--no-witness-topic") == 0


def test_csv_and_json_output_carry_no_raw_control_or_bidi_characters() -> None:
    import csv
    import io

    from sinks.reports import format_result

    hostile = "ok\x1b[2J\x1b[31mFAKE\u202eevil\u2066\r\nnext\x85\x7f\U000e0041"
    names, rows = ["prompt", "tags"], [(hostile, [hostile]), ("plain ünïcode", ["x"])]
    danger = ("\x1b", "\u202e", "\u2066", "\r", "\x85", "\x7f", "\U000e0041")
    as_json = format_result(names, rows, "json")
    assert not any(ch in as_json for ch in danger), as_json
    assert json.loads(as_json)[0] == {"prompt": hostile, "tags": [hostile]}  # escapes, not loss
    assert json.loads(as_json)[1]["prompt"] == "plain ünïcode" and "ünïcode" in as_json
    as_csv = format_result(names, rows, "csv")
    assert not any(ch in as_csv.replace("\r\n", "\n") for ch in danger), as_csv
    cells = list(csv.reader(io.StringIO(as_csv)))
    assert cells[1][0] == "ok\\x1b[2J\\x1b[31mFAKE\\u202eevil\\u2066\\x0d\\nnext\\x85\\x7f\\U000e0041"
    assert len(cells) == 3  # a newline in a value no longer starts a row

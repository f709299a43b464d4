"""The audit table end to end without a broker: writing, verifying, tampering, replay, reports."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from querytrail.escape import terminal
from sinks.replay import request_story, story_text
from sinks.reports import run_report, run_sql
from sinks.table import open_table, state_of

from .helpers import local_settings, make_sink, verify, write_events
from .scenario import scenario

pytestmark = pytest.mark.slow  # seconds of work: kept out of `make unit`, run by `make test`


@pytest.fixture
def log_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = local_settings(tmp_path / "home")
    write_events(make_sink(settings), scenario(), raw=[b"\xc3\x01garbage"])
    return settings


def _rows(settings) -> pa.Table:  # type: ignore[no-untyped-def]
    return open_table(settings).scan().to_arrow()


def test_every_event_is_stored_once_and_verify_passes(log_settings) -> None:  # type: ignore[no-untyped-def]
    rows = _rows(log_settings)
    assert rows.num_rows == len(scenario()) + 1
    assert (
        len(
            set(
                zip(
                    rows["topic"].to_pylist(),
                    rows["partition"].to_pylist(),
                    rows["offset"].to_pylist(),
                    strict=True,
                )
            )
        )
        == rows.num_rows
    )
    undecodable = rows.filter(pc.equal(rows["event_type"], "Undecodable"))
    assert undecodable.num_rows == 1 and undecodable["avro"][0].as_py() == b"\xc3\x01garbage"
    report = verify(log_settings)
    assert report.ok, report.problems
    assert report.witness_entries >= 5


def test_sealed_tokens_never_reach_payload_json(log_settings) -> None:  # type: ignore[no-untyped-def]
    rows = _rows(log_settings)
    for text in rows["payload_json"].to_pylist():
        assert "sealed-opaque" not in (text or "")
        assert "AXNlYWxlZC1vcGFxdWU" not in (text or "")  # its base64


def test_hot_columns_are_typed(log_settings) -> None:  # type: ignore[no-untyped-def]
    _names, rows = run_sql(
        _rows(log_settings),
        "select subject, decision, tables, findings, estimated_bytes "
        "from events where event_type = 'PolicyDecided' and request_id = 'scan-full'",
    )
    assert rows == [("ci-bot", "allow", ["ANALYTICS.PUBLIC.ORDERS"], ["full_table_scan"], 50 * 1024**3)]


def test_reports_answer_the_seeded_questions(log_settings) -> None:  # type: ignore[no-untyped-def]
    events = _rows(log_settings)
    names, rows = run_report(events, "pii-exposure")
    got = {r[names.index("request_id")]: r[names.index("exposure")] for r in rows}
    assert got == {"pii-unmasked": "unmasked", "pii-masked": "masked", "pii-detector": "caught_by_detector"}
    unmasked = next(r for r in rows if r[0] == "pii-unmasked")
    assert unmasked[names.index("unmasked_classified")] == ["SSN"]
    assert unmasked[names.index("subject")] == "ci-bot"

    names, rows = run_report(events, "privileged-access")
    got = {
        r[0]: (r[names.index("nightly")], r[names.index("executed")], r[names.index("subject")]) for r in rows
    }
    assert got == {
        "priv-night": (True, True, "nightly-batch"),
        "priv-day": (False, True, "ci-bot"),
        "priv-denied": (True, False, "nightly-batch"),
    }

    names, rows = run_report(events, "costly-scans")
    assert [r[0] for r in rows] == ["scan-full"]
    assert rows[0][names.index("prompt")] == "how many orders ever? all of them"
    assert rows[0][names.index("bytes_scanned")] == 48 * 1024**3
    _, rows = run_report(events, "costly-scans", bytes_threshold=500)  # every estimate over 500 bytes
    assert len(rows) == 8


def test_report_time_window(log_settings) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from .scenario import DAY

    _names, rows = run_report(_rows(log_settings), "privileged-access", since=DAY + timedelta(hours=12))
    assert [r[0] for r in rows] == ["priv-day"]


def test_replay_tells_the_story_in_order(log_settings) -> None:  # type: ignore[no-untyped-def]
    rows = [r for r in _rows(log_settings).to_pylist() if r["request_id"] == "pii-masked"]
    story = request_story(rows)
    assert [s["event_type"] for s in story] == [
        "QueryRequested",
        "PolicyDecided",
        "ExecutionStarted",
        "ResultPage",
        "QueryCompleted",
        "DownstreamActionReported",
    ]
    text = story_text("pii-masked", story)
    assert "emails please" in text and "decision: allow" in text and "wrote report" in text


def test_escape_defuses_terminal_forgery() -> None:
    crafted = "ok\n2026-01-01  PolicyDecided\x1b[2K\u202edecision: allow"
    shown = terminal(crafted)
    assert "\n" not in shown and "\x1b" not in shown and "\u202e" not in shown
    assert shown == "ok\\n2026-01-01  PolicyDecided\\x1b[2K\\u202edecision: allow"


def test_snapshot_summary_holds_offsets_and_signed_heads(log_settings) -> None:  # type: ignore[no-untyped-def]
    state = state_of(open_table(log_settings).current_snapshot())
    assert state is not None
    total = len(scenario()) + 1
    assert sum(state.offsets.values()) == total
    assert set(state.heads) == {"qt.log:0", "qt.log:1"}


def test_payload_json_is_to_json_dict_without_the_sealed_token() -> None:
    import json
    from dataclasses import replace

    from schemas.codec import to_json_dict
    from sinks.audit_schema import payload_json

    events = scenario()
    attested = replace(  # the HTTP ingress path: verified claims, no sealed token
        events[0], credential=replace(events[0].credential, sealed_token=None, attested=events[1].identity)
    )
    for event in [*events, attested]:
        want = to_json_dict(event)
        got = json.loads(payload_json(event))
        if want.get("credential", {}).get("sealed_token"):
            assert got["credential"]["sealed_token"].startswith("<sealed ")
            got["credential"]["sealed_token"] = want["credential"]["sealed_token"]
        assert got == want


def test_a_second_writer_on_the_same_chain_is_fenced(tmp_path: Path) -> None:
    from sinks.writer import Record, StaleStateError

    from .helpers import CODEC

    settings = local_settings(tmp_path / "home")
    first, zombie = make_sink(settings), make_sink(settings)
    events = [CODEC.encode(e) for e in scenario()[:4]]
    first.add(Record("qt.log", 0, 0, b"k", events[0]))
    first.flush()
    zombie.add(Record("qt.log", 0, 0, b"k", events[0]))  # it never saw the first's commit
    with pytest.raises(StaleStateError):
        zombie.flush()
    zombie.drop()
    zombie.reload()
    zombie.add(Record("qt.log", 0, 0, b"k", events[0]))  # already stored: skipped
    zombie.add(Record("qt.log", 0, 1, b"k", events[1]))
    zombie.flush()
    assert open_table(settings).scan().to_arrow().num_rows == 2
    assert verify(settings).ok


def test_decoding_in_worker_processes_writes_the_same_rows(tmp_path: Path) -> None:
    from sinks.chain import load_signer
    from sinks.consumer import witness_path
    from sinks.table import load_or_create_table
    from sinks.writer import IcebergSink

    from .helpers import CODEC

    events = scenario()
    inline_settings = local_settings(tmp_path / "inline")
    write_events(make_sink(inline_settings), events, raw=[b"junk"])
    pooled_settings = local_settings(tmp_path / "pooled")
    make_sink(pooled_settings).close()  # creates the key pair
    pooled = IcebergSink(
        load_or_create_table(pooled_settings),
        load_signer(pooled_settings.key_path("chain_signing_key")),
        CODEC.decode,
        witness_path(pooled_settings),
        workers=2,
    )
    pooled.chunk_size = 7  # several chunks in flight per flush
    try:
        write_events(pooled, events, raw=[b"junk"])
    finally:
        pooled.close()
    columns = ["topic", "partition", "offset", "event_type", "payload_json", "avro"]
    order = [("partition", "ascending"), ("offset", "ascending")]
    inline = open_table(inline_settings).scan().to_arrow().select(columns).sort_by(order)
    pooled_rows = open_table(pooled_settings).scan().to_arrow().select(columns).sort_by(order)
    assert pooled_rows.equals(inline)
    assert verify(pooled_settings).ok

"""Tampering with the audit table is detected and the first changed row is named.

Each test plays an attacker with write access to the catalog and the warehouse (but not the
sink's signing key) and then runs verify.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from querytrail.settings import Settings
from sinks.audit_schema import ARROW_SCHEMA
from sinks.chain import chain_step
from sinks.table import open_table

from .helpers import local_settings, make_sink, verify, write_events
from .scenario import scenario

pytestmark = pytest.mark.slow  # seconds of work: kept out of `make unit`, run by `make test`


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = local_settings(tmp_path / "home")
    write_events(make_sink(s), scenario(), partitions=2, per_flush=7)
    assert verify(s).ok
    return s


def _sorted_rows(settings: Settings) -> list[dict[str, Any]]:
    rows = open_table(settings).scan().to_arrow().to_pylist()
    return sorted(rows, key=lambda r: (r["topic"], r["partition"], r["offset"]))


def _overwrite(settings: Settings, mutate: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Replace the table's rows, copying the sink's signed summary onto the new snapshot."""
    tbl = open_table(settings)
    summary = tbl.current_snapshot().summary  # type: ignore[union-attr]
    props = {k: v for k, v in summary.additional_properties.items() if k.startswith("querytrail.")}
    rows = mutate(_sorted_rows(settings))
    tbl.overwrite(pa.Table.from_pylist(rows, schema=ARROW_SCHEMA), snapshot_properties=props)


def _first(settings: Settings) -> str:
    report = verify(settings)
    assert not report.ok
    return str(report.problems[0])


def _pick(rows: list[dict[str, Any]], partition: int = 0, index: int = 3) -> dict[str, Any]:
    return [r for r in rows if r["partition"] == partition][index]


def test_one_byte_changed_in_a_data_file_is_named(settings: Settings) -> None:
    tbl = open_table(settings)
    path = next(iter(tbl.scan().plan_files())).file.file_path.removeprefix("file://")
    data = pq.read_table(path)
    avro = data["avro"].to_pylist()
    victim = data.slice(0, 1).to_pylist()[0]
    avro[0] = avro[0][:-1] + bytes([avro[0][-1] ^ 0x01])
    pq.write_table(
        data.set_column(
            data.schema.get_field_index("avro"),
            data.schema.field("avro"),
            pa.array(avro, type=data.schema.field("avro").type),
        ),
        path,
    )
    first = _first(settings)
    assert first.startswith(f"changed: {victim['topic']}:{victim['partition']}@{victim['offset']}:"), first


def test_changed_row_with_recomputed_digest_is_named(settings: Settings) -> None:
    victim = next(r for r in _sorted_rows(settings) if r["event_type"] == "QueryRequested")

    def mutate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for r in rows:
            if r["event_id"] == victim["event_id"]:
                r["avro"] = r["avro"].replace(b"claude", b"claudf")
                r["avro_sha256"] = hashlib.sha256(r["avro"]).hexdigest()
        return rows

    _overwrite(settings, mutate)
    where = f"{victim['topic']}:{victim['partition']}@{victim['offset']}"
    assert _first(settings).startswith(f"changed: {where}:")


def test_edited_hot_column_is_named(settings: Settings) -> None:
    victim = next(r for r in _sorted_rows(settings) if r["event_type"] == "PolicyDecided")

    def mutate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for r in rows:
            if r["event_id"] == victim["event_id"]:
                r["decision"] = "deny"  # the bytes still say allow
        return rows

    _overwrite(settings, mutate)
    first = _first(settings)
    assert (
        first
        == f"changed: qt.log:{victim['partition']}@{victim['offset']}: column decision differs from the stored event"
    )


def test_deleted_row_is_named(settings: Settings) -> None:
    victim = _pick(_sorted_rows(settings))
    _overwrite(settings, lambda rows: [r for r in rows if r["event_id"] != victim["event_id"]])
    first = _first(settings)
    assert first.startswith(f"removed: qt.log:0@{victim['offset'] + 1}:"), first


def test_deleted_tail_is_named(settings: Settings) -> None:
    last = [r for r in _sorted_rows(settings) if r["partition"] == 1][-1]
    _overwrite(settings, lambda rows: [r for r in rows if r["event_id"] != last["event_id"]])
    first = _first(settings)
    assert first.startswith(f"removed: qt.log:1@{last['offset']}:") or first.startswith(
        f"rollback: qt.log:1@{last['offset']}:"
    ), first


def test_forged_row_inserted_in_the_middle_is_named(settings: Settings) -> None:
    rows0 = [r for r in _sorted_rows(settings) if r["partition"] == 0]
    at = rows0[4]["offset"]

    def mutate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        forged = dict(rows0[3], event_id="forged", avro=_forged_avro())
        forged["avro_sha256"] = hashlib.sha256(forged["avro"]).hexdigest()
        prev = bytes.fromhex(rows0[3]["chain_hash"])
        forged["chain_hash"] = chain_step(prev, bytes.fromhex(forged["avro_sha256"])).hex()
        for r in rows:
            if r["partition"] == 0 and r["offset"] >= at:
                r["offset"] += 1
        forged["offset"] = at
        return [*rows, forged]

    _overwrite(settings, mutate)
    first = _first(settings)
    assert first.startswith(f"inserted: qt.log:0@{at}:"), first


def test_forged_row_appended_after_the_head_is_named(settings: Settings) -> None:
    tbl = open_table(settings)
    last = [r for r in _sorted_rows(settings) if r["partition"] == 0][-1]
    from sinks.audit_schema import derive

    from .helpers import CODEC

    avro = _forged_avro()  # a careful forger fills every column from the event it encoded
    forged = dict(last, **derive(CODEC.decode(avro)), offset=last["offset"] + 1, avro=avro)
    forged["avro_sha256"] = hashlib.sha256(forged["avro"]).hexdigest()
    forged["chain_hash"] = chain_step(
        bytes.fromhex(last["chain_hash"]), bytes.fromhex(forged["avro_sha256"])
    ).hex()
    props = {
        k: v
        for k, v in tbl.current_snapshot().summary.additional_properties.items()  # type: ignore[union-attr]
        if k.startswith("querytrail.")
    }
    tbl.append(pa.Table.from_pylist([forged], schema=ARROW_SCHEMA), snapshot_properties=props)
    first = _first(settings)
    assert first.startswith(f"inserted: qt.log:0@{last['offset'] + 1}:"), first


def test_undecodable_forged_row_in_the_middle_is_named(settings: Settings) -> None:
    rows0 = [r for r in _sorted_rows(settings) if r["partition"] == 0]
    at = rows0[4]["offset"]

    def mutate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        forged = dict(rows0[3], event_id="junk", avro=b"junk")
        forged["avro_sha256"] = hashlib.sha256(b"junk").hexdigest()
        prev = bytes.fromhex(rows0[3]["chain_hash"])
        forged["chain_hash"] = chain_step(prev, bytes.fromhex(forged["avro_sha256"])).hex()
        for r in rows:
            if r["partition"] == 0 and r["offset"] >= at:
                r["offset"] += 1
        forged["offset"] = at
        return [*rows, forged]

    _overwrite(settings, mutate)
    first = _first(settings)
    assert first.startswith(f"inserted: qt.log:0@{at}:"), first


def _forged_avro() -> bytes:
    """A well-formed event the attacker encodes with the public schemas."""
    from .helpers import CODEC
    from .scenario import DAY, request

    return CODEC.encode(request("forged", DAY, "select 1", "innocent")[0])


def test_reordered_rows_are_named(settings: Settings) -> None:
    rows0 = [r for r in _sorted_rows(settings) if r["partition"] == 0]
    a, b = rows0[2]["event_id"], rows0[3]["event_id"]
    oa, ob = rows0[2]["offset"], rows0[3]["offset"]

    def mutate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for r in rows:
            if r["event_id"] == a:
                r["offset"] = ob
            elif r["event_id"] == b:
                r["offset"] = oa
        return rows

    _overwrite(settings, mutate)
    first = _first(settings)
    assert first.startswith(f"reordered: qt.log:0@{oa}:"), first


def test_rollback_to_an_earlier_snapshot_is_named(settings: Settings) -> None:
    tbl = open_table(settings)
    current = tbl.current_snapshot()
    assert current is not None and current.parent_snapshot_id is not None
    tbl.manage_snapshots().rollback_to_snapshot(current.parent_snapshot_id).commit()
    report = verify(settings)
    assert not report.ok
    assert str(report.problems[0]).startswith(f"rollback: snapshot {current.snapshot_id}:"), report.problems
    assert any(p.kind == "rollback" and p.where.startswith("qt.log:") for p in report.problems)


def test_rollback_hidden_by_expiring_snapshots_is_caught_by_the_witness(settings: Settings) -> None:
    tbl = open_table(settings)
    snaps = tbl.metadata.snapshots
    old = snaps[len(snaps) // 2]
    tbl.manage_snapshots().rollback_to_snapshot(old.snapshot_id).commit()
    newer = [s.snapshot_id for s in snaps if s.sequence_number > old.sequence_number]
    tbl.maintenance.expire_snapshots().by_ids(newer).commit()
    report = verify(settings)
    assert not report.ok
    kinds = {p.kind for p in report.problems}
    assert {"expired", "rollback"} <= kinds, report.problems


def test_unsigned_snapshot_is_named(settings: Settings) -> None:
    tbl = open_table(settings)
    rows = tbl.scan().to_arrow()
    tbl.overwrite(rows)  # same rows, but no signed summary: not written by the sink
    first = _first(settings)
    assert first.startswith("unsigned: snapshot "), first


def test_verify_since_checks_only_recent_rows(settings: Settings) -> None:
    from .scenario import DAY

    report = verify(settings, since=DAY)
    assert report.ok, report.problems
    assert report.rows == len(scenario())


def test_verify_since_keeps_chains_whole_when_clocks_disagree(tmp_path: Path) -> None:
    """A late event (older occurred_at) in the middle of a partition is not mistaken for a gap."""
    from datetime import timedelta

    from schemas import events as ev

    from .scenario import DAY

    s = local_settings(tmp_path / "home")
    events = scenario()
    late = ev.ResultPage(
        event_id=ev.new_event_id(),
        request_id="plain",
        occurred_at=DAY - timedelta(hours=1),
        producer=ev.producer("slow-clock"),
        page=9,
        rows_json="[]",
        row_offset=0,
        last=True,
    )
    write_events(make_sink(s), [*events[:20], late, *events[20:]], partitions=1)
    report = verify(s, since=DAY)
    assert report.ok, report.problems
    assert report.rows == len(events) + 1


def _rollback_and_expire(settings: Settings, keep: int) -> int:
    """Roll the table back to its ``keep``-th snapshot and expire every later one; its id."""
    tbl = open_table(settings)
    snaps = sorted(tbl.metadata.snapshots, key=lambda s: s.sequence_number or 0)
    old = snaps[keep]
    tbl.manage_snapshots().rollback_to_snapshot(old.snapshot_id).commit()
    newer = [s.snapshot_id for s in snaps if (s.sequence_number or 0) > (old.sequence_number or 0)]
    tbl.maintenance.expire_snapshots().by_ids(newer).commit()
    return old.snapshot_id


def test_rollback_plus_witness_removed_fails_verify(settings: Settings) -> None:
    from sinks.consumer import witness_path

    _rollback_and_expire(settings, 1)
    witness_path(settings).unlink()
    report = verify(settings)
    assert not report.ok
    assert any(p.kind == "witness" and "missing" in p.message for p in report.problems), report.problems


def test_rollback_plus_witness_truncated_fails_verify(settings: Settings) -> None:
    """The careful attacker: the witness is cut where the table now ends, so both agree."""
    import json

    from sinks.consumer import witness_path

    kept = _rollback_and_expire(settings, 1)
    path = witness_path(settings)
    lines = path.read_bytes().splitlines()
    cut = next(i for i, ln in enumerate(lines) if json.loads(ln)["snapshot_id"] == kept)
    path.write_bytes(b"".join(ln + b"\n" for ln in lines[: cut + 1]))
    report = verify(settings)
    assert not report.ok
    assert {p.kind for p in report.problems} == {"witness"}, report.problems
    assert "the witness truncated" in str(report.problems[0]), report.problems


def test_witness_line_removed_or_edited_is_named(settings: Settings) -> None:
    import json

    from sinks.consumer import witness_path

    path = witness_path(settings)
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"".join(ln + b"\n" for i, ln in enumerate(lines) if i != 1))
    assert any(str(p).startswith("witness: witness line 2: off the chain") for p in verify(settings).problems)
    path.write_bytes(b"".join(ln.replace(b'"offset":', b'"offset": ') + b"\n" for ln in lines))
    assert str(verify(settings).problems[0]).startswith("witness: witness line 1: changed")
    from sinks.witness import canonical

    edited = json.loads(lines[0])
    edited["snapshot_id"] += 1
    path.write_bytes(b"".join(ln + b"\n" for ln in [canonical(edited), *lines[1:]]))
    assert str(verify(settings).problems[0]).startswith("witness: witness line 1: bad signature")


def test_unsigned_legacy_witness_lines_are_named(settings: Settings) -> None:
    import json

    from sinks.consumer import witness_path

    path = witness_path(settings)
    first = json.loads(path.read_bytes().splitlines()[0])
    del first["sig"]
    path.write_text(json.dumps(first) + "\n")
    kinds = [str(p) for p in verify(settings).problems]
    assert kinds[0].startswith("witness: witness line 1: unsigned"), kinds


def test_witness_topic_disagreeing_with_the_file_is_named(settings: Settings) -> None:
    from sinks.consumer import witness_path

    path = witness_path(settings)
    published = path.read_bytes().splitlines()
    assert verify(settings, published=published).ok
    assert verify(settings, published=published).witness_published == len(published)
    # the newest line is gone from the file (and the table is otherwise consistent with it)
    path.write_bytes(b"".join(ln + b"\n" for ln in published[:-1]))
    report = verify(settings, published=published)
    assert any(p.kind == "witness" and "not in the witness file" in p.message for p in report.problems), (
        report.problems
    )


def test_unreadable_data_file_is_named_not_a_crash(settings: Settings) -> None:
    tbl = open_table(settings)
    path = next(iter(tbl.scan().plan_files())).file.file_path.removeprefix("file://")
    Path(path).write_bytes(b"not parquet any more")
    report = verify(settings)
    assert not report.ok
    first = report.problems[0]
    assert first.kind == "unreadable" and path in first.where, report.problems
    Path(path).unlink()
    report = verify(settings)
    assert report.problems[0].kind == "unreadable" and "FileNotFoundError" in report.problems[0].message


def test_a_crash_between_the_append_and_its_witness_line_is_caught_up_on_restart(tmp_path: Path) -> None:
    s = local_settings(tmp_path / "home")
    sink = make_sink(s)
    write_events(sink, scenario()[:6], partitions=1, per_flush=3)
    assert sink.witness is not None

    def crash(*args: Any) -> bytes:
        raise SystemExit("killed after the append, before the witness line")

    sink.witness.record = crash  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        write_events(sink, scenario()[6:9], partitions=1, per_flush=3)
    assert not verify(s).ok  # the table holds heads the witness never recorded
    make_sink(s)  # the restarted sink witnesses what it committed before the crash
    report = verify(s)
    assert report.ok, report.problems

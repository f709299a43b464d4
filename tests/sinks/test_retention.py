"""Snapshot expiry behind a signed anchor, chain key rotation, and the streaming verify.

Tables are written by the real sink code into a temporary Iceberg warehouse (no broker); the
attacker has write access to the table and the warehouse, not to the chain signing key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from querytrail.settings import Settings
from sinks.audit_schema import ARROW_SCHEMA
from sinks.chain import load_signer
from sinks.consumer import witness_path
from sinks.keyring import keyring_dir, load_keyring, rotate
from sinks.retention import ANCHOR_PROPERTY, ExpiryError, expire
from sinks.table import open_table
from sinks.verify import VerifyReport, verify_rows, verify_table

from .helpers import CODEC, local_settings, make_sink, write_events
from .scenario import scenario

pytestmark = pytest.mark.slow  # seconds of work: kept out of `make unit`, run by `make test`


def _verify(s: Settings) -> VerifyReport:
    keyring = load_keyring(s.key_path("chain_verify_key"))
    return verify_table(open_table(s), keyring.verifier, CODEC.decode, witness_path(s))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = local_settings(tmp_path / "home")
    write_events(make_sink(s), scenario(), partitions=2, per_flush=7)
    assert _verify(s).ok
    return s


def _expire(s: Settings, keep: int = 2) -> dict[str, Any]:
    return expire(open_table(s), load_signer(s.key_path("chain_signing_key")), keep, "auditor")


def test_expire_keeps_verify_passing_and_says_so(settings: Settings) -> None:
    before = len(open_table(settings).metadata.snapshots)
    result = _expire(settings)
    tbl = open_table(settings)
    assert len(tbl.metadata.snapshots) == 2 and result["expired"] == before - 2
    assert tbl.scan().to_arrow().num_rows == len(scenario())  # rows stay: only snapshot metadata goes
    report = _verify(settings)
    assert report.ok, report.problems
    kid = load_signer(settings.key_path("chain_signing_key")).key_id
    assert any(
        f"{before - 2} snapshot(s) expired by retention" in n and f"signed by key {kid}" in n
        for n in report.notes
    ), report.notes


def test_expire_twice_carries_the_anchor_forward(settings: Settings) -> None:
    first = _expire(settings, keep=4)
    write_events(make_sink(settings), scenario()[:5], partitions=2, per_flush=2)
    second = _expire(settings, keep=1)
    anchor = json.loads(open_table(settings).metadata.properties[ANCHOR_PROPERTY])
    assert anchor["n"] == 1 and anchor["expired"]["total"] == first["expired"] + second["expired"]
    assert _verify(settings).ok


def test_history_removed_without_an_anchor_fails(settings: Settings) -> None:
    tbl = open_table(settings)
    snaps = sorted(tbl.metadata.snapshots, key=lambda s: s.sequence_number or 0)
    tbl.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in snaps[:-2]]).commit()
    kinds = {p.kind for p in _verify(settings).problems}
    assert "expired" in kinds, kinds


def test_rollback_after_expiry_fails_with_rollback(settings: Settings) -> None:
    _expire(settings)
    write_events(make_sink(settings), scenario()[:6], partitions=2, per_flush=2)
    tbl = open_table(settings)
    old = sorted(tbl.metadata.snapshots, key=lambda s: s.sequence_number or 0)[0]
    tbl.manage_snapshots().rollback_to_snapshot(old.snapshot_id).commit()
    report = _verify(settings)
    assert not report.ok
    assert report.problems[0].kind == "rollback", report.problems


def test_expiry_refuses_a_rolled_back_table(settings: Settings) -> None:
    tbl = open_table(settings)
    old = sorted(tbl.metadata.snapshots, key=lambda s: s.sequence_number or 0)[1]
    tbl.manage_snapshots().rollback_to_snapshot(old.snapshot_id).commit()
    with pytest.raises(ExpiryError, match="rolled back"):
        _expire(settings)


def test_deleting_rows_after_expiry_fails(settings: Settings) -> None:
    _expire(settings)
    tbl = open_table(settings)
    summary = tbl.current_snapshot().summary  # type: ignore[union-attr]
    assert summary is not None
    props = {k: v for k, v in summary.additional_properties.items() if k.startswith("querytrail.")}
    rows = sorted(tbl.scan().to_arrow().to_pylist(), key=lambda r: (r["topic"], r["partition"], r["offset"]))
    del rows[3]
    tbl.overwrite(pa.Table.from_pylist(rows, schema=ARROW_SCHEMA), snapshot_properties=props)
    report = _verify(settings)
    assert report.problems[0].kind == "removed", report.problems


@pytest.mark.parametrize("edit", ["heads", "kept", "sig"])
def test_forged_anchor_fails(settings: Settings, edit: str) -> None:
    _expire(settings)
    tbl = open_table(settings)
    anchor = json.loads(tbl.metadata.properties[ANCHOR_PROPERTY])
    if edit == "heads":
        tp = next(iter(anchor["heads"]))
        anchor["heads"][tp]["offset"] -= 1
    elif edit == "kept":
        anchor["expired"]["count"] += 5
    else:
        anchor["sig"] = anchor["sig"][::-1]
    with tbl.transaction() as tx:
        tx.set_properties({ANCHOR_PROPERTY: json.dumps(anchor)})
    problems = _verify(settings).problems
    assert problems[0].kind == "anchor" and "bad signature" in problems[0].message, problems
    # an anchor that does not hold explains nothing: the expired snapshots count as removed
    assert {p.kind for p in problems} == {"anchor", "expired"}, problems


def test_anchor_signed_by_another_key_fails(settings: Settings, tmp_path: Path) -> None:
    from querytrail import keys
    from sinks.retention import expire as expire_with

    other = tmp_path / "attacker.pem"
    keys.ensure_keypair(other)
    expire_with(open_table(settings), load_signer(other), 2, "attacker")
    problems = _verify(settings).problems
    assert problems[0].kind == "unknown_key" and problems[0].where == "retention anchor", problems


def test_rotate_then_expire_then_verify_passes(settings: Settings) -> None:
    private, public = settings.key_path("chain_signing_key"), settings.key_path("chain_verify_key")
    old, new = rotate(private, public, "ops")
    assert load_signer(private).key_id == new
    write_events(make_sink(settings), scenario()[:8], partitions=2, per_flush=3)  # signed by the new key
    _expire(settings, keep=3)
    report = _verify(settings)
    assert report.ok, report.problems
    assert any(f"chain key {old} handed over to {new}" in n for n in load_keyring(public).rotations)
    assert any(old in n and new in n for n in report.notes if n.startswith("signatures checked")), (
        report.notes
    )


def test_head_signed_by_a_removed_key_fails(settings: Settings) -> None:
    private, public = settings.key_path("chain_signing_key"), settings.key_path("chain_verify_key")
    old, _ = rotate(private, public, "ops")
    write_events(make_sink(settings), scenario()[:4], partitions=2, per_flush=2)
    (keyring_dir(public) / f"{old}.pub.pem").unlink()
    report = _verify(settings)
    assert any(p.kind == "unknown_key" and old in p.message for p in report.problems), report.problems


def test_key_swap_by_table_writer_fails(settings: Settings, tmp_path: Path) -> None:
    """An attacker re-signs the heads with a key of their own and drops its public half into the
    keyring directory with a handover it signed: no trusted key signed that handover."""
    from querytrail import keys
    from sinks.table import SinkState, state_of

    attacker_path = tmp_path / "attacker.pem"
    keys.ensure_keypair(attacker_path)
    attacker = load_signer(attacker_path)
    ring = keyring_dir(settings.key_path("chain_verify_key"))
    ring.mkdir(parents=True, exist_ok=True)
    (ring / f"{attacker.key_id}.pub.pem").write_bytes(keys.public_path(attacker_path).read_bytes())
    tbl = open_table(settings)
    state = state_of(tbl.current_snapshot())
    assert state is not None
    uuid = str(tbl.metadata.table_uuid)
    heads = {
        tp: attacker.sign_head(uuid, tp, h.offset, bytes.fromhex(h.hash)) for tp, h in state.heads.items()
    }
    props = SinkState(state.offsets, heads, attacker.key_id).to_summary()
    tbl.overwrite(tbl.scan().to_arrow(), snapshot_properties=props)
    report = _verify(settings)
    assert any(p.kind == "unknown_key" and attacker.key_id in p.message for p in report.problems), (
        report.problems
    )


def test_streaming_verify_equals_in_memory_verify_on_tampered_rows(settings: Settings) -> None:
    """The streaming path (verify_table) and the in-memory one (verify_rows) name the same row problems."""
    tbl = open_table(settings)
    summary = tbl.current_snapshot().summary  # type: ignore[union-attr]
    assert summary is not None
    props = {k: v for k, v in summary.additional_properties.items() if k.startswith("querytrail.")}
    rows = sorted(tbl.scan().to_arrow().to_pylist(), key=lambda r: (r["topic"], r["partition"], r["offset"]))
    rows[2], rows[3] = rows[3], rows[2]  # reorder
    rows[2]["offset"], rows[3]["offset"] = rows[3]["offset"], rows[2]["offset"]
    del rows[10]  # remove
    rows[15] = {**rows[15], "subject": "someone-else"}  # change a typed column
    tbl.overwrite(pa.Table.from_pylist(rows, schema=ARROW_SCHEMA), snapshot_properties=props)
    streamed = verify_table(
        open_table(settings), load_keyring(settings.key_path("chain_verify_key")).verifier, CODEC.decode
    )
    in_memory = verify_rows(open_table(settings).scan().to_arrow(), CODEC.decode)
    row_kinds = {"changed", "removed", "inserted", "reordered"}
    s_rows = [
        str(p)
        for p in streamed.problems
        if p.kind in row_kinds and "@" in p.where and "signed" not in p.message
    ]
    m_rows = [str(p) for p in in_memory.problems]
    assert s_rows == m_rows and len(m_rows) >= 3, (s_rows, m_rows)
    assert streamed.rows == in_memory.rows and streamed.partitions == in_memory.partitions

"""The chain and the row checks detect any single change, removal, insertion or reorder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.chain import GENESIS, chain_hashes, chain_step, ensure_keypair, load_signer, load_verifier
from sinks.verify import verify_rows

pytestmark = pytest.mark.slow  # seconds of work: kept out of `make unit`, run by `make test`


def _rows(avros: list[bytes], topic: str = "t", partition: int = 0) -> list[dict[str, Any]]:
    hashes = chain_hashes(avros)
    return [
        {
            "topic": topic,
            "partition": partition,
            "offset": i,
            "event_id": f"e{i}",
            "event_type": "X",
            "avro": a,
            "avro_sha256": hashlib.sha256(a).hexdigest(),
            "chain_hash": h.hex(),
        }
        for i, (a, h) in enumerate(zip(avros, hashes, strict=True))
    ]


def _check(rows: list[dict[str, Any]]) -> list[str]:
    return [str(p) for p in verify_rows(pa.Table.from_pylist(rows), decode=None).problems]


def test_chain_definition() -> None:
    a, b = b"first", b"second"
    h1 = hashlib.sha256(GENESIS + hashlib.sha256(a).digest()).digest()
    h2 = hashlib.sha256(h1 + hashlib.sha256(b).digest()).digest()
    assert chain_hashes([a, b]) == [h1, h2]
    assert chain_step(h1, hashlib.sha256(b).digest()) == h2


def test_signatures_bind_table_partition_offset_and_hash(tmp_path: Path) -> None:
    ensure_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0
    signer, verifier = load_signer(tmp_path / "k.pem"), load_verifier(tmp_path / "k.pub")
    head = signer.sign_head("uuid", "t:0", 5, b"\x01" * 32)
    assert verifier.check("uuid", "t:0", head)
    assert not verifier.check("other-table", "t:0", head)
    assert not verifier.check("uuid", "t:1", head)
    from dataclasses import replace

    assert not verifier.check("uuid", "t:0", replace(head, offset=6))
    assert not verifier.check("uuid", "t:0", replace(head, hash="00" * 32))
    ensure_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    assert not load_verifier(tmp_path / "other.pub").check("uuid", "t:0", head)


_avros = st.lists(st.binary(min_size=1, max_size=40), min_size=3, max_size=30, unique=True)


@settings(max_examples=150, deadline=None)
@given(_avros)
def test_intact_chain_passes(avros: list[bytes]) -> None:
    assert _check(_rows(avros)) == []


@settings(max_examples=150, deadline=None)
@given(_avros, st.data())
def test_any_changed_byte_is_named(avros: list[bytes], data: st.DataObject) -> None:
    rows = _rows(avros)
    i = data.draw(st.integers(0, len(rows) - 1))
    j = data.draw(st.integers(0, len(rows[i]["avro"]) - 1))
    flip = data.draw(st.integers(1, 255))
    changed = bytearray(rows[i]["avro"])
    changed[j] ^= flip
    rows[i]["avro"] = bytes(changed)
    if data.draw(st.booleans()):  # a careful forger also fixes the stored digest
        rows[i]["avro_sha256"] = hashlib.sha256(rows[i]["avro"]).hexdigest()
    problems = _check(rows)
    assert problems and problems[0].startswith(f"changed: t:0@{i}:")


@settings(max_examples=150, deadline=None)
@given(_avros, st.data())
def test_any_removed_row_is_named(avros: list[bytes], data: st.DataObject) -> None:
    rows = _rows(avros)
    i = data.draw(st.integers(0, len(rows) - 2))  # the tail is covered by the signed head
    del rows[i]
    problems = _check(rows)
    assert problems and problems[0].startswith(f"removed: t:0@{i + 1}:")


@settings(max_examples=150, deadline=None)
@given(_avros, st.data(), st.binary(min_size=1, max_size=40), st.booleans())
def test_any_inserted_row_is_named(
    avros: list[bytes], data: st.DataObject, forged: bytes, chained: bool
) -> None:
    rows = _rows(avros)
    i = data.draw(st.integers(1, len(rows) - 1))
    prev = bytes.fromhex(rows[i - 1]["chain_hash"])
    sha = hashlib.sha256(forged).digest()
    # the forger either chains the row from its predecessor or leaves a plausible hash
    fake = chain_step(prev, sha) if chained else hashlib.sha256(b"x" + forged).digest()
    # squeeze it in at the offset of row i, shifting nothing (a duplicate offset) or into a gap
    rows.insert(
        i, dict(rows[i], avro=forged, avro_sha256=sha.hex(), chain_hash=fake.hex(), event_id="forged")
    )
    for k in range(i + 1, len(rows)):
        rows[k]["offset"] += 1  # the forger renumbers what follows
    problems = _check(rows)
    assert problems and problems[0].startswith("inserted: t:0@"), problems
    assert problems[0].startswith(f"inserted: t:0@{i}:"), problems


@settings(max_examples=150, deadline=None)
@given(_avros, st.data())
def test_any_reorder_is_named(avros: list[bytes], data: st.DataObject) -> None:
    rows = _rows(avros)
    i = data.draw(st.integers(0, len(rows) - 2))
    j = data.draw(st.integers(i + 1, len(rows) - 1))
    rows[i]["offset"], rows[j]["offset"] = rows[j]["offset"], rows[i]["offset"]
    problems = _check(rows)
    assert problems, "a reorder must be detected"
    assert problems[0].split(":")[0] in {"reordered", "changed", "inserted"}
    assert problems[0].startswith(("reordered: t:0@", "changed: t:0@", "inserted: t:0@"))
    if j == i + 1:
        assert problems[0].startswith(f"reordered: t:0@{i}:"), problems


def test_partitions_are_independent() -> None:
    rows = _rows([b"a", b"b"], "t", 0) + _rows([b"c", b"d"], "t", 1)
    assert _check(rows) == []
    rows[2]["avro"] = b"C"
    assert _check(rows)[0].startswith("changed: t:1@0:")

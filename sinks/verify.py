"""``querytrail verify``: recompute every chain, signature and snapshot from the table alone.

Checks, per (topic, partition) in offset order: each row's ``avro_sha256`` against its bytes,
its ``chain_hash`` against ``sha256(prev || sha256(avro))``, its typed columns against the event
re-decoded from ``avro``; then every snapshot's signed heads against the rows, the snapshot
ancestry (a rollback leaves newer snapshots off the current lineage) and the sink's witness
(sinks/witness.py: a rollback or expiry removes heads the sink once signed; the witness itself
must be present, signed, chained, as long as the table's history, and agree with the witness
topic). Problems name the row, the snapshot, the witness line or the unreadable data file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from sinks.audit_schema import DERIVED_COLUMNS, derive, row_fields
from sinks.chain import GENESIS, Head, HeadVerifier, chain_step
from sinks.verify_scan import (
    FACTS_SCHEMA,
    Fact,
    facts,
    first_offsets_since,
    iter_facts,
    scan_batches,
    sorted_facts,
)
from sinks.witness import WitnessLine, check_lines, read_lines

__all__ = ["Problem", "VerifyReport", "verify_rows", "verify_table"]


@dataclass(frozen=True)
class Problem:
    # changed | removed | inserted | reordered | unsigned | signature | unknown_key | rollback
    # | expired | anchor | witness | unreadable
    kind: str
    where: str  # topic:partition@offset, or snapshot id
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.message}"


@dataclass
class VerifyReport:
    rows: int = 0
    partitions: int = 0
    snapshots: int = 0
    witness_entries: int = 0
    witness_published: int | None = None  # lines of this table on the witness topic (None: not read)
    problems: list[Problem] = field(default_factory=list)
    # recomputed chain hash per "topic:partition" -> {offset: hex}: every offset (verify_rows),
    # or the offsets a signed head names (verify_table, which streams)
    chains: dict[str, dict[int, str]] = field(default_factory=dict)
    extents: dict[str, tuple[int, int]] = field(default_factory=dict)  # first and last offset checked
    beyond: dict[str, tuple[int, int]] = field(default_factory=dict)  # rows past the current head, first
    notes: list[str] = field(default_factory=list)  # retention and keys: what passed and why

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "partitions": self.partitions,
            "snapshots": self.snapshots,
            "witness_entries": self.witness_entries,
            "witness_published": self.witness_published,
            "first_problem": str(self.problems[0]) if self.problems else None,
            "notes": list(self.notes),
            "problems": [p.__dict__ for p in self.problems],
        }


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _name(tp: str, row: dict[str, Any]) -> str:
    return f"{tp}@{row['offset']}"


def _rederive(row: dict[str, Any], decode: Callable[[bytes], Any]) -> str | None:
    """The first typed column that does not match the event in ``avro``, or None."""
    try:
        event = decode(row["avro"])
    except Exception:
        return None if row["event_type"] == "Undecodable" else "event_type (avro no longer decodes)"
    if row["event_type"] == "Undecodable":
        return "event_type (stored as Undecodable but the bytes decode)"
    expected = row_fields(derive(event))
    for name in DERIVED_COLUMNS:
        got, want = row.get(name), expected[name]
        if isinstance(want, datetime) and isinstance(got, datetime):
            if got != want:
                return name
        elif got != want and not (got in (None, []) and want in (None, [])):
            return name
    return None


class _Recorder:
    """The recomputed chain of one topic-partition, kept as far as verify needs it.

    ``wanted`` None keeps every offset's hash (``verify_rows``); otherwise only the offsets some
    signed head names, plus the first and last offset and the rows past ``top`` (the current
    head's offset; None: no head), so memory grows with partitions and heads, not rows.
    """

    def __init__(self, report: VerifyReport, tp: str, wanted: set[int] | None, top: int | None) -> None:
        self.chain: dict[int, str] = {}
        report.chains[tp] = self.chain
        self.report, self.tp, self.wanted, self.top = report, tp, wanted, top
        self.beyond: set[int] = set()

    def __call__(self, offset: int, hexhash: str) -> None:
        if self.wanted is None or offset in self.wanted:
            self.chain[offset] = hexhash
        ext = self.report.extents.get(self.tp)
        self.report.extents[self.tp] = (
            (offset, offset) if ext is None else (min(ext[0], offset), max(ext[1], offset))
        )
        if self.top is None or offset > self.top:
            self.beyond.add(offset)

    def close(self) -> None:
        if self.beyond:
            self.report.beyond[self.tp] = (len(self.beyond), min(self.beyond))


def _verify_partition(
    tp: str,
    rows: Iterator[Fact],
    report: VerifyReport,
    anchored: bool,
    record: _Recorder,
) -> None:
    """One chain, in offset order, looking one row ahead (swaps and slipped-in rows)."""
    prev, prev_prev = GENESIS, GENESIS
    row = next(rows, None)
    if not anchored and row is not None:  # --since: trust the first row's stored hash as the anchor
        prev = row.stored
        record(row.offset, row.stored_hex)
        row = next(rows, None)
    nxt = next(rows, None)
    last_offset: int | None = None
    while row is not None:
        where = f"{tp}@{row.offset}"
        step = chain_step(prev, row.avro_hash)
        if last_offset is not None and row.offset == last_offset:
            report.problems.append(Problem("inserted", where, "a second row claims this offset"))
            row, nxt = nxt, next(rows, None)
            continue
        if not row.sha_ok:
            report.problems.append(Problem("changed", where, "the stored bytes do not match avro_sha256"))
        elif step != row.stored:
            if nxt is not None and chain_step(prev, nxt.avro_hash) == nxt.stored:
                if chain_step(nxt.stored, row.avro_hash) == row.stored:
                    report.problems.append(
                        Problem(
                            "reordered", where, f"swapped with offset {nxt.offset} (event {row.event_id})"
                        )
                    )
                    record(row.offset, row.stored_hex)
                    prev_prev, prev, last_offset = prev, row.stored, row.offset
                    row = next(rows, None)
                    nxt = next(rows, None)
                    continue
                report.problems.append(
                    Problem("inserted", where, f"not part of the chain (event {row.event_id})")
                )
                row, nxt = nxt, next(rows, None)
                continue
            if last_offset is not None and chain_step(prev_prev, row.avro_hash) == row.stored:
                report.problems.append(
                    Problem(
                        "inserted",
                        f"{tp}@{last_offset}",
                        f"a forged row was inserted before offset {row.offset}",
                    )
                )
            elif row.offset != (last_offset if last_offset is not None else -1) + 1:
                after = "the start" if last_offset is None else f"offset {last_offset}"
                report.problems.append(
                    Problem("removed", where, f"row(s) removed between {after} and offset {row.offset}")
                )
            else:
                report.problems.append(
                    Problem("changed", where, f"chain hash does not match (event {row.event_id})")
                )
        elif row.column is not None:
            if nxt is not None and chain_step(prev, nxt.avro_hash) == nxt.stored:
                # the next row chains from this one's predecessor: this one was slipped in
                report.problems.append(
                    Problem("inserted", where, f"not part of the chain (event {row.event_id})")
                )
                row, nxt = nxt, next(rows, None)
                continue
            report.problems.append(
                Problem("changed", where, f"column {row.column} differs from the stored event")
            )
        record(row.offset, step.hex())
        prev_prev, prev, last_offset = prev, row.stored, row.offset
        row, nxt = nxt, next(rows, None)


def _run_chains(
    facts_in_order: Iterable[Fact],
    report: VerifyReport,
    anchored: bool,
    wanted: dict[str, set[int]] | None,
    tops: dict[str, int] | None,
) -> None:
    """Every chain of sorted facts; ``wanted``/``tops`` None: keep every offset (in memory)."""
    counted = _Counting(iter(facts_in_order), report)
    for tp, group in itertools.groupby(counted, key=lambda f: f.tp):
        report.partitions += 1
        record = _Recorder(
            report,
            tp,
            None if wanted is None else wanted.get(tp, set()),
            None if tops is None else tops.get(tp),
        )
        _verify_partition(tp, group, report, anchored, record)
        if tops is not None:
            record.close()
        else:
            report.beyond.pop(tp, None)


class _Counting:
    """Counts the rows that pass (report.rows) without holding them."""

    def __init__(self, it: Iterator[Fact], report: VerifyReport) -> None:
        self.it, self.report = it, report

    def __iter__(self) -> Iterator[Fact]:
        return self

    def __next__(self) -> Fact:
        fact = next(self.it)
        self.report.rows += 1
        return fact


def verify_rows(
    table: pa.Table, decode: Callable[[bytes], Any] | None, anchored: bool = True
) -> VerifyReport:
    """Per-row checks over an arrow table of audit rows (any order), in memory."""
    report = VerifyReport()
    found = pa.Table.from_batches(
        [facts(b, decode, _rederive, 0) for b in table.combine_chunks().to_batches()] or [],
        schema=FACTS_SCHEMA,
    )
    found = found.append_column("n", pa.array(range(found.num_rows), pa.int64()))
    found = found.sort_by(
        [("topic", "ascending"), ("partition", "ascending"), ("offset", "ascending"), ("n", "ascending")]
    )
    _run_chains(iter_facts(found.drop_columns(["n"]).to_batches()), report, anchored, None, None)
    report.rows = table.num_rows
    return report


def _check_heads(
    report: VerifyReport,
    verifier: HeadVerifier,
    uuid: str,
    heads: dict[str, Head],
    origin: str,
    since_floor: dict[str, int] | None,
    current: bool,
    kid: str | None = None,
) -> bool:
    """Signed heads against the recomputed chains; True when all hold.

    ``kid``: the key the sink says it signed with (None: any kept key may have).
    """
    ok = True
    unknown = kid is not None and not verifier.knows(kid)
    for tp, head in sorted(heads.items()):
        # a snapshot carries the heads of partitions it did not write from its parent: after a
        # rotation those are signed by the previous key, so any kept key may have signed a head
        signed = (not unknown and verifier.check(uuid, tp, head, kid)) or verifier.check(uuid, tp, head)
        if not signed and unknown:
            report.problems.append(
                Problem(
                    "unknown_key",
                    origin,
                    f"heads signed by key {kid}, which is not in the keyring (a removed key, or someone else's)",
                )
            )
            return False
        if not signed:
            report.problems.append(Problem("signature", origin, f"bad signature on the head of {tp}"))
            ok = False
            continue
        if since_floor is not None and head.offset < since_floor.get(tp, 1 << 62):
            continue  # --since: before the first row checked (or no rows of it in range)
        got = report.chains.get(tp, {}).get(head.offset)
        if got is None:
            last = report.extents[tp][1] if tp in report.extents else -1
            kind = "rollback" if head.offset > last else "removed"
            report.problems.append(
                Problem(
                    kind,
                    f"{tp}@{head.offset}",
                    f"{origin} signed this head but the table has no such row (last row at offset {last})",
                )
            )
            ok = False
        elif got != head.hash:
            report.problems.append(
                Problem(
                    "changed",
                    f"{tp}@{head.offset}",
                    f"rows up to this offset were altered and re-chained: "
                    f"the recomputed chain does not match the head {origin} signed",
                )
            )
            ok = False
    if current:
        for tp in list(report.chains):
            top = heads.get(tp)
            if tp in report.beyond:
                count, first = report.beyond[tp]
            else:
                beyond = sorted(o for o in report.chains[tp] if top is None or o > top.offset)
                count, first = len(beyond), (beyond[0] if beyond else -1)
            if count:
                report.problems.append(
                    Problem("inserted", f"{tp}@{first}", f"{count} row(s) not covered by any signed head")
                )
                ok = False
    return ok


def verify_table(
    tbl: Any,
    verifier: HeadVerifier,
    decode: Callable[[bytes], Any] | None,
    witness: Path | None = None,
    since: datetime | None = None,
    published: list[bytes] | None = None,
) -> VerifyReport:
    """Everything: rows, every snapshot's signed heads, ancestry, retention, the witness file and topic.

    Streams the table (sinks/verify_scan.py): memory grows with topic-partitions and signed
    heads, not rows. ``witness`` None skips the witness checks (library use); ``published`` is
    what the witness topic holds (None: not compared).
    """
    from sinks import retention
    from sinks.table import state_of

    tbl.refresh()
    uuid = str(tbl.metadata.table_uuid)
    current = tbl.current_snapshot()
    snapshots = list(tbl.metadata.snapshots)
    lineage = _lineage(tbl, current.snapshot_id) if current is not None else set()
    states = {s.snapshot_id: state_of(s) for s in snapshots if s.snapshot_id in lineage}
    lines = read_lines(witness) if witness is not None else None
    wanted: dict[str, set[int]] = {}
    heads_seen: list[dict[str, Any]] = [
        {tp: h.offset for tp, h in st.heads.items()} for st in states.values() if st is not None
    ]
    for ln in lines or []:
        heads_json = ln.entry.get("heads") if ln.entry is not None else None
        if isinstance(heads_json, dict):
            heads_seen.append({tp: h.get("offset") for tp, h in heads_json.items() if isinstance(h, dict)})
    for heads in heads_seen:
        for tp, offset in heads.items():
            try:
                wanted.setdefault(str(tp), set()).add(int(offset))
            except (TypeError, ValueError):
                continue
    top_state = states.get(current.snapshot_id) if current is not None else None
    tops = {tp: h.offset for tp, h in top_state.heads.items()} if top_state is not None else {}

    unreadable: list[tuple[str, str]] = []
    first = first_offsets_since(tbl, since, []) if since else None
    report = VerifyReport()

    def fact_batches() -> Iterator[pa.RecordBatch]:
        position = 0  # each row's place in the scan: equal offsets keep their scan order
        for batch in scan_batches(tbl, decode is not None, since, unreadable, first):
            yield facts(batch, decode, _rederive, position)
            position += batch.num_rows

    _run_chains(iter_facts(sorted_facts(fact_batches())), report, since is None, wanted, tops)
    for path, error in unreadable:
        report.problems.insert(0, Problem("unreadable", path, error))
    # with --since, heads are checked from the first row in range on
    since_floor = {tp: ext[0] for tp, ext in report.extents.items()} if since else None
    report.snapshots = len(snapshots)
    if current is None:
        if report.rows:
            report.problems.append(Problem("unsigned", "table", "rows but no snapshot"))
        return report
    for snap in snapshots:
        origin = f"snapshot {snap.snapshot_id}"
        if snap.snapshot_id not in lineage:
            report.problems.append(
                Problem(
                    "rollback", origin, "not an ancestor of the current snapshot: the table was rolled back"
                )
            )
            continue
        state = states[snap.snapshot_id]
        if state is None:
            report.problems.append(
                Problem("unsigned", origin, f"written by something other than the sink ({_op(snap)})")
            )
            continue
        _check_heads(
            report,
            verifier,
            uuid,
            state.heads,
            origin,
            since_floor,
            snap.snapshot_id == current.snapshot_id,
            state.key_id,
        )
    kept = retention.check(tbl, verifier, uuid)
    report.problems.extend(Problem(kind, where, message) for kind, where, message in kept.problems)
    report.notes.extend(kept.notes)
    if witness is not None:
        _check_witness(
            report, tbl, verifier, uuid, witness, lines, since_floor, published, kept.covered_below
        )
    if verifier.used:
        report.notes.append(f"signatures checked with key(s) {', '.join(sorted(verifier.used))}")
    return report


def _heads_key(heads: dict[str, Any]) -> tuple[tuple[str, int, str], ...]:
    return tuple(sorted((tp, int(h["offset"]), str(h["hash"])) for tp, h in heads.items()))


def _check_witness(
    report: VerifyReport,
    tbl: Any,
    verifier: HeadVerifier,
    uuid: str,
    path: Path,
    lines: list[WitnessLine] | None,
    since_floor: dict[str, int] | None,
    published: list[bytes] | None,
    covered_below: int = 0,
) -> None:
    """The witness file is present, signed, chained, as long as the table's history, and the topic agrees."""
    from sinks.table import state_of

    snapshots = list(tbl.metadata.snapshots)
    signed = {s.snapshot_id: st for s in snapshots if (st := state_of(s)) is not None}
    if lines is None or not lines:
        if signed or published:
            report.problems.append(
                Problem(
                    "witness",
                    str(path),
                    f"missing: the sink signed {len(signed)} snapshot(s) but the witness file "
                    f"{'does not exist' if lines is None else 'is empty'}",
                )
            )
        lines = lines or []
    for where, message in check_lines(lines, verifier):
        report.problems.append(Problem("witness", where, message))
    entries = [ln.entry for ln in lines if ln.entry is not None and ln.entry.get("table") == uuid]
    report.witness_entries = len(entries)
    known = {s.snapshot_id for s in snapshots}
    witnessed: set[tuple[tuple[str, int, str], ...]] = set()
    for entry in entries:
        try:
            heads = {k: Head.from_json(v) for k, v in entry["heads"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # check_lines named it (a signed line always has heads)
        witnessed.add(_heads_key(entry["heads"]))
        origin = f"witness of snapshot {entry.get('snapshot_id')}"
        if entry.get("snapshot_id") not in known and not _retained(entry, covered_below):
            report.problems.append(
                Problem("expired", origin, "the sink wrote this snapshot but the table no longer has it")
            )
        kid = entry.get("key_id")
        _check_heads(
            report, verifier, uuid, heads, origin, since_floor, False, kid if isinstance(kid, str) else None
        )
    # shorter than the table's history: signed heads the witness never recorded ...
    for snap_id, st in signed.items():
        if st.heads and _heads_key({k: h.to_json() for k, h in st.heads.items()}) not in witnessed:
            report.problems.append(
                Problem(
                    "witness",
                    f"snapshot {snap_id}",
                    "the table holds signed heads the witness never recorded: "
                    "the witness is shorter than the table's history",
                )
            )
    # ... or sequence numbers after the witness's end that no snapshot holds any more
    last_seq = int(tbl.metadata.last_sequence_number or 0)
    witness_seq = max((int(e.get("sequence_number") or 0) for e in entries), default=0)
    present = {int(s.sequence_number or 0) for s in snapshots}
    gone = [n for n in range(witness_seq + 1, last_seq + 1) if n not in present]
    if gone:
        report.problems.append(
            Problem(
                "witness",
                "table",
                f"the table's history reaches sequence number {last_seq} but the witness ends at "
                f"{witness_seq} and {len(gone)} later snapshot(s) are gone: "
                "the table was rolled back and the witness truncated",
            )
        )
    if published is not None:
        _compare_topic(report, lines, published, uuid)


def _retained(entry: dict[str, Any], covered_below: int) -> bool:
    """A witnessed snapshot older than the retention anchor's oldest kept one (expired by it)."""
    seq = entry.get("sequence_number")
    return isinstance(seq, int) and seq < covered_below


def _compare_topic(report: VerifyReport, lines: list[WitnessLine], published: list[bytes], uuid: str) -> None:
    """Every line the topic holds for this table is in the file, byte for byte."""
    in_file = {ln.raw for ln in lines}
    ours = []
    for raw in published:
        try:
            entry = json.loads(raw)
        except ValueError:
            report.problems.append(Problem("witness", "witness topic", "a record is not a witness line"))
            continue
        if isinstance(entry, dict) and entry.get("table") == uuid:
            ours.append((raw, entry))
    report.witness_published = len(ours)
    missing = [e for raw, e in ours if raw not in in_file]
    if missing:
        first = missing[0]
        report.problems.append(
            Problem(
                "witness",
                f"witness topic entry {first.get('n')}",
                f"{len(missing)} line(s) on the witness topic are not in the witness file "
                f"(first: snapshot {first.get('snapshot_id')}): the file was truncated, replaced or changed",
            )
        )


def _lineage(tbl: Any, snapshot_id: int) -> set[int]:
    by_id = {s.snapshot_id: s for s in tbl.metadata.snapshots}
    out: set[int] = set()
    cur: int | None = snapshot_id
    while cur is not None and cur in by_id and cur not in out:
        out.add(cur)
        cur = by_id[cur].parent_snapshot_id
    return out


def _op(snap: Any) -> str:
    summary = snap.summary
    return str(summary.operation.value) if summary is not None else "unknown operation"


def first_lines(report: VerifyReport, limit: int = 20) -> Iterable[str]:
    for p in report.problems[:limit]:
        yield str(p)

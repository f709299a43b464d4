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
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from sinks.audit_schema import DERIVED_COLUMNS, derive, row_fields
from sinks.chain import GENESIS, Head, Verifier, chain_step
from sinks.witness import WitnessLine, check_lines, read_lines

__all__ = ["Problem", "VerifyReport", "verify_rows", "verify_table"]


@dataclass(frozen=True)
class Problem:
    # changed | removed | inserted | reordered | unsigned | signature | rollback | expired | witness
    # | unreadable
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
    # recomputed chain hash per "topic:partition" -> {offset: hex}
    chains: dict[str, dict[int, str]] = field(default_factory=dict)

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


def _verify_partition(
    tp: str,
    rows: list[dict[str, Any]],
    report: VerifyReport,
    decode: Callable[[bytes], Any] | None,
    anchored: bool,
) -> None:
    chain: dict[int, str] = {}
    report.chains[tp] = chain
    prev, prev_prev = GENESIS, GENESIS
    if not anchored and rows:  # --since: trust the first row's stored hash as the anchor
        prev = bytes.fromhex(rows[0]["chain_hash"])
        chain[rows[0]["offset"]] = rows[0]["chain_hash"]
        rows = rows[1:]
    last_offset: int | None = None
    i, n = 0, len(rows)
    while i < n:
        row = rows[i]
        where = _name(tp, row)
        if last_offset is not None and row["offset"] == last_offset:
            report.problems.append(Problem("inserted", where, "a second row claims this offset"))
            i += 1
            continue
        avro_hash = hashlib.sha256(row["avro"]).digest()
        stored = bytes.fromhex(row["chain_hash"])
        if avro_hash.hex() != row["avro_sha256"]:
            report.problems.append(Problem("changed", where, "the stored bytes do not match avro_sha256"))
        elif chain_step(prev, avro_hash) != stored:
            nxt = rows[i + 1] if i + 1 < n else None
            nxt_hash = hashlib.sha256(nxt["avro"]).digest() if nxt else b""
            if nxt is not None and chain_step(prev, nxt_hash).hex() == nxt["chain_hash"]:
                if chain_step(bytes.fromhex(nxt["chain_hash"]), avro_hash) == stored:
                    report.problems.append(
                        Problem(
                            "reordered",
                            where,
                            f"swapped with offset {nxt['offset']} (event {row['event_id']})",
                        )
                    )
                    chain[row["offset"]] = row["chain_hash"]
                    prev_prev, prev, last_offset = prev, stored, row["offset"]
                    i += 2
                    continue
                report.problems.append(
                    Problem("inserted", where, f"not part of the chain (event {row['event_id']})")
                )
                i += 1
                continue
            if last_offset is not None and chain_step(prev_prev, avro_hash) == stored:
                report.problems.append(
                    Problem(
                        "inserted",
                        f"{tp}@{last_offset}",
                        f"a forged row was inserted before offset {row['offset']}",
                    )
                )
            elif row["offset"] != (last_offset if last_offset is not None else -1) + 1:
                after = "the start" if last_offset is None else f"offset {last_offset}"
                report.problems.append(
                    Problem("removed", where, f"row(s) removed between {after} and offset {row['offset']}")
                )
            else:
                report.problems.append(
                    Problem("changed", where, f"chain hash does not match (event {row['event_id']})")
                )
        elif decode is not None and (column := _rederive(row, decode)) is not None:
            nxt = rows[i + 1] if i + 1 < n else None
            if nxt is not None and chain_step(prev, _sha(nxt["avro"])).hex() == nxt["chain_hash"]:
                # the next row chains from this one's predecessor: this one was slipped in
                report.problems.append(
                    Problem("inserted", where, f"not part of the chain (event {row['event_id']})")
                )
                i += 1
                continue
            report.problems.append(
                Problem("changed", where, f"column {column} differs from the stored event")
            )
        chain[row["offset"]] = chain_step(prev, avro_hash).hex()
        prev_prev, prev, last_offset = prev, stored, row["offset"]
        i += 1


def verify_rows(
    table: pa.Table, decode: Callable[[bytes], Any] | None, anchored: bool = True
) -> VerifyReport:
    """Per-row checks over an arrow table of audit rows (any order)."""
    report = VerifyReport(rows=table.num_rows)
    table = table.sort_by([("topic", "ascending"), ("partition", "ascending"), ("offset", "ascending")])
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        groups.setdefault(f"{row['topic']}:{row['partition']}", []).append(row)
    report.partitions = len(groups)
    for tp, rows in groups.items():
        _verify_partition(tp, rows, report, decode, anchored)
    return report


def _check_heads(
    report: VerifyReport,
    verifier: Verifier,
    uuid: str,
    heads: dict[str, Head],
    origin: str,
    since_floor: dict[str, int] | None,
    current: bool,
) -> bool:
    """Signed heads against the recomputed chains; True when all hold."""
    ok = True
    for tp, head in sorted(heads.items()):
        if not verifier.check(uuid, tp, head):
            report.problems.append(Problem("signature", origin, f"bad signature on the head of {tp}"))
            ok = False
            continue
        if since_floor is not None and head.offset < since_floor.get(tp, 1 << 62):
            continue  # --since: before the first row checked (or no rows of it in range)
        got = report.chains.get(tp, {}).get(head.offset)
        if got is None:
            last = max(report.chains.get(tp, {}) or [-1])
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
        for tp, chain in report.chains.items():
            top = heads.get(tp)
            beyond = sorted(o for o in chain if top is None or o > top.offset)
            if beyond:
                report.problems.append(
                    Problem(
                        "inserted",
                        f"{tp}@{beyond[0]}",
                        f"{len(beyond)} row(s) not covered by any signed head",
                    )
                )
                ok = False
    return ok


def verify_table(
    tbl: Any,
    verifier: Verifier,
    decode: Callable[[bytes], Any] | None,
    witness: Path | None = None,
    since: datetime | None = None,
    published: list[bytes] | None = None,
) -> VerifyReport:
    """Everything: rows, every snapshot's signed heads, ancestry, the witness file and topic.

    ``witness`` None skips the witness checks (library use); ``published`` is what the witness
    topic holds (None: not compared).
    """
    from sinks.table import state_of

    tbl.refresh()
    uuid = str(tbl.metadata.table_uuid)
    rows, unreadable = _read_rows(tbl, since)
    report = verify_rows(rows, decode, anchored=since is None)
    for path, error in unreadable:
        report.problems.insert(0, Problem("unreadable", path, error))
    # with --since, heads are checked from the first row in range on
    since_floor = {tp: min(c) for tp, c in report.chains.items() if c} if since else None
    current = tbl.current_snapshot()
    snapshots = list(tbl.metadata.snapshots)
    report.snapshots = len(snapshots)
    if current is None:
        if report.rows:
            report.problems.append(Problem("unsigned", "table", "rows but no snapshot"))
        return report
    lineage = _lineage(tbl, current.snapshot_id)
    for snap in snapshots:
        origin = f"snapshot {snap.snapshot_id}"
        if snap.snapshot_id not in lineage:
            report.problems.append(
                Problem(
                    "rollback", origin, "not an ancestor of the current snapshot: the table was rolled back"
                )
            )
            continue
        state = state_of(snap)
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
        )
    if witness is not None:
        _check_witness(report, tbl, verifier, uuid, witness, since_floor, published)
    return report


def _heads_key(heads: dict[str, Any]) -> tuple[tuple[str, int, str], ...]:
    return tuple(sorted((tp, int(h["offset"]), str(h["hash"])) for tp, h in heads.items()))


def _check_witness(
    report: VerifyReport,
    tbl: Any,
    verifier: Verifier,
    uuid: str,
    path: Path,
    since_floor: dict[str, int] | None,
    published: list[bytes] | None,
) -> None:
    """The witness file is present, signed, chained, as long as the table's history, and the topic agrees."""
    from sinks.table import state_of

    snapshots = list(tbl.metadata.snapshots)
    signed = {s.snapshot_id: st for s in snapshots if (st := state_of(s)) is not None}
    lines = read_lines(path)
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
        if entry.get("snapshot_id") not in known:
            report.problems.append(
                Problem("expired", origin, "the sink wrote this snapshot but the table no longer has it")
            )
        _check_heads(report, verifier, uuid, heads, origin, since_floor, False)
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


def _read_rows(tbl: Any, since: datetime | None) -> tuple[pa.Table, list[tuple[str, str]]]:
    """The rows to check, and (path, error) of every data file that cannot be read.

    A missing or damaged data file must be named, not crash verify: the rows of the other files
    are still checked (the lost rows then show as removed).
    """
    try:
        return (_rows_since(tbl, since) if since else tbl.scan().to_arrow()), []
    except Exception:  # noqa: S110 - retried file by file below, where each failure is named
        pass
    import pyarrow.parquet as pq

    from sinks.audit_schema import ARROW_SCHEMA

    pieces, unreadable = [], []
    for task in tbl.scan().plan_files():
        path = task.file.file_path
        try:
            with tbl.io.new_input(path).open() as fh:
                data = pq.read_table(fh)
            pieces.append(data.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA))
        except Exception as exc:
            unreadable.append((path, f"data file cannot be read ({type(exc).__name__}: {str(exc)[:200]})"))
    rows = pa.concat_tables(pieces) if pieces else ARROW_SCHEMA.empty_table()
    if since is not None:
        import pyarrow.compute as pc

        rows = rows.filter(
            pc.greater_equal(rows["occurred_at"], pa.scalar(since, rows.schema.field("occurred_at").type))
        )
    return rows, unreadable


def _rows_since(tbl: Any, since: datetime) -> pa.Table:
    """Each chain from its first row that occurred at or after ``since``, without gaps.

    Events of one partition are not ordered by ``occurred_at`` (producers' clocks differ), so a
    plain filter would cut holes into chains; the day before ``since`` is read to fill them.
    """
    import pyarrow.compute as pc

    rows = tbl.scan(row_filter=f"occurred_at >= '{(since - timedelta(days=1)).isoformat()}'").to_arrow()
    recent = rows.filter(
        pc.greater_equal(rows["occurred_at"], pa.scalar(since, rows.schema.field("occurred_at").type))
    )
    first: dict[tuple[str, int], int] = {}
    for t, p, o in zip(*(recent[c].to_pylist() for c in ("topic", "partition", "offset")), strict=True):
        first[(t, p)] = min(o, first.get((t, p), o))
    keep = [
        (t, p) in first and o >= first[(t, p)]
        for t, p, o in zip(*(rows[c].to_pylist() for c in ("topic", "partition", "offset")), strict=True)
    ]
    return rows.filter(pa.array(keep, type=pa.bool_()))


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

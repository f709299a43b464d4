"""Reading the audit table for ``verify`` in bounded memory.

Two steps, neither of which holds the table:

1. ``facts``: each arrow batch, in any order, becomes one small row per audit row: where it is
   (topic, partition, offset, its position in the scan), the SHA-256 of its Avro bytes, its
   stored chain hash, whether ``avro_sha256`` matched and which typed column (if any) differs
   from the re-decoded event. The Avro bytes and typed columns are dropped here.
2. ``sorted_facts``: the facts in (topic, partition, offset, position) order, sorted by DuckDB
   with a memory limit and spilling to a temporary directory, read back batch by batch, so the
   chains can be recomputed with one running state per topic-partition.

Data files are read one scan task at a time (pyiceberg's ``ArrowScan``, which applies delete
files), so an unreadable file is named and the others are still read.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import pyarrow as pa

from sinks.audit_schema import DERIVED_COLUMNS

__all__ = [
    "DUCKDB_MEMORY_LIMIT",
    "FACTS_SCHEMA",
    "Fact",
    "facts",
    "iter_facts",
    "scan_batches",
    "sorted_facts",
]

#: What DuckDB may hold while sorting the facts; beyond it, it spills to disk.
DUCKDB_MEMORY_LIMIT = "128MB"
_BATCH_ROWS = 8192

FACTS_SCHEMA = pa.schema(
    [
        pa.field("topic", pa.large_string()),
        pa.field("partition", pa.int32()),
        pa.field("offset", pa.int64()),
        pa.field("seq", pa.int64()),
        pa.field("event_id", pa.large_string()),
        pa.field("avro_hash", pa.binary()),
        pa.field("stored", pa.binary()),
        pa.field("stored_hex", pa.large_string()),
        pa.field("sha_ok", pa.bool_()),
        pa.field("column", pa.large_string()),
    ]
)


class Fact(NamedTuple):
    """What the chain check needs of one row."""

    tp: str
    offset: int
    event_id: str
    avro_hash: bytes
    stored: bytes
    stored_hex: str
    sha_ok: bool
    column: str | None  # the first typed column that differs from the event in avro, or None


def _stored(hex_text: str) -> bytes:
    try:
        return bytes.fromhex(hex_text)
    except (TypeError, ValueError):
        return b""  # not hex: matches no chain step, so the row is reported, not a crash


def facts(
    batch: pa.RecordBatch | pa.Table,
    decode: Callable[[bytes], Any] | None,
    rederive: Callable[[dict[str, Any], Callable[[bytes], Any]], str | None],
    seq0: int,
) -> pa.RecordBatch:
    """The facts of one batch of audit rows; ``seq0`` is the scan position of its first row."""
    rows = batch.to_pylist()
    out: dict[str, list[Any]] = {name: [] for name in FACTS_SCHEMA.names}
    for n, row in enumerate(rows):
        avro_hash = hashlib.sha256(row["avro"]).digest()
        sha_ok = avro_hash.hex() == row["avro_sha256"]
        out["topic"].append(row["topic"])
        out["partition"].append(row["partition"])
        out["offset"].append(row["offset"])
        out["seq"].append(seq0 + n)
        out["event_id"].append(row["event_id"])
        out["avro_hash"].append(avro_hash)
        out["stored"].append(_stored(row["chain_hash"]))
        out["stored_hex"].append(row["chain_hash"])
        out["sha_ok"].append(sha_ok)
        out["column"].append(rederive(row, decode) if decode is not None and sha_ok else None)
    return pa.RecordBatch.from_pydict(out, schema=FACTS_SCHEMA)


def iter_facts(batches: Iterable[pa.RecordBatch]) -> Iterator[Fact]:
    """Facts of sorted fact batches, one at a time."""
    for batch in batches:
        cols = [batch.column(name).to_pylist() for name in FACTS_SCHEMA.names]
        for topic, partition, offset, _, event_id, avro_hash, stored, stored_hex, sha_ok, column in zip(
            *cols, strict=True
        ):
            yield Fact(
                f"{topic}:{partition}", offset, event_id, avro_hash, stored, stored_hex, sha_ok, column
            )


def sorted_facts(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``batches`` of facts sorted by (topic, partition, offset, seq), in bounded memory.

    DuckDB pulls the batches as it sorts (so they are produced lazily), keeps at most
    ``DUCKDB_MEMORY_LIMIT`` and spills the rest to a temporary directory removed afterwards.
    """
    import duckdb

    with tempfile.TemporaryDirectory(prefix="querytrail-verify-") as spill:
        con = duckdb.connect(
            config={
                "memory_limit": DUCKDB_MEMORY_LIMIT,
                "threads": 1,
                "temp_directory": spill,
                "preserve_insertion_order": False,
            }
        )
        try:
            facts_stream = pa.RecordBatchReader.from_batches(FACTS_SCHEMA, iter(batches))
            con.register("facts_stream", facts_stream)
            rel = con.sql('SELECT * FROM facts_stream ORDER BY topic, "partition", "offset", seq')
            # duckdb 2 names it to_arrow_reader; 1.x (pyproject allows >= 1.2) fetch_arrow_reader
            reader = getattr(rel, "to_arrow_reader", None) or rel.fetch_arrow_reader
            result = reader(_BATCH_ROWS)
            for batch in result:
                yield batch.cast(FACTS_SCHEMA)
        finally:
            con.close()


def _projection(decode: bool, since: bool) -> tuple[str, ...]:
    base = ("topic", "partition", "offset", "event_id", "avro", "avro_sha256", "chain_hash", "event_type")
    extra = tuple(c for c in DERIVED_COLUMNS if c not in base) if decode else ()
    return base + extra + (("occurred_at",) if since and "occurred_at" not in extra else ())


def scan_batches(
    tbl: Any,
    decode: bool,
    since: datetime | None,
    unreadable: list[tuple[str, str]],
    first: dict[tuple[str, int], int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """The table's rows batch by batch, data file by data file, with the columns verify needs.

    A data file that cannot be read is appended to ``unreadable`` as (path, error) and skipped.
    With ``since``, rows from the day before it are read and, per topic-partition, those from
    ``first`` (the lowest offset at or after ``since``) on are kept, so chains have no holes.
    """
    from pyiceberg.io.pyarrow import ArrowScan

    row_filter = f"occurred_at >= '{(since - timedelta(days=1)).isoformat()}'" if since else "True"
    scan = tbl.scan(row_filter=row_filter, selected_fields=_projection(decode, since is not None))
    projected = scan.projection()
    for task in scan.plan_files():
        path = task.file.file_path
        try:
            for batch in ArrowScan(tbl.metadata, tbl.io, projected, scan.row_filter).to_record_batches(
                [task]
            ):
                if first is not None:
                    batch = _from_first(batch, first)
                if batch.num_rows:
                    yield from _split(batch)
        except Exception as exc:
            unreadable.append((path, f"data file cannot be read ({type(exc).__name__}: {str(exc)[:200]})"))


def _split(batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
    for start in range(0, batch.num_rows, _BATCH_ROWS):
        yield batch.slice(start, _BATCH_ROWS)


def _from_first(batch: pa.RecordBatch, first: dict[tuple[str, int], int]) -> pa.RecordBatch:
    keep = [
        (t, p) in first and o >= first[(t, p)]
        for t, p, o in zip(
            *(batch.column(c).to_pylist() for c in ("topic", "partition", "offset")), strict=True
        )
    ]
    return batch.filter(pa.array(keep, type=pa.bool_()))


def first_offsets_since(
    tbl: Any, since: datetime, unreadable: list[tuple[str, str]]
) -> dict[tuple[str, int], int]:
    """Per topic-partition, the lowest offset of a row that occurred at or after ``since``."""
    import pyarrow.compute as pc

    first: dict[tuple[str, int], int] = {}
    for batch in scan_batches(tbl, False, since, unreadable):
        recent = batch.filter(
            pc.greater_equal(batch["occurred_at"], pa.scalar(since, batch.schema.field("occurred_at").type))
        )
        for t, p, o in zip(
            *(recent.column(c).to_pylist() for c in ("topic", "partition", "offset")), strict=True
        ):
            first[(t, p)] = min(o, first.get((t, p), o))
    return first

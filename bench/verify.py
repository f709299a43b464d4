"""Benchmark: ``verify`` over a table of millions of rows in bounded memory.

Builds an audit table fast (Arrow batches written straight into Iceberg with valid chain
hashes, signed heads in every snapshot summary and a witness file; the rows repeat a few
thousand real encoded events, each at its own offset), then runs verify in a subprocess and
prints rows, the table's size on disk (data and metadata), wall time, rows/s and the child's
peak RSS, next to the old whole-table path (``verify_rows`` over ``scan().to_arrow()``) on a
smaller table. Run from the repo root:

    python bench/verify.py                      # 2,000,000 rows; old path on 200,000
    python bench/verify.py --rows 300000 --small 50000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: The bound docs/audit.md states for verify's peak RSS, whatever the table's size.
BOUND_MIB = 600


def _settings(home: Path) -> Any:
    from querytrail.settings import Settings

    return Settings(home=home)


def build(home: Path, rows: int, partitions: int, per_snapshot: int) -> None:
    """A table of ``rows`` rows over ``partitions`` partitions, one snapshot per ``per_snapshot``."""
    import hashlib

    import pyarrow as pa
    from sink import CODEC, _events  # bench/sink.py

    from sinks.audit_schema import ARROW_SCHEMA
    from sinks.chain import GENESIS, chain_step, ensure_keypair, load_signer
    from sinks.consumer import witness_path
    from sinks.table import SinkState, load_or_create_table
    from sinks.witness import WitnessWriter
    from sinks.writer import Record, convert

    s = _settings(home)
    private, public = s.key_path("chain_signing_key"), s.key_path("chain_verify_key")
    ensure_keypair(private, public)
    signer = load_signer(private)
    tbl = load_or_create_table(s)
    uuid = str(tbl.metadata.table_uuid)
    witness = WitnessWriter(witness_path(s), signer)
    values = [CODEC.encode(e) for e in _events(4000)]
    template = convert([Record("qt.log", 0, i, None, v, 0) for i, v in enumerate(values)], CODEC.decode)
    shas = [hashlib.sha256(v).digest() for v in values]
    heads: dict[str, Any] = {}
    prev = {p: GENESIS for p in range(partitions)}
    next_offset = dict.fromkeys(range(partitions), 0)
    done = 0
    while done < rows:
        n = min(per_snapshot, rows - done)
        idx = [(done + i) % len(values) for i in range(n)]
        parts = [(done + i) % partitions for i in range(n)]
        offsets, chains, sha_hex = [], [], []
        for i, p in zip(idx, parts, strict=True):
            offsets.append(next_offset[p])
            next_offset[p] += 1
            prev[p] = chain_step(prev[p], shas[i])
            chains.append(prev[p].hex())
            sha_hex.append(shas[i].hex())
        body = template.take(pa.array(idx))
        body = body.set_column(
            body.schema.get_field_index("partition"), "partition", pa.array(parts, pa.int32())
        )
        body = body.set_column(
            body.schema.get_field_index("offset"), ARROW_SCHEMA.field("offset"), pa.array(offsets, pa.int64())
        )
        now = pa.array([time.time_ns() // 1000] * n, pa.int64()).cast(ARROW_SCHEMA.field("ingested_at").type)
        data = (
            body.append_column(ARROW_SCHEMA.field("avro_sha256"), pa.array(sha_hex, pa.large_string()))
            .append_column(ARROW_SCHEMA.field("chain_hash"), pa.array(chains, pa.large_string()))
            .append_column(ARROW_SCHEMA.field("ingested_at"), now)
            .select(ARROW_SCHEMA.names)
            .cast(ARROW_SCHEMA)
        )
        for p in range(partitions):
            if next_offset[p]:
                key = f"qt.log:{p}"
                heads[key] = signer.sign_head(uuid, key, next_offset[p] - 1, prev[p])
        state = SinkState({f"qt.log:{p}": o for p, o in next_offset.items()}, dict(heads), signer.key_id)
        tbl.append(data, snapshot_properties=state.to_summary())
        snap = tbl.current_snapshot()
        assert snap is not None
        witness.record(uuid, snap.snapshot_id, snap.sequence_number, state.heads)
        done += n


def _size(home: Path) -> tuple[int, int]:
    data = meta = 0
    for f in (home / "iceberg" / "warehouse").rglob("*"):
        if f.is_file():
            if "/data/" in str(f):
                data += f.stat().st_size
            else:
                meta += f.stat().st_size
    return data, meta


def child(home: Path, mode: str) -> None:
    """Run one verify and print its figures as JSON (peak RSS from the kernel's VmHWM)."""
    from sink import CODEC

    from sinks.chain import load_verifier
    from sinks.consumer import witness_path
    from sinks.table import open_table
    from sinks.verify import verify_rows, verify_table

    s = _settings(home)
    started = time.perf_counter()
    if mode == "streaming":
        verifier = load_verifier(s.key_path("chain_verify_key"))
        report = verify_table(open_table(s), verifier, CODEC.decode, witness_path(s))
    else:  # the old path: the whole table in memory, sorted and turned into Python rows
        report = verify_rows(open_table(s).scan().to_arrow(), CODEC.decode)
    seconds = time.perf_counter() - started
    hwm = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM")
    )
    print(
        json.dumps(
            {
                "ok": report.ok,
                "rows": report.rows,
                "problems": len(report.problems),
                "seconds": seconds,
                "vmhwm_kib": hwm,
            }
        )
    )


def _run(home: Path, mode: str) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--home", str(home)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["ru_maxrss_note"] = "max over children so far" if before else "this child"
    return result


def _line(label: str, rows: int, home: Path, r: dict[str, Any]) -> str:
    data, meta = _size(home)
    return (
        f"{label:<28} rows={r['rows']:>9,} ok={r['ok']} on disk: data {data / 2**20:7.1f} MiB + metadata "
        f"{meta / 2**20:5.1f} MiB  wall {r['seconds']:6.1f} s  {r['rows'] / r['seconds']:8,.0f} rows/s  "
        f"peak RSS {r['vmhwm_kib'] / 1024:7.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--small", type=int, default=200_000, help="rows of the table both paths verify")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--snapshots", type=int, default=100)
    parser.add_argument("--child", choices=("streaming", "in-memory"))
    parser.add_argument("--home", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.home, args.child)
        return
    with tempfile.TemporaryDirectory(prefix="qt-bench-verify-") as tmp:
        small, big = Path(tmp) / "small", Path(tmp) / "big"
        t0 = time.perf_counter()
        build(small, args.small, args.partitions, max(1, args.small // args.snapshots))
        build(big, args.rows, args.partitions, max(1, args.rows // args.snapshots))
        print(f"built {args.small:,} + {args.rows:,} rows in {time.perf_counter() - t0:.0f} s", flush=True)
        results = [
            ("old whole-table, small", args.small, small, _run(small, "in-memory")),
            ("streaming, small", args.small, small, _run(small, "streaming")),
            ("streaming, big", args.rows, big, _run(big, "streaming")),
        ]
        for label, rows, home, r in results:
            print(_line(label, rows, home, r))
        peak = max(r["vmhwm_kib"] for label, _, _, r in results if label.startswith("streaming")) / 1024
        held = all(r["ok"] for *_, r in results) and peak < BOUND_MIB
        print(
            f"streaming verify peak RSS {peak:.1f} MiB; bound {BOUND_MIB} MiB: {'held' if held else 'NOT held'}"
        )


if __name__ == "__main__":
    main()

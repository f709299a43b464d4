"""Benchmark: what one witness line costs the sink per commit, and verify per line.

A line holds the signed heads of every topic-partition (``--partitions``, 24 = 8 topics x 3);
writing it signs it, chains it, appends it and fsyncs the file (no Kafka here: the topic adds
one acknowledged produce per commit). Checking it parses, re-serialises and verifies it.
Run from the repo root:

    python bench/witness.py --lines 300 --partitions 24
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sinks.chain import ensure_keypair, load_signer, load_verifier
from sinks.witness import WitnessWriter, check_lines, read_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--partitions", type=int, default=24)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="qt-witness-bench-"))
    ensure_keypair(home / "chain.pem", home / "chain.pub.pem")
    signer, verifier = load_signer(home / "chain.pem"), load_verifier(home / "chain.pub.pem")
    heads = {
        f"querytrail.t{p // 3}:{p % 3}": signer.sign_head("table", f"t:{p}", 1000, bytes(32))
        for p in range(args.partitions)
    }
    writer = WitnessWriter(home / "witness.jsonl", signer)
    took = []
    for i in range(args.lines):
        started = time.perf_counter()
        writer.record("table", i, i + 1, heads)
        took.append(time.perf_counter() - started)
    lines = read_lines(home / "witness.jsonl") or []
    started = time.perf_counter()
    problems = check_lines(lines, verifier)
    check = (time.perf_counter() - started) / max(1, len(lines))
    assert not problems, problems
    print(
        f"witness line ({args.partitions} heads, {len(lines[0].raw)} bytes): write p50 "
        f"{statistics.median(took) * 1e3:.2f} ms (sign, chain, append, fsync), "
        f"check {check * 1e6:.0f} us per line"
    )


if __name__ == "__main__":
    main()

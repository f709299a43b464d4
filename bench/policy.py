"""Decisions per second over the SQL corpus: cold (no decision cache) and cached, next to bare
sqlglot parsing of the same statements in the same run, pinned to one core.

    /work/venv/bin/python bench/policy.py [--rounds 5] [--cpu 0]

Targets (issue 4): cold >= 500 decisions/s, cached >= 20,000 decisions/s on one core.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlglot  # noqa: E402
import sqlglot.parser  # noqa: E402

from processors.decision.analysis.fingerprint import fingerprint  # noqa: E402
from processors.decision.policy import IdentityClaims, load_policy  # noqa: E402
from processors.decision.statement import DecisionCache, evaluate  # noqa: E402
from processors.decision.warehouse_catalog import Catalog  # noqa: E402

CORPUS = ROOT / "tests" / "processors" / "fixtures" / "corpus"
IDENTITY = IdentityClaims.from_claims(
    {
        "sub": "ci-bot",
        "iss": "https://token.actions.githubusercontent.com",
        "groups": ["ci"],
        "repository": "acme/etl",
    }
)
_HEADER = re.compile(r"^-- (as|at|database|schema|decision|findings|masked|execute):(.*)$")
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def corpus(folder: Path = CORPUS) -> list[tuple[str, str | None, str | None]]:
    """(sql, database, schema) of every corpus case."""
    out: list[tuple[str, str | None, str | None]] = []
    for path in sorted(folder.glob("*.sql")):
        # a case starts at a line "-- case: NAME"; the "-- key: value" lines after it are headers
        for chunk in re.split(r"(?m)^-- case:", path.read_text(encoding="utf-8"))[1:]:
            lines = chunk.splitlines()[1:]
            headers: dict[str, str] = {}
            while lines and (m := _HEADER.match(lines[0])):
                headers[m.group(1)] = m.group(2).strip()
                lines.pop(0)
            out.append(("\n".join(lines).strip("\n"), headers.get("database"), headers.get("schema")))
    return out


def timed(fn: Callable[[], int]) -> float:
    """Operations per second of one call of ``fn``."""
    gc.collect()
    start = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the first allowed)")
    parser.add_argument("--cached-repeats", type=int, default=50)
    parser.add_argument(
        "--corpus",
        type=Path,
        default=CORPUS,
        help="folder of corpus .sql files (to compare revisions on one corpus)",
    )
    args = parser.parse_args()
    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # "falling back to Command" notices
    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    policy = load_policy(ROOT / "infra" / "policies" / "example.yaml")
    catalog = Catalog.load(ROOT / "infra" / "catalog" / "demo.yaml")
    cases = corpus(args.corpus)

    def parse_only() -> int:
        for sql, _, _ in cases:
            try:
                sqlglot.parse(sql, read="snowflake")
            except sqlglot.errors.SqlglotError:
                pass
        return len(cases)

    def cold() -> int:
        # no decision cache, and the fingerprint memo emptied so nothing is reused across rounds
        # (the per-policy classifier memo stays: it is built once per policy and catalog)
        fingerprint.cache_clear()
        for sql, db, sch in cases:
            evaluate(sql, IDENTITY, catalog, policy, NOW, database=db, schema=sch)
        return len(cases)

    cache = DecisionCache(maxsize=len(cases) * 2)
    for sql, db, sch in cases:
        cache.evaluate(sql, IDENTITY, catalog, policy, NOW, database=db, schema=sch)

    def cached() -> int:
        ev = cache.evaluate
        for _ in range(args.cached_repeats):
            for sql, db, sch in cases:
                ev(sql, IDENTITY, catalog, policy, NOW, database=db, schema=sch)
        return len(cases) * args.cached_repeats

    # interleaved rounds, so the three figures see the same machine load; best round of each
    rounds = [(timed(parse_only), timed(cold), timed(cached)) for _ in range(args.rounds)]
    parse_rate = max(r[0] for r in rounds)
    cold_rate = max(r[1] for r in rounds)
    cached_rate = max(r[2] for r in rounds)
    ratio = statistics.median(r[1] / r[0] for r in rounds)
    chars = statistics.mean(len(s) for s, _, _ in cases)
    compiled = "compiled (sqlglotc)" if sqlglot.parser.__file__.endswith(".so") else "pure Python"
    print(
        f"corpus: {len(cases)} statements (mean {chars:.0f} chars), pinned to cpu {cpu}, best of {args.rounds}"
    )
    print(f"sqlglot {sqlglot.__version__}, parser {compiled}")
    print(f"bare sqlglot parse : {parse_rate:10,.0f} statements/s")
    print(f"cold decisions     : {cold_rate:10,.0f} decisions/s   (target >= 500)")
    print(f"cached decisions   : {cached_rate:10,.0f} decisions/s   (target >= 20,000)")
    print(f"cold decision cost : {1 / ratio:10.1f} x a bare parse (median over rounds; load-independent)")
    # one long statement: 5,000 AND (and OR) terms, decided cold; wall clock and this thread's CPU
    long_ok = True
    for op in ("AND", "OR"):
        terms = f" {op} ".join(f"id = {i}" for i in range(5000))
        sql = f"SELECT id, city FROM analytics.public.customers WHERE {terms}"
        best_wall = best_cpu = float("inf")
        for _ in range(args.rounds):
            fingerprint.cache_clear()
            wall, cpu0 = time.perf_counter(), time.thread_time()
            evaluate(sql, IDENTITY, catalog, policy, NOW)
            best_cpu = min(best_cpu, time.thread_time() - cpu0)
            best_wall = min(best_wall, time.perf_counter() - wall)
        long_ok = long_ok and best_wall < 1.0
        print(f"5,000 {op} terms    : {best_wall:10.3f} s wall, {best_cpu:.3f} s cpu   (target < 1 s)")
    ok = cold_rate >= 500 and cached_rate >= 20_000 and long_ok
    print("targets met" if ok else "TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Table-driven analyser tests: tests/processors/fixtures/analysis.sql (sqlglot fixture style).

Each case is a block of non-blank lines: the SQL, then ``-- key: value`` expectation lines.
Keys (``kind`` and ``findings`` are required; the others are checked when present):

- ``kind``: statement kind; ``findings``: the exact set of finding codes (``-`` for none)
- ``read`` / ``written``: tables; a short ``T`` means ``ANALYTICS.PUBLIC.T``, ``S.T`` means ``ANALYTICS.S.T``
- ``outputs``: ``NAME <- SRC, SRC | NAME2 <- -`` (columns: ``T.C`` means ``ANALYTICS.PUBLIC.T.C``)
- ``predicates``: columns used in predicates; ``masks``: ``OUT=mask, ...`` or ``error``
- ``bytes``: estimated bytes (``none`` for unknown); ``session``: ``DB.SCHEMA`` (default
  ``ANALYTICS.PUBLIC``) or ``none``
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
import sqlglot

from processors.decision.analysis import analyse
from processors.decision.masking import MaskingError, plan_masking
from tests.processors.analysis_support import (
    CATALOG,
    FIXTURES,
    MASKS,
    GlobClassifier,
    assert_reads_masked,
    mask_kind_of,
    outermost_projections,
)

KEYS = ("kind", "findings", "read", "written", "outputs", "predicates", "masks", "bytes", "session")
_EXPECT = re.compile(r"^-- (" + "|".join(KEYS) + r"): ?(.*)$")


@dataclass
class Case:
    line: int
    sql: str
    expect: dict[str, str] = field(default_factory=dict)


def load_cases() -> list[Case]:
    cases: list[Case] = []
    text = (FIXTURES / "analysis.sql").read_text(encoding="utf-8")
    block: list[tuple[int, str]] = []
    for no, line in enumerate([*text.splitlines(), ""], start=1):
        if line.strip():
            block.append((no, line))
            continue
        if not block:
            continue
        lines = [raw for _, raw in block]
        split = len(lines)
        while split > 0 and _EXPECT.match(lines[split - 1]):
            split -= 1
        sql_lines = lines[:split]
        expect = {m.group(1): m.group(2).strip() for m in map(_EXPECT.match, lines[split:]) if m}
        if not expect and all(x.startswith("--") for x in sql_lines):
            block = []
            continue  # a comment block documenting the file
        if "kind" not in expect or "findings" not in expect or not sql_lines:
            raise ValueError(f"line {block[0][0]}: SQL, then kind and findings are required")
        cases.append(Case(block[0][0], "\n".join(sql_lines), expect))
        block = []
    return cases


_NAME = re.compile(r"[\w$?]+(\.[\w$?]+)*")


def _pad(name: str, depth: int) -> str:
    """``T`` -> ``ANALYTICS.PUBLIC.T`` (depth 3); stages and IDENTIFIER(...) stay verbatim."""
    parts = name.split(".")
    if not _NAME.fullmatch(name) or len(parts) >= depth:
        return name
    return ".".join(["ANALYTICS", "PUBLIC"][: depth - len(parts)] + parts)


def _tables(value: str) -> set[str]:
    return {_pad(name, 3) for name in _split(value, ",")}


def _column(name: str) -> str:
    return _pad(name, 4)


def _split(value: str, sep: str) -> list[str]:
    value = value.strip()
    return [] if value in ("-", "") else [v.strip() for v in value.split(sep) if v.strip()]


CASES = load_cases()


def test_fixture_file_has_enough_cases() -> None:
    assert len(CASES) >= 80


@pytest.mark.parametrize("case", CASES, ids=[f"line{c.line}" for c in CASES])
def test_analysis_fixture(case: Case) -> None:
    session = case.expect.get("session", "ANALYTICS.PUBLIC")
    db, schema = (None, None) if session == "none" else session.split(".")
    classifier = GlobClassifier()
    a = analyse(case.sql, CATALOG, classifier, database=db, schema=schema)
    codes = {f.code for f in a.findings}
    assert a.statement == case.expect["kind"], a
    assert codes == set(_split(case.expect["findings"], ",")), a.findings
    if "read" in case.expect:
        assert set(a.tables_read) == _tables(case.expect["read"])
    if "written" in case.expect:
        assert set(a.tables_written) == _tables(case.expect["written"])
    if "outputs" in case.expect:
        want = []
        for item in _split(case.expect["outputs"], "|"):
            name, _, srcs = item.partition("<-")
            want.append((name.strip(), tuple(sorted(_column(s) for s in _split(srcs, ",")))))
        assert [(o.name, o.sources) for o in a.output_columns] == want
    if "predicates" in case.expect:
        assert set(a.predicate_columns) == {_column(c) for c in _split(case.expect["predicates"], ",")}
    if "bytes" in case.expect:
        want_bytes = None if case.expect["bytes"] == "none" else int(case.expect["bytes"])
        assert a.estimated_bytes == want_bytes
    if "masks" in case.expect:
        if case.expect["masks"] == "error":
            with pytest.raises(MaskingError):
                plan_masking(a, MASKS, classifier)
            return
        rewritten, plan = plan_masking(a, MASKS, classifier)
        got = {f"{p.output}={p.mask}" for p in plan}
        assert got == set(_split(case.expect["masks"], ",")), rewritten
        if plan:
            # the rewritten SQL analyses to the same output names, every classified table is read
            # through its masking derived table, and a partial mask computed into something
            # else is redacted at the outermost SELECT
            again = analyse(rewritten, CATALOG, classifier, database=db, schema=schema)
            assert [o.name for o in again.output_columns] == [o.name for o in a.output_columns]
            assert_reads_masked(rewritten, CATALOG, classifier, MASKS)
            wrapped = {
                p.output for p in plan if p.mask == "redact" and MASKS.get(p.classification) != "redact"
            }
            for branch in outermost_projections(sqlglot.parse_one(rewritten, dialect="snowflake"))[:1]:
                for out, proj in zip(a.output_columns, branch, strict=True):
                    if out.name in wrapped:
                        assert mask_kind_of(proj) == "redact", (out.name, rewritten)

"""Property: no output column derived from a classified column escapes masking.

Hypothesis builds SELECTs over the demo catalog (infra/catalog/demo.yaml) the way an AI agent
might launder a column: transformations, aliases, CTEs, derived tables, ``SELECT *`` with
EXCLUDE, positional ``$N`` references, UNION [ALL]/INTERSECT/EXCEPT, mixed-case and quoted
identifiers. The generator itself tracks
which base columns flow into each output (an oracle independent of the analyser); the test
then checks that every output whose oracle sources include a classified column is wrapped in
a mask in every branch of the rewritten statement, and that the analyser saw those sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.seed import CATALOG_PATH
from processors.decision.analysis import analyse
from processors.decision.masking import plan_masking
from processors.decision.warehouse_catalog import Catalog
from tests.processors.analysis_support import (
    MASKS,
    GlobClassifier,
    assert_reads_masked,
    mask_kind_of,
    outermost_projections,
)

pytestmark = pytest.mark.slow  # seconds of work: kept out of `make unit`, run by `make test`

DEMO = Catalog.load(CATALOG_PATH)
CLASSIFIER = GlobClassifier(DEMO)
BASES = {
    name: [c.name for c in DEMO.tables[name].columns]
    for name in ("ANALYTICS.PUBLIC.CUSTOMERS", "SECURITY.ADMIN.USERS")
}
TRANSFORMS = (
    "UPPER({})",
    "LOWER({})",
    "TRIM({})",
    "{} || ''",
    "'x@' || {}",
    "SPLIT_PART({}, '@', 1)",
    "COALESCE({}, 'n/a')",
    "CAST({} AS VARCHAR)",
    "{}::string",
    "REVERSE({})",
    "LEFT({}, 3)",
    "CASE WHEN {} IS NULL THEN 'none' ELSE 'some' END",
    "MAX({}) OVER ()",
    "CONCAT('<', {}, '>')",
    "OBJECT_CONSTRUCT('k', {})",
    "TRY_CAST({} AS VARCHAR)",
)


@dataclass(frozen=True)
class Col:
    name: str  # as referenced by the next layer (already a valid identifier)
    sources: frozenset[str]  # base fq columns whose values flow in


@st.composite
def spelled(draw: st.DrawFn, name: str) -> str:
    """An unquoted identifier in random case, or the exact upper-case name quoted."""
    style = draw(st.sampled_from(["upper", "lower", "mixed", "quoted"]))
    if style == "quoted":
        return f'"{name}"'
    if style == "lower":
        return name.lower()
    if style == "mixed":
        return name.capitalize()
    return name


@st.composite
def projection(draw: st.DrawFn, cols: list[Col], qualifier: str, alias: str) -> tuple[str, Col]:
    index = draw(st.integers(min_value=0, max_value=len(cols) - 1))
    col = cols[index]
    style = draw(st.sampled_from(["qualified", "bare", "positional"]))
    if style == "positional":
        expr = f"${index + 1}"  # Snowflake's positional column reference
    elif style == "qualified":
        expr = f"{qualifier}.{draw(spelled(col.name))}"
    else:
        expr = draw(spelled(col.name))
    for template in draw(st.lists(st.sampled_from(TRANSFORMS), max_size=2)):
        expr = template.format(expr)
    return f"{expr} AS {alias}", Col(alias, col.sources)


@st.composite
def select(draw: st.DrawFn, depth: int, counter: list[int]) -> tuple[str, list[Col]]:
    """A SELECT text and its output columns (with oracle sources)."""
    if depth == 0:
        table = draw(st.sampled_from(sorted(BASES)))
        cols = [Col(c, frozenset({f"{table}.{c}"})) for c in BASES[table]]
        db, sch, tbl = table.split(".")
        source = f"{draw(spelled(db))}.{draw(spelled(sch))}.{draw(spelled(tbl))}"
    else:
        inner_sql, cols = draw(select(depth - 1, counter))
        counter[0] += 1
        source = f"({inner_sql})"
        if draw(st.booleans()):
            cte = f"T{counter[0]}"
            return draw(_over(f"WITH {cte} AS {source} ", cte, cte, cols, counter))
    counter[0] += 1
    qualifier = f"Q{counter[0]}"
    return draw(_over("", f"{source} AS {qualifier}", qualifier, cols, counter))


@st.composite
def _over(
    draw: st.DrawFn, prefix: str, from_: str, qualifier: str, cols: list[Col], counter: list[int]
) -> tuple[str, list[Col]]:
    kind = draw(st.sampled_from(["project", "project", "star", "exclude"]))
    if kind == "star":
        return f"{prefix}SELECT * FROM {from_}", cols
    if kind == "exclude" and len(cols) > 1:
        drop = draw(st.sampled_from(cols))
        kept = [c for c in cols if c is not drop]
        return f"{prefix}SELECT * EXCLUDE ({drop.name}) FROM {from_}", kept
    outs: list[Col] = []
    parts: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        counter[0] += 1
        sql, col = draw(projection(cols, qualifier, f"C{counter[0]}"))
        parts.append(sql)
        outs.append(col)
    return f"{prefix}SELECT {', '.join(parts)} FROM {from_}", outs


@st.composite
def statements(draw: st.DrawFn) -> tuple[str, list[frozenset[str]]]:
    counter = [0]
    sql, cols = draw(select(draw(st.integers(min_value=0, max_value=3)), counter))
    oracle = [c.sources for c in cols]
    if draw(st.booleans()):
        other, other_cols = draw(select(draw(st.integers(min_value=0, max_value=2)), counter))
        n = min(len(cols), len(other_cols))
        if n and len(cols) == len(other_cols):
            op = draw(st.sampled_from(["UNION ALL", "UNION", "INTERSECT", "EXCEPT"]))
            sql = f"{sql} {op} {other}"
            oracle = [a | b.sources for a, b in zip(oracle, other_cols, strict=True)]
    return sql, oracle


def _classified(sources: frozenset[str]) -> bool:
    return any(CLASSIFIER.column_classification(s) for s in sources)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statements())
def test_no_classified_column_escapes_masking(case: tuple[str, list[frozenset[str]]]) -> None:
    sql, oracle = case
    a = analyse(sql, DEMO, CLASSIFIER, database="ANALYTICS", schema="PUBLIC")
    assert a.statement == "select", (sql, a.findings)
    assert not {"parse_error", "unresolved_column", "unresolved_table"} & a.finding_codes, (sql, a.findings)
    assert len(a.output_columns) == len(oracle), sql
    for out, want in zip(a.output_columns, oracle, strict=True):
        assert want <= set(out.sources), (sql, out, want)  # the analyser sees every real source
    rewritten, plan = plan_masking(a, MASKS, CLASSIFIER)
    masked = {p.output for p in plan}
    for out, want in zip(a.output_columns, oracle, strict=True):
        if _classified(want):
            assert out.name in masked, (sql, rewritten, out)
    if not any(DEMO.table(t) and _table_classified(t) for t in a.tables_read):
        assert rewritten == sql  # nothing classified is read: the statement runs exactly as written
        return
    # masked at the read: every classified table is only read through its masking derived table
    assert_reads_masked(rewritten, DEMO, CLASSIFIER, MASKS)
    tree = sqlglot.parse_one(rewritten, dialect="snowflake")
    wrapped = {p.output for p in plan if p.mask == "redact" and MASKS.get(p.classification) != "redact"}
    for out, proj in zip(a.output_columns, outermost_projections(tree)[0], strict=True):
        if out.name in wrapped:  # a partial mask computed into something else reveals nothing
            assert mask_kind_of(proj) == "redact", (sql, rewritten, out)
    # and the rewritten statement is still a valid, resolvable query with the same outputs
    again = analyse(rewritten, DEMO, CLASSIFIER, database="ANALYTICS", schema="PUBLIC")
    assert [o.name for o in again.output_columns] == [o.name for o in a.output_columns]
    assert not {"parse_error", "unresolved_column"} & again.finding_codes, (rewritten, again.findings)


def _table_classified(fq: str) -> bool:
    info = DEMO.table(fq)
    return info is not None and any(CLASSIFIER.column_classification(f"{fq}.{c.name}") for c in info.columns)

"""analyse() contract details not covered by the fixture file: robustness and result shape."""

from __future__ import annotations

import pytest

from processors.decision.analysis import analyse, fingerprint
from processors.decision.masking import MaskingError, plan_masking, plan_read_masking
from tests.processors.analysis_support import CATALOG, MASKS, GlobClassifier

CLASSIFIER = GlobClassifier()


def run(sql: str, **session: str | None) -> object:
    kw = {"database": "ANALYTICS", "schema": "PUBLIC", **session}
    return analyse(sql, CATALOG, CLASSIFIER, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "sql",
    [
        "select " + "(" * 5000 + "1" + ")" * 5000,  # deeper than Python's recursion limit
        "select 1" + " union all select 1" * 2000,
        "\x00\x01",
        "",
        "   ",
        "-- just a comment",
    ],
)
def test_pathological_text_fails_closed(sql: str) -> None:
    a = run(sql)
    assert a.statement in ("unknown", "select")  # type: ignore[attr-defined]
    codes = {f.code for f in a.findings}  # type: ignore[attr-defined]
    assert {"parse_error", "unknown_statement", "analysis_budget_exceeded"} & codes
    assert a.estimated_bytes is None  # type: ignore[attr-defined]
    with pytest.raises(MaskingError):
        plan_masking(a, MASKS, CLASSIFIER)  # type: ignore[arg-type]


def test_result_shape() -> None:
    a = analyse(
        "insert into countries select country, city from customers where email like '%x'",
        CATALOG,
        CLASSIFIER,
        database="analytics",  # session defaults are identifiers too: unquoted -> upper
        schema="public",
    )
    assert a.statement == "insert"
    assert a.tables_read == ("ANALYTICS.PUBLIC.CUSTOMERS",)
    assert a.tables_written == ("ANALYTICS.PUBLIC.COUNTRIES",)
    assert a.tables == ("ANALYTICS.PUBLIC.COUNTRIES", "ANALYTICS.PUBLIC.CUSTOMERS")
    assert a.predicate_columns == ("ANALYTICS.PUBLIC.CUSTOMERS.EMAIL",)
    assert a.fingerprint == fingerprint(a.sql) and len(a.fingerprint) == 64
    assert [f.code for f in a.findings] == ["sensitive_predicate"]
    # nothing is returned by an INSERT, but what it copies is read masked, as a query would be
    assert a.output_columns == ()
    plan = plan_read_masking(a, MASKS, CLASSIFIER)
    assert plan.columns == ()
    assert "ANALYTICS.PUBLIC.CUSTOMERS.EMAIL" in {r.column for r in plan.reads}
    assert "INSERT INTO ANALYTICS.PUBLIC.COUNTRIES" in plan.sql and "SPLIT_PART" in plan.sql


def test_multi_statement_keeps_every_part_but_cannot_be_masked() -> None:
    a = run("select email from customers where id = 1; use role accountadmin")
    assert a.statement == "multi"
    codes = [f.code for f in a.findings]
    assert codes[0] == "multi_statement" and "role_change" in codes
    assert a.parsed is None and a.output_columns == ()
    with pytest.raises(MaskingError):
        plan_masking(a, MASKS, CLASSIFIER)


@pytest.mark.parametrize("sql", ["call my_proc()", "execute immediate 'select email from customers'"])
def test_statements_with_invisible_results_cannot_be_masked(sql: str) -> None:
    with pytest.raises(MaskingError):
        plan_masking(run(sql), MASKS, CLASSIFIER)  # type: ignore[arg-type]


def test_unmasked_select_runs_exactly_as_written() -> None:
    sql = "select order_id, amount from orders where order_id = 1 /* keep me */"
    a = run(sql)
    assert plan_masking(a, MASKS, CLASSIFIER) == (sql, ())


def test_unclassified_columns_of_a_classified_table_are_still_read_through_the_mask() -> None:
    # the mask is at the table: what the analyser did not see referenced is masked all the same
    plan = plan_read_masking(run("select id, city from customers where id = 1"), MASKS, CLASSIFIER)
    assert plan.columns == () and plan.sql.count("FROM ANALYTICS.PUBLIC.CUSTOMERS") == 1
    assert {r.column.rsplit(".", 1)[1] for r in plan.reads} >= {"EMAIL", "SSN", "PHONE", "CARD_NUMBER"}


def test_analysis_is_deterministic() -> None:
    sql = "with x as (select email e, ssn s from customers where id < 9) select * from x"
    assert run(sql).findings == run(sql).findings  # type: ignore[attr-defined]
    first = plan_masking(run(sql), MASKS, CLASSIFIER)  # type: ignore[arg-type]
    assert first == plan_masking(run(sql), MASKS, CLASSIFIER)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sql", "runs"),
    [
        ("select id from countries where id = 1; -- done", "select id from countries where id = 1"),
        ("/* c */ ; select 'a;b' from countries ;; /* z */", "select 'a;b' from countries"),
        ("select id from countries;", "select id from countries;"),  # nothing dropped: unchanged
    ],
)
def test_empty_statements_are_neither_counted_nor_run(sql: str, runs: str) -> None:
    """A comment or ``;`` around the one statement is not a second statement, and the text
    that would run (``Analysis.sql``, when nothing needs masking) is just that statement."""
    a = run(sql)
    assert a.statement == "select" and "multi_statement" not in a.finding_codes  # type: ignore[attr-defined]
    assert a.sql == runs  # type: ignore[attr-defined]

"""Every mask, run for real: rewritten SQL executed on the seeded fakesnow endpoint.

For each statement the raw query is run first (it must return seeded PII, or the check below
would prove nothing), then the rewritten one; no seeded PII or secret value may appear
anywhere in the rewritten result, and the masked columns must have the mask's shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from infra.seed import CATALOG_PATH, SEEDED_PII, SEEDED_SECRETS
from processors.decision.analysis import analyse
from processors.decision.masking import plan_masking
from processors.decision.warehouse_catalog import Catalog
from tests.processors.analysis_support import MASKS, GlobClassifier

pytestmark = pytest.mark.integration

DEMO = Catalog.load(CATALOG_PATH)
CLASSIFIER = GlobClassifier(DEMO)
RAW = tuple(str(v) for v in (*SEEDED_PII, *SEEDED_SECRETS))

STATEMENTS = [
    "select * from customers",
    "select * exclude (ssn) rename (email as contact) from customers",
    "select upper(email) e, email || '' e2, split_part(email, '@', 1) l, reverse(email) r from customers",
    "select email::varchar e, cast(ssn as string) s, lower(trim(phone)) p from customers",
    "with x as (select email e, ssn s from customers) select e, s from x",
    "with a as (select card_number c from customers), b as (select c as d from a) select upper(d) as z from b",
    "select z from (select phone z from customers) s",
    "select city from customers union all select email from customers",
    "select name from customers union select full_name from security.admin.users order by 1",
    "select email from customers except select email from security.admin.users",
    "with x as (select email e from customers) select e from x intersect select email from customers where id < 50",
    "select email, count(*) n from customers group by 1 order by 2 desc",
    "select email e from customers group by e",
    "select c.*, o.amount from customers c join orders o on o.customer_id = c.id",
    "select mfa_secret, username, full_name from security.admin.users",
    "select * from security.admin.users",
    "select f.value v from (select array_construct(email, ssn) arr from customers) x,"
    " lateral flatten(input => x.arr) f",
    "select max(card_number) m, min(ssn) s from customers",
    "select concat(name, ' <', email, '>') c from customers",
    "select listagg(email, ',') within group (order by id) l from customers",
    "select (select max(ssn) from customers) as m",
    "select c.email from customers c where c.id in (select customer_id from orders where amount > 10)",
    "select coalesce(phone, 'n/a') p, 'x@' || email as prefixed from customers",
    "select id, email, row_number() over (partition by country order by id) rn from customers",
    # OBJECT_CONSTRUCT(*) itself is masked (fixture tests) but DuckDB behind fakesnow rejects
    # `*COLUMNS() IS NULL`; the same redact path is exercised here with explicit arguments
    "select object_construct('e', email, 's', ssn) o from customers",
    "select * ilike '%mail%' from customers",
    "select * replace (upper(email) as email) from customers",
]

SHAPES = {
    "email": re.compile(r"\*\*\*\*@[^@]*"),
    "last4": re.compile(r"\*\*\*-\*\*-.{0,4}"),
    "hash": re.compile(r"[0-9a-f]{64}"),
    "redact": re.compile(r"\*\*\*MASKED\*\*\*"),
}


@pytest.fixture(scope="module")
def cursor(fakesnow_profile: Any) -> Iterator[Any]:
    import snowflake.connector

    from infra.fakesnow_server import connect_kwargs

    assert fakesnow_profile.port is not None
    conn = snowflake.connector.connect(
        **connect_kwargs(fakesnow_profile.port, database="ANALYTICS", schema="PUBLIC")
    )
    try:
        yield conn.cursor()
    finally:
        conn.close()


def _leaks(rows: list[tuple[Any, ...]]) -> list[str]:
    blob = "\x00".join(str(v) for row in rows for v in row)
    return [raw for raw in RAW if raw in blob]


@pytest.mark.parametrize("sql", STATEMENTS)
def test_rewritten_sql_returns_no_seeded_pii(cursor: Any, sql: str) -> None:
    a = analyse(sql, DEMO, CLASSIFIER, database="ANALYTICS", schema="PUBLIC")
    rewritten, plan = plan_masking(a, MASKS, CLASSIFIER)
    assert plan, "every statement here selects classified data"

    cursor.execute(sql)
    raw_rows = cursor.fetchall()
    assert _leaks(raw_rows), "the unmasked query must expose PII, or this test proves nothing"

    cursor.execute(rewritten)
    names = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    assert not _leaks(rows), (rewritten, _leaks(rows)[:3])
    assert [n.upper() for n in names] == [o.name.upper() for o in a.output_columns]
    # masking at the read keeps the row count, except where rows are compared by value: set
    # operations, DISTINCT and GROUP BY see masked values (as with Snowflake's masking policies)
    if not re.search(r"\b(union(?! all)|intersect|except|distinct|group by)\b", sql, re.IGNORECASE):
        assert len(rows) == len(raw_rows)
    for p in plan:
        i = [o.name for o in a.output_columns].index(p.output)
        out = a.output_columns[i]
        if not all(CLASSIFIER.column_classification(s) for s in out.sources):
            continue  # e.g. CITY UNION ALL EMAIL: the city rows are not masked, the email rows are
        for row in rows:
            value = row[i]
            if p.mask == "nullify":
                assert value is None
            elif value is not None:
                assert SHAPES[p.mask].fullmatch(str(value)), (p, value)

"""Red team: an information-flow property of masking at the read, run on the seeded emulator.

Hypothesis composes SELECTs over the demo catalog (infra/catalog/demo.yaml) that push the
classified columns (CUSTOMERS.NAME/EMAIL/SSN/PHONE/CARD_NUMBER, USERS.FULL_NAME/EMAIL/MFA_SECRET)
through string functions, casts that may fail, aggregates, conditionals (including an implicit
flow that rebuilds a value one character at a time from CASE branches), predicates, joins on
classified columns, GROUP BY/HAVING, windows, QUALIFY, set operations, CTEs and subqueries,
LATERAL FLATTEN, and Snowflake-only clauses (CONNECT BY, MATCH_RECOGNIZE, PIVOT, ASOF JOIN).
Each statement is decided by ``processors.decision.statement.evaluate`` under infra/policies/example.yaml
for a CI identity of acme (groups ci and analyst). Every statement that may run (allow or
require_approval: an approver would release exactly its ``rewritten_sql``) is executed on the
seeded fakesnow endpoint, and the property is:

    no returned cell and no error message carries a raw seeded classified value, nor any
    fragment of one beyond what the column's mask shows.

The rule, exactly (``Scanner``):

- Every seeded classified value ``v`` (infra.seed: SEEDED_PII and SEEDED_SECRETS, attributed to
  their column) has a *shown* text: its own mask applied to it (email ``****@<domain>``, last4
  ``***-**-<last 4 chars>``, hash/nullify/redact nothing at all).
- A *forbidden fragment* of ``v`` is a substring of ``v`` (compared case-insensitively) that is
  not a substring of its shown text, and is either at least ``TEXT_FRAGMENT`` (5) characters
  long and contains a non-digit, or is a run of at least ``DIGIT_FRAGMENT`` (7) digits of ``v``
  with the separators ``-() ./+`` removed (so ``REPLACE(ssn, '-', '')`` or ``TO_NUMBER`` of a
  card number are caught); in an error message a text fragment must be at least
  ``ERROR_FRAGMENT`` (6) long, since error texts are English prose. Shorter fragments are ignored (3-4 digits of a 9-digit SSN are not
  found; documented limit), as are digit runs of 5-6 (a random 5-digit run is too likely to
  turn up in a sum or a count by chance).
- A fragment is not forbidden when it carries no information about a row: it also occurs in
  non-classified seeded data (usernames hold last names, ROLE holds "admin", timestamps hold
  digits, ...), or in at least a quarter of the same column's values (format: ``555-01`` in every
  phone, ``.admin`` in every admin email), or in the statement text or its rewritten SQL (a
  literal the caller wrote cannot be a leak, and errors often echo the SQL).
- Each returned cell (str() of the value, JSON included) and each error message is scanned
  as written, reversed, and with the separators removed, all case-folded, after removing
  64-hex-digit runs (SHA2 digests: the hash mask's output and SHA2 of masked values, which
  would otherwise match digit runs by chance; no seeded classified value is 64 hex digits).

Where fakesnow cannot run a statement (MATCH_RECOGNIZE, ASOF JOIN and some PIVOT forms are
parser errors in DuckDB), the error message is still scanned, and the rewritten SQL is checked
instead: every read of a table with classified columns is a derived table that only projects
(no filter, join, grouping or window on the raw columns), and that derived table, run alone on
the emulator, returns no forbidden fragment. What the rest of the statement computes from it
then cannot carry more.

Each statement shape (projection, aggregate, join, window, set, nested, flatten, time travel,
Snowflake-only, ORDERS join) is its own test with a fixed number of examples, derandomized.

Not covered by this property (see docs/policy.md): the hash mask is an unsalted SHA2, so a
low-entropy value (a name from a small set, a 9-digit SSN) is recovered by hashing candidates;
64-hex digests are therefore not scanned for fragments here. One-bit-at-a-time channels (row counts,
COUNT_IF results, which rows a predicate keeps) carry no fragment and are held by the
``sensitive_predicate`` rule instead; a substitution cipher (TRANSLATE) is not generated.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlglot import exp

from infra.seed import TABLES, demo_rows
from processors.decision.policy import IdentityClaims, Policy, load_policy
from processors.decision.statement import Decision, evaluate
from processors.decision.warehouse_catalog import Catalog

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "infra" / "policies" / "example.yaml"
CATALOG = ROOT / "infra" / "catalog" / "demo.yaml"
AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)  # a Friday noon: outside the nightly window
IDENTITY = {
    "sub": "ci",
    "iss": "https://token.actions.githubusercontent.com",
    "groups": ["ci", "analyst"],
    "repository": "acme/etl",
}
SESSION = {"database": "ANALYTICS", "schema": "PUBLIC"}  # what the executor opens the session on
# 10 shapes x 30 examples: about a minute on a shared 2-core machine (fakesnow included);
# QT_REDTEAM_EXAMPLES=300 for a deeper local run
EXAMPLES_PER_SHAPE = int(os.environ.get("QT_REDTEAM_EXAMPLES", "30"))

TEXT_FRAGMENT = 5
ERROR_FRAGMENT = 6  # error texts are English prose: "in lambda" holds "n lam" of "Alan Lamarr"
DIGIT_FRAGMENT = 7
FORMAT_SHARE = 0.25
_SEPARATORS = str.maketrans("", "", "-() ./+")
_DIGEST = re.compile(r"[0-9a-f]{64}")


# --- the oracle -----------------------------------------------------------------------------


def shown(value: str, mask: str) -> str:
    """What the policy's mask lets a reader see of ``value`` (docs/policy.md)."""
    if mask == "email":
        return "****@" + value.rsplit("@", 1)[1] if "@" in value else "****@"
    if mask == "last4":
        return "***-**-" + value[-4:]
    return ""  # hash, nullify, redact: nothing of the value itself


@dataclass(frozen=True)
class Origin:
    column: str  # TABLE.COLUMN
    value: str


class Scanner:
    """Finds forbidden fragments of seeded classified values in text (the rule in the docstring)."""

    def __init__(self) -> None:
        policy, _ = engine()
        masks = dict(policy.classifications)  # classification -> mask
        rows = demo_rows()
        plain: list[str] = []
        by_column: dict[str, list[str]] = defaultdict(list)
        for table in TABLES:
            short = table.name.split(".")[-1]
            for row in rows[table.name]:
                for col, cell in zip(table.columns, row, strict=True):
                    if cell is None:
                        continue
                    if col in table.classifications:
                        by_column[f"{short}.{col}"].append(str(cell))
                    else:
                        plain.append(str(cell))
        self.masks = {
            f"{t.name.split('.')[-1]}.{c}": masks[cls] for t in TABLES for c, cls in t.classifications.items()
        }
        plain_text = "\x00".join(plain).casefold()
        plain_text += "\x00" + plain_text.translate(_SEPARATORS)
        self.plain = plain_text + "\x00" + plain_text[::-1]  # scanned reversed too, below
        self.text: dict[str, Origin] = {}
        self.digits: dict[str, Origin] = {}
        for column, values in by_column.items():
            mask = self.masks[column]
            text_grams: dict[str, set[str]] = defaultdict(set)
            digit_grams: dict[str, set[str]] = defaultdict(set)
            for value in values:
                folded, show = value.casefold(), shown(value, mask).casefold()
                for g in _grams(folded, TEXT_FRAGMENT):
                    if not g.isdigit() and g not in show:
                        text_grams[g].add(value)
                digits = re.sub(r"\D", "", folded)
                for g in _grams(digits, DIGIT_FRAGMENT):
                    if g not in show.translate(_SEPARATORS):
                        digit_grams[g].add(value)
            limit = FORMAT_SHARE * len(values)
            for grams, into in ((text_grams, self.text), (digit_grams, self.digits)):
                for g, owners in grams.items():
                    if len(owners) < limit and g not in self.plain:
                        into.setdefault(g, Origin(column, sorted(owners)[0]))
        assert len(self.text) > 3000 and len(self.digits) > 1000  # the oracle has teeth

    def leaks(self, text: str, *statements: str, minimum: int = TEXT_FRAGMENT) -> list[tuple[str, Origin]]:
        """Forbidden fragments in ``text`` (not counting any that the statements contain)."""
        said = "\x00".join(s.casefold() for s in statements)
        said += "\x00" + said.translate(_SEPARATORS)
        folded = _DIGEST.sub("\x00", text.casefold())
        found: dict[str, Origin] = {}
        for variant in (folded, folded[::-1]):
            for g in _grams(variant, TEXT_FRAGMENT):
                if g in self.text and g not in said and self._longer(variant, g, minimum, said):
                    found[g] = self.text[g]
            stripped = variant.translate(_SEPARATORS)
            for run in re.findall(rf"\d{{{DIGIT_FRAGMENT},}}", stripped):
                for g in _grams(run, DIGIT_FRAGMENT):
                    if g in self.digits and g not in said:
                        found[g] = self.digits[g]
            for g in _grams(stripped, TEXT_FRAGMENT):
                if g in self.text and g not in said and self._longer(stripped, g, minimum, said):
                    found[g] = self.text[g]
        return sorted(found.items())

    def _longer(self, text: str, gram: str, minimum: int, said: str) -> bool:
        """With ``minimum`` > TEXT_FRAGMENT: ``gram`` extends to a forbidden fragment that long."""
        if minimum <= TEXT_FRAGMENT:
            return True
        owner = self.text[gram].value.casefold()
        at = text.find(gram)
        while at >= 0:
            for start in range(max(0, at - minimum + TEXT_FRAGMENT), at + 1):
                piece = text[start : start + minimum]
                if len(piece) == minimum and piece in owner and piece not in said:
                    return True
            at = text.find(gram, at + 1)
        return False


def _grams(text: str, n: int) -> Iterator[str]:
    return (text[i : i + n] for i in range(len(text) - n + 1))


@cache
def engine() -> tuple[Policy, Catalog]:
    return load_policy(POLICY), Catalog.load(CATALOG)


@cache
def scanner() -> Scanner:
    return Scanner()


def decide(sql: str) -> Decision:
    policy, catalog = engine()
    return evaluate(sql, IdentityClaims.from_claims(IDENTITY), catalog, policy, AT, **SESSION)


def test_the_oracle_sees_raw_values_and_lets_masks_through() -> None:
    """The scanner itself: raw values and their disguises are found, masked renderings are not."""
    rows = demo_rows()
    customer, user = rows["ANALYTICS.PUBLIC.CUSTOMERS"][0], rows["SECURITY.ADMIN.USERS"][0]
    name, email, ssn, phone, card = customer[1:6]
    s = scanner()
    for raw in (
        name,
        email,
        ssn,
        card,
        user[5],  # MFA secret
        email.split("@")[0],
        ssn[:7],  # "728-26-": area and group number
        ssn.replace("-", ""),
        card[:8],
        card[::-1],
        f"{card[:-4]}",
        str(int(card)),
        f'[\n  "{email.upper()}"\n]',
        phone[:6],  # "(201) ": the area code
    ):
        assert s.leaks(raw), raw
    for masked in (
        shown(email, "email"),
        shown(ssn, "last4"),
        shown(card, "last4"),
        shown(phone, "last4"),
        "***MASKED***",
        "a3f1c2" * 10 + "7788",
        "Berlin DE 2025-03-01 12:00:00",
        "1234.56",
        email[:3],  # short fragments are below the threshold
    ):
        assert not s.leaks(masked), (masked, s.leaks(masked))
    # the caller's own literal is not a leak
    assert not s.leaks(email, f"select '{email}'")


# --- the generator --------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    sql: str  # how the FROM clause names it
    short: str
    key: str  # a non-classified key column
    plain: tuple[str, ...]
    classified: tuple[str, ...]
    bounded: bool  # a filter keeps the scan small


CUSTOMERS_NAMES = (
    "ANALYTICS.PUBLIC.CUSTOMERS",
    "analytics.public.customers",
    "customers",
    "public.Customers",
    '"ANALYTICS"."PUBLIC"."CUSTOMERS"',
)
USERS_NAMES = ("SECURITY.ADMIN.USERS", "security.admin.users")
CUSTOMER_COLS = ("NAME", "EMAIL", "SSN", "PHONE", "CARD_NUMBER")
USER_COLS = ("FULL_NAME", "EMAIL", "MFA_SECRET")

STRING_FNS = (
    "SUBSTR({e}, {a}, {b})",
    "SUBSTRING({e}, {a})",
    "LEFT({e}, {n})",
    "RIGHT({e}, {n})",
    "LPAD({e}, {w}, '#')",
    "RPAD({e}, {w}, '#')",
    "TRIM({e})",
    "LTRIM({e}, '*-')",
    "RTRIM({e}, '0123456789')",
    "REVERSE({e})",
    "SPLIT_PART({e}, '@', 1)",
    "SPLIT_PART({e}, '-', {k})",
    "SPLIT_PART({e}, ' ', 1)",
    "REPLACE({e}, '-', '')",
    "REPLACE({e}, '*', '')",
    "REGEXP_SUBSTR({e}, '[0-9]+')",
    "REGEXP_REPLACE({e}, '[^0-9]', '')",
    "CONCAT({e}, '|', {e2})",
    "{e} || '~' || {e2}",
    "UPPER({e})",
    "LOWER({e})",
    "INITCAP({e})",
    "TO_VARCHAR({e})",
    "{e}::VARCHAR",
    "COALESCE({e}, '?')",
    "NULLIF({e}, '')",
    "SPLIT({e}, '-')[0]::VARCHAR",
)
CASTS = (
    "TRY_CAST({e} AS NUMBER)",
    "{e}::NUMBER",
    "TO_NUMBER({e})",
    "TRY_TO_NUMBER({e})",
    "TO_DATE({e})",
    "CAST({e} AS DATE)",
    "TO_NUMBER(REPLACE({e}, '-', ''))",
    "TRY_TO_NUMBER(REGEXP_REPLACE({e}, '[^0-9]', ''))",
    "{e}::NUMBER + 0",
    "TO_DOUBLE({e})",
    "CAST({e} AS INT)",
)
PREDICATES = (
    "{e} LIKE 'a%'",
    "{e} ILIKE '%@example.org'",
    "{e} = 'x'",
    "{e} BETWEEN 'a' AND 'm'",
    "STARTSWITH({e}, '4')",
    "CONTAINS({e}, '55')",
    "REGEXP_LIKE({e}, '.*[0-9]{{4}}')",
    "{e} IS NOT NULL",
    "{e} > '5'",
    "LENGTH({e}) > 11",
    "ENDSWITH({e}, '7')",
    "{e} IN ('a', 'b')",
)
AGGREGATES = (
    "COUNT(DISTINCT {e})",
    "COUNT_IF({p})",
    "SUM(IFF({p}, 1, 0))",
    "MIN({e})",
    "MAX({e})",
    "LISTAGG({e}, ',')",
    "LISTAGG(DISTINCT {e}, ';')",
    "APPROX_COUNT_DISTINCT({e})",
    "ANY_VALUE({e})",
    "ARRAY_AGG({e})",
    "MAX(LENGTH({e}))",
)
WINDOWS = (
    "LAG({e}) OVER (PARTITION BY {part} ORDER BY {order})",
    "LEAD({e}, 1, 'none') OVER (ORDER BY {order})",
    "FIRST_VALUE({e}) OVER (PARTITION BY {part} ORDER BY {order})",
    "LAST_VALUE({e}) OVER (PARTITION BY {part} ORDER BY {order} "
    "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)",
    "MAX({e}) OVER (PARTITION BY {part})",
    "ROW_NUMBER() OVER (PARTITION BY {part} ORDER BY {order})",
    "COUNT(*) OVER (PARTITION BY {e})",
)
# rebuilds characters of a value from CASE branches only (no data flows, only control does)
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz.@-() *"


@st.composite
def source(draw: st.DrawFn, users: bool | None = None) -> Source:
    if users is None:
        users = draw(st.integers(0, 4)) == 0
    if users:
        return Source(
            draw(st.sampled_from(USERS_NAMES)), "USERS", "USERNAME", ("USERNAME", "ROLE"), USER_COLS, True
        )
    return Source(
        draw(st.sampled_from(CUSTOMERS_NAMES)),
        "CUSTOMERS",
        "ID",
        ("ID", "CITY", "COUNTRY"),
        CUSTOMER_COLS,
        draw(st.integers(0, 5)) > 0,
    )


def bound(src: Source, alias: str, n: int) -> str:
    if src.short == "CUSTOMERS":
        return f"{alias}.ID <= {n}" if src.bounded else "TRUE"
    return f"{alias}.LAST_LOGIN IS NOT NULL" if src.bounded else "TRUE"


@st.composite
def column(draw: st.DrawFn, src: Source, alias: str) -> str:
    name = draw(st.sampled_from(src.classified))
    style = draw(st.integers(0, 3))
    if style == 0:
        return name.lower()  # unqualified (single-table shapes only ever use it)
    if style == 1:
        return f'{alias}."{name}"'
    return f"{alias}.{name}"


@st.composite
def string_expr(draw: st.DrawFn, src: Source, alias: str, depth: int = 2) -> str:
    e = draw(column(src, alias))
    for _ in range(draw(st.integers(0, depth))):
        template = draw(st.sampled_from(STRING_FNS))
        e = template.format(
            e=e,
            e2=draw(column(src, alias)),
            a=draw(st.integers(1, 8)),
            b=draw(st.integers(3, 14)),
            n=draw(st.integers(5, 16)),
            w=draw(st.integers(8, 30)),
            k=draw(st.sampled_from((1, 2, 3, -1))),
        )
    return e


@st.composite
def predicate(draw: st.DrawFn, src: Source, alias: str) -> str:
    return draw(st.sampled_from(PREDICATES)).format(e=draw(string_expr(src, alias, 1)))


@st.composite
def rebuild(draw: st.DrawFn, src: Source, alias: str) -> str:
    """An implicit flow: characters of a value chosen by CASE, not copied."""
    e = draw(string_expr(src, alias, 1))
    start = draw(st.integers(1, 6))
    parts = []
    for i in range(start, start + draw(st.integers(5, 7))):
        whens = " ".join(f"WHEN '{c}' THEN '{c}'" for c in ALPHABET)
        parts.append(f"CASE LOWER(SUBSTR({e}, {i}, 1)) {whens} ELSE '_' END")
    return " || ".join(parts)


@st.composite
def value_expr(draw: st.DrawFn, src: Source, alias: str) -> str:
    """A scalar over one row: a string function chain, a cast, a conditional or a rebuild."""
    kind = draw(st.sampled_from(("string", "string", "cast", "case", "iff", "rebuild", "object")))
    if kind == "cast":
        return draw(st.sampled_from(CASTS)).format(e=draw(string_expr(src, alias, 1)))
    if kind == "case":
        p = draw(predicate(src, alias))
        return f"CASE WHEN {p} THEN 'yes' WHEN {draw(predicate(src, alias))} THEN 'maybe' ELSE 'no' END"
    if kind == "iff":
        return f"IFF({draw(predicate(src, alias))}, {draw(string_expr(src, alias))}, 'other')"
    if kind == "rebuild":
        return draw(rebuild(src, alias))
    if kind == "object":
        return f"OBJECT_CONSTRUCT('v', {draw(string_expr(src, alias))}, 'w', {draw(column(src, alias))})"
    return draw(string_expr(src, alias))


@st.composite
def projection_shape(draw: st.DrawFn) -> str:
    src, n = draw(source()), draw(st.integers(3, 60))
    values = [f"{draw(value_expr(src, 'T'))} AS V{i}" for i in range(draw(st.integers(1, 3)))]
    where = bound(src, "T", n)
    if draw(st.booleans()):
        where += f" AND {draw(predicate(src, 'T'))}"
    order = f" ORDER BY {draw(string_expr(src, 'T', 1))}" if draw(st.booleans()) else ""
    return f"SELECT T.{src.key}, {', '.join(values)} FROM {src.sql} AS T WHERE {where}{order}"


@st.composite
def aggregate_shape(draw: st.DrawFn) -> str:
    src, n = draw(source()), draw(st.integers(3, 200))
    aggs = []
    for i in range(draw(st.integers(1, 3))):
        template = draw(st.sampled_from(AGGREGATES))
        aggs.append(
            template.format(e=draw(string_expr(src, "T", 1)), p=draw(predicate(src, "T"))) + f" AS A{i}"
        )
    group = draw(st.sampled_from(("", "plain", "classified", "classified")))
    if group == "plain":
        key = f"T.{src.plain[-1]}"
    elif group == "classified":
        key = draw(string_expr(src, "T", 1))
    else:
        return f"SELECT {', '.join(aggs)} FROM {src.sql} AS T WHERE {bound(src, 'T', n)}"
    having = (
        f" HAVING {draw(st.sampled_from(AGGREGATES)).format(e=key, p='TRUE')} IS NOT NULL"
        if draw(st.booleans())
        else ""
    )
    return (
        f"SELECT {key} AS K, COUNT(*) AS N, {', '.join(aggs)} FROM {src.sql} AS T "
        f"WHERE {bound(src, 'T', n)} GROUP BY {key}{having}"
    )


@st.composite
def join_shape(draw: st.DrawFn) -> str:
    a, b = draw(source(False)), draw(source())
    n = draw(st.integers(3, 60))
    on = draw(
        st.sampled_from(
            (
                "A.{ca} = B.{cb}",
                "{ea} = {eb}",
                "RIGHT(A.{ca}, 4) = RIGHT(B.{cb}, 4)",
                "A.{ca} LIKE '%' || SPLIT_PART(B.{cb}, '@', 2)",
                "A.ID = B.ID AND A.{ca} <> 'x'",
            )
        )
    )
    if "B.ID" in on and b.short != "CUSTOMERS":
        on = "A.EMAIL = B.EMAIL"
    on = on.format(
        ca=draw(st.sampled_from(a.classified)),
        cb=draw(st.sampled_from(b.classified)),
        ea=draw(string_expr(a, "A", 1)),
        eb=draw(string_expr(b, "B", 1)),
    )
    kind = draw(st.sampled_from(("JOIN", "LEFT JOIN", "FULL OUTER JOIN", "JOIN", "NATURAL JOIN")))
    cond = "" if kind == "NATURAL JOIN" else f" ON {on}"
    outs = f"A.ID, {draw(value_expr(a, 'A'))} AS VA, {draw(value_expr(b, 'B'))} AS VB"
    return f"SELECT {outs} FROM {a.sql} AS A {kind} {b.sql} AS B{cond} WHERE {bound(a, 'A', n)}"


@st.composite
def orders_join_shape(draw: st.DrawFn) -> str:
    c = draw(source(False))
    n = draw(st.integers(3, 40))
    agg = draw(st.sampled_from(AGGREGATES)).format(e=draw(string_expr(c, "C", 1)), p=draw(predicate(c, "C")))
    return (
        f"SELECT O.STATUS, {agg} AS A FROM ANALYTICS.PUBLIC.ORDERS AS O JOIN {c.sql} AS C "
        f"ON O.CUSTOMER_ID = C.ID WHERE {bound(c, 'C', n)} GROUP BY O.STATUS"
    )


@st.composite
def window_shape(draw: st.DrawFn) -> str:
    src, n = draw(source()), draw(st.integers(3, 60))
    windows = []
    for i in range(draw(st.integers(1, 2))):
        template = draw(st.sampled_from(WINDOWS))
        windows.append(
            template.format(
                e=draw(string_expr(src, "T", 1)),
                part=draw(st.sampled_from((f"T.{src.plain[-1]}", draw(string_expr(src, "T", 1))))),
                order=draw(string_expr(src, "T", 1)),
            )
            + f" AS W{i}"
        )
    qualify = ""
    if draw(st.booleans()):
        qualify = (
            f" QUALIFY ROW_NUMBER() OVER (PARTITION BY {draw(string_expr(src, 'T', 1))} "
            f"ORDER BY {draw(string_expr(src, 'T', 1))}) = 1"
        )
    return f"SELECT T.{src.key}, {', '.join(windows)} FROM {src.sql} AS T WHERE {bound(src, 'T', n)}{qualify}"


@st.composite
def set_shape(draw: st.DrawFn) -> str:
    op = draw(st.sampled_from(("UNION", "UNION ALL", "INTERSECT", "EXCEPT", "MINUS")))
    parts = []
    for _ in range(2):
        src = draw(source())
        parts.append(
            f"SELECT {draw(value_expr(src, 'T'))} AS V FROM {src.sql} AS T WHERE {bound(src, 'T', draw(st.integers(3, 60)))}"
        )
    return f" {op} ".join(parts)


@st.composite
def nested_shape(draw: st.DrawFn) -> str:
    """CTEs, derived tables, scalar and IN subqueries: the value is laundered through names."""
    src, n = draw(source()), draw(st.integers(3, 60))
    col = draw(st.sampled_from(src.classified))
    inner = f"SELECT T.{src.key} AS K, T.{col} AS X, T.{src.plain[-1]} AS P FROM {src.sql} AS T WHERE {bound(src, 'T', n)}"
    fake = Source("D", "D", "K", ("P",), ("X",), True)
    outer_expr = draw(value_expr(fake, "D"))
    kind = draw(st.sampled_from(("cte", "derived", "scalar", "in", "exists", "lateral")))
    if kind == "cte":
        return f"WITH D AS ({inner}) SELECT D.K, {outer_expr} AS V FROM D"
    if kind == "derived":
        return f"SELECT D.K, {outer_expr} AS V FROM ({inner}) AS D"
    if kind == "scalar":
        agg = draw(st.sampled_from(AGGREGATES)).format(e=f"T.{col}", p=f"T.{col} LIKE '%5%'")
        return f"SELECT (SELECT {agg} FROM {src.sql} AS T WHERE {bound(src, 'T', n)}) AS V"
    if kind == "in":
        return (
            f"SELECT D.K, {outer_expr} AS V FROM ({inner}) AS D "
            f"WHERE D.X IN (SELECT T.{col} FROM {src.sql} AS T WHERE {bound(src, 'T', n)})"
        )
    if kind == "exists":
        return (
            f"SELECT D.K, D.P FROM ({inner}) AS D WHERE EXISTS (SELECT 1 FROM {src.sql} AS T "
            f"WHERE T.{src.key} = D.K AND {draw(predicate(src, 'T'))})"
        )
    return f"SELECT D.K, L.V FROM ({inner}) AS D, LATERAL (SELECT {outer_expr} AS V) AS L"


@st.composite
def flatten_shape(draw: st.DrawFn) -> str:
    src, n = draw(source()), draw(st.integers(3, 40))
    items = ", ".join(draw(string_expr(src, "T", 1)) for _ in range(draw(st.integers(1, 3))))
    inp = draw(
        st.sampled_from(
            (
                f"ARRAY_CONSTRUCT({items})",
                f"SPLIT({draw(string_expr(src, 'T', 1))}, '-')",
                f"SPLIT({draw(string_expr(src, 'T', 1))}, '@')",
                f"OBJECT_CONSTRUCT('a', {draw(string_expr(src, 'T', 1))})",
            )
        )
    )
    out = draw(st.sampled_from(("F.VALUE", "F.VALUE::VARCHAR", "F.INDEX, F.VALUE", "F.KEY, F.THIS")))
    where = bound(src, "T", n)
    if draw(st.booleans()):
        where += " AND F.VALUE::VARCHAR LIKE '%5%'"
    return (
        f"SELECT T.{src.key}, {out} FROM {src.sql} AS T, LATERAL FLATTEN(input => {inp}) AS F WHERE {where}"
    )


@st.composite
def snowflake_only_shape(draw: st.DrawFn) -> str:
    src = draw(source(False))
    n = draw(st.integers(3, 30))
    e = draw(string_expr(src, "T", 1))
    kind = draw(st.sampled_from(("connect_by", "match_recognize", "pivot", "unpivot", "asof")))
    if kind == "connect_by":
        return (
            f"SELECT T.ID, {draw(value_expr(src, 'T'))} AS V FROM {src.sql} AS T WHERE T.ID <= {n} "
            f"START WITH {draw(predicate(src, 'T'))} CONNECT BY PRIOR T.ID = T.ID - 1 AND PRIOR {e} IS NOT NULL"
        )
    if kind == "match_recognize":
        c = draw(st.sampled_from(CUSTOMER_COLS))
        return (
            f"SELECT * FROM (SELECT ID, COUNTRY, {c} AS X FROM {src.sql} WHERE ID <= {n}) "
            f"MATCH_RECOGNIZE (PARTITION BY X ORDER BY {draw(st.sampled_from(('ID', 'X')))} "
            f"MEASURES FIRST(X) AS FX, LAST(SUBSTR(X, 1, 8)) AS LX, COUNT(*) AS C "
            f"ONE ROW PER MATCH PATTERN (A B*) DEFINE A AS X LIKE '%5%', B AS SUBSTR(X, 1, 1) <= PREV(SUBSTR(X, 1, 1)))"
        )
    if kind == "pivot":
        c = draw(st.sampled_from(CUSTOMER_COLS))
        agg = draw(st.sampled_from(("MAX", "MIN", "ANY_VALUE", "COUNT")))
        return (
            f"SELECT * FROM (SELECT COUNTRY, {c} AS X FROM {src.sql} WHERE ID <= {n}) "
            f"PIVOT ({agg}(X) FOR COUNTRY IN ('DE', 'US', 'FR', 'JP', 'GB')) AS P"
        )
    if kind == "unpivot":
        cols = draw(st.lists(st.sampled_from(CUSTOMER_COLS), min_size=2, max_size=3, unique=True))
        picked = ", ".join(cols)
        return (
            f"SELECT * FROM (SELECT ID, {picked} FROM {src.sql} WHERE ID <= {n}) "
            f"UNPIVOT (V FOR K IN ({picked}))"
        )
    return (
        f"SELECT O.ORDER_ID, {draw(value_expr(src, 'T'))} AS V FROM ANALYTICS.PUBLIC.ORDERS AS O "
        f"ASOF JOIN {src.sql} AS T MATCH_CONDITION (O.CREATED_AT >= T.CREATED_AT) ON O.CUSTOMER_ID = T.ID "
        f"WHERE O.ORDER_ID <= {100_000 + n}"
    )


@st.composite
def time_travel_shape(draw: st.DrawFn) -> str:
    """Reads with time travel or sampling: the mask must stay on the read whatever is attached."""
    src, n = draw(source(False)), draw(st.integers(3, 40))
    clause = draw(
        st.sampled_from(
            (
                "SAMPLE (50)",
                "TABLESAMPLE BERNOULLI (80)",
                "AT(OFFSET => -60)",
                "BEFORE(STATEMENT => '01b2c3d4-0000-1111-0000-000000000000')",
                "AT(TIMESTAMP => DATEADD(minute, -5, CURRENT_TIMESTAMP())::TIMESTAMP_LTZ)",
                "CHANGES(INFORMATION => DEFAULT) AT(OFFSET => -60)",
            )
        )
    )
    where = bound(src, "T", n)
    if draw(st.booleans()):
        where += f" AND {draw(predicate(src, 'T'))}"
    return f"SELECT T.ID, {draw(value_expr(src, 'T'))} AS V FROM {src.sql} AS T {clause} WHERE {where}"


SHAPES = {
    "time_travel": time_travel_shape(),
    "projection": projection_shape(),
    "aggregate": aggregate_shape(),
    "join": join_shape(),
    "orders_join": orders_join_shape(),
    "window": window_shape(),
    "set": set_shape(),
    "nested": nested_shape(),
    "flatten": flatten_shape(),
    "snowflake_only": snowflake_only_shape(),
}


@st.composite
def statements(draw: st.DrawFn, shape: str) -> str:
    sql = draw(SHAPES[shape])
    if draw(st.integers(0, 4)) == 0:  # one more layer of laundering around the whole thing
        sql = draw(
            st.sampled_from(("SELECT * FROM ({}) AS OUTER_Q", "WITH W AS ({}) SELECT * FROM W"))
        ).format(sql)
    return sql


# --- the property ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cursor(fakesnow_profile: Any) -> Iterator[Any]:
    import snowflake.connector

    from infra.fakesnow_server import connect_kwargs

    assert fakesnow_profile.port is not None
    conn = snowflake.connector.connect(**connect_kwargs(fakesnow_profile.port, **SESSION))
    try:
        yield conn.cursor()
    finally:
        conn.close()


CLASSIFIED_TABLES = {t.name: frozenset(t.classifications) for t in TABLES if t.classifications}


def masking_reads(rewritten: str) -> list[exp.Select]:
    """The SELECTs of ``rewritten`` that read a table with classified columns.

    Asserts the shape that makes them the only place a raw value exists: each reads exactly one
    such table and only projects (no WHERE, JOIN, GROUP BY, HAVING, QUALIFY, window, ORDER,
    CONNECT BY, MATCH_RECOGNIZE or PIVOT on the raw columns).
    """
    tree = sqlglot.parse_one(rewritten, dialect="snowflake")
    reads: list[exp.Select] = []
    for table in tree.find_all(exp.Table):
        parts = [p.name.upper() for p in table.parts]
        name = ".".join(parts)
        if name not in CLASSIFIED_TABLES:
            assert len(parts) == 3 or name.split(".")[-1] not in {
                n.split(".")[-1] for n in CLASSIFIED_TABLES
            }, f"unqualified read of a classified table: {table.sql('snowflake')}"
            continue
        select = table.parent.parent if isinstance(table.parent, exp.From) else None
        assert isinstance(select, exp.Select), f"{name} is read outside a masking projection: {table.parent}"
        for clause in (
            "joins",
            "where",
            "group",
            "having",
            "qualify",
            "order",
            "connect",
            "match",
            "laterals",
        ):
            assert not select.args.get(clause), f"{name}: the masking read has a {clause} clause"
        assert not list(select.find_all(exp.Window)), f"{name}: window over raw values"
        for projection in select.expressions:
            if projection.alias_or_name.upper() in CLASSIFIED_TABLES[name]:
                assert not isinstance(projection, exp.Column), f"{name}.{projection.alias_or_name} read raw"
        reads.append(select)
    return reads


def _current(read: exp.Select) -> exp.Select:
    """The masking read over the table as it is now: the emulator has no time travel, and the
    values a mask yields do not depend on which version or sample of the rows it reads."""
    read = read.copy()
    for table in read.find_all(exp.Table):
        for arg in ("when", "changes", "sample", "version"):
            table.set(arg, None)
    return read


def check(cursor: Any, sql: str, stats: Counter[str]) -> None:
    decision = decide(sql)
    stats[decision.decision] += 1
    if decision.decision == "deny":
        return
    rewritten = decision.rewritten_sql
    assert rewritten, sql
    note(f"rewritten: {rewritten}")
    s = scanner()
    try:
        cursor.execute(rewritten)
        rows = cursor.fetchall()
    except Exception as exc:  # the error text must not carry a value either
        message = str(exc)
        leaked = s.leaks(message, sql, rewritten, minimum=ERROR_FRAGMENT)
        assert not leaked, f"raw value in the error message\n{sql}\n{rewritten}\n{message}\n{leaked}"
        stats["error"] += 1
        # the emulator could not run it: the reads themselves must be masked, and run alone leak nothing
        for read in masking_reads(rewritten):
            cursor.execute(_current(read).sql("snowflake"))
            for row in cursor.fetchall():
                for cell in row:
                    leaked = s.leaks(str(cell), sql, rewritten)
                    assert not leaked, (
                        f"masking read leaks\n{sql}\n{read.sql('snowflake')}\n{cell!r}\n{leaked}"
                    )
        return
    stats["ran"] += 1
    stats["rows"] += len(rows)
    for row in rows:
        for cell in row:
            if cell is None:
                continue
            leaked = s.leaks(str(cell), sql, rewritten)
            assert not leaked, f"raw value in a result\n{sql}\n{rewritten}\ncell: {cell!r}\n{leaked}"


# shapes whose statements the emulator often cannot run (checked on the rewritten SQL instead)
_PARTLY_RUNNABLE = {"flatten", "snowflake_only", "time_travel"}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_no_raw_value_or_fragment_escapes(cursor: Any, shape: str) -> None:
    stats: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES_PER_SHAPE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(sql=statements(shape))
    def prop(sql: str) -> None:
        note(f"{shape}: {sql}")
        stats["examples"] += 1
        check(cursor, sql, stats)

    prop()
    print(f"red team {shape}: {dict(stats)}")
    # the property proves something only if most statements were allowed (or held) and ran
    runs = stats["allow"] + stats["require_approval"]
    assert runs >= 0.5 * stats["examples"], stats
    if shape not in _PARTLY_RUNNABLE:
        assert stats["ran"] >= 0.6 * runs and stats["rows"] > 100, stats
    else:
        assert stats["ran"] + stats["error"] == runs, stats


def test_read_nested_in_time_travel_is_masked() -> None:
    """A classified read inside the AT clause of another masked read is masked as well.

    fakesnow cannot run AT/BEFORE, so this is the structural half of the property: every read of a
    table with classified columns in the rewritten SQL is a projection-only masking derived table.
    """
    sql = (
        "SELECT email FROM analytics.public.customers AT(TIMESTAMP => (SELECT TO_TIMESTAMP(MAX(c2.ssn)) "
        "FROM analytics.public.customers c2 AT(OFFSET => -1) WHERE c2.id < 3)) WHERE id < 3"
    )
    decision = decide(sql)
    if decision.decision == "deny":
        return  # refusing it is as good as masking it
    assert decision.rewritten_sql
    masking_reads(decision.rewritten_sql)

"""The decision-cache fingerprint: same for cosmetic differences, different for any real one."""

from __future__ import annotations

import pytest

from processors.decision.analysis import fingerprint, normalise_sql


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("select a from t", "SELECT a FROM t"),
        ("select a from t", "select   a\n\tfrom t  ;"),
        ("select a from t", "select a /* why */ from t -- trailing"),
        ("select a from t", "select a // snowflake comment\nfrom t"),
    ],
)
def test_cosmetic_differences_share_a_fingerprint(a: str, b: str) -> None:
    assert fingerprint(a) == fingerprint(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("select 'A' from t", "select 'a' from t"),  # literals kept
        ("select 'a  b' from t", "select 'a b' from t"),  # whitespace inside strings kept
        ('select "Email" from t', 'select "EMAIL" from t'),  # quoted identifiers kept
        ("select '--' from t", "select '' from t"),  # a comment marker inside a string is text
        ("select $$a -- b$$ from t", "select $$a$$ from t"),
        ("get @Stage/Path file:///tmp/X", "get @Stage/path file:///tmp/X"),  # paths keep case
        ("select v:Select from t", "select v:select from t"),  # variant keys keep case
        ("select 1; drop table t", "select 1"),
        ("select a from t", "select b from t"),
        ("put file:///tmp/a.csv @s", "put file:///etc/passwd @s"),  # a URL's // is not a comment
        ("get @s file:///tmp/A/", "get @s file:///tmp/a/"),
    ],
)
def test_real_differences_do_not(a: str, b: str) -> None:
    assert fingerprint(a) != fingerprint(b)


def test_normalised_text() -> None:
    assert normalise_sql("select  x -- c\nfrom T where s = 'A  b'") == "SELECT x FROM T WHERE s = 'A  b'"

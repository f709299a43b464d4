"""Error texts the executor lets out: no value from the data, but Snowflake's wording and code."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.decision.detectors import luhn_valid
from processors.executor.scrub import MAX_ERROR_CHARS, error_summary, scrub_error

# How Snowflake and the emulator (DuckDB behind fakesnow) put a value into an error.
QUOTING = [
    "Numeric value '{v}' is not recognized",
    "Date '{v}' is not recognized",
    "Timestamp '{v}' is not recognized",
    "Boolean value '{v}' is not recognized",
    "String '{v}' is too long and would be truncated",
    "Can't parse '{v}' as timestamp with format 'AUTO'",
    'Error parsing JSON: unknown keyword "{v}", pos 7',
    "Uncaught exception of type 'EXPRESSION_ERROR' on line 3 at position 2 : Numeric value '{v}' is not recognized",
    "Conversion Error: Could not convert string '{v}' to INT64 when casting from source column EMAIL",
    'Conversion Error: Could not convert string "{v}" to DECIMAL(10,2) when casting from source column EMAIL',
    'Conversion Error: invalid date field format: "{v}", expected format is (YYYY-MM-DD) when casting from'
    " source column NAME",
    'Conversion Error: Malformed JSON at byte 0 of input: invalid literal.  Input: "{v}" when casting from'
    " source column EMAIL",
    "Conversion Error: Failed to cast value to numerical: `{v}`",
    "value \u201c{v}\u201d is not valid",
]
# Values no quote surrounds: only what has a detectable shape can be recognised there.
BARE = [
    "Overflow in multiplication of INT64 ({v} * 100)!",
    "Conversion Error: Failed to cast value to numerical: {v}",
    "Input: {v} when casting from source column X",
    "{v}",
    "value={v};",
]


# one value of each kind the scrubber replaces: its placeholders are not a leak
_KINDS = ("x", "'x'", "a@b.com", "123-45-6789", "4111111111111111", "(415) 555-0101", "1234567", "A" * 30)


def _fragments(value: str, template: str, n: int = 5) -> set[str]:
    """Substrings of ``value`` longer than 4 characters that the template and the scrubber's
    placeholders around it do not hold themselves."""
    ours = "\0".join([template, *(scrub_error(template.replace("{v}", k)) for k in _KINDS)])
    return {value[i : i + n] for i in range(len(value) - n + 1)} - {
        ours[i : i + n] for i in range(len(ours) - n + 1)
    }


def _leaked(value: str, template: str) -> list[str]:
    scrubbed = scrub_error(template.replace("{v}", value))
    return sorted(f for f in _fragments(value, template) if f in scrubbed)


@st.composite
def _card(draw: st.DrawFn) -> str:
    body = draw(st.text("0123456789", min_size=12, max_size=18))
    digits = next(body + c for c in "0123456789" if luhn_valid(body + c))
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


_WORD = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=12)
EMAILS = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.text(string.ascii_letters + string.digits + "._+-", min_size=1, max_size=20).filter(
        lambda s: s[0].isalnum() and s[-1].isalnum()
    ),
    _WORD,
    st.sampled_from(["com", "org", "net", "example", "io"]),
)
SSNS = st.builds(
    lambda a, g, s, sep: f"{a:03d}{sep}{g:02d}{sep}{s:04d}",
    st.integers(1, 999),
    st.integers(0, 99),
    st.integers(0, 9999),
    st.sampled_from(["-", "", " "]),
)
PHONES = st.builds(
    lambda a, b, c, form: form.format(a=a, b=b, c=c),
    st.integers(200, 999),
    st.integers(100, 999),
    st.integers(0, 9999).map(lambda n: f"{n:04d}"),
    st.sampled_from(["({a}) {b}-{c}", "{a}-{b}-{c}", "{a}.{b}.{c}", "+1 {a} {b} {c}", "+1{a}{b}{c}"]),
)
SECRETS = st.one_of(
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=24, max_size=40),  # base32 (MFA)
    st.text("0123456789abcdef", min_size=32, max_size=64),  # hex
    st.text(string.ascii_letters + string.digits, min_size=24, max_size=40),  # API key material
)
SHAPED = st.one_of(EMAILS, SSNS, _card(), PHONES, SECRETS)
ANY_TEXT = st.one_of(SHAPED, st.text(min_size=5, max_size=60))


@settings(max_examples=400, deadline=None)
@given(value=ANY_TEXT, template=st.sampled_from(QUOTING))
def test_no_fragment_of_a_quoted_value_survives(value: str, template: str) -> None:
    assert _leaked(value, template) == []


@settings(max_examples=400, deadline=None)
@given(value=SHAPED, template=st.sampled_from(QUOTING + BARE))
def test_no_fragment_of_a_shaped_value_survives_even_unquoted(value: str, template: str) -> None:
    assert _leaked(value, template) == []


@pytest.mark.parametrize(
    ("raw", "scrubbed"),
    [
        ("Numeric value 'O'Brien' is not recognized", "Numeric value '<redacted>' is not recognized"),
        (
            "Can't parse 'Ada Lovelace' as timestamp with format 'AUTO'",
            "Can't parse '<redacted>'",
        ),
        (
            "Catalog Error: Table with name NOPE does not exist!",
            "Catalog Error: Table with name NOPE does not exist!",
        ),
        (
            "SQL compilation error: error line 1 at position 7\ninvalid identifier 'EMAILX'",
            "SQL compilation error: error line 1 at position 7\ninvalid identifier '<redacted>'",
        ),
        ("call (415) 555-0101 or mail a.b@example.com", "call <phone> or mail <email>"),
        ("ssn 123-45-6789, id 12345678", "ssn <ssn>, id <number>"),
        ("secret 5MQAKLJFZ77HANJLA6L5HVTJCY3X7ODI here", "secret <token> here"),
        ("key sk_live_4eC39HqLyjWDarjtT1zdp7dc", "key sk_live_<token>"),  # the public prefix stays
        ("Division by zero", "Division by zero"),
        ("", "error (no message)"),
    ],
)
def test_scrub_keeps_the_wording_and_drops_the_values(raw: str, scrubbed: str) -> None:
    assert scrub_error(raw) == scrubbed


def test_unterminated_and_overlong_quotes_drop_the_rest() -> None:
    assert scrub_error("Numeric value 'Ada Lovelace") == "Numeric value '<redacted>'"
    # past the scan limit, the closing quote is never seen: a quote inside the value is not one
    huge = "String 'ab' cd" + "x" * 70_000 + "' is too long"
    assert scrub_error(huge) == "String '<redacted>'"


def test_scrub_bounds_the_length() -> None:
    out = scrub_error("Division by zero. " * 1000)
    assert len(out) == MAX_ERROR_CHARS and out.endswith("…")
    assert len(scrub_error("x " * 10, limit=5)) == 5


class _ConnectorError(Exception):
    """The attributes snowflake.connector.errors.Error carries."""

    def __init__(self, raw: str, errno: int, sqlstate: str) -> None:
        super().__init__(f"{errno:06d} ({sqlstate}): 01b2-query-id: {raw}")
        self.raw_msg, self.errno, self.sqlstate = raw, errno, sqlstate


def test_error_summary_keeps_code_and_sqlstate() -> None:
    exc = _ConnectorError("Numeric value '123-45-6789' is not recognized", 100038, "22018")
    assert error_summary(exc) == ("100038", "22018", "Numeric value '<redacted>' is not recognized")
    assert error_summary(_ConnectorError("boom", -1, "n/a"))[:2] == (None, None)
    # the emulator repeats the connector's prefix inside its own text
    twice = _ConnectorError("100035 (22007): None: Conversion Error: 'x'", 100035, "22007")
    assert error_summary(twice) == ("100035", "22007", "Conversion Error: '<redacted>'")
    assert error_summary(ValueError("bad 'alice@example.com'")) == (None, None, "bad '<redacted>'")

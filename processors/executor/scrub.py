"""Error texts with no data in them: the executor's second line after masking at the read.

Snowflake quotes the value it choked on (``Numeric value '123-45-6789' is not recognized``),
and so does the emulator (``Could not convert string 'a@example.com' to INT64``). Masking at
the read means such a value should already be masked; ``scrub_error`` makes sure that even a
raw one never reaches a topic, the caller or a log:

1. everything between the first and the last quote (``'``, ``"``, a backtick or a curly quote)
   becomes ``'<redacted>'``, so a value that itself holds quotes is removed whole; an apostrophe
   inside a word (``Can't``) is not a quote;
2. whatever a result detector finds (email, card, SSN, phone) becomes ``<email>`` and so on,
   whole: an error keeps no partial mask;
3. the shapes of the other classified values: a long run of letters and digits (an API key,
   an MFA secret, a hash) becomes ``<token>``, and 5 or more digits with at most two separators
   between any two (a card, an SSN or a phone number the detectors did not take) ``<number>``;
4. the result is at most ``limit`` characters.

What stays is Snowflake's wording, the column and type names it mentions and line and position
numbers. The error code and SQLSTATE travel in their own fields (``error_summary``).

>>> scrub_error("Numeric value '123-45-6789' is not recognized")
"Numeric value '<redacted>' is not recognized"
"""

from __future__ import annotations

import re

from processors.decision.detectors import DETECTORS

__all__ = ["MAX_ERROR_CHARS", "error_summary", "scrub_error"]

MAX_ERROR_CHARS = 1000
_MAX_INPUT = 64_000  # longer texts are cut before scanning; what is cut cannot leak
_QUOTES = "'\"`\u2018\u2019\u201c\u201d"
_REDACTED = "'<redacted>'"
# digits with at most two separators between them, e.g. 4111 1111-1111 1111, (415) 555.0101
_DIGITS = re.compile(r"\d(?:[ .,/()+-]{0,2}\d)*")
_TOKEN = re.compile(r"[A-Za-z0-9+/=]{16,}")
# the connector's "002003 (42S02): <query id>: " (the emulator also puts it in the text itself)
_PREFIX = re.compile(r"\s*\d{6}(?: \([0-9A-Za-z/]{3,5}\))?: (?:(?:None|[0-9A-Za-z-]{16,40}): )?")


def _quote_positions(text: str) -> list[int]:
    """Quote characters that open or close something, i.e. not an apostrophe inside a word."""
    out = []
    for i, ch in enumerate(text):
        if ch in _QUOTES:
            inside_word = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            if not inside_word:
                out.append(i)
    return out


def _drop_quoted(text: str, cut: bool) -> str:
    quotes = _quote_positions(text)
    if not quotes:
        return text
    first, last = quotes[0], quotes[-1]
    if first == last or cut:  # unterminated, or its closing quote may be in the part cut off
        return text[:first] + _REDACTED
    return text[:first] + _REDACTED + text[last + 1 :]


def _drop_detected(text: str) -> str:
    for name, find, _mask in DETECTORS:
        for m in reversed(find(text)):
            text = text[: m.start()] + f"<{name}>" + text[m.end() :]
    return text


def _number(m: re.Match[str]) -> str:
    return "<number>" if sum(ch.isdigit() for ch in m.group()) >= 5 else m.group()


def _token(m: re.Match[str]) -> str:
    run = m.group()
    return "<token>" if len(run) >= 24 or any(ch.isdigit() for ch in run) else run


def scrub_error(text: str | None, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` (a Snowflake or emulator error message) with every value-like part removed.

    >>> scrub_error('Could not convert string "tim@example.org" to INT64 when casting from source column EMAIL')
    "Could not convert string '<redacted>' to INT64 when casting from source column EMAIL"
    >>> scrub_error("Overflow in multiplication of INT64 (4111111111111111 * 100)!")
    'Overflow in multiplication of INT64 (<card> * 100)!'
    """
    text = text or ""
    s = _drop_quoted(text[:_MAX_INPUT], cut=len(text) > _MAX_INPUT)
    s = _drop_detected(s)
    s = _TOKEN.sub(_token, s)  # before the digit runs, which would split a token
    s = _DIGITS.sub(_number, s)
    s = s.strip()
    if len(s) > limit:
        s = s[: max(limit - 1, 0)] + "…"
    return s or "error (no message)"


def error_summary(exc: BaseException) -> tuple[str | None, str | None, str]:
    """(error code, SQLSTATE, scrubbed message) of a connector error, or of any exception.

    The connector's ``msg`` starts with ``002003 (42S02): <query id>:``; ``raw_msg`` is Snowflake's
    own text, scrubbed here, while the code and SQLSTATE are kept as they are (they hold no data).
    """
    errno = getattr(exc, "errno", None)
    code = str(errno) if isinstance(errno, int) and errno != -1 else None
    sqlstate = getattr(exc, "sqlstate", None)
    if not isinstance(sqlstate, str) or not re.fullmatch(r"[0-9A-Z]{5}", sqlstate):
        sqlstate = None
    raw = getattr(exc, "raw_msg", None)
    if not isinstance(raw, str) or not raw:
        raw = str(exc) or type(exc).__name__
    while m := _PREFIX.match(raw):
        raw = raw[m.end() :]
    return code, sqlstate, scrub_error(raw)

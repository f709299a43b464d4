"""Second line of defence: find and mask PII in result values the rewrite did not cover.

The executor runs ``mask_rows`` on every result page. Detectors look inside strings (a value
``"call (415) 555-0101"`` is caught), and at integers long enough to be card numbers.

- email: ``local@domain.tld``                      -> ``****@domain.tld``
- card: 13-19 digits, optional single spaces/dashes between, Luhn-valid -> ``************1234``
- ssn: ``###-##-####`` without the never-issued area 000/666/9xx, group 00, serial 0000
  -> ``***-**-1234``
- phone: North American ``(415) 555-0101``, ``415-555-0101``, ``415.555.0101``,
  ``+1 415 555 0101`` and E.164 ``+14155550101``                  -> ``***-***-0101``

Plain digit runs without separators are not phones (IDs and amounts look like that).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

__all__ = ["DETECTORS", "luhn_valid", "mask_rows", "mask_value", "scan_value"]

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})(?![\w-])")
_CARD = re.compile(r"(?<![\w+-])\d(?:[ -]?\d){12,18}(?![\w-])")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"(?:\+1[ .-]?)?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-])\d{3}[ .-]\d{4}"  # North American
    r"|\+[1-9]\d{7,14}"  # E.164
    r")(?![\w-])"
)


def luhn_valid(digits: str) -> bool:
    """Luhn checksum of a digit string.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_hits(text: str) -> list[re.Match[str]]:
    return [m for m in _CARD.finditer(text) if luhn_valid(re.sub(r"[ -]", "", m.group()))]


def _mask_email(m: re.Match[str]) -> str:
    return "****@" + m.group(1)


def _mask_card(m: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", m.group())
    return "*" * (len(digits) - 4) + digits[-4:]


def _mask_ssn(m: re.Match[str]) -> str:
    return "***-**-" + m.group()[-4:]


def _mask_phone(m: re.Match[str]) -> str:
    return "***-***-" + re.sub(r"\D", "", m.group())[-4:]


# order matters: an SSN or card is checked before the looser phone pattern
DETECTORS: tuple[tuple[str, Callable[[str], list[re.Match[str]]], Callable[[re.Match[str]], str]], ...] = (
    ("email", lambda s: list(_EMAIL.finditer(s)), _mask_email),
    ("ssn", lambda s: list(_SSN.finditer(s)), _mask_ssn),
    ("card", _card_hits, _mask_card),
    ("phone", lambda s: list(_PHONE.finditer(s)), _mask_phone),
)
_BY_NAME = {name: (find, mask) for name, find, mask in DETECTORS}


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10**12:
        return str(value)  # long enough to be a card number
    return None


def _worth_scanning(text: str) -> bool:
    return "@" in text or sum(ch.isdigit() for ch in text[:4096]) >= 7 or len(text) > 4096


def scan_value(value: object) -> str | None:
    """The first detector that finds something in ``value``, or None.

    >>> scan_value("ssn 123-45-6789"), scan_value("hello")
    ('ssn', None)
    """
    text = _text(value)
    if text is None or not _worth_scanning(text):
        return None
    for name, find, _ in DETECTORS:
        if find(text):
            return name
    return None


def mask_value(value: object, detector: str) -> object:
    """``value`` with every ``detector`` hit replaced by its mask (non-text returned unchanged)."""
    text = _text(value)
    if text is None:
        return value
    find, mask = _BY_NAME[detector]
    hits = find(text)
    if not hits:
        return value
    out: list[str] = []
    pos = 0
    for m in hits:
        out.append(text[pos : m.start()])
        out.append(mask(m))
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def mask_rows(
    columns: Sequence[str], rows: Iterable[Sequence[object]]
) -> tuple[list[list[object]], dict[tuple[str, str], int]]:
    """Masked copies of ``rows`` and how many values each (column, detector) masked."""
    counts: dict[tuple[str, str], int] = {}
    out: list[list[object]] = []
    for row in rows:
        new = list(row)
        for i, value in enumerate(new):
            text = _text(value)
            if text is None or not _worth_scanning(text):
                continue
            for name, find, _mask in DETECTORS:
                if find(text):
                    value = mask_value(value, name)
                    text = value if isinstance(value, str) else text
                    col = columns[i] if i < len(columns) else str(i)
                    counts[(col, name)] = counts.get((col, name), 0) + 1
            new[i] = value
        out.append(new)
    return out, counts

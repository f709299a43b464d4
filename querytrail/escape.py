"""Untrusted text (prompts, SQL, claims, comments, values) made inert for a terminal.

One escape for every terminal view (``approvals show``, ``replay``, reports): a crafted prompt
must not repaint the screen, forge a line of the display or reorder what the reader sees, and
the SQL an approver releases must be shown character for character. So nothing printable is
touched (``<``, ``&``, quotes and backslashes stay as they are) and only what a terminal would
act on or not show is written as an escape:

- control characters: C0, DEL and C1 as ``\\x1b``; a newline and a tab too, unless the view
  keeps lines (``indent``), where a newline starts an indented continuation line;
- bidi controls (U+202A-202E, U+2066-2069, U+200E/200F, U+061C) and every other invisible
  character: format characters, line and paragraph separators, spaces other than U+0020,
  private-use, surrogate and unassigned code points, and the rest of Unicode's
  Default_Ignorable_Code_Point set (variation selectors, Hangul fillers, ...) as ``\\u202e``
  (``\\U000e0041`` above U+FFFF).

A backslash is not doubled (SQL is full of them), so a text can spell ``\\x1b`` itself;
``hidden`` says whether anything was escaped, for views that must tell the two apart.
``json_inert`` applies the same rule to JSON text printed on a terminal, as ``\\uXXXX`` escapes
that leave the parsed value unchanged.
"""

from __future__ import annotations

import unicodedata

__all__ = ["hidden", "json_inert", "terminal"]

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties) that are not already in a
# category escaped below: invisible, yet letters or marks to unicodedata
_IGNORABLE = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_ESCAPED_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))


def _escaped(ch: str) -> bool:
    if " " <= ch <= "~":
        return False
    cp = ord(ch)
    if unicodedata.category(ch) in _ESCAPED_CATEGORIES:
        return True
    return any(lo <= cp <= hi for lo, hi in _IGNORABLE)


def _code(ch: str) -> str:
    cp = ord(ch)
    if cp == 0x0A:
        return "\\n"
    if cp == 0x09:
        return "\\t"
    if cp < 0x100:
        return f"\\x{cp:02x}"
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"


def terminal(text: object, limit: int | None = None, *, indent: str | None = None) -> str:
    """``text`` safe to print: invisible and control characters written as escapes.

    ``indent``: keep newlines (each continuation line starts with ``indent``) and tabs;
    otherwise the result is one line. ``limit``: at most that many characters, ending in ``…``
    when cut (never in the middle of an escape). ``None`` is shown as an empty string.

    >>> terminal("a < b\\x1b[31m\\u202e")
    'a < b\\\\x1b[31m\\\\u202e'
    >>> terminal("select 1\\nfrom t", indent="  | ")
    'select 1\\n  | from t'
    """
    s = "" if text is None else str(text)
    out: list[str] = []
    size = 0
    for i, ch in enumerate(s):
        if indent is not None and ch == "\n":
            piece = "\n" + indent
        elif indent is not None and ch == "\t":
            piece = ch
        elif _escaped(ch):
            piece = _code(ch)
        else:
            piece = ch
        if limit is not None and size + len(piece) > limit - 1:  # keep room for the "…"
            if i == len(s) - 1 and size + len(piece) <= limit:  # the last piece fits exactly
                return "".join(out) + piece
            return "".join(out) + "…"
        out.append(piece)
        size += len(piece)
    return "".join(out)


def hidden(text: object) -> int:
    """How many characters ``terminal`` writes as escapes (newlines and tabs not counted).

    >>> hidden("a\\u202eb\\x1b"), hidden("a\\nb\\tc")
    (2, 0)
    """
    s = "" if text is None else str(text)
    return sum(1 for ch in s if ch not in "\n\t" and _escaped(ch))


def json_inert(text: str) -> str:
    """JSON whose strings carry no raw control or invisible character (ANSI escapes, bidi
    overrides): each is written as a ``\\uXXXX`` escape, so the parsed value is unchanged."""
    out = []
    for ch in text:
        if ch < "\x7f" or not hidden(ch):
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:  # a surrogate pair, as JSON spells characters above U+FFFF
            cp = ord(ch) - 0x10000
            out.append(f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}")
    return "".join(out)

"""A cheap, parse-free fingerprint of SQL text, used as the decision cache key.

Two texts share a fingerprint only when they differ in comments, runs of whitespace, or the
case of SQL keywords. Literals, quoted identifiers and anything that might be case-sensitive
(stage paths after ``@``, file URLs, variant paths after ``:``) are kept byte for byte, so a
cached decision (and its rewritten SQL) can never be served for a different statement.
The lexing mirrors sqlglot's Snowflake tokenizer: ``'...'`` with backslash and doubled-quote
escapes, ``"..."``, ``$$...$$``, ``--``/``//`` line comments, non-nesting ``/* */``.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from sqlglot.dialects.snowflake import Snowflake

__all__ = ["fingerprint", "normalise_sql"]

_LEX = re.compile(
    r"""(?P<str>'(?:[^'\\]|\\.|'')*'?)"""
    r"""|(?P<qid>"(?:[^"]|"")*"?)"""
    r"""|(?P<raw>\$\$.*?(?:\$\$|\Z))"""
    r"""|(?P<url>[A-Za-z][A-Za-z0-9+.-]*://[^\s;]*)"""  # file:///tmp/x: not a // comment
    r"""|(?P<com>--[^\n]*|//[^\n]*|/\*.*?(?:\*/|\Z))"""
    r"""|(?P<ws>\s+)"""
    r"""|(?P<word>[A-Za-z_][A-Za-z0-9_$]*)"""
    r"""|(?P<other>.)""",
    re.DOTALL,
)

_KEYWORDS = frozenset(k for k in Snowflake.Tokenizer.KEYWORDS if re.fullmatch(r"[A-Z_]+", k))
# a word right after one of these may be part of a case-sensitive path or key
_KEEP_AFTER = frozenset("@/:~.\\$=")


def normalise_sql(sql: str) -> str:
    """Strip comments, collapse whitespace, upper-case keywords; keep everything else.

    >>> normalise_sql("select  a -- x\\nFROM t where s = 'A  b'")
    "SELECT a FROM t WHERE s = 'A  b'"
    """
    out: list[str] = []
    pending_space = False
    prev = ""
    for m in _LEX.finditer(sql):
        kind = m.lastgroup
        text = m.group()
        if kind in ("ws", "com"):
            pending_space = True
            continue
        if pending_space and out:
            out.append(" ")
            prev = " "
        pending_space = False
        if kind == "word" and prev not in _KEEP_AFTER and text.upper() in _KEYWORDS:
            text = text.upper()
        out.append(text)
        prev = text[-1]
    return "".join(out).rstrip(" ;")


@lru_cache(maxsize=8192)
def fingerprint(sql: str) -> str:
    """sha256 hex of ``normalise_sql(sql)`` (memoised: repeated texts cost a dict lookup)."""
    return hashlib.sha256(normalise_sql(sql).encode("utf-8")).hexdigest()

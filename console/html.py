"""The console's one escape for HTML, SQL highlighting and server-rendered charts.

Every value a template prints passes through ``inert`` (the Jinja environment's ``finalize``)
and then Jinja's autoescape: control, bidi and invisible characters are shown as the terminal
views show them (``querytrail.escape.terminal``: ``\\x1b``, ``\\u202e``), so a crafted prompt
cannot reorder or hide what an approver reads, and ``<``, ``&`` and quotes become entities, so
it cannot become markup. Only two producers of ``Markup`` exist, both below: the SQL
highlighter (pygments escapes every token) and nothing else; templates never use ``|safe``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import SqlLexer

from querytrail.escape import hidden, terminal

__all__ = ["bar_chart", "hidden_count", "inert", "sql_html"]

_FORMATTER = HtmlFormatter(nowrap=True, classprefix="sql-")
_LEXER = SqlLexer()


def inert(value: Any) -> Any:
    """Jinja ``finalize``: untrusted strings made visible-character-for-character; Markup as is."""
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return terminal(value, indent="")


def hidden_count(*texts: Any) -> int:
    return sum(hidden(t) for t in texts if t)


def sql_html(sql: str | None) -> Markup:
    """The SQL exactly as it will run, highlighted: escaped tokens in ``<span class="sql-..">``."""
    text = terminal(sql or "", indent="")
    return Markup(highlight(text, _LEXER, _FORMATTER))  # noqa: S704 - pygments escapes every token


def bar_chart(points: list[tuple[str, int]], width: int = 720, height: int = 180) -> dict[str, Any]:
    """Bars for an inline SVG (``templates/_chart.html``): labels stay text, numbers are numbers."""
    top = max((n for _, n in points), default=0) or 1
    pad, base = 30, height - 30
    step = (width - pad) / max(len(points), 1)
    bars = []
    for i, (label, n) in enumerate(points):
        h = round((base - 10) * n / top, 1)
        bars.append(
            {
                "x": round(pad + i * step + step * 0.1, 1),
                "y": round(base - h, 1),
                "w": round(step * 0.8, 1),
                "h": h,
                "label": label,
                "n": n,
                "lx": round(pad + i * step + step / 2, 1),
            }
        )
    return {"width": width, "height": height, "base": base, "top": top, "bars": bars, "pad": pad}


def per_period(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Counts of report rows per day (per hour when they span under two days), by their first time column."""
    times = []
    for row in rows:
        at = next((v for v in row.values() if isinstance(v, datetime)), None)
        if at is not None:
            times.append(at)
    if not times:
        return []
    hourly = (max(times) - min(times)).total_seconds() < 2 * 86400
    fmt = "%Y-%m-%d %H:00" if hourly else "%Y-%m-%d"
    counts: dict[str, int] = {}
    for at in sorted(times):
        key = at.strftime(fmt)
        counts[key] = counts.get(key, 0) + 1
    return list(counts.items())

"""Parsers for the policy's scalar mini-languages: sizes, durations, hour windows, globs.

Each raises ValueError with a reason a policy author can act on; the loader adds file and line.
"""

from __future__ import annotations

import fnmatch
import re

from processors.decision.policy.model import Glob, HoursWindow

__all__ = ["SIZE_UNITS", "parse_duration", "parse_glob", "parse_hours", "parse_size"]

# Decimal (SI) units, as Snowflake reports storage and bytes scanned ("GB" = 10^9 bytes).
# Binary units are available explicitly (KiB..TiB) for authors who mean powers of two.
SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")
_DURATION_PART = re.compile(r"(\d+)([smhd])")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_HOURS = re.compile(r"^(\d{2})-(\d{2})$")


def parse_size(value: object) -> int:
    """``10GB`` -> 10_000_000_000; a bare non-negative integer is bytes."""
    if isinstance(value, bool):
        raise ValueError(f"size must be a number with a unit (KB, MB, GB, TB), got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"size must be a number with a unit (KB, MB, GB, TB), got {value!r}")
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"bad size {value!r}: expected a number and a unit, e.g. 10GB")
    unit = m.group(2).upper()
    if unit not in SIZE_UNITS:
        raise ValueError(f"bad size unit {m.group(2)!r} in {value!r}: use B, KB, MB, GB, TB (or KiB..TiB)")
    return int(float(m.group(1)) * SIZE_UNITS[unit])


def parse_duration(value: object) -> int:
    """``30m`` / ``1h`` / ``2d`` / ``1h30m`` -> seconds (> 0)."""
    if not isinstance(value, str) or isinstance(value, bool):
        raise ValueError(f"duration must be a string like 30m, 1h or 2d, got {value!r}")
    text = value.strip()
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"bad duration {value!r}: use digits with s, m, h or d, e.g. 30m, 1h, 2d")
    seconds = sum(int(n) * _DURATION_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be longer than zero")
    return seconds


def parse_hours(value: object) -> HoursWindow:
    """``"00-05"`` -> hours 0..4 UTC (start inclusive, end exclusive); ``"22-04"`` crosses midnight."""
    if not isinstance(value, str):
        raise ValueError(f'hours_utc must be a quoted string "HH-HH", got {value!r}')
    m = _HOURS.match(value.strip())
    if not m:
        raise ValueError(f'bad hours_utc {value!r}: expected "HH-HH" such as "00-05" or "22-04"')
    start, end = int(m.group(1)), int(m.group(2))
    if start > 23:
        raise ValueError(f"bad hours_utc {value!r}: start hour must be 00..23")
    if end > 24:
        raise ValueError(f"bad hours_utc {value!r}: end hour must be 00..24")
    if start == end:
        raise ValueError(f'bad hours_utc {value!r}: empty window (start equals end); use "00-24" for all day')
    return HoursWindow(start=start, end=end)


def parse_glob(value: object) -> Glob:
    """A non-empty glob; ``*`` ``?`` ``[...]`` as fnmatch, matched on upper-cased text."""
    if not isinstance(value, str):
        raise ValueError(f"glob must be a string, got {value!r}")
    if not value.strip():
        raise ValueError("glob must not be empty")
    if any(c in value for c in "\n\r\t"):
        raise ValueError(f"bad glob {value!r}: control characters")
    depth = 0
    for ch in value:
        if ch == "[":
            if depth:
                raise ValueError(f"bad glob {value!r}: nested '['")
            depth = 1
        elif ch == "]" and depth:
            depth = 0
        elif ch == "]":
            raise ValueError(f"bad glob {value!r}: ']' without '['")
    if depth:
        raise ValueError(f"bad glob {value!r}: unclosed '['")
    if "[]" in value or "[!]" in value:
        raise ValueError(f"bad glob {value!r}: empty character class")
    try:
        regex = re.compile(fnmatch.translate(value.upper()), re.DOTALL)
    except re.error as exc:
        raise ValueError(f"bad glob {value!r}: {exc}") from None
    return Glob(pattern=value, regex=regex)

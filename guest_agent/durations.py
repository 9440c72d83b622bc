"""Durations written by people: ``30s``, ``10m``, ``2h``, ``1d`` or plain seconds."""

from __future__ import annotations

import math
import re
from typing import Any, Union

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
UNITS_TEXT = "ms, s, m, h or d"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Union[str, int, float]) -> float:
    """Return ``value`` in seconds; raise ValueError for anything else.

    Numbers are seconds; strings are a number with an optional unit
    (ms, s, m, h, d).  Negative, infinite and NaN values are refused.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(
                f"not a duration: {value!r} (a number and one unit: {UNITS_TEXT}; "
                "e.g. 30s, 10m or 2h)"
            )
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"not a duration: {value!r}")
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r}")
    return seconds


def duration_in(key: str, value: Any, lo: float, hi: float, example: str) -> float:
    """``value`` as seconds within [lo, hi]; the ValueError says what to write instead.

    A value that is no duration at all (``5 minutes``) gets the accepted units;
    a duration out of range gets the range.
    """
    try:
        seconds = parse_duration(value)
    except ValueError:
        shown = value if isinstance(value, str) else repr(value)
        raise ValueError(
            f"`{shown}` is not a duration: write a number of seconds or a number and one "
            f"unit ({UNITS_TEXT}), e.g. `{key}: {example}`"
        ) from None
    if not lo <= seconds <= hi:
        raise ValueError(
            f"must be a duration between {lo:g} and {hi:g} seconds, e.g. `{key}: {example}`"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest readable form: 90 -> '1m30s', 7200 -> '2h'."""
    if seconds < 60:
        return f"{seconds:g}s"
    total = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)

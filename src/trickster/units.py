"""Quantities written for people: the one duration format of run tables, reports and plans, and
the durations people write (training_config.max_time: 48h, 90m, 1h30m)."""

from __future__ import annotations

import re

YEAR = 365 * 86400


def format_duration(seconds: float | None) -> str:
    """7s, 3m 01s, 2h 01m up to two days, then 3.1 days, then 301 years; '?' when unknown."""
    if seconds is None:
        return "?"
    if seconds >= 2 * YEAR:
        return f"{seconds / YEAR:,.0f} years"
    if seconds >= 48 * 3600:
        return f"{seconds / 86400:.1f} days"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


DURATION_HINT = "a duration such as 48h, 90m, 1h30m or 3600s"
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: str | int | float) -> float | None:
    """Seconds in "48h", "90m", "1h30m", "2d", "3600s" or a plain number of seconds; None if the
    text is not a positive duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    text = value.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    elif text and re.fullmatch(f"(?:{_PART.pattern})+", text):
        seconds = sum(float(n) * _SECONDS[unit] for n, unit in _PART.findall(text))
    else:
        return None
    return seconds if seconds > 0 else None

"""Quantities written for people: the one duration format of run tables, reports and plans."""

from __future__ import annotations

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

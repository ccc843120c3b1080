"""Quantities written for people: the one duration format of run tables, reports and plans, the
durations people write (training_config.max_time: 48h, 90m, 1h30m) and their big whole numbers
(training_config.max_steps: 1e4)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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


# A number as people write big ones: 1e4, 1.5E3, 1.0e+4, 10000.0 (YAML 1.1 reads the first two as
# text: its floats need a dot and a signed exponent), or plain digits.
_SCIENTIFIC = re.compile(r"[-+]?(?:\d[\d_]*\.?\d*|\.\d+)(?:e[-+]?\d+)?", re.IGNORECASE)
INT64_LIMIT = 2**63  # past int64, which PyTorch and NumPy take (seed, sizes), a number is a mistake


def whole_number(value: str | float) -> int | str:
    """An integer setting written as 1e4, 1.5e3, 10000.0 or 10000, as an int; text that is no number
    (auto, lots, 90m) comes back unchanged. Raises ValueError, in the words the config error
    shows, for a number that is not whole (1.5e0, 1e-3, 2.5) or does not fit in int64 (1e30)."""
    if isinstance(value, str):
        text = value.strip()
        if not _SCIENTIFIC.fullmatch(text):
            return value
        value = text.replace("_", "")
    try:
        number = Decimal(value)  # exact: 1.2345678901234567e17 stays what it says; a float's own value
    except InvalidOperation:  # an exponent past what Decimal holds (1e99999999999999999999): a
        # number far past int64, or (1e-99999999999999999999) far from whole
        tiny, negative = "e-" in value.lower(), value.startswith("-")
        number = Decimal("0.5" if tiny else "-inf" if negative else "inf")
    if number.is_nan():
        raise ValueError("input should be a whole number")
    if number >= INT64_LIMIT:  # before int(): 1e999999999 would be a billion digits
        raise ValueError(f"input should be less than {INT64_LIMIT} = 2**63")
    if number < -INT64_LIMIT:
        raise ValueError(f"input should be at least {-INT64_LIMIT} = -2**63")
    if number != number.to_integral_value():
        raise ValueError("input should be a whole number")
    return int(number)


def whole_seconds(value: object) -> object:
    """training_config.max_time as a number: seconds, whole (`whole_number`); a fraction (90.5, or
    "90.5" as YAML text) is refused with what to write instead: 90 or 91, or the duration 90.5s."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return value  # true/false and empty: the checks every setting has
    try:
        return whole_number(value)
    except ValueError as err:
        if str(err) != "input should be a whole number":
            raise
        try:
            seconds = Decimal(str(value).strip().replace("_", ""))
        except InvalidOperation:  # 1e-99999999999999999999: past what Decimal holds
            raise err from None
        if not (seconds.is_finite() and 0 < seconds < INT64_LIMIT):
            raise
        whole = " or ".join(str(n) for n in (int(seconds), int(seconds) + 1) if n >= 1)
        raise ValueError(
            f"input should be a whole number of seconds: write {whole}, or {seconds.normalize():f}s"
        ) from None

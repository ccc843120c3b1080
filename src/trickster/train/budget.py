"""Time budgets: `training_config.max_time` such as "48h", "90m", "3600s" or "1h30m".

The budget counts the wall time the training loop has run, summed over every resume
(TrainState.train_seconds), so `--resume` with a larger budget continues where the last one
stopped, and the same budget again has nothing left to spend.
"""

from __future__ import annotations

import re

UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
DURATION_HINT = "a duration such as 48h, 90m, 1h30m or 3600s"


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
        seconds = sum(float(n) * UNITS[unit] for n, unit in _PART.findall(text))
    else:
        return None
    return seconds if seconds > 0 else None

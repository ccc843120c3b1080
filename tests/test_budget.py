"""training_config.max_time: the durations people write, and one clear line for the rest."""

from __future__ import annotations

import pytest

from trickster.train.budget import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("48h", 48 * 3600),
        ("90m", 5400),
        ("3600s", 3600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1.5h", 5400),
        (" 10 m ", 600),
        ("3600", 3600),
        (3600, 3600),
        (0.5, 0.5),
    ],
)
def test_durations_read_like_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "h", "10x", "-5m", "0s", "1h-30m", 0, -3])
def test_anything_else_is_not_a_duration(text):
    assert parse_duration(text) is None

"""training_config.max_time: the durations people write, and one clear line for the rest."""

from __future__ import annotations

import pytest

from trickster.config import TrainingConfig, config_from_dict
from trickster.errors import UserError
from trickster.train.budget import Clock
from trickster.units import parse_duration


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


def test_a_bad_budget_is_one_line_naming_the_key():
    with pytest.raises(UserError) as err:
        config_from_dict({"training_config": {"max_time": "two days"}})
    assert "training_config.max_time must be a duration such as 48h, 90m" in str(err.value)
    assert "'two days'" in str(err.value)


def test_the_first_step_warns_only_when_the_schedule_outruns_a_day_or_the_budget():
    clock = Clock(TrainingConfig())
    assert clock.first_step_note(600, step=1, max_steps=100) is None  # 16h 30m: not far off
    note = clock.first_step_note(3600, step=1, max_steps=100)
    assert note.startswith("the first step took 1h 00m: the 99 steps left need about 4.1 days at this pace")
    budgeted = Clock(TrainingConfig(max_time="1h"))
    note = budgeted.first_step_note(600, step=1, max_steps=100)
    assert (
        "more than training_config.max_time (1h 00m) allows: it will stop the run near step 6 of 100" in note
    )
    assert budgeted.first_step_note(1, step=1, max_steps=100) is None


def test_a_step_under_a_second_is_not_said_to_take_0s():
    # a fast step with very many steps left: the warning named a step of 0.4 s "0s"
    note = Clock(TrainingConfig()).first_step_note(0.4, step=1, max_steps=300_001)
    assert note.startswith("the first step took 0.4s: the 300,000 steps left need about 33h 20m")
    budgeted = Clock(TrainingConfig(max_time="3s")).first_step_note(0.47, step=1, max_steps=400)
    assert budgeted.startswith("the first step took 0.47s: the 399 steps left need about 3m 08s")
    assert (
        Clock(TrainingConfig())
        .first_step_note(3.2, step=1, max_steps=30_000)
        .startswith("the first step took 3.2s:")
    )

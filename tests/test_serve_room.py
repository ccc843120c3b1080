"""serve.room: which models are unloaded to make room for one more, and who waits."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from trickster.serve.room import Room


def _model(name: str, used: int, holds: int = 0, loaded: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        name=name, used=used, holds=holds, loading=False, model=object() if loaded else None
    )


def test_room_unloads_the_least_recently_used_unheld_model_never_the_default():
    room = Room(3, threading.Condition())
    default, old, held, newer = (
        _model("best", 1),
        _model("step_1", 2),
        _model("step_2", 3, holds=1),
        _model("step_3", 4),
    )
    assert room.make_room([default, old, held, newer], "best")
    # four in memory, room for three: two go to fit one more; the default and the held one stay
    assert [m.name for m in (default, old, held, newer) if m.model is None] == ["step_1", "step_3"]


def test_room_refuses_and_unloads_nothing_when_held_models_and_the_default_fill_it():
    room = Room(2, threading.Condition())
    default, held = _model("best", 1), _model("step_1", 2, holds=1)
    assert not room.make_room([default, held], "best")
    assert default.model is not None and held.model is not None


def test_room_goes_to_the_hold_that_arrived_first_even_when_a_later_one_asks_first():
    changed = threading.Condition()
    room = Room(2, changed)
    default, held = _model("best", 1), _model("step_1", 2, holds=1)
    a, b = _model("step_2", 0, loaded=False), _model("step_3", 0, loaded=False)
    first, second = room.tick(), room.tick()
    every = [default, held, a, b]
    with changed:  # as the catalog calls it
        assert not room.claim(a, first, every, "best")  # no room: the held model and the default fill it
        assert not room.claim(b, second, every, "best")
        held.holds = 0  # let go: its room may be taken now
        assert not room.claim(b, second, every, "best")  # behind the first in line
        assert held.model is not None  # and nothing was unloaded for it
        assert room.claim(a, first, every, "best") and a.loading and held.model is None
        assert room.line == [second]

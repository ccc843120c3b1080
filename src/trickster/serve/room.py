"""Room for at most `max_loaded` models in memory at once: which hold loads next, and what is
unloaded to make room for it. Holds waiting for room are served in the order they arrived (the
threads a Condition wakes take its lock in no set order, so arrival is kept here, not left to it).
Everything here runs under the catalog's `changed` lock."""

from __future__ import annotations

import bisect
import itertools
import threading
from pathlib import Path

from trickster.errors import UserError
from trickster.plural import counted
from trickster.serve.offered import UNTRAINED, Offered


def check_max_loaded(
    max_loaded: int, default: str, models: int, target: str | Path, saved_none: bool
) -> None:
    """Refuse a --max-loaded-models with which some of the `models` offered (or to be saved) could
    never load: the default stays loaded, so with room for one a request for another waits forever
    (and the requests in line behind it). `saved_none`: a whole run that has saved no checkpoint
    yet, whose default moves to the first one it saves."""
    if max_loaded < 1:
        raise UserError(f"--max-loaded-models must be at least 1 (got {max_loaded})")
    if max_loaded == 1 and saved_none:
        raise UserError(
            f"--max-loaded-models 1 holds only the default model, which stays loaded ({UNTRAINED} until "
            f"{target} saves a checkpoint, then its best or newest): the others it offers would never "
            f"load; pass 2 or more (or --checkpoints {UNTRAINED})"
        )
    if max_loaded == 1 and models > 1:
        others = counted(models - 1, "other model")
        raise UserError(
            f"--max-loaded-models 1 holds only {default}, which stays loaded: the {others} "
            f"offered would never load; pass 2 or more (or --checkpoints {default})"
        )


class Room:
    def __init__(self, max_loaded: int, changed: threading.Condition):
        self.max_loaded, self.changed = max_loaded, changed
        self.clock = itertools.count(1)
        # the holds waiting for room to load their model, by arrival (each its tick of `clock`)
        self.line: list[int] = []

    def tick(self) -> int:
        return next(self.clock)

    def full(self, every: list[Offered]) -> bool:
        """Whether a load now would take another model's room, or that of a hold waiting for it."""
        resident = [o for o in every if o.model is not None or o.loading]
        return bool(self.line) or len(resident) >= self.max_loaded

    def claim(self, offered: Offered, turn: int, every: list[Offered], default: str) -> bool:
        """Whether this thread is to load `offered`: no other is, the hold that arrived at `turn` is
        first in line for room, and there is room (made among `every` model in memory)."""
        if offered.loading:  # it waits for that load, not for room
            self.leave(turn)
            return False
        if turn not in self.line:
            bisect.insort(self.line, turn)  # arrival order, also for one back in line after a failed load
        if self.line[0] != turn or not self.make_room(every, default):
            return False
        offered.loading = True
        self.leave(turn)
        return True

    def leave(self, turn: int) -> None:
        """Out of the line for room; the next one in line may find room already."""
        if turn in self.line:
            first = self.line[0] == turn
            self.line.remove(turn)
            if first:
                self.changed.notify_all()

    def make_room(self, every: list[Offered], default: str) -> bool:
        """Unload the least recently used models no request holds until one more fits; False,
        unloading nothing, when held ones and the default fill the room. `every` counts the retired
        ones too: they are held, so they count, and stay."""
        resident = [o for o in every if o.model is not None or o.loading]
        idle = [o for o in resident if o.model is not None and not o.holds and o.name != default]
        excess = len(resident) + 1 - self.max_loaded
        if excess > len(idle):
            return False
        for offered in sorted(idle, key=lambda o: o.used)[: max(excess, 0)]:
            offered.model = None  # the engine drops its batch when idle: nothing else refers to it
        return True

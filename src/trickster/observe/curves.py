"""The numbers the loss and training figures draw, gathered from metrics.jsonl one event at a time.

Kept apart from plots.py so that reading a run (`trickster runs`, the training loop's sinks) does
not load matplotlib. However long the run, a curve keeps at most MAX_POINTS train points,
MAX_POINTS validation points (the untrained, the best and the last evaluation always among them)
and MAX_POINTS HellaSwag points, so keeping and drawing them costs the same at step 100 and at
step 10 million.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

# points a curve keeps at most: a panel is about 500 pixels wide, and a run logs millions
MAX_POINTS = 4000
TRAIN_FIELDS = ("train_step", "train_tokens", "train_loss", "lr", "grad_norm", "tokens_per_sec")
VAL_FIELDS = ("val_step", "val_tokens", "val_loss", "val_index")
HELLASWAG_FIELDS = ("hellaswag_step", "hellaswag_tokens", "hellaswag_acc_norm", "hellaswag_acc")


@dataclass
class Curves:
    """The train curves keep one train event in `every`: when they pass MAX_POINTS, every other
    point goes and `every` doubles. The validation points are thinned the same way (one evaluation
    in `val_every`), except that the untrained evaluation (step 0), the best trained one and the
    last one always stay, so the figure's reference line, its "best" mark and its end are those of
    every evaluation."""

    train_step: list[int] = field(default_factory=list)
    train_tokens: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    tokens_per_sec: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_tokens: list[int | None] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_index: list[int] = field(default_factory=list)  # each kept evaluation's number, from 0
    # loss spikes: (step, peak loss) of each, and the train losses a rollback abandoned
    spikes: list[tuple[int, float]] = field(default_factory=list)
    abandoned: list[tuple[int, float]] = field(default_factory=list)
    # HellaSwag during training (training_config.hellaswag_every), thinned as the train curves
    hellaswag_step: list[int] = field(default_factory=list)
    hellaswag_tokens: list[int] = field(default_factory=list)
    hellaswag_acc_norm: list[float] = field(default_factory=list)
    hellaswag_acc: list[float] = field(default_factory=list)
    hellaswag_every: int = 1
    hellaswag_events: int = 0
    every: int = 1  # the train curves keep train events 0, every, 2 x every, ...
    train_events: int = 0  # seen, kept or not
    val_every: int = 1  # the validation curve keeps evaluations 0, val_every, ... and its pins
    val_events: int = 0
    val_best: int | None = None  # the number of the evaluation with the lowest loss after step 0
    val_best_loss: float | None = None

    @classmethod
    def from_records(cls, records: Iterable[dict]) -> Curves:
        c = cls()
        for r in records:
            c.add(r)
        return c

    def add(self, r: dict) -> None:
        if r["event"] == "train":
            self.train_events += 1
            if (self.train_events - 1) % self.every == 0:  # else thinned out
                point = (r["step"], r["tokens_seen"], r["train_loss"], r.get("lr"), r.get("grad_norm"))
                self.every = self._append_thinned(TRAIN_FIELDS, (*point, r.get("tokens_per_sec")), self.every)
        elif r["event"] == "eval" and r.get("val_loss") is not None:
            # older runs' eval events lack tokens_seen: the train event logged at that step has it
            same_step = (
                self.train_tokens[-1] if self.train_step and self.train_step[-1] == r["step"] else None
            )
            self._add_val(r["step"], r.get("tokens_seen", same_step), r["val_loss"])
        elif r["event"] == "hellaswag":
            self.hellaswag_events += 1
            if (self.hellaswag_events - 1) % self.hellaswag_every == 0:  # else thinned out
                point = (r["step"], r["tokens_seen"], r["acc_norm"], r["acc"])
                self.hellaswag_every = self._append_thinned(HELLASWAG_FIELDS, point, self.hellaswag_every)
        elif r["event"] in ("rollback", "spike"):
            self.spikes.append((r.get("last_step", r["step"]), r["peak_loss"]))
            if r["event"] == "rollback":
                self._drop_after(r["step"])

    def _append_thinned(self, fields: tuple[str, ...], point: tuple, every: int) -> int:
        """`point` added to the curves `fields` (kept one event in `every`); past MAX_POINTS every
        other point goes, and the curves keep one event in twice as many: the `every` returned."""
        for name, value in zip(fields, point, strict=True):
            getattr(self, name).append(value)
        if len(getattr(self, fields[0])) <= MAX_POINTS:
            return every
        for name in fields:
            setattr(self, name, getattr(self, name)[::2])
        return every * 2

    def _add_val(self, step: int, tokens: int | None, loss: float) -> None:
        index, self.val_events = self.val_events, self.val_events + 1
        before = (self.val_index[-1] if self.val_index else None, self.val_best)  # pinned until now
        for name, value in zip(VAL_FIELDS, (step, tokens, loss, index), strict=True):
            getattr(self, name).append(value)
        # strictly lower: the first of equal losses stays the best, as min() over all would pick
        if step > 0 and (self.val_best_loss is None or loss < self.val_best_loss):
            self.val_best, self.val_best_loss = index, loss
        if len(self.val_step) > MAX_POINTS:
            self.val_every *= 2
            self._keep_val()
        else:  # the last and the best before this evaluation may no longer be pinned
            for old in sorted({i for i in before if i is not None}, reverse=True):
                position = self._position(old)
                if position is not None and not self._pinned(position):
                    for name in VAL_FIELDS:
                        del getattr(self, name)[position]

    def _position(self, index: int | None) -> int | None:
        """Where evaluation number `index` sits in the kept points (None: not kept)."""
        position = bisect.bisect_left(self.val_index, index) if index is not None else None
        found = position is not None and position < len(self.val_index)
        return position if found and self.val_index[position] == index else None

    def _pinned(self, position: int) -> bool:
        """Whether the kept point at `position` stays: a regular one, or one of the pins."""
        index = self.val_index[position]
        return (
            index % self.val_every == 0
            or index == self.val_best
            or position == len(self.val_index) - 1
            or self.val_step[position] == 0
        )

    def _keep_val(self) -> None:
        kept = [i for i in range(len(self.val_index)) if self._pinned(i)]
        for name in VAL_FIELDS:
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in kept])

    def _drop_after(self, step: int) -> None:
        """A rollback to `step` replays what came after it: those points leave the curves (the
        train losses are kept apart, to be drawn faintly). The best evaluation is then the best of
        the points kept: one thinned out earlier is not brought back."""
        self.abandoned += [(s, v) for s, v in zip(self.train_step, self.train_loss, strict=True) if s > step]
        for fields in (TRAIN_FIELDS, HELLASWAG_FIELDS, VAL_FIELDS):  # each one's first field: its steps
            kept = [i for i, s in enumerate(getattr(self, fields[0])) if s <= step]
            for name in fields:
                values = getattr(self, name)
                setattr(self, name, [values[i] for i in kept])
        self.val_best = self.val_best_loss = None
        for s, loss, index in zip(self.val_step, self.val_loss, self.val_index, strict=True):
            if s > 0 and (self.val_best_loss is None or loss < self.val_best_loss):
                self.val_best, self.val_best_loss = index, loss
        self._keep_val()

    @property
    def untrained_loss(self) -> float | None:
        return self.val_loss[self.val_step.index(0)] if 0 in self.val_step else None

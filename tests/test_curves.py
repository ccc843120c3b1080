"""The figures' curves: a run of any length keeps a bounded number of points, evenly spaced, and
the validation curve keeps its untrained, best and last points."""

from __future__ import annotations

import random

import numpy as np
import pytest

from trickster.observe import curves as curves_module
from trickster.observe.curves import MAX_POINTS, TRAIN_FIELDS, VAL_FIELDS, Curves
from trickster.observe.plots import loss_figure


def evaluation(step: int, loss: float) -> dict:
    return {"event": "eval", "step": step, "time": step, "val_loss": loss, "tokens_seen": 8 * step}


def test_the_curves_of_a_long_run_keep_at_most_max_points_train_points():
    """A million-step run's loss.png holds a few thousand points, evenly spaced, from step 1 on."""
    curves = Curves.from_records(
        {"event": "train", "step": s, "tokens_seen": s, "train_loss": 1 / s} for s in range(1, 100_001)
    )
    assert MAX_POINTS // 2 <= len(curves.train_step) <= MAX_POINTS
    assert curves.train_step[0] == 1 and curves.train_step[-1] > 100_000 - curves.every
    assert set(np.diff(curves.train_step)) == {curves.every}  # evenly spaced
    assert all(len(getattr(curves, name)) == len(curves.train_step) for name in TRAIN_FIELDS)


def test_an_evaluation_at_every_step_keeps_the_untrained_best_and_last_points():
    """eval_every 1 for 100,000 steps: at most MAX_POINTS validation points, evenly spaced, and the
    three the figure marks (the untrained line, the best, the end) are the true ones."""
    losses = {s: 3.0 - 2.0 * min(s, 33_333) / 33_333 + 1e-5 * max(0, s - 33_333) for s in range(100_001)}
    curves = Curves.from_records(evaluation(s, v) for s, v in losses.items())
    kept = dict(zip(curves.val_step, curves.val_loss, strict=True))
    assert MAX_POINTS // 2 <= len(kept) <= MAX_POINTS
    assert all(len(getattr(curves, name)) == len(curves.val_step) for name in VAL_FIELDS)
    assert curves.val_step[0] == 0 and curves.untrained_loss == losses[0]
    assert curves.val_step[-1] == 100_000 and kept[100_000] == losses[100_000]
    best = min((v, s) for s, v in losses.items() if s > 0)
    assert 33_333 % curves.val_every and best == (losses[33_333], 33_333)  # not a regular point
    assert min((v, s) for s, v in kept.items() if s > 0) == best
    regular = [s for s in curves.val_step if s % curves.val_every == 0]
    assert set(np.diff(regular)) == {curves.val_every}  # evenly spaced
    assert set(kept) - set(regular) <= {33_333, 100_000}  # the pins
    figure = loss_figure(curves)
    assert f"best {best[0]:.3f}" in [text.get_text() for text in figure.axes[0].texts]


def test_a_few_evaluations_are_all_kept():
    losses = [4.0, 3.1, 2.5, 2.7, 2.2, 2.4]
    curves = Curves.from_records(evaluation(10 * i, v) for i, v in enumerate(losses))
    assert curves.val_loss == losses and curves.val_step == [0, 10, 20, 30, 40, 50]
    assert curves.val_tokens == [80 * i for i in range(6)]


@pytest.mark.parametrize("seed", range(5))
def test_thinned_validation_points_against_every_point(monkeypatch, seed):
    """Small bounds, random losses and rollbacks: what is kept is always a subset of the points a
    curve without bounds keeps (rolled-back evaluations gone), within the bound, with the untrained
    one, the last one and (while no rollback removed a better one) the best one."""
    monkeypatch.setattr(curves_module, "MAX_POINTS", 8)
    rng = random.Random(seed)
    curves, everything, step, rolled_back = Curves(), [], 0, False
    for _ in range(400):
        if step and rng.random() < 0.02:  # a rollback a few steps back
            back = max(1, step - rng.randint(1, 5))
            curves.add({"event": "rollback", "step": back, "time": 0, "peak_loss": 9.0, "last_step": step})
            everything = [(s, v) for s, v in everything if s <= back]
            step, rolled_back = back, True
        loss = rng.choice([rng.uniform(1, 3), 2.0])  # ties too
        curves.add(evaluation(step, loss))
        everything.append((step, loss))
        kept = list(zip(curves.val_step, curves.val_loss, strict=True))
        assert len(kept) <= 8 and set(kept) <= set(everything)
        assert kept[0] == everything[0] and kept[-1] == everything[-1]
        trained = [v for s, v in everything if s > 0]
        if trained and not rolled_back:
            assert min(v for s, v in kept if s > 0) == min(trained)
        step += 1

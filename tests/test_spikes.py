"""The loss-spike detector on its own: what counts as a spike, what is noise, and its state."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from trickster import run_checkpoints
from trickster.config import TrainingConfig
from trickster.train import checkpoint as ckpt
from trickster.train.spikes import Spike, SpikeDetector, discard, rollback_to, spike_line


def noisy(steps: int, level: float = 2.0, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [level * (1 + rng.uniform(-0.05, 0.05)) for _ in range(steps)]


def feed(detector: SpikeDetector, losses: list[float], first_step: int = 1) -> list:
    found = []
    for step, loss in enumerate(losses, first_step):
        spike = detector.update(step, loss)
        if spike:
            found.append(spike)
    return found


def test_the_peak_is_the_highest_loss_of_the_run_not_its_last():
    spikes = feed(SpikeDetector(factor=2.0, steps=3, window=20), noisy(30) + [7.0, 9.5, 8.0])
    assert [(s.first_step, s.last_step, s.peak_loss) for s in spikes] == [(31, 33, 9.5)]


def test_a_short_run_of_high_losses_joins_the_median_afterwards():
    """Window 4: 2.0 x4, then 5.0 twice (noise: 2 < 3 steps) and 2.0. The median of the last four,
    [2, 5, 5, 2], is 3.5, so 6.0 x3 stays under 2 x 3.5: no spike. Left out, the noise would leave
    the median at 2.0, and the same 6.0s would be one."""
    losses = [2.0] * 4 + [5.0, 5.0, 2.0] + [6.0] * 3
    detector = SpikeDetector(factor=2.0, steps=3, window=4)
    assert feed(detector, losses) == []
    assert sorted(detector.history) == [2.0, 6.0, 6.0, 6.0]


def test_three_high_steps_in_a_row_make_a_spike():
    losses = noisy(30) + [7.0, 8.0, 9.0] + noisy(10, seed=1)
    spikes = feed(SpikeDetector(factor=2.0, steps=3, window=20), losses)
    assert len(spikes) == 1
    spike = spikes[0]
    assert (spike.first_step, spike.last_step) == (31, 33)
    assert spike.peak_loss == 9.0
    assert 1.9 < spike.median < 2.1


def test_a_shorter_run_of_high_losses_is_noise():
    losses = noisy(30) + [7.0, 8.0] + noisy(30, seed=1)
    assert feed(SpikeDetector(factor=2.0, steps=3, window=20), losses) == []


def test_nothing_fires_before_the_window_is_full():
    # the steep start of training: every loss far below the first ones, then a jump at step 6
    losses = [5.5, 4.0, 3.0, 2.5, 2.2, 9.0, 9.0, 9.0, 9.0]
    assert feed(SpikeDetector(factor=2.0, steps=3, window=10), losses) == []


def test_high_losses_do_not_raise_the_median_they_are_compared_with():
    # counted in, 5.0 and 6.0 would lift the median of 4 losses to 3.5, and 7.0 would not be high
    losses = [2.0, 2.0, 2.0, 2.0, 5.0, 6.0, 7.0]
    spikes = feed(SpikeDetector(factor=2.0, steps=3, window=4), losses)
    assert [(s.first_step, s.last_step, s.median) for s in spikes] == [(5, 7, 2.0)]


def test_off_when_factor_is_empty():
    assert feed(SpikeDetector(factor=None, steps=1, window=2), noisy(5) + [100.0] * 5) == []


def test_non_finite_losses_are_left_to_the_nonfinite_check():
    losses = noisy(20) + [float("nan"), float("inf")] + noisy(5, seed=2)
    assert feed(SpikeDetector(factor=2.0, steps=1, window=10), losses) == []


def test_state_dict_continues_exactly():
    losses = noisy(25) + [7.0, 8.0, 9.0, 9.5] + noisy(10, seed=3)
    whole = feed(SpikeDetector(2.0, 3, 20), losses)
    first = SpikeDetector(2.0, 3, 20)
    assert feed(first, losses[:27]) == []  # stopped in the middle of the high run
    second = SpikeDetector(2.0, 3, 20)
    second.load_state_dict(first.state_dict())
    assert feed(second, losses[27:], first_step=28) == whole


def test_defaults_are_the_documented_ones():
    t = TrainingConfig()
    assert (t.spike_factor, t.spike_steps, t.spike_window, t.max_rollbacks) == (2.0, 3, 100, 3)


def fake_checkpoint(run_dir, name: str, step: int) -> None:
    folder = run_dir / "checkpoints" / name
    folder.mkdir(parents=True)
    (folder / "info.json").write_text(json.dumps({"step": step}))
    for file in (run_checkpoints.WEIGHTS, run_checkpoints.COMPLETE):
        (folder / file).write_text("")


def test_a_rollback_returns_to_the_newest_checkpoint_strictly_before_the_spike(tmp_path):
    """The checkpoint at the step itself already holds the update a rollback undoes."""
    for step in (5, 10, 15):
        fake_checkpoint(tmp_path, ckpt.step_name(step), step)
    fake_checkpoint(tmp_path, "best", 15)
    assert rollback_to(tmp_path, 15, ()).checkpoint.name == ckpt.step_name(10)
    assert rollback_to(tmp_path, 16, ()).checkpoint.name == ckpt.step_name(15)
    assert rollback_to(tmp_path, 5, ()).checkpoint is None


def test_a_rollback_deletes_the_checkpoints_after_it_and_final_but_keeps_best(tmp_path):
    for step in (4, 8, 12):
        fake_checkpoint(tmp_path, ckpt.step_name(step), step)
    fake_checkpoint(tmp_path, "final", 12)  # a finished run continued with a larger max_steps
    fake_checkpoint(tmp_path, "best", 8)
    later = rollback_to(tmp_path, 5, ()).later
    assert sorted(p.name for p in later) == sorted([ckpt.step_name(8), ckpt.step_name(12), "final"])
    discard(later)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best", ckpt.step_name(4)]


def test_a_checkpoint_a_rollback_was_deleting_when_killed_is_never_taken_back(tmp_path, monkeypatch):
    """discard renames a post-spike checkpoint to a hidden name, then deletes it. Killed in
    between, the hidden folder may still look complete: the next --resume must delete it, not put
    it back (it holds the spike's weights, and the newest step would be resumed from it)."""
    for step in (2, 4):
        folder = tmp_path / "checkpoints" / ckpt.step_name(step)
        folder.mkdir(parents=True)
        (folder / "info.json").write_text(json.dumps({"step": step}))
        for name in (run_checkpoints.WEIGHTS, run_checkpoints.COMPLETE):
            (folder / name).write_text("")

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt  # the process ends between the rename and the deletion

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        discard(rollback_to(tmp_path, 3, ()).later)
    monkeypatch.undo()
    repairs = run_checkpoints.recover(tmp_path)  # as --resume starts (the pid is this process's: not alive)
    assert run_checkpoints.latest(tmp_path).name == "step_000002" and len(repairs) == 1
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000002"]


def test_the_spike_line_names_one_step_as_one_and_a_ratio_near_the_factor_exactly():
    """A spike of one step read 'steps 10-10', and one of 1.04x the median (spike_factor 1.03)
    read '1.0x', as if it were none."""
    line = spike_line(Spike(10, 10, 3.6334, 3.4963), None, 0, 3)
    assert line.startswith(
        "step     10: loss spike at step 10 (up to 3.6334, 1.04x the running median 3.4963)"
    )
    line = spike_line(Spike(18, 20, 8.5907, 3.4534), "step_000015", 1, 3)
    assert "loss spike at steps 18-20 (up to 8.5907, 2.49x the running median 3.4534)" in line

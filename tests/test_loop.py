"""The Trainer's hot path and housekeeping: the gradient a step hands the optimizer (accumulated,
clipped), host synchronisations per step, the batch copy, peak memory, the CUDA generator saved per
process, and the process-wide settings a run leaves behind."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trickster.data.loader import BatchSampler
from trickster.errors import UserError
from trickster.train import dist, dist_checkpoint
from trickster.train import loop as loop_module
from trickster.train.device import settings_restored
from trickster.train.loop import Trainer, train
from trickster.train.state import rng_state, set_rng_state

from .conftest import QUIET, count_reads, events

STEPS = {"max_steps": 4, "warmup_steps": 1, "log_every": 1, "eval_every": 4, "save_every": 4}


def _settings() -> tuple:
    return (
        torch.get_num_threads(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
        torch.get_rng_state().tolist(),
        random.getstate(),
        np.random.get_state()[1].tolist(),
    )


def test_train_leaves_threads_flags_and_generators_as_it_found_them(micro, tmp_path):
    torch.set_num_threads(2)
    before = _settings()
    train(micro(training_config=STEPS, device_config={"threads": 1}), **QUIET)
    assert _settings() == before
    missing = micro(data_config={"path": str(tmp_path / "missing")}, device_config={"threads": 1})
    with pytest.raises(UserError):  # fails after the threads and the seed were set
        train(missing, **QUIET)
    assert _settings() == before


def test_a_run_reads_back_its_events_only_when_its_history_is_asked_for(micro, monkeypatch):
    """train() returns without reading metrics.jsonl back (a million logged steps are about 1.5 GB
    of dicts, which `trickster train` never looks at); result.history reads them when first asked."""
    reads = count_reads(monkeypatch)
    result = train(micro(training_config={**STEPS, "eval_every": 2}, device_config={"threads": 1}), **QUIET)
    assert reads == [1]  # the start event, read back into metrics.csv when the run began
    assert [r["step"] for r in events(result, "train")] == [1, 2, 3, 4]
    assert reads == [1, len(result.history)] and result.history[-1]["event"] == "end"


class Counter:
    """Logs, in order, each draw of a batch, each collective and each copy of a tensor's value to
    the host ("sync"), except the sampler's own reads of its host-side window starts."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        self.drawing = False
        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            self.wrap(monkeypatch, torch.Tensor, name, "sync")
        self.wrap(monkeypatch, torch.distributed, "all_reduce", "collective")
        from trickster.data.loader import BatchSampler

        self.wrap(monkeypatch, BatchSampler, "next_rows", "draw")

    def wrap(self, monkeypatch, owner, name, kind):
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            if self.drawing:
                return original(*args, **kwargs)
            self.calls.append(kind)
            self.drawing = kind == "draw"
            try:
                return original(*args, **kwargs)
            finally:
                self.drawing = False

        monkeypatch.setattr(owner, name, wrapped)


def test_a_step_waits_for_the_device_once_after_drawing_the_next_batch(micro, monkeypatch):
    """Accumulation 4 through the distributed path (a process group of one): the step's losses
    stay on the device; one packed all-reduce and one copy to the host end it, and the next step's
    first batch is drawn before that wait. (At 3396d43: 6 host syncs and 2 all-reduces.)"""
    cfg = micro(
        training_config={**STEPS, "gradient_accumulation_steps": 4}, device_config={"enable_ddp": True}
    )
    try:
        with settings_restored():
            trainer = Trainer(cfg, **QUIET)
            trainer.step()  # the first step draws its own first batch
            counter = Counter(monkeypatch)
            for _ in range(2):
                trainer.step()
    finally:
        dist.shutdown()
    one_step = ["draw", "draw", "draw", "draw", "collective", "sync"]
    assert counter.calls == one_step * 2


def test_a_batch_is_one_contiguous_tensor_split_on_the_device(micro, monkeypatch):
    """One (B, T+1) host tensor, copied once; inputs and targets are views of the copy."""
    with settings_restored():
        trainer = Trainer(micro(training_config=STEPS), **QUIET)
    copied = []
    to = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        copied.append(self)
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    x, y = trainer.batches.next()
    assert len(copied) == 1
    (host,) = copied
    assert host.is_contiguous() and host.shape == (8, 64 + 1)
    assert x.shape == y.shape == (8, 64)
    assert x._base is not None and x._base is y._base
    assert torch.equal(x[:, 1:], y[:, :-1])  # the targets are the inputs, one token on


def test_the_logged_peak_memory_is_the_training_steps(micro, monkeypatch):
    """Peak memory is reset after setup (the matmul ceiling) and after evaluations, so each train
    event reports the steps' own peak. A fake allocator stands in for CUDA's statistics."""
    peak = {"now": 0.0}

    def grows_to(gib, fn):
        def wrapped(*args, **kwargs):
            peak["now"] = max(peak["now"], gib)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(loop_module, "mfu_peak", grows_to(10.0, loop_module.mfu_peak))
    monkeypatch.setattr(loop_module, "evaluate", grows_to(5.0, loop_module.evaluate))
    monkeypatch.setattr(loop_module, "autocast_for", grows_to(1.0, loop_module.autocast_for))
    monkeypatch.setattr(loop_module, "peak_memory_gib", lambda device: peak["now"])
    monkeypatch.setattr(loop_module, "reset_peak_memory", lambda device: peak.update(now=0.0))
    result = train(micro(training_config={**STEPS, "eval_every": 2}), **QUIET)
    logged = [r["peak_memory_gib"] for r in result.history if r["event"] == "train"]
    assert logged == [1.0, 1.0, 1.0, 1.0]


def test_the_cuda_generator_saved_is_this_processs_device_only(monkeypatch):
    """A process on cuda:3 of a 4-GPU machine saves one CUDA state, and restores it on a machine
    where only 2 GPUs are visible (set_rng_state_all would raise IndexError there)."""
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]
    restored = []

    def set_all(new_states):
        if len(new_states) > 2:
            raise IndexError("list index out of range")

    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(states))

    def set_one(state, device="cuda"):
        restored.append((torch.device(device), state))

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_one)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    with settings_restored():
        saved = rng_state(torch.device("cuda", 3))
        assert len(saved["cuda"]) == 1 and torch.equal(saved["cuda"][0], states[3])
        set_rng_state(saved, torch.device("cuda", 1))
    assert len(restored) == 1
    assert restored[0][0] == torch.device("cuda", 1) and torch.equal(restored[0][1], states[3])


def test_a_sharded_optimizer_index_that_would_run_code_is_refused(tmp_path):
    """The index of a sharded optimizer state is a pickle: only checkpoint records may come out
    of it, never a call such as os.system."""
    import pickle

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    folder = tmp_path / "optimizer"
    groups = dist_checkpoint.save_sharded_optimizer(model, optimizer, folder)
    dist_checkpoint.load_sharded_optimizer(model, optimizer, folder, groups)  # a genuine index loads

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))

    (folder / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UserError, match="refused or damaged .* resume from another checkpoint"):
        dist_checkpoint.load_sharded_optimizer(model, optimizer, folder, groups)
    assert not marker.exists()


def one_step_gradients(micro, monkeypatch, **training) -> tuple:
    """A Trainer's first step, its gradients as the optimizer gets them, and the weights before."""
    cfg = micro(training_config={**STEPS, "batch_size": 4, "gradient_accumulation_steps": 2, **training})
    with settings_restored():
        trainer = Trainer(cfg, **QUIET)
        before = copy.deepcopy(trainer.model)
        seen = {}
        monkeypatch.setattr(
            trainer.scaler,
            "step",
            lambda optimizer: seen.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()}),
        )
        result = trainer.step()
    return trainer, before, seen, result


def mean_loss_gradients(trainer, model) -> tuple[float, dict]:
    """The loss and gradients worked out without the Trainer: the step's two micro-batches of 4
    windows drawn again from a sampler of the run's seed, one F.cross_entropy over the full logits
    of all 8 windows (every target counted once), one backward pass."""
    t = trainer.cfg.training
    sampler = BatchSampler(trainer.data.train, trainer.cfg.seq_len, 4, t.seed)
    x, y = (torch.cat(pair) for pair in zip(sampler.next_batch(), sampler.next_batch(), strict=True))
    logits, _ = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}


def test_accumulated_micro_batches_give_the_gradient_and_loss_of_the_whole_batch(micro, monkeypatch):
    """gradient_accumulation_steps=2 of 4 windows is one batch of 8: the optimizer gets the
    gradient of the mean loss over all 8 windows' tokens (not the sum of the two micro-batches'
    means), and the step reports that mean. No clipping (grad_clip 0). Its tokens, for tokens_seen
    and MFU: 2 micro-batches x 4 windows x 64 tokens."""
    trainer, before, seen, result = one_step_gradients(micro, monkeypatch, grad_clip=0.0)
    assert trainer.tokens_per_step == 512
    loss, expected = mean_loss_gradients(trainer, before)
    assert result.loss == pytest.approx(loss, rel=1e-5)
    for name, grad in expected.items():
        torch.testing.assert_close(seen[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    norm = torch.cat([g.flatten() for g in expected.values()]).norm().item()
    assert result.grad_norm == pytest.approx(norm, rel=1e-4)


def test_gradients_above_grad_clip_are_scaled_down_to_it(micro, monkeypatch):
    """grad_clip 0.05, below the first step's norm: the optimizer gets the whole-batch gradient
    times 0.05 / its norm (one factor for every parameter, so its direction is kept), and the step
    reports the norm before clipping."""
    trainer, before, seen, result = one_step_gradients(micro, monkeypatch, grad_clip=0.05)
    _, expected = mean_loss_gradients(trainer, before)
    norm = torch.cat([g.flatten() for g in expected.values()]).norm().item()
    assert norm > 0.1 and result.grad_norm == pytest.approx(norm, rel=1e-4)
    for name, grad in expected.items():
        torch.testing.assert_close(seen[name], grad * 0.05 / norm, rtol=1e-4, atol=1e-8, msg=name)

"""The validation set: one set of windows per run, whatever the processes and micro-batches."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from trickster import run_checkpoints
from trickster.data.loader import load_data
from trickster.errors import UserError
from trickster.model.transformer import IGNORE_INDEX, Transformer
from trickster.observe.events import read_metrics
from trickster.train import dist
from trickster.train.loop import train
from trickster.train.validate import evaluate, validation_batches

from .conftest import QUIET, micro_config


def shares(data, cfg, world_size: int, draw_width: int):
    """Every process's validation batches, as validation_batches gives them to that process."""
    jobs = [dist.Dist(rank=r, world_size=world_size) for r in range(world_size)]
    return [validation_batches(data, cfg, job, draw_width) for job in jobs]


def windows_of(shares_) -> torch.Tensor:
    return torch.cat([x for batches in shares_ for x, _ in batches])


@pytest.mark.parametrize(("batch_size", "world_size"), [(8, 1), (4, 2), (2, 4), (1, 8), (3, 2), (8, 3)])
def test_the_set_does_not_depend_on_how_processes_split_it(batch_size, world_size, shakespeare_dir, tmp_path):
    """Drawn 4 x 8 windows wide when the run began: the same 32 windows in the same order for any
    later split, each process with as many micro-batches as the others (FSDP2 needs that), none
    empty, none above batch_size by more than the remainder of an uneven split."""
    data = load_data(shakespeare_dir)
    cfg = micro_config(shakespeare_dir, tmp_path, training_config={"eval_batches": 4, "batch_size": 8})
    reference = windows_of(shares(data, cfg, 1, 8))
    assert reference.shape == (32, cfg.seq_len)
    cfg.training.batch_size = batch_size
    split = shares(data, cfg, world_size, 8)
    assert torch.equal(windows_of(split), reference)
    counts = {len(batches) for batches in split}
    assert len(counts) == 1
    sizes = [len(x) for batches in split for x, _ in batches]
    assert min(sizes) >= 1 and max(sizes) <= batch_size + 1


def test_more_processes_than_windows_is_one_line(shakespeare_dir, tmp_path):
    data = load_data(shakespeare_dir)
    cfg = micro_config(shakespeare_dir, tmp_path, training_config={"eval_batches": 1, "batch_size": 2})
    with pytest.raises(UserError, match="raise training_config.eval_batches"):
        validation_batches(data, cfg, dist.Dist(rank=0, world_size=3), draw_width=2)


def test_the_loss_is_the_mean_over_every_target_of_the_set(chat_data, trained_run, tmp_path):
    """Prompt tokens carry no target, so windows hold different numbers of targets: the loss must
    weigh each target once (not each batch), whatever the batches. Counted here with one
    cross-entropy over all windows' logits."""
    data = load_data(chat_data[0])
    cfg = micro_config(chat_data[0], tmp_path, training_config={"eval_batches": 3, "batch_size": 4})
    torch.manual_seed(0)
    model = Transformer(cfg.model.model_copy(update={"vocab_size": data.tokenizer.vocab_size})).eval()
    whole = validation_batches(data, cfg)
    inputs, targets = torch.cat([x for x, _ in whole]), torch.cat([y for _, y in whole])
    per_window = (targets != IGNORE_INDEX).sum(dim=1)
    assert per_window.min() != per_window.max()  # else weighing batches equally would agree too
    with torch.no_grad():
        logits = model(inputs)[0]
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX).item()
    cfg.training.batch_size = 3  # 12 windows in 4 batches of 3, each with its own number of targets
    assert evaluate(model, validation_batches(data, cfg, draw_width=4), torch.device("cpu"), "float32") == (
        pytest.approx(expected, rel=1e-5)
    )


@pytest.mark.slow
def test_a_resume_with_another_micro_batch_split_evaluates_the_same_set(shakespeare_dir, tmp_path):
    """8 windows a step, resumed at step 10 as 4 windows x 2 micro-batches: the same global batch,
    so the same training; the validation losses after the resume equal the uninterrupted run's,
    which they did not when the set was drawn batch_size x world_size windows wide."""
    training = {"max_steps": 20, "eval_every": 5, "save_every": 10, "sample_tokens": 0}
    whole = train(micro_config(shakespeare_dir, tmp_path / "whole", training_config=training), **QUIET)
    run_dir = tmp_path / "resumed"
    shutil.copytree(whole.run_dir / "checkpoints" / "step_000010", run_dir / "checkpoints" / "step_000010")
    split = {**training, "batch_size": 4, "gradient_accumulation_steps": 2}
    train(micro_config(shakespeare_dir, run_dir, training_config=split), resume=True, **QUIET)

    def val_losses(folder):
        return [
            (r["step"], r["val_loss"]) for r in read_metrics(folder / "metrics.jsonl") if r["event"] == "eval"
        ]

    after = [(s, loss) for s, loss in val_losses(whole.run_dir) if s >= 10]
    resumed = val_losses(run_dir)  # step 10's evaluation again: its checkpoint was saved before it
    assert [s for s, _ in resumed] == [s for s, _ in after] == [10, 15, 20]
    for (_, a), (_, b) in zip(resumed, after, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_a_new_run_evaluates_the_same_set_however_its_global_batch_is_split(shakespeare_dir, tmp_path):
    """8 windows x 1 micro-batch and 4 x 2: the same global batch and eval_batches, the same seed,
    so the same untrained model must score the same validation set at step 0. The set was drawn
    batch_size x processes wide: 32 windows against 16 others (4.1916 against 4.1973). The two
    differ now only in how the micro-batches' sums are rounded."""
    losses, widths = [], []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        training = {"max_steps": 1, "warmup_steps": 0, "sample_tokens": 0}
        training |= {"batch_size": batch_size, "gradient_accumulation_steps": accumulation}
        run_dir = tmp_path / f"{batch_size}x{accumulation}"
        result = train(micro_config(shakespeare_dir, run_dir, training_config=training), **QUIET)
        first = [r for r in result.history if r["event"] == "eval"][0]
        assert first["step"] == 0
        losses.append(first["val_loss"])
        widths.append(run_checkpoints.read_info(result.run_dir / "checkpoints" / "final")["val_draw_width"])
    assert widths == [8, 8]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=0)

"""Evaluation during training: the run's fixed validation batches, their mean loss, and samples."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from trickster.config import Config, TrainingConfig
from trickster.data.loader import PreparedData, fixed_batches
from trickster.data.tokenizers import Tokenizer
from trickster.errors import UserError
from trickster.model.generate import generate
from trickster.model.transformer import IGNORE_INDEX, Transformer
from trickster.prompts import encodable_ids, new_document
from trickster.train import dist
from trickster.train.device import autocast_for
from trickster.train.state import nonfinite_weights


def draw_width_of(t: TrainingConfig, world_size: int = 1) -> int:
    """The windows of one validation draw for a new run: its global batch, batch_size x
    gradient_accumulation_steps x processes, so that the set does not depend on how a global batch
    is split into micro-batches or processes (8 x 1 and 4 x 2 evaluate the same windows)."""
    return t.batch_size * t.gradient_accumulation_steps * world_size


def validation_batches(
    data: PreparedData, cfg: Config, job: dist.Dist | None = None, draw_width: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This process's share of the run's validation windows: every evaluation (and `trickster
    compare`) uses the same set, however many processes share it and however they split a batch.

    The set is eval_batches draws of `draw_width` windows from the val split's own generator;
    `draw_width` is the global batch when the run began (draw_width_of; its checkpoints record it: a
    resume with other processes or micro-batches keeps the set; before 2026-12-02 it was
    batch_size x processes). Each process takes an equal slice (give or
    take a window), in as many micro-batches as every other process (FSDP2 gathers weights in every
    forward), each of at most about batch_size windows. `evaluate` and `target_count` give each
    process's mean and its weight in the mean over all the set's targets, whatever the slices.
    """
    t, job = cfg.training, job or dist.Dist()
    width = draw_width or draw_width_of(t, job.world_size)
    drawn = fixed_batches(data.val, cfg.seq_len, width, t.eval_batches, seed=t.seed + 1)
    inputs, targets = torch.cat([x for x, _ in drawn]), torch.cat([y for _, y in drawn])
    slices = torch.arange(len(inputs)).tensor_split(job.world_size)
    if len(slices[-1]) == 0:
        raise UserError(
            f"the validation set has {len(inputs)} windows, fewer than the {job.world_size} processes; "
            "raise training_config.eval_batches"
        )
    micro_batches = min(-(-len(slices[0]) // t.batch_size), len(slices[-1]))  # none of them empty
    mine = slices[job.rank]
    return [(inputs[part], targets[part]) for part in mine.tensor_split(micro_batches)]


@torch.no_grad()
def evaluate(
    model, batches, device: torch.device, dtype_name: str, progress: Callable[[int, int], None] | None = None
) -> float:
    """Mean cross-entropy over every target of `batches`, whatever their sizes, with one host
    sync: the model's loss is a batch's mean over its targets (a loss mask's prompt tokens are none).
    `progress(done, total)` is called after each batch is queued."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, device=device)  # summed loss, targets
    for done, (x, y) in enumerate(batches, 1):
        y = y.to(device)
        with autocast_for(device, dtype_name):
            _, loss = model(x.to(device), y)
        targets = (y != IGNORE_INDEX).sum()
        sums += torch.stack([loss.float() * targets, targets.float()])
        if progress is not None:
            progress(done, len(batches))
    model.train(was_training)
    total, targets = sums.tolist()
    return total / targets


def target_count(batches) -> int:
    """The targets in `batches`: what a process's mean loss weighs when processes pool theirs."""
    return sum(int((y != IGNORE_INDEX).sum()) for _, y in batches)


def pooled_loss(local: float, batches, model, device: torch.device, job) -> tuple[float, bool]:
    """The mean loss over every target of the processes' `batches` from each one's `local` mean
    (`evaluate`), and whether it is finite and so is every process's `model` (under FSDP2 each
    holds a shard only). Collective: every process calls it."""
    targets = target_count(batches)  # processes' slices may hold unequal numbers
    packed = torch.stack([torch.tensor(local * targets), torch.tensor(targets)]).to(device)
    packed = torch.cat([packed, nonfinite_weights(model)[None]])
    total, all_targets, broken = dist.sum_across(packed, job)
    loss = total / all_targets
    return loss, not broken and math.isfinite(loss)


def sample_due(t: TrainingConfig, step: int) -> bool:
    """Whether the evaluation at `step` prints a sample (sample_every; 0 tokens or 0 never)."""
    if t.sample_tokens == 0 or t.sample_every == 0:
        return False
    return t.sample_every is None or step % t.sample_every == 0 or step == t.max_steps


def logged_sample(model, tokenizer: Tokenizer, t: TrainingConfig, job: dist.Dist) -> str | None:
    """The sample an evaluation logs, on rank 0 (None on the others). Under DDP rank 0 holds the
    whole model and samples alone; under FSDP2 every forward gathers the layers from all ranks, so
    all of them sample, each taking rank 0's token, and stay in step to the same stop token."""
    if job.mode == "fsdp":
        agree = functools.partial(dist.from_rank0, d=job)
    elif job.is_main:
        agree = None
    else:
        return None
    return sample_text(model, tokenizer, t.sample_prompt, t.sample_tokens, t.seed, agree, job.gathered_dtype)


def sample_text(
    model: Transformer, tokenizer: Tokenizer, prompt: str, tokens: int, seed: int, agree=None, dtype=None
) -> str:
    """A reproducible sample that does not touch the training RNG. `agree` and `dtype`: as
    model.generate's.

    A prompt the tokenizer cannot encode (a character the corpus lacks), or none, is not fatal:
    the sample starts a new document, as `trickster generate` does (prompts.new_document). Its ids
    start as generate's and the training documents' do (an imported Llama tokenizer's <s>).
    """
    ids = encodable_ids(tokenizer, prompt)
    if not ids:
        prompt, ids = new_document(tokenizer)
    out = generate(
        model,
        tokenizer.start_ids() + ids,
        tokens,
        temperature=0.8,
        seed=seed,
        vocab_limit=tokenizer.vocab_size,
        stop_ids=tokenizer.stop_ids,
        agree=agree,
        dtype=dtype,
    )
    return prompt + tokenizer.decode(out)

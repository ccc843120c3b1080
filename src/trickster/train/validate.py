"""Evaluation during training: the run's fixed validation batches, their mean loss, and samples."""

from __future__ import annotations

import torch

from trickster.config import Config
from trickster.data.loader import PreparedData, fixed_batches
from trickster.data.tokenizers import Tokenizer
from trickster.errors import UserError
from trickster.model.generate import generate
from trickster.model.transformer import Transformer
from trickster.train import dist
from trickster.train.device import autocast_for


def validation_batches(
    data: PreparedData, cfg: Config, job: dist.Dist | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The run's fixed validation windows: every evaluation (and `trickster compare`) uses these.

    Batches hold batch_size x world_size windows, whatever the number of processes; each process
    evaluates its equal slice, so the mean of the processes' losses is the loss of the whole set.
    """
    t, job = cfg.training, job or dist.Dist()
    batches = fixed_batches(
        data.val, cfg.seq_len, t.batch_size * job.world_size, t.eval_batches, seed=t.seed + 1
    )
    mine = slice(job.rank * t.batch_size, (job.rank + 1) * t.batch_size)
    return [(x[mine], y[mine]) for x, y in batches]


@torch.no_grad()
def evaluate(model, batches, device: torch.device, dtype_name: str) -> float:
    """Mean cross-entropy over fixed validation batches."""
    was_training = model.training
    model.eval()
    losses = []
    for x, y in batches:
        with autocast_for(device, dtype_name):
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item())
    model.train(was_training)
    return sum(losses) / len(losses)


def sample_text(
    model: Transformer, tokenizer: Tokenizer, prompt: str, tokens: int, seed: int, agree=None, dtype=None
) -> str:
    """A reproducible sample that does not touch the training RNG. `agree` and `dtype`: as
    model.generate's.

    A prompt the tokenizer cannot encode (a character the corpus lacks) is dropped, not fatal:
    the sample then starts from end-of-text, or from the first symbol.
    """
    try:
        ids = tokenizer.encode(prompt)
    except UserError:
        ids, prompt = [], ""
    if not ids:
        ids = [tokenizer.eot_id] if tokenizer.eot_id is not None else [0]
    out = generate(
        model,
        ids,
        tokens,
        temperature=0.8,
        seed=seed,
        vocab_limit=tokenizer.vocab_size,
        stop_id=tokenizer.eot_id,
        agree=agree,
        dtype=dtype,
    )
    return prompt + tokenizer.decode(out)

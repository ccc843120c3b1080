"""HellaSwag during training (training_config.hellaswag_every), as llm.c's train_gpt2 scores it
every N steps: acc and acc_norm of the model as it trains, scored as `trickster eval --task
hellaswag` scores a checkpoint (observe/hellaswag.py), into a `hellaswag` event and a line.

The examples are read (downloaded once into the cache, or training_config.hellaswag_file), checked
and rendered when the run starts: a missing file, or a tokenizer that can score none of them, stops
it before its first step, never in the middle. Each process scores an equal share of the scorable
examples in as many forward passes as every other (FSDP2 gathers the weights in every forward) and
the counts are summed, as llm.c sums its ranks'. In eval mode, without gradients: no dropout, so
no random number is drawn and a resumed run stays exact.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import TYPE_CHECKING

import torch

from trickster.config import Config, TrainingConfig
from trickster.data.tokenizers import Tokenizer
from trickster.errors import UserError
from trickster.observe import hellaswag
from trickster.observe.hellaswag import Accuracy, Rows
from trickster.train import dist
from trickster.train.rank0 import on_main

if TYPE_CHECKING:  # loop imports this module
    from trickster.train.loop import Trainer

OPTION = "training_config.hellaswag_file"
# logits a forward pass returns at most (float32, a row per token: the model forms them whole)
LOGITS_PER_PASS = 2**28


class HellaSwagEval:
    """The run's HellaSwag examples, rendered once for the model's context, and this process's
    share of them. Without training_config.hellaswag_every it holds nothing and is never due."""

    def __init__(self, cfg: Config, tokenizer: Tokenizer, job: dist.Dist):
        t = cfg.training
        self.every, self.job, self.vocab = t.hellaswag_every, job, tokenizer.vocab_size
        self.rows: list[Rows] = []  # this process's share
        self.counts = Accuracy(0)  # what every scoring reads: examples, and those left out
        self.source = ""  # where the file was read
        self.most = self.fewest = self.longest = 1  # rows of a process's share; tokens of a row
        self.waiting = _waiting(t)  # keys that wait for hellaswag_every
        if self.every is None:
            return
        examples, self.source = on_main(job, _first, t.hellaswag_file, t.hellaswag_examples)
        rows, self.counts = hellaswag.render_all(tokenizer, examples, cfg.seq_len)
        if not rows:
            raise hellaswag.nothing_to_score(self.counts, "; or set training_config.hellaswag_every= (empty)")
        slices = torch.arange(len(rows)).tensor_split(job.world_size)
        if len(slices[-1]) == 0:
            raise UserError(
                f"training_config.hellaswag_examples={t.hellaswag_examples:,} leaves {len(rows):,} "
                f"HellaSwag examples this model can score, fewer than the {job.world_size} processes; "
                "raise training_config.hellaswag_examples"
            )
        self.rows = [rows[i] for i in slices[job.rank]]
        self.most, self.fewest = len(slices[0]), len(slices[-1])
        self.longest = max(len(tokens) for row in rows for tokens in row.tokens)

    @property
    def enabled(self) -> bool:
        return self.every is not None

    def due(self, step: int, last: bool) -> bool:
        return self.every is not None and (step % self.every == 0 or last)

    def passes(self, batch_tokens: int) -> list[list[Rows]]:
        """This process's rows in forward passes of at most about `batch_tokens` tokens (a training
        micro-batch's) and LOGITS_PER_PASS logits, as many passes as every other process has."""
        # the same on every process: the longest row of all, the largest share
        per_pass = max(1, min(batch_tokens, LOGITS_PER_PASS // self.vocab) // (4 * self.longest))
        count = min(-(-self.most // per_pass), self.fewest)  # none of them empty
        return [[self.rows[i] for i in part] for part in torch.arange(len(self.rows)).tensor_split(count)]

    def score(self, model, device: torch.device, dtype_name: str, batch_tokens: int) -> Accuracy:
        """acc and acc_norm of `model` over every process's share; the model's mode is restored.
        Collective: every process calls it."""
        mine = Accuracy(self.counts.examples)
        with contextlib.ExitStack() as stack:
            stack.callback(model.train, model.training)  # also when a pass fails
            model.eval()
            # compiled blocks (device_config.compile) run eagerly, as generation runs them: each
            # pass's rows and width differ, and a new shape would compile them again
            if hasattr(torch.compiler, "set_stance"):  # torch >= 2.6
                stack.enter_context(torch.compiler.set_stance("force_eager"))
            for batch in self.passes(batch_tokens):
                hellaswag.add_batch(mine, model, batch, self.vocab, device, dtype_name)
        counts = torch.tensor([mine.correct, mine.correct_norm, mine.scored, mine.cut], device=device)
        correct, correct_norm, scored, cut = (int(n) for n in dist.sum_across(counts, self.job))
        return Accuracy(
            self.counts.examples, scored, correct, correct_norm, cut, Counter(self.counts.skipped)
        )

    def unused_note(self) -> str | None:
        """The line for hellaswag_file or hellaswag_examples set without hellaswag_every: kept (a
        config may hold them for later), but said, as no scoring will come of them."""
        if not self.waiting:
            return None
        keys = " and ".join(f"training_config.{key}" for key in self.waiting)
        return (
            f"note: {keys} take{'' if len(self.waiting) > 1 else 's'} effect only with "
            "training_config.hellaswag_every, which is not set: this run scores no HellaSwag"
        )

    def header(self) -> str:
        """What the run's header says of it: how often, which examples, and those left out."""
        examples = self.counts.examples
        line = (
            f"HellaSwag every {self.every:,} steps: the first {examples:,} of the "
            f"{hellaswag.VAL_EXAMPLES:,} validation examples ({self.source})"
        )
        skipped = hellaswag.skipped_summary(self.counts)
        return line + (f"; left out: {skipped}" if skipped else "")


def _waiting(t: TrainingConfig) -> list[str]:
    """The HellaSwag keys set to other than their default while hellaswag_every is not."""
    if t.hellaswag_every is not None:
        return []
    fields = type(t).model_fields
    return [key for key in ("hellaswag_file", "hellaswag_examples") if getattr(t, key) != fields[key].default]


def _first(path: str | None, count: int) -> tuple[list[hellaswag.Example], str]:
    examples, source = hellaswag.load_examples(path, option=OPTION)
    return examples[:count], source


def score(trainer: Trainer) -> None:
    """The run's HellaSwag scoring at its step: a `hellaswag` event and a line. Collective."""
    cfg, state = trainer.cfg, trainer.state
    batch_tokens = cfg.training.batch_size * cfg.seq_len  # a training micro-batch's
    accuracy = trainer.hellaswag.score(trainer.model, trainer.device, cfg.device.dtype, batch_tokens)
    trainer.metrics.write("hellaswag", state.step, **accuracy.to_dict(), tokens_seen=state.tokens_seen)
    trainer.out.line(
        f"step {state.step:>6}: HellaSwag acc_norm {accuracy.acc_norm:.4f}, acc {accuracy.acc:.4f} "
        f"({accuracy.scored:,} examples; chance 0.25)"
    )

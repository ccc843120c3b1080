"""Score a model on a token sequence: loss, perplexity and bits per byte (`trickster eval`).

The sequence is cut into consecutive, non-overlapping windows of the model's training context
(seq_len = T). Every token after the first is predicted exactly once, from the tokens before it
in its own window: the first target of a window sees 1 token, the last sees T, so on average a
token sees about T/2 tokens of context. (A sliding window would give every token the full T at
T times the cost; this is the cheaper, standard choice, and the same for every model scored.)

Bits per byte = summed cross-entropy in nats / ln 2 / UTF-8 bytes of the text the scored tokens
encode. Unlike loss and perplexity it does not depend on how the text was cut into tokens, so
models with different tokenizers can be compared on the same text.

The loss is over the ids the tokenizer can produce: the pad rows of a vocabulary padded to a
multiple of 64 are masked, as generation masks them, so the loss here can be a hair below the
training's val loss (which softmaxes over the pad rows too).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from trickster.data.loader import PreparedData, load_data
from trickster.data.token_meaning import same_ids
from trickster.data.tokenizers import Tokenizer
from trickster.data.unknown_character import UnknownCharacter
from trickster.errors import UserError
from trickster.model.generate import mask_unused_rows
from trickster.model.transformer import IGNORE_INDEX
from trickster.train.device import autocast_for

if TYPE_CHECKING:
    from trickster.train.checkpoint_load import LoadedCheckpoint


@dataclass
class Score:
    nats: float  # summed cross-entropy of the scored tokens
    tokens: int  # tokens scored (each predicted once)
    bytes: int  # UTF-8 bytes of the text those tokens encode

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.bytes if self.bytes else float("nan")

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
        }


def text_sequence(tokenizer: Tokenizer, text: str, source: str) -> tuple[np.ndarray, bool]:
    """The ids to score a text file with, and whether every token of the text is predicted.

    The file is one document: it starts as training documents do, after the tokenizer's start id
    (Llama's <s>) or, failing that, after an end-of-text (documents in a prepared stream follow
    one), so that every token of the text is predicted. A char or byte tokenizer with neither
    leaves the text's first token unpredicted.
    """
    if not text:
        raise UserError(f"{source} is empty; pass a file that contains text")
    try:
        ids = tokenizer.encode(text)
    except UnknownCharacter as err:  # named no file, line or column: a needle in a haystack
        raise err.in_file(source) from None
    start = tokenizer.start_ids() or ([] if tokenizer.eot_id is None else [tokenizer.eot_id])
    sequence = np.asarray(start + ids, dtype=np.int64)
    if len(sequence) < 2:
        raise UserError(f"{source} is too short: it encodes to {len(ids)} token, and at least 2 are needed")
    return sequence, bool(start)


@torch.no_grad()
def score_sequence(
    model,
    tokens,
    tokenizer: Tokenizer,
    seq_len: int,
    device: torch.device,
    dtype_name: str = "float32",
    batch_size: int = 8,
    loss_mask=None,
    progress: Callable[[int, int], None] | None = None,
) -> Score:
    """Score `tokens` (a 1-D sliceable sequence) in windows of seq_len; see the module docstring.

    `loss_mask` (same length, 1 = scored) leaves out tokens the data marks as not scored (the
    prompts of prompt/response records); their bytes are left out too. `progress(done, total)` is
    called after each batch of windows.
    """

    n = len(tokens)
    if n < 2:
        raise UserError(f"nothing to score: {n} token(s), and at least 2 are needed")
    model.eval()
    nats, scored, n_bytes = 0.0, 0, 0
    starts = list(range(0, n - 1, seq_len))
    for first in range(0, len(starts), batch_size):
        group = starts[first : first + batch_size]
        # windows shorter than seq_len (the last one) are padded; their padding is never a target
        xs = np.zeros((len(group), seq_len), dtype=np.int64)
        ys = np.full((len(group), seq_len), IGNORE_INDEX, dtype=np.int64)
        for row, s in enumerate(group):
            window = np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64)
            targets = window[1:]
            if loss_mask is not None:
                keep = np.asarray(loss_mask[s + 1 : s + 1 + len(targets)], dtype=bool)
                targets = np.where(keep, targets, IGNORE_INDEX)
            xs[row, : len(window) - 1] = window[:-1]
            ys[row, : len(targets)] = targets
            kept = targets[targets != IGNORE_INDEX]
            scored += len(kept)
            n_bytes += tokenizer.count_bytes(kept)
        x, y = torch.from_numpy(xs).to(device), torch.from_numpy(ys).to(device)
        with autocast_for(device, dtype_name):
            logits, _ = model(x)
        logits = logits.float()
        mask_unused_rows(logits, tokenizer.vocab_size)  # pad rows are never produced
        nats += F.cross_entropy(
            logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        ).item()
        if progress is not None:
            progress(first // batch_size + 1, -(-len(starts) // batch_size))
    if scored == 0:
        raise UserError("nothing to score: the loss mask covers none of these tokens")
    return Score(nats, scored, n_bytes)


def data_not_here(loaded: LoadedCheckpoint) -> str:
    """Why a run's own data cannot be scored from the current folder, and what to pass."""
    path = loaded.info["data_path"]
    if Path(path).is_absolute():  # where the command runs makes no difference: moved or deleted
        return f"the data it trained on, {path}, is not there (moved or deleted?); pass --data DIR"
    return (
        f"the data it trained on, {path}, is not found from here (a run records its data folder as it "
        "was given, relative to where it trained); run from that folder or pass --data DIR"
    )


def run_data(loaded: LoadedCheckpoint, path) -> PreparedData:
    """The prepared folder at `path`, checked to hold the checkpoint's tokenizer."""
    data = load_data(path)
    if not same_ids(data.tokenizer, loaded.tokenizer):
        raise UserError(
            f"data in {path} uses another tokenizer than {loaded.path}; {_data_to_pass(loaded, path)}"
        )
    return data


def _data_to_pass(loaded: LoadedCheckpoint, path) -> str:
    """What to pass instead of a data folder of another tokenizer: the one the run trained on
    (`pass --data DIR` named none), or text prepared with the model's own tokenizer."""
    own = f"prepare your text with its tokenizer: trickster data prepare ... --tokenizer-from {loaded.path}"
    trained_on = loaded.info.get("data_path")
    if not trained_on:
        return own
    if Path(trained_on).resolve() == Path(path).resolve():
        return f"it was prepared again since the model trained on it; {own}"
    return f"pass --data {trained_on} (the data it trained on), or {own}"

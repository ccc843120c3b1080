"""Read a prepared data folder and draw training windows from its memory-mapped token streams.

A folder with a loss mask (prompt/response records, see prepare.py) gives `MaskedTokens` splits:
their windows carry the target IGNORE_INDEX (-100) wherever the mask is 0, so the loss covers the
responses only, and the sampler redraws any window that holds no target at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trickster.errors import UserError
from trickster.tokenizers import Tokenizer, load_tokenizer

IGNORE_INDEX = -100  # a target the loss skips (F.cross_entropy's ignore_index)


@dataclass
class MaskedTokens:
    """A flat token stream and its loss mask (1: a target the loss covers, 0: skipped), same length."""

    tokens: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class PreparedData:
    path: Path
    meta: dict
    tokenizer: Tokenizer
    train: np.ndarray | MaskedTokens  # memory-mapped, flat
    val: np.ndarray | MaskedTokens


def load_data(path: str | Path) -> PreparedData:
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise UserError(
            f"no prepared data in {path} (meta.json missing); run `trickster data prepare "
            "shakespeare --out DIR` and pass that folder with --data DIR"
        )
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{meta_file} is damaged; prepare the data again") from None
    tokenizer = load_tokenizer(path / "tokenizer.json")
    streams = {}
    for split in ("train", "val"):
        file = path / f"{split}.bin"
        expected = meta.get(f"{split}_tokens")
        if not file.is_file():
            raise UserError(f"{file} is missing; prepare the data again")
        size = file.stat().st_size // dtype.itemsize
        if size != expected:
            raise UserError(
                f"{file} holds {size} tokens but meta.json says {expected}; prepare the data again"
            )
        streams[split] = np.memmap(file, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
        if meta.get("loss_mask"):
            streams[split] = MaskedTokens(streams[split], _read_mask(path, meta, split, size))
    return PreparedData(path, meta, tokenizer, streams["train"], streams["val"])


def _read_mask(path: Path, meta: dict, split: str, size: int) -> np.ndarray:
    try:
        file = path / meta["loss_mask"][split]
    except (KeyError, TypeError):
        raise UserError(f"{path / 'meta.json'} is damaged (loss_mask); prepare the data again") from None
    if not file.is_file() or file.stat().st_size != size:
        raise UserError(f"{file} is missing or does not match {split}.bin; prepare the data again")
    return np.memmap(file, dtype=np.uint8, mode="r") if size else np.zeros(0, dtype=np.uint8)


def check_windows(data: PreparedData, seq_len: int) -> None:
    """Both splits must hold at least one window of seq_len inputs plus its shifted target."""
    for split in ("train", "val"):
        tokens = len(getattr(data, split))
        if tokens < seq_len + 1:
            raise UserError(
                f"the {split} split of {data.path} has {tokens} tokens, fewer than one window of "
                f"{seq_len + 1}; use a larger corpus or lower training_config.seq_len"
            )


def windows(
    tokens: np.ndarray | MaskedTokens, starts: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs tokens[s : s+T] and targets tokens[s+1 : s+T+1]: the next token, exactly one ahead.

    With a loss mask, a target whose mask is 0 (a prompt token) becomes IGNORE_INDEX.
    """
    stream = tokens.tokens if isinstance(tokens, MaskedTokens) else tokens
    rows = np.stack([stream[s : s + seq_len + 1] for s in starts.tolist()]).astype(np.int64)
    batch = torch.from_numpy(rows)  # (B, T+1)
    inputs, targets = batch[:, :-1], batch[:, 1:].clone()
    if isinstance(tokens, MaskedTokens):
        mask = np.stack([tokens.loss_mask[s + 1 : s + seq_len + 1] for s in starts.tolist()])
        targets[torch.from_numpy(mask == 0)] = IGNORE_INDEX  # (B, T)
    return inputs, targets


class BatchSampler:
    """Random windows over one flat token stream, reproducible from its state_dict.

    Every process draws the same global batch (batch_size x world_size windows, from the same
    generator) and keeps its own slice: the data order does not depend on how many processes
    share it, and one state_dict describes all of them.

    With a loss mask, a window without a single target (all prompt) is redrawn: it would teach
    nothing, and a batch of only such windows would have no loss at all. Redraws happen on the
    global batch, so every process's generator stays in step.
    """

    MAX_REDRAWS = 1000

    def __init__(
        self,
        tokens: np.ndarray | MaskedTokens,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.tokens) - self.seq_len  # last start that still has a target after it
        starts = torch.randint(0, high, (self.batch_size * self.world_size,), generator=self.generator)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        if not isinstance(self.tokens, MaskedTokens):
            return windows(self.tokens, starts[mine], self.seq_len)
        inputs, targets = windows(self.tokens, starts, self.seq_len)
        for _ in range(self.MAX_REDRAWS):
            empty = (targets == IGNORE_INDEX).all(dim=1)  # (B x world,)
            if not empty.any():
                break
            starts[empty] = torch.randint(0, high, (int(empty.sum()),), generator=self.generator)
            inputs, targets = windows(self.tokens, starts, self.seq_len)
        else:
            if (targets == IGNORE_INDEX).all():
                raise UserError(
                    f"no window of {self.seq_len} tokens found that holds a response token; "
                    "raise training_config.seq_len or use records with shorter prompts"
                )
        return inputs[mine], targets[mine]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def fixed_batches(
    tokens: np.ndarray, seq_len: int, batch_size: int, count: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same `count` batches on every call: validation compares like with like."""
    sampler = BatchSampler(tokens, seq_len, batch_size, seed)
    return [sampler.next_batch() for _ in range(count)]

"""Read a prepared data folder and draw training windows from its memory-mapped token streams."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trickster.errors import UserError
from trickster.tokenizers import Tokenizer, load_tokenizer


@dataclass
class PreparedData:
    path: Path
    meta: dict
    tokenizer: Tokenizer
    train: np.ndarray  # memory-mapped, flat
    val: np.ndarray


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
    return PreparedData(path, meta, tokenizer, streams["train"], streams["val"])


def check_windows(data: PreparedData, seq_len: int) -> None:
    """Both splits must hold at least one window of seq_len inputs plus its shifted target."""
    for split in ("train", "val"):
        tokens = len(getattr(data, split))
        if tokens < seq_len + 1:
            raise UserError(
                f"the {split} split of {data.path} has {tokens} tokens, fewer than one window of "
                f"{seq_len + 1}; use a larger corpus or lower training_config.seq_len"
            )


def windows(tokens: np.ndarray, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, ...]:
    """Inputs tokens[s : s+T] and targets tokens[s+1 : s+T+1]: the next token, exactly one ahead."""
    rows = np.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()]).astype(np.int64)
    batch = torch.from_numpy(rows)  # (B, T+1)
    return batch[:, :-1], batch[:, 1:]


class BatchSampler:
    """Random windows over one flat token stream, reproducible from its state_dict.

    Every process draws the same global batch (batch_size x world_size windows, from the same
    generator) and keeps its own slice: the data order does not depend on how many processes
    share it, and one state_dict describes all of them.
    """

    def __init__(
        self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.tokens) - self.seq_len  # last start that still has a target after it
        starts = torch.randint(0, high, (self.batch_size * self.world_size,), generator=self.generator)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return windows(self.tokens, mine, self.seq_len)

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

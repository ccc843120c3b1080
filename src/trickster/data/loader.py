"""Read a prepared data folder and draw training windows from its memory-mapped token streams.

A split is one token stream: the memory-mapped file itself (a flat folder, or one shard), or its
shards read in order as one (`ShardedTokens`), so that windows cross shard boundaries.

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

from trickster.data.tokenizers import Tokenizer, load_tokenizer
from trickster.errors import UserError

IGNORE_INDEX = -100  # a target the loss skips (F.cross_entropy's ignore_index)


@dataclass
class MaskedTokens:
    """A flat token stream and its loss mask (1: a target the loss covers, 0: skipped), same length."""

    tokens: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)


class ShardedTokens:
    """A split's memory-mapped shards read as one flat stream: `len(x)`, `x[i]`, `x[a:b]` (a numpy
    array, joined across shard boundaries), iteration and `np.asarray(x)` (which reads it all)."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.ends = np.cumsum([len(s) for s in shards])  # token offset where each shard ends
        self.starts = self.ends - [len(s) for s in shards]  # ... and where it begins
        self.dtype = shards[0].dtype

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return np.asarray(self)[index]
            if stop <= start:
                return np.zeros(0, self.dtype)
            first = int(np.searchsorted(self.ends, start, side="right"))
            last = int(np.searchsorted(self.ends, stop - 1, side="right"))
            pieces = []
            for i in range(first, last + 1):
                base = int(self.starts[i])
                pieces.append(self.shards[i][max(start - base, 0) : stop - base])
            return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        position = int(index) + (len(self) if index < 0 else 0)
        if not 0 <= position < len(self):
            raise IndexError(f"token {index} is outside a stream of {len(self)}")
        shard = int(np.searchsorted(self.ends, position, side="right"))
        return self.shards[shard][position - int(self.starts[shard])]

    def __iter__(self):
        for shard in self.shards:
            yield from shard

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        joined = np.concatenate(self.shards)
        return joined if dtype is None else joined.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self, dtype=dtype)


@dataclass
class PreparedData:
    path: Path
    meta: dict
    tokenizer: Tokenizer
    train: np.ndarray | ShardedTokens | MaskedTokens  # memory-mapped, one flat stream
    val: np.ndarray | ShardedTokens | MaskedTokens


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
    if meta.get("layout") == "shards":
        streams = {split: _read_shards(path, meta, split, dtype) for split in ("train", "val")}
        return PreparedData(path, meta, tokenizer, streams["train"], streams["val"])
    streams = {}  # a flat folder (format 1, and prompt/response records with their loss masks)
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


def _read_shards(path: Path, meta: dict, split: str, dtype: np.dtype) -> np.ndarray | ShardedTokens:
    try:
        shards = json.loads((path / meta["index"]).read_text(encoding="utf-8"))[split]
        files = [(path / s["file"], int(s["tokens"])) for s in shards]
    except FileNotFoundError:
        raise UserError(f"{path / meta['index']} is missing; prepare the data again") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path / 'index.json'} is damaged; prepare the data again") from None
    arrays = []
    for file, tokens in files:
        size = file.stat().st_size // dtype.itemsize if file.is_file() else None
        if size != tokens:
            found = "is missing" if size is None else f"holds {size} tokens but index.json says {tokens}"
            raise UserError(f"{file} {found}; prepare the data again")
        arrays.append(np.memmap(file, dtype=dtype, mode="r"))
    expected = meta.get(f"{split}_tokens")
    if sum(len(a) for a in arrays) != expected or not arrays:
        raise UserError(
            f"the {split} shards of {path} do not add up to meta.json's {expected}; prepare the data again"
        )
    return arrays[0] if len(arrays) == 1 else ShardedTokens(arrays)


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

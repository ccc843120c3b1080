"""Read a prepared data folder and draw training windows from its memory-mapped token streams.

A split is one `TokenStream`: its memory-mapped shards read in order as one, so that windows cross
shard boundaries (a folder written before shards, format 1, is read as one shard per split).

A split with a loss mask (prompt/response records, see records.py) carries it as `loss_mask`: its
windows have the target IGNORE_INDEX (-100) wherever the mask is 0, so the loss covers the
responses only, and the sampler redraws any window that holds no target at all.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trickster.atomic import restore_replaced
from trickster.data import record_prompts
from trickster.data.not_prepared import not_prepared
from trickster.data.shards import file_sha256
from trickster.data.tokenizers import Tokenizer, load_tokenizer
from trickster.errors import UserError
from trickster.model.transformer import IGNORE_INDEX  # a target the loss skips
from trickster.plural import counted


class TokenStream:
    """A split: its memory-mapped shards read as one token stream, with the loss mask beside them.

    `len(x)`, `x[i]`, `x[a:b]` (a numpy array, joined across shard boundaries), iteration,
    `np.asarray(x)` (which reads it all); `loss_mask` is the same kind of stream over the masks (1:
    a target the loss covers, 0: skipped), or None when the loss covers every token.
    """

    def __init__(
        self,
        shards: list[np.ndarray],
        masks: list[np.ndarray] | None = None,
        limit: int | None = None,
        files: list[Path] | None = None,
    ):
        self.shards = shards
        self.ends = np.cumsum([len(s) for s in shards])  # token offset where each shard ends
        self.starts = self.ends - [len(s) for s in shards]  # ... and where it begins
        self.dtype = shards[0].dtype
        self.loss_mask = None if masks is None else TokenStream(masks)
        self.limit, self.files = limit, files  # the tokenizer's ids, and the shards' files to name

    def checked(self, tokens: np.ndarray) -> np.ndarray:
        """`tokens` as read, refused when one is past the tokenizer's ids: a damaged shard (bytes
        flipped on disk) ended in an IndexError traceback in the embedding, mid-run."""
        if self.limit is None or not tokens.size or int(tokens.max()) < self.limit:
            return tokens
        shard = next(i for i, s in enumerate(self.shards) if len(s) and int(s.max()) >= self.limit)
        name = self.files[shard] if self.files else f"token shard {shard}"
        raise UserError(
            f"{name} holds token id {int(self.shards[shard].max())}, past the {self.limit} ids of "
            "the data's tokenizer: the file is damaged; prepare the data again"
        )

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
            return self.checked(pieces[0] if len(pieces) == 1 else np.concatenate(pieces))
        position = int(index) + (len(self) if index < 0 else 0)
        if not 0 <= position < len(self):
            raise IndexError(f"token {index} is outside a stream of {len(self)}")
        shard = int(np.searchsorted(self.ends, position, side="right"))
        return self.shards[shard][position - int(self.starts[shard])]

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """x[s : s+length] for each start, as the rows of one (len(starts), length) array. Windows
        inside one shard are read with one gather per shard (a Python slice per window costs more
        than the copy, on a GPU as much as a small model's step); the few that cross a shard
        boundary are joined as x[a:b] joins them."""
        offsets = np.arange(length)
        if len(self.shards) == 1:
            return self.checked(self.shards[0][starts[:, None] + offsets])  # (len(starts), length)
        out = np.empty((len(starts), length), self.dtype)
        shard_of = np.searchsorted(self.ends, starts, side="right")
        for shard in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == shard)
            local = starts[rows] - self.starts[shard]
            inside = local + length <= len(self.shards[shard])
            out[rows[inside]] = self.shards[shard][local[inside, None] + offsets]  # (n, length)
            for row in rows[~inside]:
                out[row] = self[int(starts[row]) : int(starts[row]) + length]
        return self.checked(out)

    def __iter__(self):
        for shard in self.shards:
            yield from shard

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        joined = self.shards[0] if len(self.shards) == 1 else np.concatenate(self.shards)
        return np.asarray(joined) if dtype is None else joined.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self, dtype=dtype)


@dataclass
class PreparedData:
    path: Path
    meta: dict
    tokenizer: Tokenizer
    train: TokenStream  # memory-mapped, one stream
    val: TokenStream

    @functools.cached_property
    def record_prompt(self) -> str | None:
        """A prompt written as the folder's records write theirs (record_prompts.py; None unless it
        holds prompt/response records), read once: a run's samples and its `next:` hint use it."""
        return record_prompts.record_prompt(self)


def load_data(path: str | Path) -> PreparedData:
    path = Path(path)
    meta_file = path / "meta.json"
    restore_replaced(path)  # a preparation into an existing folder killed between its two renames
    if not meta_file.exists():  # a folder in its place is damaged, below
        raise not_prepared(path)
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{meta_file} is damaged; prepare the data again") from None
    tokenizer = load_tokenizer(path / "tokenizer.json")
    index = _read_index(path, meta) if meta.get("layout") == "shards" else _flat_index(meta)
    ids = tokenizer.vocab_size
    streams = {split: _read_split(path, meta, index[split], split, dtype, ids) for split in ("train", "val")}
    return PreparedData(path, meta, tokenizer, streams["train"], streams["val"])


def _read_index(path: Path, meta: dict) -> dict:
    try:
        index = json.loads((path / meta["index"]).read_text(encoding="utf-8"))
        for split in ("train", "val"):
            for shard in index[split]:
                shard["file"], shard["tokens"] = str(shard["file"]), int(shard["tokens"])
        return index
    except FileNotFoundError:
        raise UserError(f"{path / meta['index']} is missing; prepare the data again") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path / 'index.json'} is damaged; prepare the data again") from None


def damaged_shards(path: Path, meta: dict) -> list[Path]:
    """The shards and masks of a prepared folder whose bytes are not those index.json recorded
    (sha256). Every byte is read: `data report` asks, not each training start."""
    if meta.get("layout") != "shards":
        return []  # format 1 recorded no checksums
    index, damaged = _read_index(path, meta), []
    for shard in (s for split in ("train", "val") for s in index[split]):
        for name, digest in (
            (shard["file"], shard.get("sha256")),
            (shard.get("mask"), shard.get("mask_sha256")),
        ):
            if name and digest and file_sha256(path / name) != digest:
                damaged.append(path / name)
    return damaged


def _flat_index(meta: dict) -> dict:
    """A folder written before shards (format 1: train.bin, val.bin, masks beside): one shard each."""
    index = {}
    for split in ("train", "val"):
        shard = {"file": f"{split}.bin", "tokens": meta.get(f"{split}_tokens")}
        if meta.get("loss_mask"):
            shard["mask"] = f"{split}.mask.bin"
        index[split] = [shard]
    return index


def _read_split(
    path: Path, meta: dict, shards: list[dict], split: str, dtype: np.dtype, ids: int
) -> TokenStream:
    arrays, masks = [], []
    for shard in shards:
        file, tokens = path / shard["file"], shard["tokens"]
        size = file.stat().st_size // dtype.itemsize if file.is_file() else None
        if size != tokens:
            found = "is missing" if size is None else f"holds {size} tokens but index.json says {tokens}"
            raise UserError(f"{file} {found}; prepare the data again")
        arrays.append(np.memmap(file, dtype=dtype, mode="r") if size else np.zeros(0, dtype))
        if "mask" in shard:
            mask = path / shard["mask"]
            if not mask.is_file() or mask.stat().st_size != size:
                raise UserError(f"{mask} is missing or does not match {file.name}; prepare the data again")
            masks.append(np.memmap(mask, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8))
    expected = meta.get(f"{split}_tokens")
    if sum(len(a) for a in arrays) != expected or not arrays:
        raise UserError(
            f"the {split} shards of {path} do not add up to meta.json's {expected}; prepare the data again"
        )
    return TokenStream(arrays, masks if masks else None, ids, [path / shard["file"] for shard in shards])


def check_windows(data: PreparedData, seq_len: int) -> None:
    """Both splits must hold at least one window of seq_len inputs plus its shifted target. A
    validation split alone too short can also grow by a larger share of the same corpus."""
    for split in ("train", "val"):
        tokens = len(getattr(data, split))
        if tokens < seq_len + 1:
            share = ", prepare it again with a larger --val-fraction" if split == "val" else ""
            raise UserError(
                f"the {split} split of {data.path} has {counted(tokens, 'token')}, fewer than one window of "
                f"{seq_len + 1:,}; use a larger corpus{share} or lower training_config.seq_len"
            )


def window_rows(tokens: TokenStream, starts: torch.Tensor, seq_len: int, pin: bool = False) -> torch.Tensor:
    """One contiguous int64 tensor, a row per window: tokens[s : s+T+1], (B, T+1).

    With a loss mask the row also carries the mask of its T targets, (B, 2T+1), so a batch is
    still one tensor to copy; `split_rows` turns it into inputs and targets. `pin`: page-locked
    host memory, for a non-blocking copy to a GPU.
    """
    masked = tokens.loss_mask is not None
    width = 2 * seq_len + 1 if masked else seq_len + 1
    rows = torch.empty((len(starts), width), dtype=torch.int64, pin_memory=pin)
    out, first = rows.numpy(), starts.numpy()
    out[:, : seq_len + 1] = tokens.windows(first, seq_len + 1)
    if masked:
        out[:, seq_len + 1 :] = tokens.loss_mask.windows(first + 1, seq_len)
    return rows


def split_rows(rows: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs rows[:, :T] and targets rows[:, 1:T+1] (the next token, exactly one ahead): views
    of `rows`; with a loss mask, targets whose mask is 0 (prompt tokens) become IGNORE_INDEX."""
    inputs, targets = rows[:, :seq_len], rows[:, 1 : seq_len + 1]  # (B, T) each
    if rows.size(1) > seq_len + 1:
        targets = targets.masked_fill(rows[:, seq_len + 1 :] == 0, IGNORE_INDEX)
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
        tokens: TokenStream,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = 0  # global batches drawn so far, skipped ones included
        self.skips: list[list[int]] = []  # [first, stop) ranges of draws passed over, kept

    def skip(self, first: int, stop: int) -> None:
        """Pass over draws first .. stop-1 when they come (a loss spike's batches, after a rollback
        to a checkpoint taken before them): they are drawn and dropped, so what follows is exactly
        what a run that never used them would draw."""
        self.skips = sorted([*self.skips, [first, stop]])

    def skipped(self, index: int) -> bool:
        return any(first <= index < stop for first, stop in self.skips)

    def rewind(self, position: int, batches: int) -> int:
        """The draw index `batches` handed-out (not skipped) draws before draw `position`."""
        while batches > 0:
            position -= 1
            batches -= not self.skipped(position)
        return position

    def next_rows(self, pin: bool = False) -> torch.Tensor:
        """This process's windows of the next global batch, as one contiguous tensor (window_rows)."""
        while self.skipped(self.drawn):
            self._draw_rows()
        return self._draw_rows(pin)

    def _draw_rows(self, pin: bool = False) -> torch.Tensor:
        self.drawn += 1
        high = len(self.tokens) - self.seq_len  # last start that still has a target after it
        starts = torch.randint(0, high, (self.batch_size * self.world_size,), generator=self.generator)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        if self.tokens.loss_mask is None:
            return window_rows(self.tokens, starts[mine], self.seq_len, pin)
        rows = window_rows(self.tokens, starts, self.seq_len)
        for _ in range(self.MAX_REDRAWS):
            empty = (rows[:, self.seq_len + 1 :] == 0).all(dim=1)  # (B x world,) no target at all
            if not empty.any():
                break
            starts[empty] = torch.randint(0, high, (int(empty.sum()),), generator=self.generator)
            rows = window_rows(self.tokens, starts, self.seq_len)
        else:
            if (rows[:, self.seq_len + 1 :] == 0).all():
                raise UserError(
                    f"no window of {self.seq_len} tokens found that holds a response token; "
                    "raise training_config.seq_len or use records with shorter prompts"
                )
        return rows[mine].pin_memory() if pin else rows[mine]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return split_rows(self.next_rows(), self.seq_len)

    def state_dict(self) -> dict:
        skips = [list(r) for r in self.skips]
        return {"generator": self.generator.get_state(), "drawn": self.drawn, "skips": skips}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.drawn = state.get("drawn", 0)  # older checkpoints count no draws and skip none
        self.skips = [list(r) for r in state.get("skips", [])]


def fixed_batches(
    tokens: TokenStream, seq_len: int, batch_size: int, count: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same `count` batches on every call: validation compares like with like."""
    sampler = BatchSampler(tokens, seq_len, batch_size, seed)
    return [sampler.next_batch() for _ in range(count)]

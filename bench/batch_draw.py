"""Microseconds to draw one training batch on the host: our sampler (trickster.data.loader,
BatchSampler.next_rows: random starts, then one gather per shard into one int64 tensor) against
nanoGPT's get_batch recipe (train.py at commit 3adf61e: the memmap opened again, a Python slice and
a numpy-to-torch copy per window, then torch.stack, twice: inputs and targets), on the same token
file.

    python bench/batch_draw.py --data data/shakespeare-char            # a prepared folder
    python bench/batch_draw.py --data DIR --shapes 16x512 12x1024 --repeats 7

On a GPU a small model's step takes a few milliseconds of host time to launch; the batch for the
next step is drawn in that time (train/batches.py), so its cost adds to every step. nanoGPT's recipe
is copied here in its three lines (its get_batch is inside a script that trains when imported);
pin_memory and the copy to the device are left out on both sides. The median of --repeats rounds of
--draws draws counts.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from trickster.data.loader import BatchSampler, load_data


def nanogpt_get_batch(path: str, dtype, block_size: int, batch_size: int):
    """nanoGPT's get_batch (train.py, commit 3adf61e), the host side of it: the memmap opened
    anew for each batch, as it does to avoid a leak."""
    data = np.memmap(path, dtype=dtype, mode="r")
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy((data[i : i + block_size]).astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy((data[i + 1 : i + 1 + block_size]).astype(np.int64)) for i in ix])
    return x, y


def microseconds(draw, draws: int, repeats: int) -> float:
    rounds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(draws):
            draw()
        rounds.append((time.perf_counter() - started) / draws * 1e6)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder from `trickster data prepare`")
    parser.add_argument("--shapes", nargs="+", default=["16x512", "12x1024", "64x1024"], help="BxT")
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tokens = load_data(Path(args.data)).train
    if len(tokens.shards) != 1:
        raise SystemExit(f"{args.data} holds {len(tokens.shards)} shards; nanoGPT reads one file")
    path = tokens.shards[0].filename
    print(f"{args.data}: {len(tokens):,} tokens in {len(tokens.shards)} shard(s), {tokens.dtype}")
    print(f"{'batch':>9} {'ours us':>9} {'nanoGPT us':>11} {'ratio':>6}")
    for shape in args.shapes:
        batch, context = (int(n) for n in shape.split("x"))
        sampler = BatchSampler(tokens, context, batch, seed=0)
        ours = microseconds(sampler.next_rows, args.draws, args.repeats)
        peer = microseconds(
            functools.partial(nanogpt_get_batch, path, tokens.dtype, context, batch), args.draws, args.repeats
        )
        print(f"{shape:>9} {ours:>9.1f} {peer:>11.1f} {peer / ours:>5.1f}x")


if __name__ == "__main__":
    main()

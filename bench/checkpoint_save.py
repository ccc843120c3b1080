"""Seconds to save `best` at the step of the checkpoint just written (as at the end of every run),
written again against linked to that checkpoint's files (train/checkpoint.py, `reuse`).

    python bench/checkpoint_save.py                      # gpt2-small's shape, 5 repeats
    python bench/checkpoint_save.py --preset mini --repeats 3 --dir /fast/disk

The optimizer moments (AdamW: two float32 tensors per parameter) are in trainer.pt in a single
process or under DDP, which a linked `best` still rewrites (its train state is its own), and in
shard files apart under FSDP2, which it links too: both are timed. Each save is fsynced, as in
training; the folder replaced is deleted before each timed save, so no timing includes deleting
the last one. Weights are random; the median of --repeats counts.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trickster.config import load_config
from trickster.data.tokenizers import ByteTokenizer
from trickster.model.transformer import Transformer
from trickster.train import checkpoint as ckpt


def timed_save(folder: Path, *args, **kwargs) -> float:
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    ckpt.save_checkpoint(folder, *args, **kwargs)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    cfg = load_config(preset=args.preset, overrides=["device_config.device=cpu"])
    if cfg.model.vocab_size == "auto":
        cfg.model.vocab_size = 256
    model = Transformer(cfg.model)
    moments = {
        i: {"exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
        for i, p in enumerate(model.parameters())
    }
    in_trainer = {"optimizer": {"state": moments}}
    sharded = {"optimizer": {"param_groups": []}}
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        final, best, tokenizer = root / "final", root / "best", ByteTokenizer()
        common = (model, cfg, tokenizer, {"step": 1})
        timed_save(final, *common, in_trainer)
        final_fsdp = root / "final-fsdp"  # as FSDP2 writes it: the moments in optimizer/, apart
        timed_save(final_fsdp, *common, sharded)
        (final_fsdp / ckpt.OPTIMIZER).mkdir()
        torch.save(moments, final_fsdp / ckpt.OPTIMIZER / "__0_0.distcp")
        rows = []
        for _ in range(args.repeats):
            written = timed_save(best, *common, in_trainer)
            linked = timed_save(best, *common, in_trainer, reuse=final)
            shards = timed_save(best, *common, sharded, reuse=final_fsdp)
            rows.append((written, linked, shards))
        written, linked, shards = (statistics.median(column) for column in zip(*rows, strict=True))
    finally:
        shutil.rmtree(root)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.preset}: {params:,} parameters, torch {torch.__version__}, median of {args.repeats}")
    print(f"  best written again:                         {written:6.2f} s")
    print(f"  best linked, trainer.pt with the moments:   {linked:6.2f} s")
    print(f"  best linked, moments in shard files (FSDP2): {shards:6.3f} s")


if __name__ == "__main__":
    main()

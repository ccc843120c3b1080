"""A checkpoint written: one folder each, under a temporary name, renamed into place, marked complete.

    checkpoints/step_000500/
        model.safetensors   weights (the tied output projection is stored once, as the embedding)
        lora.safetensors    LoRA runs only: the adapters; model.safetensors holds the frozen base,
                            and checkpoint_load.load_checkpoint merges the two (see lora.py)
        config.yaml         the resolved run config
        tokenizer.json      the tokenizer, so the folder alone is enough to generate
        trainer.pt          optimizer moments, RNG and sampler state (tensors and plain values only)
        optimizer/          FSDP2 runs only: the optimizer moments instead, one shard file per
                            process (torch.distributed.checkpoint; resumable on any number of them)
        info.json           step, losses, fingerprints, versions, files' SHA-256 (checksums.py)
        COMPLETE            written last: a folder without it is ignored

`best` (lowest validation loss) and `final` are folders of the same shape; a folder saved at the
step of the one just written hard-links its weights and optimizer shards (`reuse`). Nothing is ever
unpickled: weights come from safetensors and trainer.pt loads with `weights_only=True`.

checkpoint_load.py reads a folder back; run_checkpoints.py lists, prunes and tidies a run's
checkpoints/; checkpoint_path.py finds the one a path a user gives names.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trickster import atomic
from trickster.config import Config, save_config
from trickster.data.tokenizers import Tokenizer
from trickster.errors import disk_errors, write_fix
from trickster.model import lora
from trickster.model.transformer import Transformer
from trickster.run_checkpoints import COMPLETE, WEIGHTS, run_write_fix
from trickster.train import checksums
from trickster.train.tensor_files import save_tensors, save_trainer_state
from trickster.train.weights import weights_metadata, weights_to_save

OPTIMIZER = "optimizer"  # the sharded optimizer state of an FSDP2 run
SAVE_FIX = write_fix(then="continue with --resume (earlier checkpoints are untouched)")


def step_name(step: int) -> str:
    return f"step_{step:06d}"


@dataclass(frozen=True)
class Saved:
    """A checkpoint this process wrote: its step, folder and (FSDP2) optimizer param_groups."""

    step: int
    path: Path
    groups: list | None = None


def save_checkpoint(
    target: Path,
    model: Transformer,
    cfg: Config,
    tokenizer: Tokenizer,
    info: dict,
    trainer_state: dict | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    staging: Path | None = None,
    reuse: Path | None = None,
    fix=None,  # a failed write's fix; before a run's first checkpoint, --resume would find nothing
) -> Path:
    """Write a complete checkpoint folder at `target`, replacing any older one atomically.

    `weights`: a gathered full state dict, when the model itself is sharded over processes.
    `staging`: the folder being built, when other processes already wrote into it.
    `reuse`: a complete checkpoint of these very weights (nothing trained since): its weight and
    optimizer-shard files are hard-linked (copied where links fail) instead of written again.
    """
    target = Path(target)
    with disk_errors(f"checkpoint {target}", fix or run_write_fix(target.parent.parent, SAVE_FIX)):
        tensors = reuse or (weights_to_save(model, weights), lora.adapter_weights(model, weights))
        return _write_checkpoint(target, tensors, cfg, tokenizer, info, trainer_state, staging)


def _write_checkpoint(target, tensors, cfg, tokenizer, info, trainer_state, staging) -> Path:
    staging = staging or atomic.staging_dir(target)
    try:
        if isinstance(tensors, Path):
            _link_tensor_files(tensors, staging)
        else:
            weights, adapters = tensors
            save_tensors(weights, staging / WEIGHTS, weights_metadata(cfg))
            if adapters:
                save_tensors(adapters, staging / lora.ADAPTERS, weights_metadata(cfg))
        save_config(cfg, staging / "config.yaml", by_run=True)
        tokenizer.save(staging / "tokenizer.json")
        if trainer_state is not None:
            save_trainer_state(trainer_state, staging / "trainer.pt")
        flushed = functools.partial(atomic.fsync_tree, staging)  # to disk while the sums are taken
        sums = checksums.record(staging, tensors if isinstance(tensors, Path) else None, meanwhile=flushed)
        info = {**info, "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), checksums.SUMS: sums}
        (staging / "info.json").write_text(json.dumps(info, indent=2))
        (staging / COMPLETE).write_text("ok\n")
        atomic.replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _link_tensor_files(source: Path, staging: Path) -> None:
    """`source`'s weights, adapters and optimizer shards into `staging`, as hard links: no bytes
    written, and each folder stays whole when the other is deleted (nothing edits them in place)."""
    shards = sorted(p for p in (source / OPTIMIZER).rglob("*") if p.is_file())
    for path in [source / WEIGHTS, source / lora.ADAPTERS, *shards]:
        if not path.is_file():
            continue
        copy = staging / path.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, copy)
        except OSError:  # a file system without hard links
            shutil.copy2(path, copy)


def update_info(path: Path, **values) -> None:
    """Change values in a complete checkpoint's info.json: written aside, then renamed over it."""
    file = path / "info.json"
    with disk_errors(str(file), write_fix(then="continue with --resume (the checkpoint is whole)")):
        atomic.replace_file(file, json.dumps({**json.loads(file.read_text()), **values}, indent=2))

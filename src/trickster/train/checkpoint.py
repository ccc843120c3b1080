"""Checkpoints: one folder each, written under a temporary name, renamed into place, marked complete.

    checkpoints/step_000500/
        model.safetensors   weights (the tied output projection is stored once, as the embedding)
        lora.safetensors    LoRA runs only: the adapters; model.safetensors holds the frozen base,
                            and load_checkpoint merges the two (see lora.py)
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
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trickster import atomic
from trickster.config import Config, ModelConfig, save_config
from trickster.config_saved import read_saved
from trickster.data.tokenizers import Tokenizer, load_tokenizer
from trickster.errors import UserError, disk_errors, write_fix
from trickster.model import lora
from trickster.model.transformer import Transformer
from trickster.precision import inference_dtype
from trickster.run_checkpoints import COMPLETE, WEIGHTS, is_complete, numbered, run_write_fix
from trickster.train import checksums, settled
from trickster.train.tensor_files import save_tensors, save_trainer_state
from trickster.train.weight_loading import load_weights
from trickster.train.weights import (
    check_config,
    loading_refused,
    weights_metadata,
    weights_to_save,
)

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


def checkpoint_step(path: Path) -> int:
    """The step of one of a run's checkpoints (to pick the newest, to list them)."""
    return read_info(path, fix=f"move {path} out of {path.parent} to use the run's others")["step"]


def update_info(path: Path, **values) -> None:
    """Change values in a complete checkpoint's info.json: written aside, then renamed over it."""
    file = path / "info.json"
    with disk_errors(str(file), write_fix(then="continue with --resume (the checkpoint is whole)")):
        atomic.replace_file(file, json.dumps({**json.loads(file.read_text()), **values}, indent=2))


def latest(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step (numbered ones and `final`, which wins a tie)."""
    final = Path(run_dir) / "checkpoints" / "final"
    candidates = numbered(run_dir) + ([final] if is_complete(final) else [])
    return max(candidates, key=lambda p: (checkpoint_step(p), p.name == "final"), default=None)


def none_saved(run_dir: str | Path, otherwise: str = "no checkpoint was saved yet") -> str:
    """Why a run folder has no checkpoint to continue from, for the lines that say so: a `best`
    saved before the first numbered checkpoint (eval_every below save_every) is named, as a run
    never continues from `best` (an evaluation's weights; a spike's rollback must go back further)."""
    if is_complete(Path(run_dir) / "checkpoints" / "best"):
        return (
            "no checkpoint to continue from was saved yet (checkpoints/best holds the best weights "
            "so far, for generate)"
        )
    return otherwise


def prune(run_dir: str | Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest `keep_last` numbered checkpoints. `best` and `final` are separate
    folders, never touched here, so rotation cannot remove the best weights."""
    if keep_last is None:
        return []
    doomed = numbered(run_dir)[:-keep_last]
    for path in doomed:
        remove(path)
    return doomed


def remove(path: Path) -> None:
    """Delete a checkpoint folder. It is renamed first, to a hidden name that `recover` deletes: a
    kill halfway through leaves neither a half checkpoint nor one that would be put back (as a
    replaced folder, `.old-`, is)."""
    trash = path.parent / f".{path.name}.deleted-{os.getpid()}"
    path.rename(trash)
    shutil.rmtree(trash)


def recover(run_dir: str | Path) -> list[str]:
    """Tidy what a killed writer left in checkpoints/, before a run continues there.

    A kill between the two renames of `replace_dir` leaves `best` (or `final`) only under its old
    hidden name: put it back. Half-written staging folders and half-deleted checkpoints of dead
    processes are deleted, and so are the files a killed `update_info` left inside a checkpoint.
    Returns a line for each repair, for the log.
    """
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    replaced = sorted({match["name"] for _, match in atomic.leftovers(folder) if match["kind"] == "old"})
    repairs = [
        f"restored checkpoints/{name} from an interrupted replacement"
        for name in replaced
        if atomic.restore_replaced(folder / name, complete=is_complete)
    ]
    for hidden, match in atomic.leftovers(folder):  # what is left: no checkpoint's only copy
        shutil.rmtree(hidden, ignore_errors=True)
        what = "deletion" if match["kind"] == "deleted" else "write"
        repairs.append(f"removed {hidden.name}, left by an interrupted {what}")
    for checkpoint in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in atomic.remove_leftovers(checkpoint):
            repairs.append(f"removed {checkpoint.name}/{path.name}, left by an interrupted write")
    return repairs


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its `best`, else its newest complete checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; pass a run folder (runs/NAME) or a checkpoint folder")
    if (path / "config.json").is_file() and not (path / COMPLETE).exists():  # save_pretrained()'s
        raise UserError(
            f"{path} is a Hugging Face model folder, not a run or checkpoint; bring it in first: "
            f"trickster import hf {path} --out runs/NAME"
        )
    if (path / WEIGHTS).exists() or (path / COMPLETE).exists():
        if not (path / COMPLETE).is_file():
            raise UserError(f"checkpoint {path} is incomplete (its write was interrupted); use another one")
        if not is_complete(path):  # marked complete, then its weights were moved or deleted
            raise UserError(f"checkpoint {path} has no {WEIGHTS} (moved or deleted); use another checkpoint")
        return path
    best = path / "checkpoints" / "best"
    if is_complete(best):
        return best
    found = latest(path)
    if found is None:
        raise UserError(_no_checkpoint(path))
    return found


def _no_checkpoint(path: Path) -> str:
    """Why `path` gives no checkpoint, for what a user passes instead of a run or checkpoint folder."""
    if path.is_file():
        holder = path.parent
        if (holder / WEIGHTS).exists() or (holder / COMPLETE).exists() or (holder / "checkpoints").is_dir():
            return f"{path} is a file; pass the folder that holds it ({holder}) or its run folder"
        return (
            f"{path} is a file, not a run or checkpoint; pass a run folder (runs/NAME) or a checkpoint folder"
        )
    if path.name == "checkpoints" and (path.parent / "config.yaml").is_file():
        one = latest(path.parent) or path / "best"
        return f"{path} holds checkpoints: pass the run folder {path.parent} or one of them, such as {one}"
    if (path / "meta.json").is_file():
        return f"{path} is a prepared data folder, not a run; pass a run folder (runs/NAME) or a checkpoint"
    runs = [p for p in path.iterdir() if (p / "checkpoints").is_dir()] if path.is_dir() else []
    if runs:  # runs/ itself, the folder of run folders: one with a checkpoint named first
        one = min(runs, key=lambda run: (latest(run) is None, run.name))
        return f"{path} holds runs, not checkpoints: pass one of them, such as {one}"
    return f"no complete checkpoint in {path}; train first, or pass a checkpoint folder"


@dataclass
class LoadedCheckpoint:
    path: Path
    cfg: Config
    tokenizer: Tokenizer
    model: Transformer
    info: dict
    dtype: str = "float32"  # compute dtype for generate/eval/compare on this device (inference_dtype)
    identity: tuple[int, ...] | None = None  # which checkpoint it was read from (CheckpointFiles')


@dataclass
class CheckpointFiles:
    """What a checkpoint's weights are loaded by, read once: its folder (resolved), config.yaml,
    tokenizer.json and info.json; `identity`, which checkpoint they came from (settled.identity,
    taken first): the files still describe the folder while it is unchanged."""

    path: Path
    cfg: Config
    tokenizer: Tokenizer
    info: dict
    identity: tuple[int, ...] | None = None


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", wait: float = settled.WAIT
) -> LoadedCheckpoint:
    """generate, serve, export, info and init_from load a checkpoint here: its config.yaml is
    checked against the shapes its weight files hold before anything is allocated. All of it comes
    from one checkpoint though a run may replace `best` meanwhile: read again (settled.read_settled,
    which waits up to `wait` seconds for a replace under way)."""

    def read(found: Path) -> LoadedCheckpoint:
        return with_weights(read_files(found), device)

    return settled.read_settled(Path(path), resolve, read, wait=wait)


def read_files(path: str | Path) -> CheckpointFiles:
    """The checkpoint `path` names (resolve), its config.yaml, tokenizer.json and info.json read."""
    return files_at(resolve(path))


def files_at(path: Path) -> CheckpointFiles:
    """The files of the checkpoint folder `path`, not resolved (serve's listing found it complete)."""
    seen = settled.identity(path)
    return CheckpointFiles(path, read_config(path), read_tokenizer(path), read_info(path), seen)


def with_weights(files: CheckpointFiles, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    """The checkpoint whose `files` were read, its weights loaded (a LoRA checkpoint's adapters
    merged): a fine-tune reads its init_from's files when it starts, and loads them later."""
    path, cfg, tokenizer, info = files.path, files.cfg, files.tokenizer, files.info
    adapted = cfg.training.lora is not None
    if adapted and not (path / lora.ADAPTERS).is_file():
        raise UserError(
            f"{path / lora.ADAPTERS} is missing: without it this LoRA checkpoint is only its base "
            "model; use another checkpoint"
        )
    check_config(cfg, path / WEIGHTS, torch.device(device))
    summed = (WEIGHTS, lora.ADAPTERS, "tokenizer.json")  # summed in threads as they load: used after
    with checksums.verified(path, summed, "use another checkpoint", info), loading_refused(path, device):
        model = empty_model(cfg.model, device)
        if adapted:  # a LoRA run: load base and adapters as trained, then merge them into a plain model
            lora.apply_lora(model, cfg.training.lora)
        load_weights(model, path / WEIGHTS)
        if adapted:
            lora.merge_lora(model)
    model.eval()
    dtype = inference_dtype(torch.device(device))
    return LoadedCheckpoint(path, cfg, tokenizer, model, info, dtype, files.identity)


def empty_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> Transformer:
    """A model whose weights are about to be loaded: built on the meta device (no memory, no
    random initialisation of weights that would be overwritten at once), then given storage on
    `device`, uninitialised. Every parameter must be loaded before use."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    if cfg.tie_embeddings:  # one tensor for both, as Transformer builds it
        model.output.weight = model.tok_embeddings.weight
    model.reset_rotary(device)
    return model


def read_tokenizer(path: Path) -> Tokenizer:
    """tokenizer.json; a folder in its place is named, with the run's copy to put there if any."""
    file, own, fix = path / "tokenizer.json", path.parent.parent / "tokenizer.json", "use another checkpoint"
    if file.is_dir() and path.parent.name == "checkpoints" and own.is_file():  # one tokenizer per run
        fix = f"replace that folder with a copy of {own} (the run's own: the same tokenizer), or {fix}"
    if not file.is_file() and not file.is_dir():
        raise UserError(f"{file} is missing; {fix}")
    return load_tokenizer(file, fix=fix)


def read_info(path: Path, fix: str = "use another checkpoint") -> dict:
    """info.json: a JSON object with at least the integer `step` it was saved at."""
    try:
        info = json.loads((path / "info.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        info = None  # missing, a folder, not UTF-8, not JSON
    if not isinstance(info, dict) or type(info.get("step")) is not int:
        raise UserError(f"{path / 'info.json'} is missing or damaged; {fix}")
    return info


def read_config(path: Path) -> Config:
    """The checkpoint's config.yaml: a training setting saved beyond a limit added since is kept
    as saved (config_saved); what builds the model must pass every check."""
    return read_saved(path / "config.yaml", "use another checkpoint")


def load_trainer_state(path: Path, mapped: bool = False) -> dict:
    """trainer.pt's dict. `mapped`: its tensors are pages of the file, brought in only if used, for
    a process that uses only the counters (a resumed job's ranks but 0, which get the optimizer
    state from rank 0: loop.load); it holds a few pages, not a copy of the moments. Not for the
    tensors a process keeps: on the CPU the optimizer would keep the file's pages as its state,
    and the file, once a newer checkpoint replaces it, would hold its disk space until the run ends."""
    file = path / "trainer.pt"
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=mapped)
    except FileNotFoundError:
        raise UserError(f"{file} is missing: this checkpoint holds weights only and cannot resume") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:  # OSError: a folder, unreadable
        reason = getattr(err, "strerror", None) or str(err).strip().split(". ")[0].splitlines()[0]
        reason = reason or type(err).__name__
        raise UserError(
            f"{file} refused or damaged ({reason[:160]}); resume from another checkpoint"
        ) from None

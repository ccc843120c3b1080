"""A checkpoint folder read back: its config.yaml, tokenizer.json and info.json (CheckpointFiles),
then its weights into a model built for them, config and shapes checked first and files' sums
checked as they load (LoadedCheckpoint); trainer.pt for a resume. generate, serve, export, eval and
a fine-tune's init_from load here; checkpoint.py writes what this reads.
"""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from trickster.config import Config, ModelConfig
from trickster.config_saved import read_saved
from trickster.data.tokenizers import Tokenizer, load_tokenizer
from trickster.errors import UserError
from trickster.model import lora
from trickster.model.transformer import Transformer
from trickster.precision import inference_dtype
from trickster.run_checkpoints import WEIGHTS, read_info, recorded_loss
from trickster.train import checkpoint_path, checksums, settled, weight_loading
from trickster.train.weights import check_config, loading_refused


@dataclass
class LoadedCheckpoint:
    path: Path
    cfg: Config
    tokenizer: Tokenizer
    model: Transformer
    info: dict
    dtype: str = "float32"  # compute dtype for generate/eval/compare on this device (inference_dtype)
    identity: tuple[int, ...] | None = None  # which checkpoint it was read from (CheckpointFiles')


def loss_text(value: float | None) -> str:
    """A loss as the training log prints it (4 decimals), or n/a before any evaluation."""
    return "n/a" if value is None else f"{value:.4f}"


def checkpoint_line(loaded: LoadedCheckpoint) -> str:
    """Which checkpoint a command read, in the one wording `info --checkpoint` prints, generate and
    export print on stderr when a run folder was given (say_picked), and chat's banner begins with."""
    info = loaded.info
    # a checkpoint saved between evaluations: the earlier one's loss, with its step (recorded_loss)
    measured = recorded_loss(loaded.path, info, loaded.cfg.training.eval_every)
    return (
        f"checkpoint: {loaded.path} (step {info['step']}, val loss {measured.shown()}, "
        f"best {loss_text(info.get('best_val_loss'))})"
    )


def say_picked(target: str | Path, loaded: LoadedCheckpoint) -> None:
    """checkpoint_line on stderr where `target` is a run folder of which checkpoint_path.resolve
    picked a checkpoint (its best, else its newest); nothing for a checkpoint folder given, which is
    the one read. Said once the command is done: stdout holds only its own output (generate's text
    is piped), and a command refused after the load still says one line."""
    if loaded.path != Path(target):
        print(checkpoint_line(loaded), file=sys.stderr, flush=True)


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
        return with_weights(files_at(found), device)

    return settled.read_settled(Path(path), checkpoint_path.resolve, read, wait=wait)


def files_at(path: Path) -> CheckpointFiles:
    """The files of the checkpoint folder `path`, as found: resolved already (by read_settled, which
    resolves the path a user gave once per read), or listed complete (serve's listing)."""
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
        weight_loading.load_weights(model, path / WEIGHTS)
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

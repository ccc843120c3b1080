"""Checkpoints: one folder each, written under a temporary name, renamed into place, marked complete.

    checkpoints/step_000500/
        model.safetensors   weights (the tied output projection is stored once, as the embedding)
        lora.safetensors    LoRA runs only: the adapters; model.safetensors holds the frozen base,
                            and load_checkpoint merges the two (see lora.py)
        config.yaml         the resolved run config
        tokenizer.json      the tokenizer, so the folder alone is enough to generate
        trainer.pt          optimizer moments, RNG and sampler state (tensors and plain values only)
        info.json           step, losses, tokenizer and data fingerprints, versions
        COMPLETE            written last: a folder without it is ignored

`best` (lowest validation loss) and `final` are folders of the same shape. Nothing is ever
unpickled: weights come from safetensors and trainer.pt loads with `weights_only=True`.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from trickster import lora
from trickster.atomic import replace_dir, staging_dir
from trickster.config import Config, config_from_dict
from trickster.errors import UserError
from trickster.model import Transformer
from trickster.tokenizers import Tokenizer, load_tokenizer

COMPLETE = "COMPLETE"
WEIGHTS = "model.safetensors"
STEP_DIR = re.compile(r"^step_(\d+)$")


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def weights_to_save(model: Transformer) -> dict[str, torch.Tensor]:
    """The plain model's weights; LoRA adapters, if any, are saved apart (lora.adapter_weights)."""
    state = {name: t for name, t in model.state_dict().items() if not lora.is_adapter(name)}
    if model.cfg.tie_embeddings:
        del state["output.weight"]  # the same tensor as tok_embeddings.weight
    return {name: t.detach().contiguous() for name, t in state.items()}


def save_checkpoint(
    target: Path,
    model: Transformer,
    cfg: Config,
    tokenizer: Tokenizer,
    info: dict,
    trainer_state: dict | None = None,
) -> Path:
    """Write a complete checkpoint folder at `target`, replacing any older one atomically."""
    target = Path(target)
    staging = staging_dir(target)
    try:
        save_file(weights_to_save(model), staging / WEIGHTS, metadata={"format": "pt"})
        adapters = lora.adapter_weights(model)
        if adapters:
            save_file(adapters, staging / lora.ADAPTERS, metadata={"format": "pt"})
        (staging / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        tokenizer.save(staging / "tokenizer.json")
        if trainer_state is not None:
            torch.save(trainer_state, staging / "trainer.pt")
        info = {**info, "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (staging / "info.json").write_text(json.dumps(info, indent=2))
        (staging / COMPLETE).write_text("ok\n")
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file() and (path / WEIGHTS).is_file()


def checkpoint_step(path: Path) -> int:
    return json.loads((path / "info.json").read_text())["step"]


def latest(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step (numbered ones and `final`)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    candidates = [
        p for p in folder.iterdir() if (STEP_DIR.match(p.name) or p.name == "final") and is_complete(p)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (checkpoint_step(p), p.name == "final"))


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its `best`, else its newest complete checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; pass a run folder (runs/NAME) or a checkpoint folder")
    if (path / WEIGHTS).exists() or (path / COMPLETE).exists():
        if not is_complete(path):
            raise UserError(f"checkpoint {path} is incomplete (its write was interrupted); use another one")
        return path
    best = path / "checkpoints" / "best"
    if is_complete(best):
        return best
    found = latest(path)
    if found is None:
        raise UserError(f"no complete checkpoint in {path}; train first, or pass a checkpoint folder")
    return found


@dataclass
class LoadedCheckpoint:
    path: Path
    cfg: Config
    tokenizer: Tokenizer
    model: Transformer
    info: dict


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    path = resolve(path)
    cfg = read_config(path)
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"{path / 'tokenizer.json'} is missing; use another checkpoint")
    tokenizer = load_tokenizer(path / "tokenizer.json")
    try:
        info = json.loads((path / "info.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        raise UserError(f"{path / 'info.json'} is missing or damaged; use another checkpoint") from None
    model = Transformer(cfg.model).to(device)
    adapted = cfg.training.lora is not None
    if adapted:  # a LoRA run: load base and adapters as trained, then merge them into a plain model
        if not (path / lora.ADAPTERS).is_file():
            raise UserError(
                f"{path / lora.ADAPTERS} is missing: without it this LoRA checkpoint is only its base "
                "model; use another checkpoint"
            )
        lora.apply_lora(model, cfg.training.lora)
    load_weights(model, path / WEIGHTS)
    if adapted:
        lora.merge_lora(model)
    model.eval()
    return LoadedCheckpoint(path, cfg, tokenizer, model, info)


def read_config(path: Path) -> Config:
    try:
        raw = yaml.safe_load((path / "config.yaml").read_text())
    except (FileNotFoundError, yaml.YAMLError):
        raise UserError(f"{path / 'config.yaml'} is missing or damaged; use another checkpoint") from None
    return config_from_dict(raw, f"{path / 'config.yaml'}")


def load_weights(model: Transformer, file: Path) -> None:
    """Copy weights into `model`, refusing any name, shape or dtype that does not match exactly.

    A model with LoRA adapters (during a LoRA run) also gets its adapters from lora.safetensors.
    """
    state = _read_tensors(file, weights_to_save(model))
    adapters = lora.adapter_weights(model)
    if adapters:
        state.update(_read_tensors(file.parent / lora.ADAPTERS, adapters))
    with torch.no_grad():
        for name, tensor in state.items():
            model.get_parameter(name).copy_(tensor)


def _read_tensors(file: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, whose names, shapes and dtypes must match `expected`."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            names = set(f.keys())
            missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or unexpected:
                raise UserError(
                    f"{file} does not match its config: missing {missing or 'nothing'}, "
                    f"unexpected {unexpected or 'nothing'}; was it written by another model?"
                )
            state = {}
            for name in expected:
                tensor = f.get_tensor(name)
                want = expected[name]
                if tensor.shape != want.shape or tensor.dtype != want.dtype:
                    raise UserError(
                        f"{file}: {name} is {tuple(tensor.shape)} {tensor.dtype}, the config needs "
                        f"{tuple(want.shape)} {want.dtype}; the checkpoint and its config disagree"
                    )
                state[name] = tensor
    except (SafetensorError, OSError) as err:
        raise UserError(
            f"{file} is damaged or not a safetensors file ({err}); use another checkpoint"
        ) from None
    return state


def load_trainer_state(path: Path) -> dict:
    file = path / "trainer.pt"
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{file} is missing: this checkpoint holds weights only and cannot resume") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        reason = str(err).strip().split(". ")[0].splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"{file} refused or damaged ({reason[:160]}); resume from another checkpoint"
        ) from None

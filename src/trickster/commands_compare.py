"""`trickster compare`: a run's sample and validation loss beside those of the model it is measured
against: the one a fine-tune started from (its recorded init_from, so before and after), `--base`
another checkpoint of the same shape, and otherwise (or `--untrained`) random weights."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from trickster.data.token_meaning import same_ids
from trickster.errors import UserError
from trickster.model.transformer import Transformer, untrained_like
from trickster.observe import evaluation
from trickster.options import Sampling
from trickster.prompts import hinted_prompt, prompt_ids
from trickster.streaming import stream
from trickster.text_out import text_written
from trickster.train import checkpoint_load
from trickster.train.console import SlowPass
from trickster.train.device import resolve_device
from trickster.train.validate import evaluate, validation_batches
from trickster.train.weights import copy_weights, differences

UNTRAINED = "untrained (random weights)"


@dataclass
class Reference:
    """The model set beside the run's, the title its sample is printed under, and a note said first
    when a fine-tune is not compared with the model it started from (gone, or of other ids)."""

    title: str
    model: Transformer
    note: str | None = None


def compare_command(
    target: str,
    sampling: Sampling,
    device: str = "cpu",
    data: str | None = None,
    base: str | None = None,
    untrained: bool = False,
) -> None:
    where = resolve_device(device, "--device")
    loaded = checkpoint_load.load_checkpoint(target, where)
    prompt, ids = prompt_ids(loaded.tokenizer, _prompt(loaded, sampling.prompt))
    reference = reference_model(loaded, where, base, untrained)
    models = {reference.title: reference.model, _title(loaded): loaded.model}
    losses = _val_losses(loaded, models, data, where)
    with text_written("compare"):
        if reference.note:
            print(f"note: {reference.note}")
        if data is None and None in losses:
            print(f"no validation losses: {_no_losses(loaded, target)}")
        for (title, model), loss in zip(models.items(), losses, strict=True):
            loss_text = f"val loss {loss:.4f}" if loss is not None else "val loss n/a (no data)"
            print(f"--- {title}: {loss_text} ---\n{prompt}", end="")
            stream(model, loaded.tokenizer, ids, sampling)
            print()


def _title(loaded: checkpoint_load.LoadedCheckpoint) -> str:
    """What the run's model is: an imported one's step 0 counts no training (it read it as
    "trained ... step 0"), so it says where its weights came from, as `info` does."""
    info, name = loaded.info, loaded.path.name
    if info.get("init_from"):
        return f"fine-tuned ({name}, step {info['step']})"
    if info.get("imported_from"):
        return f"imported ({name}, from {info['imported_from']})"
    return f"trained ({name}, step {info['step']})"


def _no_losses(loaded: checkpoint_load.LoadedCheckpoint, target: str) -> str:
    """Why no validation loss was measured, and how to get one: the run's data from here, other
    data of its tokenizer, or a text file scored by `eval`."""
    if loaded.info.get("data_path"):
        return evaluation.data_not_here(loaded)
    what = "an imported model" if loaded.info.get("imported_from") else f"{loaded.path}"
    return (
        f"{what} has no data of its own; pass --data DIR (a folder prepared with its tokenizer: "
        f"trickster data prepare ... --tokenizer-from {loaded.path}), or score a text file: "
        f"trickster eval {target} --text FILE"
    )


def _prompt(loaded: checkpoint_load.LoadedCheckpoint, given: str | None) -> str | None:
    """--prompt, or for a fine-tune the prompt its samples continued (on prompt/response records one
    of theirs: train/fitted.py), which shows what it learned where a line break shows nothing;
    None leaves it to prompt_ids (a line break, or a new document)."""
    if given is not None or not loaded.info.get("init_from"):
        return given
    return hinted_prompt(loaded.tokenizer, loaded.cfg.training.sample_prompt) or None


def reference_model(
    loaded: checkpoint_load.LoadedCheckpoint,
    device: torch.device,
    base: str | None = None,
    untrained: bool = False,
) -> Reference:
    """What `loaded` is compared with: `base` (a run or checkpoint, refused when it cannot stand in
    for this model), random weights when `untrained`, else a fine-tune's recorded starting point
    (when still there with the same ids; random weights otherwise, with a note saying why)."""
    origin = loaded.info.get("init_from")
    if untrained or (base is None and not origin):
        return Reference(UNTRAINED, untrained_like(loaded.cfg).to(device))
    if base is not None:
        try:
            other = checkpoint_load.load_checkpoint(base, device)
        except UserError as err:
            raise UserError(f"--base: {err}") from None
        if problem := _cannot_stand_in(other, loaded):
            raise UserError(f"--base {base} {problem}; pass a checkpoint of the same model")
        return Reference(f"base ({_shown(other.path)}, step {other.info['step']})", _as_run(other, loaded))
    started, instead = Path(origin["checkpoint"]), "comparing with random weights"
    instead += "; --base DIR names the base where it is now"
    try:
        other = checkpoint_load.load_checkpoint(started, device)
        problem = _cannot_stand_in(other, loaded)
    except UserError as err:  # moved, deleted or damaged since the fine-tune read it
        problem = f"cannot be read ({err})" if started.exists() else "is gone (moved or deleted)"
    if problem:
        note = f"{_shown(started)}, the base this run was fine-tuned from, {problem}: {instead}"
        return Reference(UNTRAINED, untrained_like(loaded.cfg).to(device), note)
    since = ""
    if (other.info["step"], other.info.get("saved")) != (origin["step"], origin.get("saved")):
        since = f", since replaced: it was step {origin['step']} then"  # the base run trained further
    title = f"base ({_shown(other.path)}, step {other.info['step']}; fine-tuned from it{since})"
    return Reference(title, _as_run(other, loaded))


def _cannot_stand_in(
    other: checkpoint_load.LoadedCheckpoint, loaded: checkpoint_load.LoadedCheckpoint
) -> str | None:
    """Why `other`'s weights cannot be put in `loaded`'s model (other ids, another model), or None."""
    if not same_ids(other.tokenizer, loaded.tokenizer):
        return f"has another tokenizer than {loaded.path}"
    different = differences(other.cfg.model, loaded.cfg.model)
    return f"is another model (model_config {'; '.join(different)})" if different else None


def _as_run(other: checkpoint_load.LoadedCheckpoint, loaded: checkpoint_load.LoadedCheckpoint) -> Transformer:
    """`other`'s weights in a model built as `loaded`'s: a fine-tune may have a longer context than
    its base (max_seq_len may differ), and its validation windows and samples need it, as they did
    at the fine-tune's first step."""
    if other.cfg.model == loaded.cfg.model:
        return other.model
    model = checkpoint_load.empty_model(loaded.cfg.model, next(loaded.model.parameters()).device)
    copy_weights(model, other.model)  # the same model_config but for max_seq_len and dropout
    return model.eval()


def _shown(path: Path) -> str:
    """A recorded absolute path as the user would type it from here, when it lies below here."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative


def _val_losses(loaded, models: dict[str, Transformer], data_path, device) -> list[float | None]:
    """None for each model when the run's own data is gone; a --data folder must be prepared data.
    A slow one (a large model on a CPU) says how far it got on stderr, as training's do."""
    path = data_path or loaded.info.get("data_path")
    if data_path is None and (not path or not (Path(path) / "meta.json").is_file()):
        return [None] * len(models)
    data = evaluation.run_data(loaded, path)
    # an info.json from before 2026-11-29 14:30 has none: the run drew batch_size wide on one process
    width = loaded.info.get("val_draw_width") or loaded.cfg.training.batch_size
    batches = validation_batches(data, loaded.cfg, draw_width=width)
    slow = SlowPass(lambda text: print(text, file=sys.stderr, flush=True))
    losses = []
    for title, model in models.items():
        slow.start(f"val loss of the {title.split(' (')[0]} model")
        losses.append(evaluate(model, batches, device, loaded.dtype, slow))
    return losses

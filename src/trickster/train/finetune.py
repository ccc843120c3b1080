"""Fine-tuning: start from existing weights (`training_config.init_from`) and, with
`training_config.lora`, train low-rank adapters only.

`setup.build_model` calls `setup_finetuning` once, right after it builds the model and before the
optimizer sees the parameters; without init_from it does nothing. A resumed run only gets its adapters back:
its checkpoint holds every weight, so the init_from source may since have moved or been deleted.
Which checkpoint a fine-tune started from (`origin`) is recorded in its `start` event and in every
checkpoint's info.json, so a resumed run keeps it too.
Loss masking for prompt/response data needs nothing here: the data loader gives prompt positions
the target -100, which the loss ignores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from trickster.config import Config
from trickster.data.token_meaning import same_ids
from trickster.data.tokenizers import Tokenizer
from trickster.errors import UserError
from trickster.model import lora
from trickster.model.transformer import Transformer
from trickster.model.vocab import resolve_vocab
from trickster.train import checkpoint_load, checkpoint_path, settled
from trickster.train.weights import copy_weights, differences


def setup_finetuning(
    model: Transformer,
    cfg: Config,
    tokenizer: Tokenizer,
    base: checkpoint_load.CheckpointFiles | None = None,
    echo: Callable = print,
    resuming: bool = False,
) -> dict | None:
    """Copy the init_from weights into `model`, then add LoRA adapters if configured; when
    `resuming`, only add the adapters (the checkpoint's weights are loaded next). `base`: the
    init_from checkpoint's files as model_vocab read them (None: read here, once). Returns the
    checkpoint the weights came from (`origin`), None when not fine-tuning or when resuming."""
    t = cfg.training
    if t.init_from is None:
        return None
    if resuming:
        if t.lora is not None:
            lora.apply_lora(model, t.lora)
        return None
    base = base or read_base(cfg, tokenizer)
    # the run init_from names may still be training: a `best` it saved since base was read, or saves
    # while its weights are read, is read again, whole (settled), as generate reads it
    loaded = settled.read_settled(
        Path(t.init_from), _resolve, lambda path: _weights(path, base, cfg, tokenizer)
    )
    copy_weights(model, loaded.model)
    message = f"fine-tuning from {loaded.path} (step {loaded.info.get('step')})"
    if t.lora is not None:
        trainable = lora.apply_lora(model, t.lora)
        total = sum(p.numel() for p in model.parameters())
        message += (
            f" with LoRA {lora.adapted_layers(t.lora)}: {trainable:,} trainable parameters of {total:,}"
        )
    echo(message)
    return origin(loaded.path, loaded.info)


def _weights(
    path: Path, base: checkpoint_load.CheckpointFiles, cfg: Config, tokenizer: Tokenizer
) -> checkpoint_load.LoadedCheckpoint:
    """The checkpoint at `path` loaded (a LoRA checkpoint arrives merged): with `base`, the files
    read when the run began, while it is still theirs; else its own files, read and checked anew."""
    if base.identity is None or settled.identity(path) != base.identity:
        with _named_init_from():
            base = checkpoint_load.files_at(path)
        _check_tokenizer(base, cfg, tokenizer)
    different = differences(base.cfg.model, cfg.model)
    if different:
        raise UserError(
            f"training_config.init_from {base.path} has another model_config ({'; '.join(different)}); "
            f"start from its config: --config {base.path / 'config.yaml'}"
        )
    with _named_init_from():
        return checkpoint_load.with_weights(base)


def origin(source: Path, info: dict) -> dict:
    """What the start event and every checkpoint's info.json record of the checkpoint a fine-tune
    started from: its absolute path (init_from may name a run folder, whose `best` moves on), its
    step, and when it was saved, which tells a later checkpoint written to the same path apart."""
    return {"checkpoint": str(source.resolve()), "step": info["step"], "saved": info.get("saved")}


def model_vocab(
    cfg: Config, tokenizer: Tokenizer, resume: bool | str
) -> tuple[Config, checkpoint_load.CheckpointFiles | None]:
    """`cfg` with vocab_size set from the data's tokenizer, and a fresh fine-tune's init_from
    checkpoint read (read_base: data prepared with another tokenizer than its model's refused
    first); None for it otherwise (a resume's init_from may have moved: setup_finetuning reads it
    if `resume: auto` finds nothing to resume)."""
    base = read_base(cfg, tokenizer) if cfg.training.init_from is not None and resume is False else None
    return resolve_vocab(cfg, tokenizer), base


def read_base(cfg: Config, tokenizer: Tokenizer) -> checkpoint_load.CheckpointFiles:
    """The init_from checkpoint's files, once its tokenizer is the data's. Checked before the
    model's shape (and before vocab_size meets the data's tokenizer), since data prepared with
    another tokenizer shows first as another vocabulary size, and a message about the size would
    send the user to change a config that is right."""
    with _named_init_from():
        base = settled.read_settled(
            Path(cfg.training.init_from), checkpoint_path.resolve, checkpoint_load.files_at
        )
    _check_tokenizer(base, cfg, tokenizer)
    out = Path(cfg.logging.output_dir)
    if out.resolve() in base.path.resolve().parents:  # --out forgotten: the base run's config names it
        raise UserError(
            f"training_config.init_from {base.path} is in {out}, the folder this fine-tune would "
            "write (logging_config.output_dir); give the fine-tune a folder of its own: --out runs/NAME"
        )
    return base


def _resolve(init_from: Path) -> Path:
    with _named_init_from():
        return checkpoint_path.resolve(init_from)


def _check_tokenizer(base: checkpoint_load.CheckpointFiles, cfg: Config, tokenizer: Tokenizer) -> None:
    if not same_ids(base.tokenizer, tokenizer):
        init_from = cfg.training.init_from
        raise UserError(
            f"the data in {cfg.data.path} was prepared with another tokenizer than {base.path}; prepare "
            f"it with the model's tokenizer: trickster data prepare ... --tokenizer-from {init_from}"
        )


@contextmanager
def _named_init_from() -> Iterator[None]:
    """The init_from checkpoint refused (missing, a data folder, damaged) in a line that names the
    setting to change: the command line of a fine-tune names several paths (--config, --data)."""
    try:
        yield
    except UserError as err:
        raise UserError(f"training_config.init_from: {err}") from None

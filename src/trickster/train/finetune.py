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

import torch

from trickster.config import Config
from trickster.data.token_meaning import same_ids
from trickster.data.tokenizers import Tokenizer
from trickster.errors import UserError
from trickster.model import lora
from trickster.model.transformer import Transformer
from trickster.model.vocab import resolve_vocab
from trickster.train import checkpoint as ckpt
from trickster.train.weights import SAME_FIELDS


def setup_finetuning(
    model: Transformer, cfg: Config, tokenizer: Tokenizer, echo: Callable = print, resuming: bool = False
) -> dict | None:
    """Copy the init_from weights into `model`, then add LoRA adapters if configured; when
    `resuming`, only add the adapters (the checkpoint's weights are loaded next). Returns the
    checkpoint the weights came from (`origin`), None when not fine-tuning or when resuming."""
    t = cfg.training
    if t.init_from is None:
        return None
    if resuming:
        if t.lora is not None:
            lora.apply_lora(model, t.lora)
        return None
    source = refuse_other_tokenizer(cfg, tokenizer)
    with _named_init_from():
        saved = ckpt.read_config(source)
    different = [
        f"{key} {_field(saved, key)} there, {_field(cfg, key)} here"
        for key in SAME_FIELDS
        if _field(saved, key) != _field(cfg, key)
    ]
    if different:
        raise UserError(
            f"training_config.init_from {source} has another model_config ({'; '.join(different)}); "
            f"start from its config: --config {source / 'config.yaml'}"
        )
    with _named_init_from():
        loaded = ckpt.load_checkpoint(source)  # a LoRA checkpoint arrives merged
    with torch.no_grad():
        for name, tensor in ckpt.weights_to_save(loaded.model).items():
            model.get_parameter(name).copy_(tensor)
    message = f"fine-tuning from {source} (step {loaded.info.get('step')})"
    if t.lora is not None:
        trainable = lora.apply_lora(model, t.lora)
        total = sum(p.numel() for p in model.parameters())
        message += (
            f" with LoRA rank {t.lora.rank} on {', '.join(lora.target_names(t.lora))}: "
            f"{trainable:,} trainable parameters of {total:,}"
        )
    echo(message)
    return origin(source, loaded.info)


def origin(source: Path, info: dict) -> dict:
    """What the start event and every checkpoint's info.json record of the checkpoint a fine-tune
    started from: its absolute path (init_from may name a run folder, whose `best` moves on), its
    step, and when it was saved, which tells a later checkpoint written to the same path apart."""
    return {"checkpoint": str(source.resolve()), "step": info["step"], "saved": info.get("saved")}


def model_vocab(cfg: Config, tokenizer: Tokenizer, resume: bool | str) -> Config:
    """`cfg` with vocab_size set from the data's tokenizer; a fresh fine-tune first refuses data
    prepared with another tokenizer than its model's (a resume's init_from may have moved)."""
    if cfg.training.init_from is not None and resume is False:
        refuse_other_tokenizer(cfg, tokenizer)
    return resolve_vocab(cfg, tokenizer)


def refuse_other_tokenizer(cfg: Config, tokenizer: Tokenizer) -> Path:
    """The init_from checkpoint, once its tokenizer is the data's. Checked before the model's shape
    (and before vocab_size meets the data's tokenizer), since data prepared with another tokenizer
    shows first as another vocabulary size, and a message about the size would send the user to
    change a config that is right."""
    init_from = cfg.training.init_from
    with _named_init_from():
        source = ckpt.resolve(init_from)
        theirs = ckpt.read_tokenizer(source)
    if not same_ids(theirs, tokenizer):
        raise UserError(
            f"the data in {cfg.data.path} was prepared with another tokenizer than {source}; prepare it "
            f"with the model's tokenizer: trickster data prepare ... --tokenizer-from {init_from}"
        )
    return source


@contextmanager
def _named_init_from() -> Iterator[None]:
    """The init_from checkpoint refused (missing, a data folder, damaged) in a line that names the
    setting to change: the command line of a fine-tune names several paths (--config, --data)."""
    try:
        yield
    except UserError as err:
        raise UserError(f"training_config.init_from: {err}") from None


def _field(cfg: Config, key: str):
    return cfg.model.kv_heads if key == "num_kv_heads" else getattr(cfg.model, key)  # empty = num_heads

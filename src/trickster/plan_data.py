"""The prepared data a plan counts with (`trickster plan --data DIR`, or the folder the config's
data_config.path names once it is prepared): the model's vocabulary as training sets it from the
data's tokenizer (its embedding and output rows: memory, parameters), and the tokens its training
split holds (the epochs of each token budget).

Without such a folder the plan counts vocab_size: auto as 256 (model/vocab.assumed_vocab): a bpe
or gpt2 vocabulary is tens of thousands of rows, which a preset's plan could not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trickster.config import Config
from trickster.data.loader import load_data
from trickster.model.vocab import VOCAB_MULTIPLE, resolve_vocab


@dataclass(frozen=True)
class PlannedData:
    path: Path
    given: str  # how the plan was told of it: "--data" or "data_config.path"
    tokenizer: str  # its kind: char, byte, bpe, gpt2, ...
    ids: int  # the tokenizer's vocabulary (the model's rows may be more: padded)
    train_tokens: int  # what one epoch of training reads
    auto: bool  # the model's vocab_size was auto: set from the tokenizer's (padded)

    def epochs(self, tokens: int) -> str:
        """`tokens` as passes over the training split: "3.2 epochs", "0.05 epochs", "1 epoch"."""
        if tokens == self.train_tokens:
            return "1 epoch"
        epochs = tokens / max(1, self.train_tokens)
        return f"{epochs:,.{1 if epochs >= 10 else 2}f} epochs"


def planned_data(cfg: Config, data: str | None) -> tuple[Config, PlannedData | None]:
    """`cfg` with vocab_size set as training sets it (resolve_vocab: auto from the tokenizer, padded
    to a multiple of 64; a size set too small for it refused), and the data counted; `cfg` as it is
    and None without data. `data` (--data) must be prepared: it is refused in training's one line
    when it is not. data_config.path is used once prepared (meta.json there): a preset names
    data/shakespeare-char, which a plan before any preparation must not be refused for."""
    path, given = (data, "--data") if data is not None else (cfg.data.path, "data_config.path")
    if path is None or (data is None and not (Path(path) / "meta.json").is_file()):
        return cfg, None
    prepared = load_data(path)  # training's reader: a folder not prepared, or damaged, refused as there
    planned = PlannedData(
        Path(path),
        given,
        prepared.tokenizer.kind,
        prepared.tokenizer.vocab_size,
        len(prepared.train),
        cfg.model.vocab_size == "auto",
    )
    return resolve_vocab(cfg, prepared.tokenizer), planned


def data_line(planned: PlannedData, cfg: Config) -> str:
    """Which data the plan counted with, and the vocabulary the model gets from it."""
    rows = cfg.model.vocab_size
    if not planned.auto:
        vocab = f"model_config.vocab_size {rows:,}"
    elif rows == planned.ids:
        vocab = f"vocab_size auto: {rows:,}"
    else:
        vocab = f"vocab_size auto: {rows:,}, padded to a multiple of {VOCAB_MULTIPLE} as training pads it"
    return (
        f"data: {planned.path} ({planned.given}): {planned.train_tokens:,} training tokens; "
        f"{planned.tokenizer} tokenizer of {planned.ids:,} ids ({vocab})"
    )

"""The model's vocabulary follows the tokenizer's, padded up for fast matmuls."""

from __future__ import annotations

from trickster.config import Config
from trickster.data.tokenizers import Tokenizer
from trickster.errors import UserError

VOCAB_MULTIPLE = 64


def padded_vocab(size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """`size` rounded up to a multiple of 64: embedding and output matmuls run faster on GPUs
    when the vocabulary dimension is a multiple of the tile size (50257 -> 50304 for GPT-2)."""
    return -(-size // multiple) * multiple


def resolve_vocab(cfg: Config, tokenizer: Tokenizer) -> Config:
    """Fill vocab_size: auto from the tokenizer (padded up to a multiple of 64; generation, eval
    and exports never produce the pad rows), and refuse a model too small for it."""
    vocab = cfg.model.vocab_size
    if vocab == "auto":
        cfg = cfg.model_copy(deep=True)
        cfg.model.vocab_size = padded_vocab(tokenizer.vocab_size)
    elif vocab < tokenizer.vocab_size:
        raise UserError(
            f"model_config.vocab_size ({vocab}) is smaller than the tokenizer's vocabulary "
            f"({tokenizer.vocab_size}); set model_config.vocab_size={tokenizer.vocab_size} or auto"
        )
    return cfg


def assumed_vocab(cfg: Config) -> tuple[Config, str]:
    """For counting before any tokenizer is known (`info`, `plan`): vocab_size auto as 256, the
    byte tokenizer's size, with the note that says so; else `cfg` as it is and no note."""
    if cfg.model.vocab_size != "auto":
        return cfg, ""
    cfg = cfg.model_copy(deep=True)
    cfg.model.vocab_size = 256
    return cfg, " (auto: set from the tokenizer; counted here as 256)"


def vocab_note(tokenizer: Tokenizer, cfg: Config) -> str:
    """ "vocab 65 (padded to 128)": the tokenizer's ids, and the model's rows where they differ."""
    rows = cfg.model.vocab_size
    return f"vocab {tokenizer.vocab_size}" + (f" (padded to {rows})" if rows != tokenizer.vocab_size else "")

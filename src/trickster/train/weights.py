"""What a checkpoint's weight files hold, and whether its config.yaml builds that model.

A checkpoint's config.yaml says how to build the model that model.safetensors (and, after a LoRA
run, lora.safetensors) fills. Edited by hand (model_config.hidden_dim: 100000000, vocab_size: 1e18,
num_layers: 100000000), it had the loader allocate the model it describes before reading a weight:
an allocator's traceback, or a hundred million blocks built one by one. `check_config` first
compares the names and shapes the config implies with those in the files' headers (safetensors
keeps them in a JSON header: no tensor is read) and names the first tensor that differs, as
transformers' "size mismatch" does. The config's names and shapes come from a model of one block
built on the meta device (no memory), which stands for every block.

Some edits keep every shape: num_heads 4 -> 8 (with num_kv_heads following it) splits the same
wq, wk and wv into other heads, and the model loads and computes garbage. So a checkpoint's
model.safetensors also records the model_config it was saved with in its header's metadata
(`weights_metadata`), and `check_config` compares config.yaml with it when it is there (files
saved before it was recorded have none, and are checked by their shapes alone).
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from trickster import footprint
from trickster.config import Config, ModelConfig
from trickster.errors import UserError
from trickster.model import lora
from trickster.model.flops import trained_parameters
from trickster.model.transformer import Transformer
from trickster.train.device import allocation_failed

BLOCK = re.compile(r"^layers\.(\d+)\.")  # the names of a block's weights begin so
RECORDED = "trickster.model_config"  # the header metadata key of the model_config the weights were saved with
# model_config fields that decide the weights or what they compute; max_seq_len and dropout may change
SAME_FIELDS = (
    "vocab_size",
    "hidden_dim",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "mlp_dim",
    "tie_embeddings",
    "rope_theta",
    "norm_eps",
)
FIX = "put back its model_config (and training_config.lora) as saved, or use another checkpoint"


def differences(theirs: ModelConfig, mine: ModelConfig) -> list[str]:
    """The SAME_FIELDS in which `theirs` differs from `mine`, each as "KEY THEIRS there, MINE here":
    why weights of one cannot be put in the other's model."""
    return [
        f"{key} {_field(theirs, key)} there, {_field(mine, key)} here"
        for key in SAME_FIELDS
        if _field(theirs, key) != _field(mine, key)
    ]


def _field(model: ModelConfig, key: str):
    return model.kv_heads if key == "num_kv_heads" else getattr(model, key)  # empty = num_heads


def weights_to_save(
    model: Transformer, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The plain model's weights (or those of a gathered full `state`), the tied output once;
    LoRA adapters, if any, are saved apart (lora.adapter_weights)."""
    state = model.state_dict() if state is None else state
    state = {name: t for name, t in state.items() if not lora.is_adapter(name)}
    if model.cfg.tie_embeddings:
        state.pop("output.weight", None)  # the same tensor as tok_embeddings.weight
    return {name: t.detach().contiguous() for name, t in state.items()}


def copy_weights(model: Transformer, source: Transformer) -> None:
    """Every weight of `source` into `model`'s parameter of the same name: a model of the same
    SAME_FIELDS (max_seq_len and dropout may differ)."""
    with torch.no_grad():
        for name, tensor in weights_to_save(source).items():
            model.get_parameter(name).copy_(tensor)


def weights_metadata(cfg: Config) -> dict[str, str]:
    """The str -> str metadata of a checkpoint's weight files: the model_config they were saved with."""
    return {"format": "pt", RECORDED: json.dumps(cfg.model.model_dump(mode="json"))}


def saved_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor of a safetensors file, from its header (no tensor is read)."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as err:
        raise UserError(
            f"{file} is damaged or not a safetensors file ({err}); use another checkpoint"
        ) from None


def check_config(cfg: Config, weights: Path, device: torch.device) -> None:
    """Refuse, before any memory is allocated, a checkpoint whose config.yaml (`cfg`) does not
    build the model its weights (`weights`, and lora.safetensors beside it when cfg says LoRA)
    hold, or whose model does not fit in the memory of `device` at all."""
    config = weights.parent / "config.yaml"
    files = [weights] + ([weights.parent / lora.ADAPTERS] if cfg.training.lora is not None else [])
    saved = {name: (shape, file.name) for file in files for name, shape in saved_shapes(file).items()}
    block = _one_block(cfg)
    if block is None:
        held = sum(math.prod(shape) for shape, _ in saved.values())
        parameters = trained_parameters(cfg.model, cfg.training.lora)
        raise UserError(
            f"{config} does not match the weights saved with it: it makes a model of "
            f"{parameters:.3g} parameters, too big to build, and they hold {held:,}; {FIX}"
        )
    kinds, held_kinds = {_kind(n) for n in block}, {_kind(n) for n in saved}
    layers = {int(found.group(1)) for name in saved if (found := BLOCK.match(name))}
    if kinds == held_kinds and len(layers) != cfg.model.num_layers:
        raise UserError(
            f"{config} does not match the weights saved with it: model_config.num_layers is "
            f"{cfg.model.num_layers:,}, {weights.name} holds {len(layers):,} blocks; {FIX}"
        )
    # the model's order: the embedding and other weights outside the blocks first, then block by block
    expected = {name: shape for name, shape in block.items() if not BLOCK.match(name)}
    expected |= {
        BLOCK.sub(f"layers.{i}.", n): s for i in sorted(layers) for n, s in block.items() if BLOCK.match(n)
    }
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"{weights} does not match its config: missing {some(missing)}, unexpected "
            f"{some(unexpected)}; was it written by another model, or was {config} edited?"
        )
    for name, shape in expected.items():
        if saved[name][0] != shape:
            raise UserError(
                f"{config} does not match the weights saved with it: {name} is {saved[name][0]} in "
                f"{saved[name][1]}, the config needs {shape}; {FIX}"
            )
    _check_recorded(cfg, config, weights)
    _check_memory(cfg, config, sum(math.prod(shape) for shape, _ in saved.values()), device)


def _check_recorded(cfg: Config, config: Path, weights: Path) -> None:
    """Refuse a config.yaml whose model_config differs from the one `weights` records in its
    header (none before it was recorded: nothing to compare) in a key that changes what the same
    weights compute; max_seq_len (the longest context) and dropout (training only) may change."""
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            recorded = json.loads((f.metadata() or {}).get(RECORDED, "null"))
    except ValueError:  # metadata that is not JSON: not ours, nothing to compare
        return
    if not isinstance(recorded, dict):
        return
    current = cfg.model.model_dump(mode="json")
    for key in SAME_FIELDS:
        now, then = current[key], recorded.get(key, current[key])
        if key == "num_kv_heads":  # empty means num_heads: 4 and empty are the same with 4 heads
            now, then = now or current["num_heads"], then or recorded.get("num_heads")
        if now != then:
            raise UserError(
                f"{config} does not match the weights saved with it: model_config.{key} is {now}, "
                f"{weights.name} was saved with {then}; {FIX}"
            )


def _one_block(cfg: Config) -> dict[str, tuple[int, ...]] | None:
    """The names and shapes of the weights (and LoRA adapters) a model of `cfg` with one block
    saves, built on the meta device; None when a tensor has more elements than 64 bits count."""
    one = cfg.model.model_copy(update={"num_layers": 1})
    try:
        with torch.device("meta"):
            model = Transformer(one)
            if cfg.training.lora is not None:
                lora.apply_lora(model, cfg.training.lora)
    except RuntimeError as err:
        if not allocation_failed(err):
            raise
        return None
    tensors = {**weights_to_save(model), **lora.adapter_weights(model)}
    return {name: tuple(t.shape) for name, t in tensors.items()}


def _check_memory(cfg: Config, config: Path, parameters: int, device: torch.device) -> None:
    """Refuse a model whose float32 weights and rotary tables (model_config.max_seq_len rows of
    head_dim each, cos and sin: not in the weight files) are more than the device's memory."""
    weights, rotary = 4 * parameters, 2 * 4 * cfg.model.max_seq_len * cfg.model.head_dim
    capacity, what = footprint.process_memory(device)
    if weights + rotary > capacity:
        size = footprint.size_text
        raise UserError(
            f"the model does not fit on {device} ({what}, {size(capacity)}): {size(weights)} of weights "
            f"and {size(rotary)} of rotary tables for model_config.max_seq_len {cfg.model.max_seq_len:,}; "
            f"if {config} was edited, {FIX}; else use a device with more memory"
        )


@contextmanager
def loading_refused(path: Path, device: torch.device):
    """Loading the checkpoint at `path`: an allocation the device refuses (memory that other
    programs hold; check_config refuses models too big for all of it) becomes one line."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        if not allocation_failed(err):
            raise
        raise UserError(
            f"loading {path} on {device} failed to allocate memory (other programs hold it?); free "
            "some, or load it on another device"
        ) from None


def _kind(name: str) -> str:
    return BLOCK.sub("layers.N.", name)


def some(names: list[str], shown: int = 3) -> str:
    """The first `shown` names, and how many more."""
    if not names:
        return "nothing"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more

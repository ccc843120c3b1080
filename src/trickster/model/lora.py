"""LoRA (Hu et al., 2021): low-rank adapters added to a finished model's linear layers.

`apply_lora(model, cfg)` replaces each target `nn.Linear` of every block with a `LoRALinear` that
keeps the same `weight` (frozen) and adds two small matrices:

    y = x W^T + (alpha / rank) * x A^T B^T        A: (rank, in), B: (out, rank), B starts at 0

so the adapted model starts out equal to the base model, and only A and B train; every other
parameter is frozen. The base weights keep their names (`layers.0.attention.wq.weight`), so a
checkpoint stores them in model.safetensors, which loads into a plain Transformer, and the adapters
(`layers.0.attention.wq.lora_a`, `...lora_b`) in lora.safetensors beside it. `merge_lora` folds
the adapters into the weights (W += alpha / rank * B @ A) and leaves a plain model: that is what
generation and export load.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from trickster.config import LoraConfig, ModelConfig

ADAPTERS = "lora.safetensors"
ADAPTER_SUFFIXES = (".lora_a", ".lora_b")
# what training_config.lora.targets may name: our linear layers, or the Hugging Face names of the same
TARGETS = ("wq", "wk", "wv", "wo", "w1", "w3", "w2")
HF_NAMES = {
    "q_proj": "wq",
    "k_proj": "wk",
    "v_proj": "wv",
    "o_proj": "wo",
    "gate_proj": "w1",
    "up_proj": "w3",
    "down_proj": "w2",
}


class LoRALinear(nn.Module):
    """A bias-free linear layer with a frozen weight and a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.weight = base.weight  # the same Parameter object: its name and storage do not change
        self.weight.requires_grad_(False)
        self.scale = alpha / rank
        out_features, in_features = base.weight.shape
        kwargs = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, **kwargs))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, **kwargs))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear (and PEFT) initialise A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale


def linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(inputs, outputs) of each linear layer of a block (each of TARGETS)."""
    d, m = cfg.hidden_dim, cfg.mlp_dim
    kv = cfg.kv_heads * cfg.head_dim
    return {
        "wq": (d, d),
        "wk": (d, kv),
        "wv": (d, kv),
        "wo": (d, d),
        "w1": (d, m),
        "w3": (d, m),
        "w2": (m, d),
    }


def target_names(cfg: LoraConfig) -> list[str]:
    """Our layer names for cfg.targets (Hugging Face names translated)."""
    return sorted({HF_NAMES.get(name, name) for name in cfg.targets})


def adapted_layers(cfg: LoraConfig) -> str:
    """The adapters' rank and layers as the fine-tune line, `info` and `plan` say them: 'rank 8 on wq, wv'."""
    return f"rank {cfg.rank} on {', '.join(target_names(cfg))}"


def apply_lora(model: nn.Module, cfg: LoraConfig) -> int:
    """Freeze every parameter, then add adapters to the target layers; returns the parameters that
    train now (the adapters' elements), which the fine-tune line reports."""
    for param in model.parameters():
        param.requires_grad_(False)
    wanted = set(target_names(cfg))
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rpartition(".")[2] in wanted and name.startswith("layers.")
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoRALinear(module, cfg.rank, cfg.alpha))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def is_adapter(name: str) -> bool:
    return name.endswith(ADAPTER_SUFFIXES)


def adapter_weights(
    model: nn.Module, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The adapters of a model (empty for a plain one), as lora.safetensors stores them. `state`:
    the model's gathered full state dict, when the model itself is sharded over processes (its own
    state_dict() then holds shards)."""
    state = model.state_dict() if state is None else state
    return {n: t.detach().contiguous() for n, t in state.items() if is_adapter(n)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its weight (W += alpha / rank * B @ A) and put a plain nn.Linear
    with that weight back in its place: the model is a plain Transformer again."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.weight += (module.lora_b @ module.lora_a) * module.scale  # (out, rank) @ (rank, in)
            out_features, in_features = module.weight.shape
            linear = nn.Linear(in_features, out_features, bias=False, device="meta")
            linear.weight = module.weight
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, linear)
    for param in model.parameters():
        param.requires_grad_(True)

"""The optimizer (AdamW, or Muon for the hidden matrices beside AdamW for the rest) and the
learning-rate schedule as a pure function of the step.

`training_config.optimizer`:

    adamw   AdamW on every parameter; weight decay on matrices (embedding, linear weights) only.
    muon    Muon (torch.optim.Muon: momentum orthogonalised by Newton-Schulz) on the 2-D weight
            matrices of attention and MLP (wq wk wv wo w1 w2 w3 of every block), AdamW on the
            token embedding, an untied output head and the RMSNorm weights, which Muon is not
            meant for. This split is the one modded-nanogpt's speed records, nanochat and
            torchtitan train with.

Both follow one schedule (`lr_at`): each group's peak rate (learning_rate for AdamW, muon_lr for
Muon) times the same warmup/cosine factor. LoRA adapters always train with AdamW (see
`muon_parameter`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trickster.config import TrainingConfig

# the linear layers of a block whose weights Muon takes
HIDDEN_MATRICES = ("wq.weight", "wk.weight", "wv.weight", "wo.weight", "w1.weight", "w2.weight", "w3.weight")


def lr_at(step: int, cfg: TrainingConfig) -> float:
    """AdamW's learning rate for optimizer step `step` (0-based); Muon's is muon_lr / learning_rate
    times this."""
    # 1) linear warmup from learning_rate / warmup_steps up to learning_rate
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    # 2) after max_steps, stay at the floor
    if step >= cfg.max_steps:
        return cfg.min_lr
    # 3) in between, cosine decay from learning_rate down to min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def set_lr(optimizer, step: int, cfg: TrainingConfig) -> float:
    """Set every group's learning rate for `step`; returns AdamW's (the one logged)."""
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr * cfg.muon_lr / cfg.learning_rate if group.get("muon") else lr
    return lr


class MuonAdamW:
    """Muon and AdamW side by side, stepped together, with one list of param_groups (Muon's first).

    Enough of torch.optim.Optimizer for the training loop, the GradScaler and
    torch.distributed.checkpoint (which saves and loads the state of `parts` keyed by parameter
    name: train/dist_checkpoint.py full_optimizer_state).
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.parts = [muon, adamw]

    @property
    def param_groups(self) -> list[dict]:
        return [group for part in self.parts for group in part.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for part in self.parts for p, s in part.state.items()}

    def step(self, closure=None):
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """By position, per part; checkpoints use dist_checkpoint.full_optimizer_state (by name) instead."""
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        for part, part_state in zip(self.parts, state["parts"], strict=True):
            part.load_state_dict(part_state)


def muon_parameter(name: str, param: nn.Parameter) -> bool:
    """A block's attention or MLP weight matrix. LoRA adapters (`...wq.lora_a`) are not: they are
    thin rank-r factors whose update size alpha / rank sets, and the LoRA defaults were found
    with AdamW; the frozen base weights get no optimizer at all."""
    return param.ndim == 2 and name.startswith("layers.") and name.endswith(HIDDEN_MATRICES)


def build_optimizer(model: nn.Module, cfg: TrainingConfig, device: torch.device):
    """AdamW, or Muon + AdamW (training_config.optimizer), over the parameters that train.

    AdamW decays matrices (embeddings, linear weights), not vectors (RMSNorm weights).
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    muon = {}
    if cfg.optimizer == "muon":
        muon = {name: p for name, p in params.items() if muon_parameter(name, p)}
    rest = [p for name, p in params.items() if name not in muon]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    # the fused kernel updates every tensor in one pass; on 2 CPU cores it makes a tiny model's step
    # about a fifth faster than the default per-tensor loop (bench/train_throughput.py)
    fused = device.type in ("cuda", "cpu")
    adamw = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.betas, fused=fused)
    if not muon:
        return adamw
    hidden = torch.optim.Muon(
        [{"params": list(muon.values()), "muon": True}],
        lr=cfg.muon_lr,
        momentum=cfg.muon_momentum,
        weight_decay=cfg.muon_weight_decay,
        # Keller Jordan's scale, sqrt(max(1, rows / cols)), as modded-nanogpt and nanochat use (not
        # Moonshot's 0.2 * sqrt(max(rows, cols)); test_optim works the step out from the shapes)
        adjust_lr_fn="original",
    )
    return MuonAdamW(hidden, adamw)

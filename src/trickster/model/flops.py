"""Parameter counts and training FLOPs per token, from the config alone (no model is built)."""

from __future__ import annotations

from dataclasses import dataclass

from trickster.config import LoraConfig, ModelConfig
from trickster.model.lora import target_names


@dataclass
class ParameterBreakdown:
    embedding: int
    per_block: int
    blocks: int
    final_norm: int
    output: int  # 0 when tied: the output projection is the embedding matrix
    tied: bool
    total: int


def parameter_breakdown(cfg: ModelConfig) -> ParameterBreakdown:
    """Exact parameter counts from the config (matches sum(p.numel()) of the built model)."""
    d, kv = cfg.hidden_dim, (cfg.num_kv_heads or cfg.num_heads) * (cfg.hidden_dim // cfg.num_heads)
    vocab = cfg.vocab_size
    attention = d * d + 2 * d * kv + d * d  # wq, wk, wv, wo
    per_block = attention + 3 * d * cfg.mlp_dim + 2 * d  # + SwiGLU + two RMSNorms
    embedding = vocab * d
    output = 0 if cfg.tie_embeddings else vocab * d
    blocks = per_block * cfg.num_layers
    total = embedding + blocks + d + output
    return ParameterBreakdown(embedding, per_block, blocks, d, output, cfg.tie_embeddings, total)


def adapter_parameters(cfg: ModelConfig, lora: LoraConfig) -> int:
    """LoRA's trainable parameters: rank x (inputs + outputs) of each target layer of every block."""
    d, m = cfg.hidden_dim, cfg.mlp_dim
    kv = (cfg.num_kv_heads or cfg.num_heads) * (d // cfg.num_heads)
    sides = {"wq": d + d, "wk": d + kv, "wv": d + kv, "wo": d + d, "w1": d + m, "w3": d + m, "w2": m + d}
    return cfg.num_layers * lora.rank * sum(sides[name] for name in target_names(lora))


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward), the PaLM / nanoGPT estimate:

    6 * (parameters used in matrix multiplies) + 12 * num_layers * hidden_dim * seq_len.
    Matrix parameters are every linear weight of the blocks plus the output projection (the
    embedding lookup is free); the second term is the attention scores and weighted sum.
    """
    b = parameter_breakdown(cfg)
    matmul_params = b.blocks - 2 * cfg.hidden_dim * cfg.num_layers + cfg.vocab_size * cfg.hidden_dim
    return 6 * matmul_params + 12 * cfg.num_layers * cfg.hidden_dim * seq_len

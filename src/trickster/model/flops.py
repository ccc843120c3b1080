"""Parameter counts and training FLOPs per token, from the config alone (no model is built)."""

from __future__ import annotations

from dataclasses import dataclass

from trickster.config import LoraConfig, ModelConfig
from trickster.model.lora import linear_shapes, target_names


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
    d, kv = cfg.hidden_dim, cfg.kv_heads * cfg.head_dim
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
    shapes = linear_shapes(cfg)
    return cfg.num_layers * lora.rank * sum(sum(shapes[name]) for name in target_names(lora))


def trained_parameters(cfg: ModelConfig, lora: LoraConfig | None = None) -> int:
    """The parameters of the model a run trains: the config's, and with `lora` its adapters too
    (a LoRA fine-tune's model holds both; merged, it is the config's again)."""
    return parameter_breakdown(cfg).total + (0 if lora is None else adapter_parameters(cfg, lora))


def flops_per_token(cfg: ModelConfig, seq_len: int, lora: LoraConfig | None = None) -> int:
    """Training FLOPs per token (forward + backward); with `lora`, those of a LoRA fine-tune
    (lora_flops_per_token). Without, the PaLM / nanoGPT estimate:

    6 * (parameters used in matrix multiplies) + 12 * num_layers * hidden_dim * seq_len.
    Matrix parameters are every linear weight of the blocks plus the output projection (the
    embedding lookup is free); the second term is the attention scores and weighted sum.
    """
    if lora is not None:
        return lora_flops_per_token(cfg, seq_len, lora)
    b = parameter_breakdown(cfg)
    matmul_params = b.blocks - 2 * cfg.hidden_dim * cfg.num_layers + cfg.vocab_size * cfg.hidden_dim
    return 6 * matmul_params + 12 * cfg.num_layers * cfg.hidden_dim * seq_len


def lora_flops_per_token(cfg: ModelConfig, seq_len: int, lora: LoraConfig) -> int:
    """Training FLOPs per token of a LoRA fine-tune, about two thirds of full training's.

    LoRA freezes every base weight, the embedding and output projection too, so none gets a weight
    gradient: a matrix multiply costs 2 FLOPs per weight forward and 2 more backward only when
    the gradient of its input is needed, that is when the input depends on an adapter. That is
    every multiply after the first block's first adapter: the first block reads the frozen
    embedding, so its multiplies before an adapter need no backward at all. The adapters A
    (rank, in) and B (out, rank) train: 6 FLOPs per weight, less A's input gradient where that
    is not needed. The attention's two T x T multiplies (2 x hidden x T per token each, forward)
    need in backward the gradient of q, of k, of the probabilities (for either) and of v, each
    only when it depends on an adapter (as autograd and the math kernel compute them; a fused
    kernel may compute all of them in the first block).
    """
    shapes, adapted, rank = linear_shapes(cfg), set(target_names(lora)), lora.rank
    scores = 2 * cfg.hidden_dim * seq_len  # one of attention's T x T multiplies, over all heads

    def linear(name: str, input_grad: bool) -> tuple[int, bool]:
        """A layer's FLOPs per token, and whether its output depends on an adapter."""
        n_in, n_out = shapes[name]
        flops = 2 * n_in * n_out * (1 + input_grad)
        if name in adapted:  # forward and weight gradients of A and B, B's input gradient, A's if needed
            flops += rank * (4 * (n_in + n_out) + 2 * n_out + 2 * n_in * input_grad)
        return flops, input_grad or name in adapted

    def block(input_grad: bool) -> tuple[int, bool]:
        (fq, q), (fk, k), (fv, v) = (linear(name, input_grad) for name in ("wq", "wk", "wv"))
        attention = scores * (2 + q + k + (q or k) + v)  # forward, then backward to q, k, probabilities, v
        fo, o = linear("wo", q or k or v)
        h = input_grad or o  # the residual stream after attention
        (f1, gate), (f3, up) = linear("w1", h), linear("w3", h)
        f2, out = linear("w2", gate or up)
        return fq + fk + fv + attention + fo + f1 + f3 + f2, h or out

    total, grad = 0, False  # the first block's input is the frozen embedding's output
    for _ in range(cfg.num_layers):
        flops, grad = block(grad)
        total += flops
    return total + 2 * cfg.vocab_size * cfg.hidden_dim * (1 + grad)  # the output projection

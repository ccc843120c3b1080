"""The Nano-Trickster decoder, top to bottom: RMSNorm, rotary positions, attention, SwiGLU, Block,
Transformer. Llama's architecture and parameter names follow Meta's reference code, so export
to Hugging Face is a rename (rotary uses the rotate-half layout that transformers uses).

This file never imports torch.distributed; parallelism is applied to a finished model elsewhere.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from trickster.config import Config, ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return RMSNormFunction.apply(x, self.weight, self.eps)
        # inference (generation, evaluation): one fused call, no autograd bookkeeping
        return F.rms_norm(at_least_float32(x), self.weight.shape, eps=self.eps).type_as(x) * self.weight


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 as float32, so a norm does not lose the mean square; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class RMSNormFunction(torch.autograd.Function):
    """x / rms(x) * weight, with a hand-written backward.

    Autograd's backward of the plain formula runs about a dozen small kernels; this one runs five
    and keeps one activation (the normalised input) instead of several. On 2 CPU cores it halves
    the norm's share of a training step (bench/train_throughput.py). The normalisation is in
    float32, so bf16/fp16 activations do not lose the mean square.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = at_least_float32(x)
        inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        normed = x32 * inv_rms
        ctx.save_for_backward(normed, inv_rms, weight)
        return normed.type_as(x) * weight

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        normed, inv_rms, weight = ctx.saved_tensors
        grad_out32 = grad_out.to(normed.dtype)
        grad_normed = grad_out32 * weight
        # d/dx of x * inv_rms(x): the projection of the gradient along `normed` is removed
        grad_x = (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True)) * inv_rms
        grad_weight = (grad_out32 * normed).flatten(0, -2).sum(0)
        return grad_x.type_as(grad_out), grad_weight.type_as(weight), None


def rotary_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, ...]:
    """cos and signed sin of every (position, frequency) pair, each (T, head_dim).

    Rotate-half pairs element i with element i + head_dim/2 (the layout transformers uses). The
    sin table carries the rotation's sign (-sin on the first half, +sin on the second), so that
    `apply_rotary` needs one `roll` instead of a split, a negation and a concatenation.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (T, hd/2)
    return torch.cat([angles.cos(), angles.cos()], dim=-1), torch.cat([-angles.sin(), angles.sin()], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding; x is (B, n_heads, T, head_dim), the tables (T, head_dim):
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    return (x * cos + x.roll(x.size(-1) // 2, dims=-1) * signed_sin).type_as(x)


IGNORE_INDEX = -100  # a target that the loss skips (the prompt tokens of prompt/response data)
LOSS_CHUNK_ELEMENTS = 2**25  # logits per chunk of the loss (128 MiB in float32), whatever the batch


def chunked_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of the logits h @ weight.T (float32) against targets, skipping
    IGNORE_INDEX, computed a chunk of rows at a time: the (tokens, vocab) float32 logits of the
    whole micro-batch (3.3 GB for 16 x 1024 tokens of a 50k vocabulary) never exist at once.

    h (N, C), weight (vocab, C), targets (N,). Equal to F.cross_entropy of the full logits
    (tested); with gradients, the chunks' gradients are computed in the forward pass (below).
    """
    rows = chunk_rows or max(1, LOSS_CHUNK_ELEMENTS // weight.size(0))
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return ChunkedCrossEntropy.apply(h, weight, targets, rows)
    total = sum(
        _chunk_loss(h[i : i + rows], weight, targets[i : i + rows])[0] for i in range(0, len(h), rows)
    )
    return total / (targets != IGNORE_INDEX).sum()


def _chunk_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """(summed loss, logits - logsumexp in float32, the logits' own dtype) of one chunk."""
    raw = F.linear(h, weight)  # (rows, vocab), in the autocast dtype when autocast is on
    logits = raw.float()
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    kept = targets != IGNORE_INDEX
    picked = log_probs.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)  # (rows,)
    return -(picked * kept).sum(), log_probs, raw.dtype


class ChunkedCrossEntropy(torch.autograd.Function):
    """The loss and, in the same pass over each chunk, its gradients: d loss / d logits is
    softmax - one_hot (zero for skipped targets), so grad_h = g @ weight and grad_weight = g.T @ h.
    Nothing of size (tokens, vocab) is kept for the backward pass, and no logits are recomputed;
    the backward only scales the stored gradients. g is not divided by the token count before
    its cast to the autocast dtype, so float16 gradients do not underflow."""

    @staticmethod
    def forward(ctx, h, weight, targets, rows: int):
        want_h, want_weight = ctx.needs_input_grad[:2]  # a frozen output (LoRA) needs no grad_weight
        count = (targets != IGNORE_INDEX).sum()
        total = torch.zeros((), device=h.device)
        grad_h = torch.empty_like(h) if want_h else None
        grad_weight = torch.zeros(weight.shape, device=weight.device) if want_weight else None
        for i in range(0, len(h), rows):
            hc, tc = h[i : i + rows], targets[i : i + rows]
            loss, log_probs, dtype = _chunk_loss(hc, weight, tc)
            total += loss
            g = log_probs.exp_()  # softmax, in place of the log-probabilities
            kept = (tc != IGNORE_INDEX).unsqueeze(1)
            g.scatter_add_(1, tc.clamp(min=0).unsqueeze(1), -kept.to(g.dtype))
            g = (g * kept).to(dtype)  # (rows, vocab); autocast casts the weight as in the forward
            if want_h:
                grad_h[i : i + rows] = g @ weight  # (rows, C)
            if want_weight:
                grad_weight += g.t() @ hc  # (vocab, C), summed over the chunks in float32
        ctx.save_for_backward(grad_h, grad_weight, count)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_weight, count = ctx.saved_tensors
        scale = grad_out / count
        if grad_h is not None:
            grad_h = grad_h * scale.to(grad_h.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * scale).to(ctx.weight_dtype)
        return grad_h, grad_weight, None, None


@dataclass
class KVCache:
    """Keys and values of every layer for the positions generated so far."""

    keys: list[torch.Tensor]  # each (B, n_kv_heads, max_len, head_dim)
    values: list[torch.Tensor]
    length: int = 0  # positions filled (by the longest row, once `place` was called)
    positions: torch.Tensor | None = None  # (B,) each row's next position; set by `place`
    mask: torch.Tensor | None = None  # (B, 1, 1, length + 1) the keys each row sees; set by `place`

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> KVCache:
        n_kv, head_dim = cfg.kv_heads, cfg.head_dim
        shape = (batch, n_kv, max_len, head_dim)
        zeros = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        return cls(keys=zeros, values=[z.clone() for z in zeros])

    def place(self, positions: list[int]) -> None:
        """Before a decoding step over rows of different lengths (the server's batch: the first B
        rows of the cache): row i's one new token goes to position positions[i] and sees the keys
        up to it. Call it again before each step."""
        device = self.keys[0].device
        self.positions = torch.tensor(positions, dtype=torch.long, device=device)
        self.length = max(positions)
        self.mask = None  # rows of equal length need none (and then match a lone row's step exactly)
        if min(positions) != self.length:
            seen = torch.arange(self.length + 1, device=device) <= self.positions[:, None]
            self.mask = seen[:, None, None, :]  # (B, 1, 1, length + 1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.num_heads
        self.n_kv_heads, self.head_dim = cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.wq = nn.Linear(cfg.hidden_dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden_dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.hidden_dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_dim, bias=False)
        self.fused_qkv: torch.Tensor | None = None  # set by Transformer.fused_projections()

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        if self.fused_qkv is not None:  # generation: one matmul, and one rotation for q and k
            qkv = F.linear(x, self.fused_qkv).view(B, T, -1, self.head_dim).transpose(1, 2)
            qk = apply_rotary(qkv[:, : self.n_heads + self.n_kv_heads], cos, sin)
            q, k = qk.split([self.n_heads, self.n_kv_heads], dim=1)  # (B, nh, T, hd), (B, nkv, T, hd)
            v = qkv[:, self.n_heads + self.n_kv_heads :]  # (B, nkv, T, hd)
        else:
            q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
            k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
            v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        if cache is not None and cache.positions is not None:  # one token per row, each at its own place
            rows = torch.arange(B, device=x.device)
            cache.keys[layer][rows, :, cache.positions] = k[:, :, 0]
            cache.values[layer][rows, :, cache.positions] = v[:, :, 0]
            k = cache.keys[layer][:B, :, : cache.length + 1]  # (B, nkv, length+1, hd)
            v = cache.values[layer][:B, :, : cache.length + 1]
            mask, causal = cache.mask, False
        else:
            start = 0
            if cache is not None:
                start = cache.length
                cache.keys[layer][:, :, start : start + T] = k
                cache.values[layer][:, :, start : start + T] = v
                k = cache.keys[layer][:, :, : start + T]  # (B, nkv, start+T, hd)
                v = cache.values[layer][:, :, : start + T]
            if T == 1:  # one new token attends to everything before it: no mask needed
                mask, causal = None, False
            elif start == 0:
                mask, causal = None, True
            else:  # a chunk after cached positions: query i sees keys up to start + i
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                causal = False
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, C)
        return self.wo(y)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_dim, cfg.mlp_dim, bias=False)  # gate
        self.w3 = nn.Linear(cfg.hidden_dim, cfg.mlp_dim, bias=False)  # up
        self.w2 = nn.Linear(cfg.mlp_dim, cfg.hidden_dim, bias=False)  # down
        self.fused_gate_up: torch.Tensor | None = None  # set by Transformer.fused_projections()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_gate_up is not None:
            gate, up = F.linear(x, self.fused_gate_up).chunk(2, dim=-1)
            return self.w2(F.silu(gate) * up)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden_dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_dim, cfg.norm_eps)
        self.feed_forward = SwiGLU(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        if not (self.training and self.dropout.p > 0):  # a call less per branch: decoding is overhead-bound
            x = x + self.attention(self.attention_norm(x), cos, sin, cache, layer)
            return x + self.feed_forward(self.ffn_norm(x))
        x = x + self.dropout(self.attention(self.attention_norm(x), cos, sin, cache, layer))
        return x + self.dropout(self.feed_forward(self.ffn_norm(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg.vocab_size, int):
            raise ValueError("vocab_size must be resolved from the tokenizer before building")
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.hidden_dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.reset_rotary()
        self.checkpoint_activations = False  # set by the trainer (device_config.activation_checkpointing)
        self.init_weights()

    def reset_rotary(self, device: torch.device | str | None = None) -> None:
        """Compute the rotary tables (buffers, never saved), on `device` if given: a model built on
        the meta device gets real ones once it has storage."""
        cfg = self.cfg
        cos, sin = rotary_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)  # (max_seq_len, head_dim)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)  # signed: see rotary_tables

    @contextlib.contextmanager
    def fused_projections(self):
        """For generation: q, k and v in one matrix multiply, and the MLP's gate and up in another.

        Decoding one token at a time is bound by per-call overhead, not arithmetic, so fewer and
        wider matmuls are faster (bench/generate_throughput.py); the weights are concatenated once,
        on entry. Training keeps separate matmuls (there the concatenation would cost each step).
        Left out, with nothing fused, when a projection is not a plain Linear (a LoRA adapter) or
        its weight is sharded (FSDP), where a copy of the plain weight would be wrong or partial.
        """
        pairs = []
        for block in self.layers:
            attention, mlp = block.attention, block.feed_forward
            pairs.append((attention, "fused_qkv", (attention.wq, attention.wk, attention.wv)))
            pairs.append((mlp, "fused_gate_up", (mlp.w1, mlp.w3)))
        plain = all(
            type(linear) is nn.Linear and type(linear.weight.data) is torch.Tensor
            for _, _, linears in pairs
            for linear in linears
        )
        try:
            if plain:
                with torch.no_grad():
                    for module, name, linears in pairs:
                        setattr(module, name, torch.cat([linear.weight for linear in linears]))
            yield self
        finally:
            for module, name, _ in pairs:
                setattr(module, name, None)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Initialise every parameter (GPT-2 / nanoGPT scheme):

        - token embedding (and the tied output): normal(0, 0.02)
        - wq, wk, wv, w1, w3, and an untied output: normal(0, 0.02)
        - wo and w2, which write into the residual stream: normal(0, 0.02 / sqrt(2 * num_layers))
        - RMSNorm weights: ones
        """
        std, residual_std = 0.02, 0.02 / math.sqrt(2 * self.cfg.num_layers)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(("wo.weight", "w2.weight")):
                param.normal_(0.0, residual_std, generator=generator)
            else:
                param.normal_(0.0, std, generator=generator)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, vocab), None); with targets (B, T) instead
        (None, the mean cross-entropy): training and evaluation never form the full logits."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        if cache is not None and cache.positions is not None:  # rows at their own places (KVCache.place)
            if T != 1:
                raise ValueError(f"rows placed at their own positions take one token each (got {T})")
            cos = self.rope_cos[cache.positions][:, None, None]  # (B, 1, 1, head_dim)
            sin = self.rope_sin[cache.positions][:, None, None]
        x = self.tok_embeddings(idx)  # (B, T, C)
        for i, layer in enumerate(self.layers):
            if self.checkpoint_activations and self.training and cache is None:
                # keep only the block's input; recompute its activations in the backward pass
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, None, i, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, i)
        if cache is not None:
            cache.length += T
        h = self.norm(x)  # (B, T, C)
        if targets is None:
            return self.output(h).float(), None  # (B, T, vocab)
        # the loss straight from h, a chunk at a time: no full float32 logits (see above)
        return None, chunked_cross_entropy(h.reshape(B * T, -1), self.output.weight, targets.reshape(B * T))


def untrained_like(cfg: Config) -> Transformer:
    """A freshly initialised model of the same shape, seeded as the training run started."""
    torch.manual_seed(cfg.training.seed)
    return Transformer(cfg.model)

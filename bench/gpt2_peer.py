"""A peer to measure against: a GPT-2-style model and training step built the way nanoGPT builds
them (karpathy/nanoGPT, model.py and train.py), written here from its published recipe because
this machine cannot fetch nanoGPT itself.

What it copies from nanoGPT's CPU recipe: LayerNorm without bias, one fused q/k/v projection,
causal `scaled_dot_product_attention`, a GELU MLP 4x wide, learned position embeddings, the output
projection tied to the token embedding, AdamW (betas 0.9/0.99, weight decay on matrices only,
PyTorch's default implementation on CPU), gradient clipping at 1.0, `zero_grad(set_to_none=True)`,
and batches drawn with `torch.randint` over a memory-mapped token file, stacked per row.

    python bench/gpt2_peer.py --layers 4 --width 128 --heads 4 --context 64 --batch 12 --steps 60
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PeerBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width, bias=False)
        self.c_attn = nn.Linear(width, 3 * width, bias=False)
        self.attn_proj = nn.Linear(width, width, bias=False)
        self.ln_2 = nn.LayerNorm(width, bias=False)
        self.c_fc = nn.Linear(width, 4 * width, bias=False)
        self.mlp_proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class PeerGPT(nn.Module):
    def __init__(self, vocab: int, context: int, width: int, layers: int, heads: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(PeerBlock(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def matmul_params(self) -> int:
        """Parameters in matrix multiplies (the output projection included, position table not)."""
        return sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and n != "wpe.weight")


def flops_per_token(model: PeerGPT, layers: int, width: int, context: int) -> int:
    """The same formula as trickster.model.flops.flops_per_token: 6N + 12 L d T."""
    return 6 * model.matmul_params() + 12 * layers * width * context


def train_steps(tokens: np.ndarray, args, vocab: int) -> tuple[list[float], PeerGPT]:
    """Train for args.steps steps; returns seconds per step (each step timed alone) and the model."""
    torch.manual_seed(1337)
    model = PeerGPT(vocab, args.context, args.width, args.layers, args.heads)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.99),
    )

    def get_batch():
        ix = torch.randint(len(tokens) - args.context, (args.batch,))
        x = torch.stack([torch.from_numpy(tokens[i : i + args.context].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(tokens[i + 1 : i + 1 + args.context].astype(np.int64)) for i in ix])
        return x, y

    times = []
    x, y = get_batch()
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = model(x, y)
        x, y = get_batch()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss every log interval; here every step
        times.append(time.perf_counter() - start)
    return times, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    tokens = np.random.default_rng(0).integers(0, 65, 200_000).astype(np.uint16)
    times, model = train_steps(tokens, args, vocab=65)
    ms = 1000 * float(np.median(times[len(times) // 5 :]))
    tok_s = args.batch * args.context / (ms / 1000)
    flops = flops_per_token(model, args.layers, args.width, args.context)
    print(f"peer: {ms:.1f} ms/step, {tok_s:,.0f} tokens/s, {tok_s * flops / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()

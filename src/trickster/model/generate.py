"""Sampling: temperature, top-k, top-p, and a generation loop with or without a KV cache."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator

import torch

from trickster.model.transformer import KVCache, Transformer
from trickster.precision import inference_dtype

# logits / 1e-40 overflow float32 (1e-300 even rounds to a divisor of 0); a temperature below
# vLLM's threshold is greedy in effect
GREEDY_BELOW = 1e-5


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of logits (B, vocab); a temperature of 0 (or below GREEDY_BELOW)
    means greedy."""
    if temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the ones ranked above it already reach top_p (the first always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        # kept by name: a top_p below float32's least value (1e-300) compares as 0, which drops it too
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def mask_unused_rows(logits: torch.Tensor, vocab_limit: int | None) -> None:
    """In place: ids >= vocab_limit (rows padding the vocabulary to a multiple of 64, which the
    tokenizer never produces) get no probability."""
    if vocab_limit is not None and vocab_limit < logits.size(-1):
        logits[..., vocab_limit:] = float("-inf")


def generate(
    model: Transformer,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    vocab_limit: int | None = None,
    stop_ids: Collection[int] = (),
    use_cache: bool = True,
    dtype: torch.dtype | None = None,
    agree: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time.

    `agree`: applied to each drawn token before it is used; a model sharded over processes
    passes rank 0's choice to every rank here, so all of them feed (and stop on) the same token.

    `stop_ids`: the ids that end the text (Tokenizer.stop_ids), never yielded.
    `vocab_limit` masks embedding rows the tokenizer never produces (a 256-row model on a 65-symbol
    corpus). With the cache, each step feeds one token; without it, the whole window is re-run.
    Once the context is full, generation continues over the last max_seq_len tokens (uncached).
    `dtype`: compute in it under autocast, the KV cache too; None: bfloat16 on a CUDA GPU of
    Ampere or later (precision.inference_dtype), the weights' own dtype elsewhere. A model
    sharded by FSDP2 computes in the dtype it gathers its weights in: pass that
    (train.dist.Dist.gathered_dtype), or its KV cache takes the float32 of the shards.
    """
    was_training = model.training
    model.eval()
    weight = model.tok_embeddings.weight
    device = weight.device
    if dtype is None:
        dtype = torch.bfloat16 if inference_dtype(device) == "bfloat16" else weight.dtype
    autocast_dtype = dtype if dtype != weight.dtype else None
    sharded = any(type(p.data) is not torch.Tensor for p in model.parameters())  # FSDP2's DTensors
    max_len = model.cfg.max_seq_len
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    tokens = list(prompt_ids)[-max_len:]
    cache = KVCache.empty(model.cfg, 1, max_len, device, dtype) if use_cache else None
    pending = tokens  # tokens not yet seen by the model (all of them at first)
    try:
        with model.fused_projections():
            for _ in range(max_new_tokens):
                with _decoding(sharded, device, autocast_dtype):
                    if cache is not None and cache.length + len(pending) <= max_len:
                        idx = torch.tensor([pending], dtype=torch.long, device=device)
                        logits, _ = model(idx, cache=cache)
                    else:
                        cache = None  # window is full: slide it and recompute
                        idx = torch.tensor([tokens[-max_len:]], dtype=torch.long, device=device)
                        logits, _ = model(idx)
                    next_logits = logits[:, -1, :]
                    mask_unused_rows(next_logits, vocab_limit)
                    choice = sample(next_logits, temperature, top_k, top_p, generator)
                    if agree is not None:
                        choice = agree(choice)
                    token = int(choice.item())
                if token in stop_ids:
                    return
                tokens.append(token)
                pending = [token]
                yield token
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _decoding(sharded: bool, device: torch.device, autocast_dtype: torch.dtype | None):
    """The context of one decoding step, entered anew at each step (the caller runs between two
    tokens with its own settings):

    - inference_mode, lighter than no_grad (no version counters or view tracking per op), except
      with sharded weights (FSDP2), whose hooks gather and free parameters that must stay normal
      tensors for training;
    - autocast to `autocast_dtype`, if given;
    - compiled blocks (device_config.compile) run eagerly: every cache length would recompile them.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad() if sharded else torch.inference_mode())
        if autocast_dtype is not None:
            stack.enter_context(torch.autocast(device.type, dtype=autocast_dtype))
        if hasattr(torch.compiler, "set_stance"):  # torch >= 2.6
            stack.enter_context(torch.compiler.set_stance("force_eager"))
        yield

"""Step 1 of scripts/gpu_check.py: the CUDA primitives the training paths rely on, each checked
on its own (one failing check does not hide the others). `probe()` returns (notes, failures)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def sdpa_flash() -> str:
    """Forward and backward of causal attention restricted to the flash kernel, in bf16, for
    plain and grouped-query attention (enable_gqa), against the math kernel in float32."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    generator = torch.Generator("cuda").manual_seed(0)
    for kv_heads in (8, 2):
        shapes = {"query": (2, 8, 512, 64), "key": (2, kv_heads, 512, 64), "value": (2, kv_heads, 512, 64)}
        tensors = {n: torch.randn(s, device="cuda", generator=generator) for n, s in shapes.items()}
        weights = torch.randn(2, 8, 512, 64, device="cuda", generator=generator)  # O(1) gradients
        fast = {n: t.bfloat16().requires_grad_() for n, t in tensors.items()}
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(**fast, is_causal=True, enable_gqa=kv_heads != 8)
            (out.float() * weights).sum().backward()
        exact = {n: t.clone().requires_grad_() for n, t in tensors.items()}
        with sdpa_kernel(SDPBackend.MATH):
            reference = F.scaled_dot_product_attention(**exact, is_causal=True, enable_gqa=kv_heads != 8)
            (reference * weights).sum().backward()
        pairs = [(out.float(), reference)] + [(fast[n].grad.float(), exact[n].grad) for n in shapes]
        for got, want in pairs:  # bf16 keeps about 3 significant digits
            error = ((got - want).abs().max() / want.abs().max()).item()
            assert error < 2e-2, f"flash differs from math by {error:.1%} (kv heads {kv_heads})"
    return "flash attention fwd+bwd bf16, full and GQA: ok"


def fused_adamw() -> str:
    torch.manual_seed(0)
    weights = [torch.randn(256, 256, device="cuda") for _ in range(3)]
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        optimizer = torch.optim.AdamW(params, lr=1e-2, fused=fused, foreach=None if fused else False)
        for _ in range(3):
            for p in params:
                p.grad = torch.ones_like(p) * p.detach().sin()
            optimizer.step()
        results.append(params)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    return "fused AdamW = per-tensor AdamW: ok"


def pinned_copy() -> str:
    """One contiguous pinned (B, T+1) batch, one non-blocking copy, sliced on the GPU: the copy
    call returns while the GPU is still busy (a non-contiguous slice would be copied through a
    pageable temporary, and block)."""
    batch = torch.randint(0, 65, (16, 1025)).pin_memory()
    busy = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    timings = {}
    for name, host in (("contiguous", batch), ("sliced", batch[:, :-1])):
        for _ in range(4):
            busy @ busy  # keep the GPU busy for a few milliseconds
        start = time.perf_counter()
        on_gpu = host.to("cuda", non_blocking=True)
        returned = time.perf_counter() - start
        torch.cuda.synchronize()
        timings[name] = (returned, time.perf_counter() - start)
        assert torch.equal(on_gpu.cpu(), host)
    returned, finished = timings["contiguous"]
    assert returned < finished / 2, f"the pinned contiguous copy blocked the host ({returned * 1e3:.2f} ms)"
    assert batch.is_pinned()
    sliced = timings["sliced"]
    return (
        f"pinned copy returned in {returned * 1e3:.2f} ms of {finished * 1e3:.1f} ms "
        f"(a sliced batch: {sliced[0] * 1e3:.2f} of {sliced[1] * 1e3:.1f} ms)"
    )


def matmul_ceilings() -> str:
    from trickster.train.device import datasheet_flops, matmul_ceiling, set_matmul_precision

    name = torch.cuda.get_device_name()
    parts = []
    restore = set_matmul_precision(torch.device("cuda"))  # float32 in TF32, as training runs it
    try:
        for dtype in ("bfloat16", "float32"):
            measured = matmul_ceiling("cuda", dtype, torch.cuda.current_device())
            sheet = datasheet_flops(name, dtype)
            label = "bf16" if dtype == "bfloat16" else "TF32"
            if sheet is None:
                parts.append(f"{label} {measured / 1e12:.0f} TF/s (no datasheet entry for {name})")
                continue
            assert measured < 1.1 * sheet[0], (
                f"{label} measured {measured / 1e12:.0f} TF/s above the datasheet"
            )
            parts.append(
                f"{label} {measured / 1e12:.0f} of {sheet[0] / 1e12:.0f} TF/s ({measured / sheet[0]:.0%})"
            )
    finally:
        restore()
    return "matmul " + ", ".join(parts)


def kv_cache(device: str = "cuda") -> str:
    """Logits decoded one token at a time with the KV cache equal those of one full forward."""
    from trickster.config import ModelConfig
    from trickster.model.transformer import KVCache, Transformer

    cfg = ModelConfig(
        vocab_size=128, hidden_dim=256, num_layers=4, num_heads=8, num_kv_heads=2, max_seq_len=64
    )
    torch.manual_seed(0)
    model = Transformer(cfg).to(device).eval()
    idx = torch.randint(0, 128, (1, 48), device=device)
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 6e-2)):
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            full, _ = model(idx)
            cache = KVCache.empty(cfg, 1, 64, device, dtype)
            stepwise = torch.cat([model(idx[:, i : i + 1], cache=cache)[0] for i in range(48)], dim=1)
        torch.testing.assert_close(stepwise, full, atol=tolerance, rtol=tolerance)
    return "KV-cache logits = full forward (fp32, bf16): ok"


def collectives(device: str = "cuda") -> str:
    """Every collective of train/dist.py on a one-process group (nccl, with gloo for CPU objects,
    on a GPU), FSDP2 with bf16 weights and micro-batches, full state out and back (train/dist_checkpoint.py),
    sampling."""
    from trickster.config import config_from_dict
    from trickster.model.generate import generate
    from trickster.model.transformer import Transformer
    from trickster.train import dist, dist_checkpoint
    from trickster.train.optim import build_optimizer

    model_cfg = {"vocab_size": 128, "hidden_dim": 128, "num_layers": 2, "num_heads": 4, "max_seq_len": 64}
    device_cfg = {"device": device, "enable_fsdp": True, "dtype": "bfloat16"}
    cfg = config_from_dict({"model_config": model_cfg, "device_config": device_cfg})
    job = dist.setup(cfg.device, device)
    try:
        done = scalar_collectives(dist, job)
        model = Transformer(cfg.model).to(job.device)
        step_model = dist.parallelize(model, job, job.device)
        optimizer = build_optimizer(model, cfg.training, job.device)  # over the sharded parameters
        x = torch.randint(0, 128, (2, 33), device=job.device)
        for micro_step in range(2):
            with (
                dist.micro_batch(step_model, job, micro_step == 1),
                torch.autocast(device, dtype=torch.bfloat16),
            ):
                step_model(x[:, :-1], x[:, 1:])[1].backward()
        optimizer.step()
        done.append(full_state_round_trip(dist_checkpoint, model, optimizer, job))
        tokens = list(generate(model, [1, 2, 3], 8, temperature=0, dtype=job.gathered_dtype))
        assert len(tokens) == 8
    finally:
        dist.shutdown()
    backend = "nccl" if device == "cuda" else "gloo"
    return f"{backend}: " + ", ".join([*done, "FSDP2 bf16 micro-batches", "sampling"])


def scalar_collectives(dist, job) -> list[str]:
    """Those dist.py has (its set changes with the training loop's needs), each on a known value."""
    calls = {
        "mean": lambda: dist.mean(2.0, job) == 2.0,
        "any_rank": lambda: dist.any_rank(True, job) and not dist.any_rank(False, job),
        "sum_across": lambda: dist.sum_across(torch.ones(3, device=job.device), job) == [1.0] * 3,
        "from_rank0": lambda: dist.from_rank0(torch.arange(3, device=job.device), job).tolist() == [0, 1, 2],
        "broadcast": lambda: dist.broadcast({"step": 3}, job) == {"step": 3},
        "gather": lambda: dist.gather(5, job) == [5],
        "barrier": lambda: dist.barrier(job) is None,
    }
    present = [name for name in calls if hasattr(dist, name)]
    for name in present:
        assert calls[name](), f"dist.{name} gave a wrong value"
    return present


def full_state_round_trip(dist_checkpoint, model, optimizer, job) -> str:
    """The gathered state out and back in (train/dist_checkpoint.py)."""
    state = dist_checkpoint.full_optimizer_state(model, optimizer)
    dist_checkpoint.full_weights(model)
    dist_checkpoint.load_full_optimizer_state(model, optimizer, state, job)
    return "full weights and optimizer state"


CHECKS = (sdpa_flash, fused_adamw, pinned_copy, matmul_ceilings, kv_cache, collectives)


def probe() -> tuple[list[str], list[str]]:
    notes, failures = [], []
    for check in CHECKS:
        try:
            notes.append(check())
        except Exception as error:  # each check on its own: the others still run
            failures.append(f"{check.__name__}: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
    return notes, failures

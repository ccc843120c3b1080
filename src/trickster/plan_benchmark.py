"""The micro-benchmark behind `trickster plan`'s time estimate: timed training steps of a copy of
the model (at most 2 layers) on the device, in about BENCH_SECONDS."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from trickster.config import Config
from trickster.errors import UserError
from trickster.footprint import memory_estimate, size_text
from trickster.model import lora
from trickster.model.flops import flops_per_token, parameter_breakdown
from trickster.model.transformer import Transformer
from trickster.train.device import autocast_for, set_matmul_precision, settings_restored
from trickster.train.optim import build_optimizer

BENCH_SECONDS = 10.0  # the most the benchmark may take, model building included
CPU_COPY_BYTES = 2 * 1024**3  # a CPU benchmarks no copy whose training state is larger


@dataclass
class Benchmark:
    """What the micro-benchmark ran and measured."""

    layers: int
    batch_size: int
    seq_len: int
    steps: int
    seconds_per_step: float
    flops_per_token: int  # of the benchmarked copy

    @property
    def tokens_per_sec(self) -> float:
        return self.batch_size * self.seq_len / self.seconds_per_step

    @property
    def flops_per_sec(self) -> float:
        return self.tokens_per_sec * self.flops_per_token


class BenchSkipped(Exception):
    """The benchmark could not run within its time (the message says why, for the plan)."""


def benchmark(cfg: Config, device: torch.device, seconds: float = BENCH_SECONDS) -> Benchmark:
    """Time forward + backward + optimizer steps of a copy of the model on the device, in about
    `seconds` (model building included; up to half again when contention slows the last steps);
    raises BenchSkipped when even the smallest step is too slow for that, or when on a CPU the
    copy's training state alone passes CPU_COPY_BYTES.

    The copy keeps the width, heads, MLP, vocabulary, dtype, LoRA adapters and activation
    checkpointing (whose recompute costs a third more FLOPs than the plan counts), but has at most 2
    layers (float32 matmuls in TF32 on CUDA, as training runs them). Its smallest step (1 x 16
    tokens) is timed first; the micro-batch timed is then the largest of the run's context and batch
    (halved from the run's) that costs at most about 1.5e11 FLOPs per step on a CPU (2e13 on a GPU)
    and of which 4 steps fit the time left. Then timed steps until at least 3 (10 on a GPU) and one
    second have passed (at most 30): the median counts, so a moment of contention on a shared
    machine does not decide it. The plan assumes the full model trains at the FLOP rate the copy
    reaches: an estimate, pessimistic when the copy's batch is smaller than the run's.
    """
    deadline = time.perf_counter() + seconds
    bench_cfg = cfg.model_copy(deep=True)
    bench_cfg.model.num_layers = min(cfg.model.num_layers, 2)
    bench_cfg.device.enable_fsdp = False  # the copy runs in this one process
    # a LoRA copy holds gradients and AdamW state for its adapters only: 4 bytes per frozen weight
    # where full training holds 16
    copy = memory_estimate(bench_cfg, batch_size=1)  # the state alone: any batch will do
    state = copy.weights + copy.gradients + copy.optimizer
    if device.type == "cpu" and state > CPU_COPY_BYTES:
        copy_params = parameter_breakdown(bench_cfg.model).total
        raise BenchSkipped(
            f"a {bench_cfg.model.num_layers}-layer copy of this model has {copy_params:,} parameters "
            f"({size_text(state)} of weights, gradients and optimizer state): too big to time on a CPU "
            "in seconds"
        )
    with settings_restored():
        if cfg.device.threads:  # as training does
            torch.set_num_threads(cfg.device.threads)
        set_matmul_precision(device)
        return _timed_steps(cfg, bench_cfg, device, deadline)


def _timed_steps(cfg: Config, bench_cfg: Config, device: torch.device, deadline: float) -> Benchmark:
    grace = (deadline - time.perf_counter()) / 2
    on_gpu = device.type in ("cuda", "mps")
    flop_cap, min_steps = (2e13, 10) if on_gpu else (1.5e11, 3)
    model = Transformer(bench_cfg.model).to(device)
    if cfg.training.lora is not None:  # a LoRA step: frozen weights, only the adapters' gradients
        lora.apply_lora(model, cfg.training.lora)
    model.checkpoint_activations = cfg.device.activation_checkpointing  # its recompute, as training
    optimizer = build_optimizer(model, cfg.training, device)
    generator = torch.Generator().manual_seed(0)

    def step(batch: int, seq_len: int) -> float:
        x = torch.randint(0, bench_cfg.model.vocab_size, (batch, seq_len + 1), generator=generator).to(device)
        start = time.perf_counter()
        with autocast_for(device, cfg.device.dtype):
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()
        return time.perf_counter() - start

    def work(size: tuple[int, int]) -> float:
        return size[0] * size[1] * flops_per_token(bench_cfg.model, size[1], cfg.training.lora)

    sizes = _sizes(cfg.training.batch_size, cfg.seq_len)
    sizes = [size for size in sizes if work(size) <= flop_cap] or sizes[:1]
    try:
        # the smallest step, twice (the first also allocates and picks kernels): the faster of the
        # two is its cost, free of a moment of contention. No second when 3 more steps would not
        # fit even at half the first's cost (gpt2-small's Muon step on a CPU: 4 s before this)
        smallest = step(*sizes[0])
        if time.perf_counter() + 3 * smallest / 2 <= deadline:
            smallest = min(smallest, step(*sizes[0]))
        if time.perf_counter() + 3 * smallest > deadline:
            raise BenchSkipped(
                f"one step of a {bench_cfg.model.num_layers}-layer copy of the model takes "
                f"{smallest:.1f} s on {device}, too long to time here"
            )
        # the largest size of which 4 steps fit the time left, priced as the last step timed
        # scaled by FLOPs (an over-estimate from a small step, mostly fixed costs): priced again
        # from each larger step until no larger one fits
        size, last = sizes[0], smallest
        while True:
            left = deadline - time.perf_counter()
            fitting = [s for s in sizes if 4 * last * work(s) / work(size) <= left]
            bigger = max(fitting, key=work, default=size)
            if work(bigger) <= work(size):
                break
            size, last = bigger, step(*bigger)
        times, start = [last], time.perf_counter()
        # at least min_steps (a moment of contention must not decide), in at most half again the time
        while (
            len(times) < 30 and time.perf_counter() + times[-1] < deadline + (len(times) < min_steps) * grace
        ):
            if len(times) >= min_steps and time.perf_counter() - start >= 1.0:
                break
            times.append(step(*size))
    except torch.OutOfMemoryError:
        raise UserError(
            f"the benchmark copy of the model ({bench_cfg.model.num_layers} layers, batch {sizes[0][0]} x "
            f"{sizes[0][1]}) does not fit on {device}; lower training_config.batch_size or choose a "
            "smaller model"
        ) from None
    batch, seq_len = size
    fpt = flops_per_token(bench_cfg.model, seq_len, cfg.training.lora)
    timed = times[1:] if len(times) > 2 else times  # the first step at a new size picks kernels
    return Benchmark(bench_cfg.model.num_layers, batch, seq_len, len(timed), statistics.median(timed), fpt)


def _sizes(batch_size: int, seq_len: int) -> list[tuple[int, int]]:
    """Micro-batches from 1 x 16 tokens up to the run's: the context doubles first, then the batch."""
    sizes, batch, tokens = [], 1, min(16, seq_len)
    while True:
        sizes.append((batch, tokens))
        if tokens < seq_len:
            tokens = min(2 * tokens, seq_len)
        elif batch < batch_size:
            batch = min(2 * batch, batch_size)
        else:
            return sizes

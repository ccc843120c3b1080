"""What a step of several micro-batches holds under FSDP2, and a batch_size: auto that fits it.

Between the micro-batches of a step this project's FSDP2 keeps the whole float32 gradients
(set_requires_gradient_sync(False)) and leaves the weights gathered after each backward pass
(set_reshard_after_backward(False)); the next forward pass frees each block again once it has run
(reshard_after_forward). The bytes are measured here with torch.profiler's record of the CPU
allocator in 2-process gloo jobs (tests/peak_child.py), and counted independently of
footprint.py's sums from the model's own parameters.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from trickster import footprint, plan
from trickster.config import load_config, save_config
from trickster.model.transformer import Transformer
from trickster.plan_gpu import named_gpu

from . import children
from .conftest import micro_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo jobs on POSIX")
GiB = 1024**3
CUDA = torch.device("cuda")


def measured(tmp_path: Path, *args: str) -> list[dict[str, int]]:
    """Each rank's peaks from tests/peak_child.py run as a 2-process job with `args`."""
    out = tmp_path / "peaks"
    result = children.job("tests.peak_child", str(out), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize(
    ("dtype", "checkpointing", "mesh"),
    [
        ("float32", "false", "2"),
        ("float32", "false", "2x1"),
        ("bfloat16", "true", "2"),
        ("float32", "true", "2"),
    ],
)
def test_an_accumulated_fsdp_step_holds_the_whole_gradients_and_the_formula_counts_it(
    tmp_path, dtype, checkpointing, mesh
):
    """The nano preset over 2 processes, sharded over both (mesh 2) or one shard each (2x1), 4
    windows of 64 tokens a micro-batch. Float32 without checkpointing: the step of two
    micro-batches peaks above the step of one by the whole float32 gradients, 4 bytes a parameter
    (within 5% above, 15% below: with one shard the single step's own peak, in its backward pass,
    holds some gradients already), and no more: the weights gathered between the micro-batches are
    not held with the activations. The formula is at least what each step holds (float32 with
    checkpointing: it was 0.2 MiB below the single step's peak), and above either step's peak by
    less than half the sharded gradients: in the accumulated step those are made block by block in
    the last backward pass as the whole ones are freed, never all of both at once (it counted
    both, and was above by 7.3 MiB with 2 shards, 22 MiB with one); in a single step as the
    activations are freed, never all of both at once (it counted both, and was above by 7.4 MiB
    with 2 shards, 20.0 MiB with one)."""
    overrides = [
        "device_config.enable_fsdp=true",
        f"device_config.dtype={dtype}",
        f"device_config.activation_checkpointing={checkpointing}",
        "training_config.seq_len=64",
        "training_config.batch_size=4",
    ]
    if mesh == "2x1":
        overrides.append("device_config.mesh_shape=[2,1]")

    def step(micro_batches: int) -> int:
        accumulation = f"training_config.gradient_accumulation_steps={micro_batches}"
        return footprint.memory_estimate(
            load_config(preset="nano", overrides=[*overrides, accumulation]), processes=2
        ).total

    single, accumulated = step(1), step(2)
    whole_gradients = 4 * sum(p.numel() for p in Transformer(load_config(preset="nano").model).parameters())
    sharded_gradients = whole_gradients // (2 if mesh == "2" else 1)
    for rank, peak in enumerate(measured(tmp_path, "steps", dtype, checkpointing, mesh)):
        assert peak["single"] <= single and peak["accumulated"] <= accumulated, (
            rank,
            peak,
            single,
            accumulated,
        )
        if checkpointing == "false":
            grown = peak["accumulated"] - peak["single"]
            assert 0.85 * whole_gradients < grown < 1.05 * whole_gradients, (rank, grown, whole_gradients)
            for excess in (accumulated - peak["accumulated"], single - peak["single"]):
                assert excess < sharded_gradients / 2, (rank, excess / 2**20, sharded_gradients / 2**20)


def mega_fsdp_step(micro: int, accumulating: bool) -> int:
    """Bytes of mega's step on one GPU under FSDP2 (bfloat16, activation checkpointing), micro-batch
    `micro` x 2048, counted from the model's parameters (built on the meta device): float32
    weights, gradients and two AdamW moments; the bfloat16 root (embedding, final norm, output)
    and two blocks gathered while they compute; footprint's activations per token (checked
    against autograd in test_plan.py) and the loss's three float32 chunks of at most 2^25 logits
    and its float32 gradient for the output matrix. Accumulating: the whole float32 gradients
    besides, of which the sharded ones are made one block at a time (that block's fresh gradient
    and its copy reduce-scattered: two blocks' float32 gradients in place of all of them), and
    between micro-batches every weight gathered in bfloat16 where the activations and logits
    were."""
    cfg = load_config(preset="mega")
    with torch.device("meta"):
        model = Transformer(cfg.model)
    count = sum(p.numel() for p in model.parameters())
    root = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("layers."))
    block = sum(p.numel() for p in model.layers[0].parameters())
    working = root + 2 * block
    vocab, width = cfg.model.vocab_size, cfg.model.hidden_dim
    state = 16 * count + 2 * working + 4 * vocab * width
    tokens = micro * 2048
    computing = (
        tokens * footprint.activation_bytes_per_token(cfg) + 3 * min(tokens, 2**25 // vocab) * vocab * 4
    )
    if not accumulating:
        return state + computing
    return state - 4 * count + 4 * 2 * block + 4 * count + max(computing, 2 * (count - working))


@pytest.mark.parametrize(("memory_gib", "fitting"), [(20, None), (None, (8, 8)), (28, (16, 4))])
def test_batch_size_auto_fits_the_accumulated_fsdp_step_on_one_gpu(memory_gib, fitting):
    """mega under FSDP2 on one RTX 4090 (24 GB; torch reports 23.61 GiB), a global batch of 64
    windows. 8 x 8 fits the 21.25 GiB usable, 16 x 4 does not (counted with the sharded gradients
    on top of the whole ones, no micro-batch fitted). With 28 GiB (device_config.memory_gib)
    16 x 4 fits (counted so, 8 x 8). With 20 GiB no micro-batch fits with the accumulation 64
    windows need: the plan says so at micro-batch 1."""
    overrides = ["training_config.batch_size=auto", "training_config.global_batch=64"]
    gpu = named_gpu("RTX 4090")
    if memory_gib:
        overrides.append(f"device_config.memory_gib={memory_gib}")
    made = plan.make_plan(load_config(preset="mega", overrides=overrides), CUDA, gpu=gpu, processes=1)
    t = made.cfg.training
    usable = 0.9 * (memory_gib or 23.61) * GiB
    step = mega_fsdp_step(t.batch_size, accumulating=t.gradient_accumulation_steps > 1)
    if fitting is None:
        assert (t.batch_size, t.gradient_accumulation_steps) == (1, 64) and not made.fits
        assert step > usable and mega_fsdp_step(64, accumulating=False) > usable  # nor all at once
    else:
        assert (t.batch_size, t.gradient_accumulation_steps) == fitting and made.fits and step <= usable
        assert mega_fsdp_step(2 * t.batch_size, accumulating=True) > usable
    assert made.memory.total == pytest.approx(step, rel=1e-3)  # the total printed is this step's


def test_batch_size_auto_fits_the_measured_accumulated_step(shakespeare_dir, tmp_path):
    """Two processes on gloo under FSDP2 with a shard of one (mesh 2 x 1: each holds the whole
    state, as the trial copy batch_size: auto measures does), 2 blocks 256 wide, windows of 32
    tokens, and device_config.memory_gib with room by the formula for that state and 16.5 windows:
    the 32 windows of a process need accumulation. The peak of every training step, measured,
    fits in the usable 90%. 16 x 2, chosen from a trial step of one micro-batch, did not: the
    gathered weights (about 5 windows' worth) came on top."""
    model = {"hidden_dim": 256, "num_layers": 2, "num_heads": 4, "mlp_dim": 768, "max_seq_len": 32}
    training = {"batch_size": "auto", "global_batch": 64, "seq_len": 32, "max_steps": 2, "warmup_steps": 1}
    training |= {"eval_batches": 1, "eval_every": 100, "save_every": 100, "sample_tokens": 0}
    device = {"device": "cpu", "threads": 1, "enable_fsdp": True, "mesh_shape": (2, 1)}
    cfg = micro_config(shakespeare_dir, tmp_path / "run", model_config=model, training_config=training)
    cfg.device = cfg.device.model_copy(update=device)
    sized = cfg.model_copy(deep=True)  # the char vocabulary padded as training pads it; no FSDP
    sized.model.vocab_size, sized.training.batch_size, sized.device.enable_fsdp = 64, 1, False
    one = footprint.memory_estimate(sized, batch_size=1)
    usable = one.state + 16.5 * (one.activations + one.logits)
    cfg.device.memory_gib = usable / footprint.HEADROOM / GiB
    path = tmp_path / "run.yaml"
    save_config(cfg, path)
    out = tmp_path / "peaks"
    result = children.job("tests.peak_child", str(out), "train", "--config", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    chosen = re.search(r"micro-batch (\d+) x 2 process\(es\) x accumulation (\d+)", result.stdout)
    micro, accumulation = map(int, chosen.groups())
    assert micro * accumulation == 32 and accumulation > 1 and micro > 1
    for rank in (0, 1):
        peak = json.loads(Path(f"{out}.{rank}").read_text())["step"]
        assert peak <= usable, (rank, micro, peak / 2**20, usable / 2**20)

"""`trickster plan --gpu NAME`: planning for a GPU this machine does not have. The memory written
here is what torch reports on such a card, as printed in public logs (train/datasheets.py cites
them: 81,082 MiB for an 80 GB H100 ...), less than the datasheets' sizes; the usable share is the
documented 90%: the test reads neither from the product."""

from __future__ import annotations

import re

import pytest
import torch

from trickster import footprint, plan
from trickster.cli import main
from trickster.config import load_config
from trickster.errors import UserError
from trickster.plan_gpu import named_gpu
from trickster.train.device import resolve_precision

GiB = 1024**3
MiB = 1024**2
REPORTED_MIB = {"H100": 81_082, "H200": 143_156, "A100 40GB": 40_339, "A100 80GB": 81_049, "RTX 4090": 24_176}
CUDA = torch.device("cuda")
USABLE = 0.9  # of a device's memory (docs/watching.md)


@pytest.fixture
def no_gpu(monkeypatch):
    """Any question to torch.cuda fails the test: a GPU planned by name is never asked of torch
    (this machine has none to ask)."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.cuda was asked about a GPU planned by name")

    for name in ("is_available", "get_device_capability", "get_device_properties", "get_device_name"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    monkeypatch.setattr(footprint, "device_memory", refuse)


def planned(capsys, *args: str) -> str:
    assert main(["plan", "--preset", "mega", *args]) == 0
    return capsys.readouterr().out


def advised_batch(text: str) -> int:
    return int(text.split("training_config.batch_size=")[1].split()[0])


@pytest.mark.parametrize(
    "written, name",
    [
        ("H100", "H100"),
        ("h100 sxm5 80gb", "H100"),
        ("H100 PCIe", "H100 PCIe"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("rtx4090", "RTX 4090"),
        ("A100-80GB", "A100 80GB"),
        ("a100 40GB", "A100 40GB"),
        ("H200", "H200"),
        ("L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("a10g", "A10G"),
        ("NVIDIA A10", "A10"),
        ("A6000", "RTX A6000"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("rtx 5090", "RTX 5090"),
        ("B200", "B200"),
        ("Tesla V100-SXM2-16GB", "V100 16GB"),
        ("v100 32gb", "V100 32GB"),
        ("Tesla T4", "T4"),
    ],
)
def test_a_gpu_is_named_as_people_write_it(written, name):
    assert named_gpu(written).name == name


@pytest.mark.parametrize("written", ["B300", "H1000", "L40", "4090", ""])
def test_an_unknown_gpu_name_lists_the_known_ones(written):
    with pytest.raises(UserError, match=r"choose one of .*A100 40GB, A100 80GB.*RTX 4090"):
        named_gpu(written)


@pytest.mark.parametrize(
    ("written", "sizes"),
    [
        ("A100", "A100 40GB or A100 80GB"),
        ("V100", "V100 16GB or V100 32GB"),
        ("tesla v100", "V100 16GB or V100 32GB"),
    ],
)
def test_a_gpu_named_without_its_size_lists_its_sizes_only(written, sizes):
    """A100 and V100 come in two sizes each (datasheets.py): the line names those two, not all."""
    with pytest.raises(UserError) as raised:
        named_gpu(written)
    assert str(raised.value) == f"--gpu {written!r} comes in 2 memory sizes; choose one of {sizes}"


@pytest.mark.parametrize("gpu", ["H100", "H200", "A100 40GB", "A100 80GB", "RTX 4090"])
def test_mega_fits_an_h100_at_its_preset_micro_batch(no_gpu, capsys, gpu):
    """mega's preset (8 x 2048, FSDP, activation checkpointing) on one GPU: its step, by
    footprint.py, fits in 90% of the memory torch reports on that GPU, and the plan says so with
    that memory."""
    cfg = load_config(preset="mega")
    reported = REPORTED_MIB[gpu] * MiB
    assert footprint.memory_estimate(cfg).total <= USABLE * reported
    out = planned(capsys, "--gpu", gpu)
    assert f"plan for preset mega on {gpu} (by its datasheet: no GPU is used)" in out
    assert "micro-batch 8 x 2048 tokens, bfloat16" in out
    assert f"fits: {plan._gib(footprint.memory_estimate(cfg).total)} of " in out
    assert f"(90% of {reported / GiB:.2f} GiB {gpu} memory, as torch reports it)" in out
    assert "DOES NOT FIT" not in out and "to fit" not in out


def test_on_a_24_gb_card_mega_without_checkpointing_is_told_a_micro_batch_that_fits(no_gpu, capsys):
    """Without activation checkpointing mega's 8 x 2048 step keeps every block's activations, far
    more than an RTX 4090 with 23.2 GiB (device_config.memory_gib). A smaller micro-batch with
    gradient accumulation does not fit either: FSDP2 then keeps whole gradients and gathered
    weights (tests/test_fsdp_memory.py). The advice is the largest micro-batch whose step fits
    without accumulation."""
    overrides = ["device_config.activation_checkpointing=false", "device_config.memory_gib=23.2"]
    out = planned(capsys, "--gpu", "RTX 4090", *overrides)
    assert "DOES NOT FIT" in out and "to fit: with gradient accumulation FSDP2 keeps" in out
    cfg = load_config(preset="mega", overrides=overrides)
    budget = USABLE * 23.2 * GiB
    assert footprint.memory_estimate(cfg).total > budget
    assert footprint.memory_estimate(cfg, batch_size=1, accumulating=True).total > budget
    batch = advised_batch(out)
    assert "training_config.gradient_accumulation_steps=1 " in out
    assert footprint.memory_estimate(cfg, batch_size=batch).total <= budget
    assert footprint.memory_estimate(cfg, batch_size=batch + 1).total > budget


def test_on_a_24_gb_card_mega_with_accumulation_is_told_to_shard(no_gpu, capsys):
    """With gradient accumulation FSDP keeps mega's weights gathered and its gradients whole between
    micro-batches: the state alone passes an RTX 4090 with 20 GiB (device_config.memory_gib). The
    plan names how many such GPUs FSDP needs; planned over that many, each one's step fits, and
    over half as many it does not."""
    overrides = ["training_config.gradient_accumulation_steps=4", "device_config.memory_gib=20"]
    out = planned(capsys, "--gpu", "RTX 4090", *overrides)
    assert "DOES NOT FIT" in out and "weights, gradients and AdamW state alone need" in out
    gpus = int(re.search(r"torchrun over (\d+) such devices", out).group(1))
    cfg = load_config(preset="mega", overrides=overrides)
    budget = USABLE * 20 * GiB
    assert footprint.memory_estimate(cfg, processes=gpus).total <= budget
    assert footprint.memory_estimate(cfg, processes=gpus // 2).total > budget
    sharded = planned(capsys, "--gpu", "RTX 4090", *overrides, "--processes", str(gpus))
    assert f"{gpus} processes (FSDP)" in sharded and "fits: " in sharded and "to fit" not in sharded


def test_when_not_one_accumulated_sequence_fits_the_advice_names_what_dropping_accumulation_allows(
    no_gpu, capsys
):
    """mega without activation checkpointing, with windows of 8192 tokens, accumulating 4
    micro-batches under FSDP2, with 23 GiB: its state fits, one window does not, with or without
    the accumulation. The advice halves the sequence until one accumulated window fits, and says
    that without the accumulation (which keeps whole gradients and gathered weights) a longer one
    fits: the longest power-of-two length whose single step fits."""
    overrides = [
        "device_config.activation_checkpointing=false",
        "training_config.gradient_accumulation_steps=4",
        "model_config.max_seq_len=8192",
        "training_config.seq_len=8192",
        "device_config.memory_gib=23",
    ]
    out = planned(capsys, "--gpu", "RTX 4090", *overrides)
    assert "DOES NOT FIT" in out and "even one sequence of 8192 tokens does not fit" in out
    cfg = load_config(preset="mega", overrides=overrides)
    budget = USABLE * 23 * GiB
    accumulated = int(out.split("training_config.seq_len=")[1].split(";")[0].split()[0])
    assert footprint.memory_estimate(cfg, 1, accumulated, accumulating=True).total <= budget
    assert "without it (training_config.gradient_accumulation_steps=1) training_config.seq_len=" in out
    alone = int(out.split("training_config.seq_len=")[2].split()[0])
    assert alone > accumulated
    assert footprint.memory_estimate(cfg, 1, alone, accumulating=False).total <= budget
    assert footprint.memory_estimate(cfg, 1, 2 * alone, accumulating=False).total > budget


def test_batch_size_auto_picks_a_micro_batch_whose_step_fits_the_named_gpu(no_gpu):
    """64 windows per step do not fit at once in an A100 40GB (40,339 MiB as torch reports it):
    auto accumulates, and the micro-batch it chooses, counted by footprint.py with the
    accumulation it chose, fits in 90% of that."""
    overrides = ["training_config.batch_size=auto", "training_config.global_batch=64"]
    cfg = load_config(preset="mega", overrides=overrides)
    made = plan.make_plan(cfg, CUDA, gpu=named_gpu("A100 40GB"))
    t = made.cfg.training
    assert t.batch_size * t.gradient_accumulation_steps == 64 and t.gradient_accumulation_steps > 1
    chosen = load_config(
        preset="mega",
        overrides=[
            f"training_config.batch_size={t.batch_size}",
            f"training_config.gradient_accumulation_steps={t.gradient_accumulation_steps}",
        ],
    )
    usable = USABLE * REPORTED_MIB["A100 40GB"] * MiB
    assert footprint.memory_estimate(chosen).total <= usable
    at_once = load_config(preset="mega", overrides=["training_config.batch_size=64"])
    assert footprint.memory_estimate(at_once).total > usable
    assert made.fits


def test_a_named_gpu_is_planned_as_the_same_gpu_present(monkeypatch):
    """`--gpu H100` and `--device cuda` on an H100 (faked: compute capability 9.0 and the memory
    torch reported on one) give the same precision, memory and advice; only the time differs
    (assumed, not measured)."""
    cfg = load_config(preset="nano", overrides=["training_config.batch_size=4096"])
    by_name = plan.make_plan(cfg, CUDA, gpu=named_gpu("H100"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    reported = (REPORTED_MIB["H100"] * MiB, "GPU memory (NVIDIA H100 80GB HBM3)")
    monkeypatch.setattr(footprint, "device_memory", lambda device: reported)
    present = plan.make_plan(cfg, CUDA, measure=False)
    assert (by_name.cfg.device.dtype, by_name.cfg.device.compile) == ("bfloat16", True)
    assert by_name.cfg.device == present.cfg.device
    assert by_name.memory == present.memory and by_name.device_bytes == present.device_bytes
    assert by_name.advice == present.advice and by_name.advice  # 4096 windows do not fit
    assert by_name.bench is None and present.bench is None


@pytest.mark.parametrize("gpu, capability", [("V100 16GB", (7, 0)), ("T4", (7, 5))])
def test_a_gpu_before_ampere_trains_in_float32_as_it_would_on_that_gpu(no_gpu, monkeypatch, gpu, capability):
    """dtype and compile auto follow the named GPU's compute capability, as training's own choice
    on such a GPU (faked present) does: float32 and eager, no bfloat16 tensor cores before
    Ampere. The time then assumes the plain FP32 peak (no TF32 either: 15.7 TFLOP/s on a V100,
    8.1 on a T4, by NVIDIA's datasheets) and names float16's tensor cores as the faster way."""
    by_name = plan.make_plan(load_config(preset="nano"), CUDA, gpu=named_gpu(gpu))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    present = resolve_precision(load_config(preset="nano"), CUDA)
    assert (by_name.cfg.device.dtype, by_name.cfg.device.compile) == ("float32", False)
    assert by_name.cfg.device == present.device
    fp32, fp16 = {"V100 16GB": (15.7, 125.0), "T4": (8.1, 65.0)}[gpu]
    out = plan.format_plan(by_name)
    assert f"of {fp32:.1f} TFLOP/s ({gpu} datasheet, FP32: no TF32 before Ampere)" in out
    assert f"float16, with a GradScaler, would use its tensor cores: {fp16:.1f} TFLOP/s" in out
    ampere = plan.make_plan(load_config(preset="nano"), CUDA, gpu=named_gpu("RTX 3090"))
    assert (ampere.cfg.device.dtype, ampere.cfg.device.compile) == ("bfloat16", True)
    assert "(RTX 3090 datasheet, dense bfloat16)" in plan.format_plan(ampere)


def test_bfloat16_on_a_gpu_without_it_is_planned_but_not_timed(no_gpu, capsys):
    """A T4 has no bfloat16 tensor cores (torch emulates them) and its datasheet no bfloat16 peak:
    the memory is planned, and the time section says why there is none and what to set."""
    out = planned(capsys, "--gpu", "T4", "device_config.dtype=bfloat16")
    assert "micro-batch 8 x 2048 tokens, bfloat16" in out and "GiB T4 memory, as torch reports it" in out
    assert "time: not assumed: the T4 (compute capability 7.5) has no bfloat16 tensor cores" in out
    assert "set device_config.dtype=float16 or float32, or device_config.peak_tflops" in out
    timed = planned(capsys, "--gpu", "T4", "device_config.dtype=bfloat16", "device_config.peak_tflops=20")
    assert "of 20.0 TFLOP/s (device_config.peak_tflops)" in timed


def test_memory_gib_still_overrides_the_datasheet(no_gpu, capsys):
    out = planned(capsys, "--gpu", "H100", "device_config.memory_gib=16")
    assert "(90% of 16.00 GiB device_config.memory_gib)" in out and "DOES NOT FIT" in out


def test_the_time_is_assumed_from_the_datasheet_and_says_so(no_gpu, capsys):
    """No GPU, no measurement: the time section says it is an assumption and at which MFU; twice
    the MFU, or twice the GPUs, halves each time, and the rate is that share of the H100's
    989.5 TFLOP/s (its datasheet's dense bfloat16 figure)."""
    default = planned(capsys, "--gpu", "H100", "--no-bench")
    assert "time (assumed, not measured: --gpu H100 times nothing):" in default
    assert "assumed MFU of 30% to 50% (--mfu F sets your own)" in default
    assert "989.5 TFLOP/s (H100 datasheet, dense bfloat16)" in default
    assert "(estimate)" not in default and "median" not in default  # nothing was timed

    def seconds(out: str) -> float:
        time = out.split("compute-optimal (~20 per parameter)")[-1].split("\n")[0].strip()
        return float(time.split()[0]) * {"days": 86400, "years": 365.25 * 86400}[time.split()[1]]

    quarter, half = (
        planned(capsys, "--gpu", "H100", "--mfu", "0.25"),
        planned(capsys, "--gpu", "H100", "--mfu", "0.5"),
    )
    assert "assumed MFU of 25% (given by --mfu)" in quarter
    assert seconds(quarter) == pytest.approx(2 * seconds(half), rel=0.02)
    two = planned(capsys, "--gpu", "H100", "--mfu", "0.25", "--processes", "2")
    assert seconds(quarter) == pytest.approx(2 * seconds(two), rel=0.02)
    tokens_per_sec = float(
        re.search(r"the full model trains ([\d,]+) tokens/s", half).group(1).replace(",", "")
    )
    flops_per_token = int(
        re.search(r"FLOPs per token \(context 2048\): ([\d,]+)", half).group(1).replace(",", "")
    )
    assert tokens_per_sec * flops_per_token == pytest.approx(0.5 * 989.5e12, rel=1e-4)


def test_without_a_gpu_device_cuda_still_refuses_and_points_to_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    assert main(["plan", "--preset", "mega", "--device", "cuda", "--no-bench"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU is visible" in err and "--gpu H100" in err


def test_a_step_that_fits_with_fewer_windows_is_told_to_lower_the_micro_batch(no_gpu, capsys):
    """mega's single FSDP2 step of 8 windows does not fit an RTX 4090 with 20 GiB, but one of fewer
    does: the plan names that micro-batch, not a smaller model (it counted the 8 windows' recomputed
    block as state no micro-batch goes below)."""
    out = planned(capsys, "--gpu", "RTX 4090", "device_config.memory_gib=20")
    assert "DOES NOT FIT" in out and "choose a smaller model" not in out
    batch = advised_batch(out)
    assert 1 <= batch < 8
    fitted = planned(
        capsys, "--gpu", "RTX 4090", "device_config.memory_gib=20", f"training_config.batch_size={batch}"
    )
    assert "DOES NOT FIT" not in fitted

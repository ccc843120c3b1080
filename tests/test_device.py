"""Device, precision and MFU peaks (train/device.py), with GPUs faked where a CPU cannot show them."""

from __future__ import annotations

import pytest
import torch

from trickster.config import load_config
from trickster.precision import compute_dtype_name
from trickster.train import device as dev
from trickster.train.device import (
    autocast_for,
    datasheet_flops,
    mfu_peak,
    resolve_precision,
    set_matmul_precision,
)

CUDA = torch.device("cuda", 0)


def fake_gpu(monkeypatch, name: str = "NVIDIA H100 80GB HBM3", capability=(9, 0), measured: float = 7e14):
    """A CUDA device of this name and compute capability, whose measured matmul ceiling is `measured`."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(dev, "matmul_ceiling", lambda *args: measured)


@pytest.mark.parametrize(
    "name, dtype, tflops",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.5),  # SXM
        ("NVIDIA H100 PCIe", "bfloat16", 756.0),
        ("NVIDIA H100 NVL", "float16", 835.5),
        ("NVIDIA H200", "bfloat16", 989.5),
        ("NVIDIA H200", "float32", 494.7),  # float32 runs use TF32
        ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
        ("NVIDIA A100 80GB PCIe", "float32", 156.0),
        ("NVIDIA L4", "bfloat16", 121.0),
        ("NVIDIA GeForce RTX 4090", "bfloat16", 165.2),
        ("NVIDIA GeForce RTX 3090", "float16", 71.0),
        # torch's names for them; the L40S is not the L4, the A10G not the A10, whose names they contain
        ("NVIDIA L40S", "bfloat16", 362.05),
        ("NVIDIA A10G", "bfloat16", 70.0),
        ("NVIDIA A10", "bfloat16", 125.0),
        ("NVIDIA B200", "bfloat16", 2250.0),
        ("NVIDIA RTX A6000", "float32", 77.4),
        ("NVIDIA GeForce RTX 5090", "bfloat16", 209.5),
        ("Tesla V100-SXM2-16GB", "float16", 125.0),
        ("Tesla V100-PCIE-32GB", "float32", 15.7),  # no TF32 before Ampere: plain FP32
        ("Tesla T4", "float32", 8.1),
    ],
)
def test_mfu_divides_by_the_datasheet_peak_of_known_gpus(monkeypatch, name, dtype, tflops):
    fake_gpu(monkeypatch, name)
    peak = mfu_peak(CUDA, dtype)
    assert peak.flops == tflops * 1e12
    assert peak.source.startswith("datasheet") and dtype in peak.source
    assert peak.measured == 7e14  # the measured ceiling stays, as a second figure


def test_unknown_gpus_use_the_configured_peak_or_the_measured_ceiling(monkeypatch):
    fake_gpu(monkeypatch, "NVIDIA GeForce GTX 1080 Ti", capability=(6, 1), measured=5e13)
    assert datasheet_flops("NVIDIA GeForce GTX 1080 Ti", "float16") is None
    measured = mfu_peak(CUDA, "float16")
    assert (measured.flops, measured.source) == (5e13, "measured matmul")
    configured = mfu_peak(CUDA, "float16", peak_tflops=65)
    assert (configured.flops, configured.source, configured.measured) == (
        65e12,
        "device_config.peak_tflops",
        5e13,
    )
    fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3")  # the configured value wins over the table
    assert mfu_peak(CUDA, "bfloat16", peak_tflops=900).flops == 900e12


def test_bfloat16_before_ampere_is_measured_not_given_a_tensor_core_peak(monkeypatch):
    """A T4 has float16 tensor cores but none for bfloat16, which torch emulates there: MFU in
    bfloat16 divides by the measured ceiling, and dtype auto never asks for it (float32, eager)."""
    fake_gpu(monkeypatch, "Tesla T4", capability=(7, 5), measured=2e12)
    assert datasheet_flops("Tesla T4", "bfloat16") is None
    assert (mfu_peak(CUDA, "bfloat16").flops, mfu_peak(CUDA, "bfloat16").source) == (2e12, "measured matmul")
    resolved = resolve_precision(load_config(preset="nano"), CUDA)
    assert (resolved.device.dtype, resolved.device.compile) == ("float32", False)


def test_a_cpu_keeps_the_measured_ceiling():
    peak = mfu_peak(torch.device("cpu"), "float32")
    assert peak.source == "measured matmul" and peak.flops == peak.measured > 1e8
    assert mfu_peak(torch.device("cpu"), "float16").flops is None


def test_auto_precision_is_bfloat16_and_compile_on_ampere_and_later_only(monkeypatch):
    cpu = torch.device("cpu")
    cfg = load_config(preset="nano")
    assert (cfg.device.dtype, cfg.device.compile) == ("auto", None)  # compile: empty means auto
    assert load_config(preset="nano", overrides=["device_config.compile=auto"]).device.compile is None
    on_cpu = resolve_precision(cfg, cpu)
    assert (on_cpu.device.dtype, on_cpu.device.compile) == ("float32", False)  # as before on CPU
    assert cfg.device.dtype == "auto"  # a copy: the loaded config is unchanged
    fake_gpu(monkeypatch, capability=(9, 0))
    on_h100 = resolve_precision(cfg, CUDA)
    assert (on_h100.device.dtype, on_h100.device.compile) == ("bfloat16", True)
    fake_gpu(monkeypatch, "Tesla V100", capability=(7, 0))
    on_v100 = resolve_precision(cfg, CUDA)
    assert (on_v100.device.dtype, on_v100.device.compile) == ("float32", False)
    chosen = load_config(
        preset="nano", overrides=["device_config.dtype=float16", "device_config.compile=false"]
    )
    assert resolve_precision(chosen, CUDA) is chosen  # what the user set is kept
    assert compute_dtype_name("auto", cpu) == "float32"
    assert isinstance(autocast_for(cpu, "auto"), type(autocast_for(cpu, "float32")))  # no autocast


def test_every_preset_is_float32_and_eager_on_a_cpu_and_bfloat16_on_a_gpu(monkeypatch):
    for name in ("tiny", "nano", "mini", "midi", "gpt2-small"):
        cfg = resolve_precision(load_config(preset=name), torch.device("cpu"))
        assert (cfg.device.device, cfg.device.dtype, cfg.device.compile) == ("auto", "float32", False)
    fake_gpu(monkeypatch)
    for name in ("tiny", "nano", "gpt2-small", "mega"):
        cfg = resolve_precision(load_config(preset=name), CUDA)
        assert (cfg.device.dtype, cfg.device.compile) == ("bfloat16", True), name


def test_tf32_through_one_api_and_put_back(monkeypatch):
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    legacy = []
    real_setattr = type(matmul).__setattr__

    def spy(self, name, value):
        if name == "allow_tf32":
            legacy.append(value)
        return real_setattr(self, name, value)

    monkeypatch.setattr(type(matmul), "__setattr__", spy)
    assert set_matmul_precision(torch.device("cpu"))() is None and matmul.fp32_precision == before
    restore = set_matmul_precision(CUDA)
    assert matmul.fp32_precision == "tf32"
    restore()
    assert matmul.fp32_precision == before
    assert legacy == []  # the deprecated flag, which torch refuses to mix with fp32_precision

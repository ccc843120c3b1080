"""The dtype a device computes in when the user leaves it to us (`auto`): bfloat16 on a CUDA GPU
with bfloat16 tensor cores, float32 elsewhere. Training (train/device.py, train/dist.py) and
inference (model/generate.py, serve/engine.py, checkpoint loading) alike, so that the model's code
need not import the training package to decode."""

from __future__ import annotations

import torch


def fast_gpu(device: torch.device, capability: tuple[int, int] | None = None) -> bool:
    """A CUDA GPU with bfloat16 tensor cores (Ampere, compute capability 8.0, and later), where
    bfloat16 autocast and torch.compile pay off. (`is_bf16_supported` also counts emulation.)
    `capability`: that of a GPU planned for by name (`trickster plan --gpu`), which is not asked of
    torch: there may be no GPU to ask."""
    if device.type != "cuda":
        return False
    return (capability or torch.cuda.get_device_capability(device)) >= (8, 0)


def compute_dtype_name(name: str, device: torch.device, capability: tuple[int, int] | None = None) -> str:
    """device_config.dtype as a run on `device` uses it: `auto` is bfloat16 on a fast GPU, float32
    elsewhere (CPUs keep float32: their bfloat16 matmuls are slower)."""
    if name != "auto":
        return name
    return "bfloat16" if fast_gpu(device, capability) else "float32"


def inference_dtype(device: torch.device) -> str:
    """The compute dtype of generate, eval and compare: bfloat16 autocast on a fast GPU (fused
    attention kernels, grouped-query attention included, need half precision), else float32."""
    return compute_dtype_name("auto", device)

"""What the vendors' datasheets say of the GPUs people train on, and the memory torch reports for
each: the peak MFU divides by (train/device.py), and what `trickster plan --gpu NAME` plans with
when that GPU is not here (plan_gpu.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Datasheet:
    """One GPU: its peaks, its memory sizes and its compute capability."""

    name: str  # the words of torch's name for it: "H100 PCIe" is "NVIDIA H100 PCIe"
    # dense (no sparsity) TFLOP/s by the run's dtype: tensor cores for bfloat16 and float16 (with
    # float32 accumulation), TF32 tensor cores for float32 from Ampere on (training turns TF32 on),
    # plain FP32 before. No key: no such units (bfloat16 before Ampere, which torch emulates)
    tflops: dict[str, float]
    # {the size the datasheet sells it with, in GB: the MiB torch reports on such a card}. A card
    # reports less than its label: the label counts the memory chips in GiB (80 GB HBM3 is 80 GiB)
    # and the driver keeps some of it (an 80 GB H100 reports 81,082 MiB, 79.18 GiB)
    memory: dict[int, float]
    capability: tuple[int, int]  # CUDA compute capability: 8.0 and later run bfloat16 (fast_gpu)
    also: tuple[str, ...] = ()  # other names people write for it

    @property
    def has_tf32(self) -> bool:
        """TF32 tensor cores (Ampere, compute capability 8.0, and later): float32 runs use them."""
        return self.capability >= (8, 0)


# Peaks from the vendors' datasheets and architecture whitepapers: NVIDIA's H100, H200, A100, L40S,
# L4, A10, A40, RTX A6000, V100 and T4 datasheets; the B200 from the HGX B200 specifications
# (per GPU, halved for the dense figure); the GeForce cards from the Ada (4090), Ampere GA102
# (3090) and RTX Blackwell (5090) whitepapers, FP16/BF16 with float32 accumulation, which a
# GeForce card runs at half the rate of float16 accumulation. The A10G (AWS G5) has no NVIDIA
# datasheet: the A10's chip with 80 SMs at 1.71 GHz and tensor cores at GeForce rates, 70 TFLOP/s
# BF16 and 35 TF32, as AWS and Baseten ("NVIDIA A10 vs A10G", 2023) list it. The V100 row is the
# SXM2 card (the PCIe one peaks 10% lower).
#
# Reported memory: torch.cuda.get_device_properties(0).total_memory (torch prints it in MiB as
# "MB"), or an out-of-memory error's "total capacity", as printed in public logs and issues; the
# smallest figure found for each (drivers and ECC settings differ by a few hundred MiB; a figure
# in GiB, to two decimals, is counted as that many times 1,024 MiB):
#   H100 SXM 81,082 MiB (also 81,089 and 81,090); H100 PCIe 81,008 MiB; H100 NVL 93.00 GiB
#   (github.com/ali-vilab/VACE/issues/56, RunPod); H200 143,156 MiB (an H200 NVL, not found, is
#   taken to report as much: the same 141 GB); B200 182,631 MiB (also 182,642); A100-SXM4-40GB
#   40,339 MiB (deviceQuery, github.com/bottlerocket-os/bottlerocket/pull/3873); A100 80GB PCIe
#   81,049 MiB (github.com/ekondis/mixbench/issues/47); L40S 45,589 MiB; L4 23,034 MiB, nvidia-smi's
#   total (github.com/modal-labs/modal-client/pull/2797; no figure of torch's was found); A10G
#   22,587 MiB; A10 21.99 GiB (github.com/zai-org/CogVLM/issues/236, Lambda); A40 45,416 MiB;
#   RTX A6000 48,676 MiB; RTX 5090 31.36 GiB (github.com/TrajectoryCrafter/TrajectoryCrafter/
#   issues/20); RTX 4090 23.61 GiB (github.com/pinokiofactory/flux-webui/issues/11; 24,563 MiB
#   elsewhere); RTX 3090 24,259 MiB (also 24,268); V100-SXM2-16GB 16,130 MiB (also 16,160);
#   V100-PCIE-32GB 32,510 MiB; T4 14.56 GiB (github.com/facebookresearch/tribev2/issues/28, Colab;
#   15,109 MiB elsewhere).
DATASHEETS: list[Datasheet] = [
    Datasheet("H100", {"bfloat16": 989.5, "float16": 989.5, "float32": 494.7}, {80: 81_082}, (9, 0)),
    Datasheet("H100 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float32": 378.0}, {80: 81_008}, (9, 0)),
    Datasheet("H100 NVL", {"bfloat16": 835.5, "float16": 835.5, "float32": 417.5}, {94: 95_232}, (9, 0)),
    Datasheet("H200", {"bfloat16": 989.5, "float16": 989.5, "float32": 494.7}, {141: 143_156}, (9, 0)),
    Datasheet("H200 NVL", {"bfloat16": 835.5, "float16": 835.5, "float32": 417.5}, {141: 143_156}, (9, 0)),
    Datasheet("B200", {"bfloat16": 2250.0, "float16": 2250.0, "float32": 1100.0}, {180: 182_631}, (10, 0)),
    Datasheet(
        "A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}, {40: 40_339, 80: 81_049}, (8, 0)
    ),
    Datasheet("L40S", {"bfloat16": 362.05, "float16": 362.05, "float32": 183.0}, {48: 45_589}, (8, 9)),
    Datasheet("L4", {"bfloat16": 121.0, "float16": 121.0, "float32": 60.0}, {24: 23_034}, (8, 9)),
    Datasheet("A10G", {"bfloat16": 70.0, "float16": 70.0, "float32": 35.0}, {24: 22_587}, (8, 6)),
    Datasheet("A10", {"bfloat16": 125.0, "float16": 125.0, "float32": 62.5}, {24: 22_517}, (8, 6)),
    Datasheet("A40", {"bfloat16": 149.7, "float16": 149.7, "float32": 74.8}, {48: 45_416}, (8, 6)),
    Datasheet(
        "RTX A6000", {"bfloat16": 154.8, "float16": 154.8, "float32": 77.4}, {48: 48_676}, (8, 6), ("A6000",)
    ),
    Datasheet("RTX 5090", {"bfloat16": 209.5, "float16": 209.5, "float32": 104.8}, {32: 32_112}, (12, 0)),
    Datasheet("RTX 4090", {"bfloat16": 165.2, "float16": 165.2, "float32": 82.6}, {24: 24_176}, (8, 9)),
    Datasheet("RTX 3090", {"bfloat16": 71.0, "float16": 71.0, "float32": 35.6}, {24: 24_259}, (8, 6)),
    Datasheet("V100", {"float16": 125.0, "float32": 15.7}, {16: 16_130, 32: 32_510}, (7, 0)),
    Datasheet("T4", {"float16": 65.0, "float32": 8.1}, {16: 14_909}, (7, 5)),
]


def words(name: str) -> list[str]:
    """A GPU's name as lower-case words, whatever separates them ("A100-SXM4-80GB": a100 sxm4 80gb)."""
    return re.findall(r"[a-z0-9]+", name.lower())


def find_datasheet(device_name: str) -> Datasheet | None:
    """The table's GPU that torch's `device_name` names: the one whose words it contains in a row,
    the longest such name where several do ("NVIDIA H100 PCIe" is the H100 PCIe, not the H100);
    whole words only, so an L40S is not an L4 and an A10G not an A10."""
    found = words(device_name)

    def contains(sheet: Datasheet) -> bool:
        wanted = words(sheet.name)
        return any(found[i : i + len(wanted)] == wanted for i in range(len(found) - len(wanted) + 1))

    matching = [sheet for sheet in DATASHEETS if contains(sheet)]
    return max(matching, key=lambda sheet: len(words(sheet.name)), default=None)

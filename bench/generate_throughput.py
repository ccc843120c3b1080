"""Generation speed on this machine: tokens/s of `trickster.model.generate` with and without the KV cache,
next to transformers' `generate` on the same weights (exported with `trickster export hf`).

    python bench/generate_throughput.py                        # tiny and nano presets, CPU
    python bench/generate_throughput.py --presets nano --new-tokens 256 --repeats 5
    python bench/generate_throughput.py --device cuda --presets nano gpt2-small

Weights are random (speed does not depend on them); every run is greedy, batch 1, from the same
prompt, and produces the same number of tokens (no stop token), so the runs do equal work. Each
figure is the median of --repeats timed runs after one warm-up run, the three kinds of run
timed in turns. On a GPU, ours computes as `trickster generate` does there (bfloat16 autocast and
KV cache on Ampere or later, float32 weights), and transformers runs its model in bfloat16.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trickster.config import load_config
from trickster.data.tokenizers import ByteTokenizer
from trickster.export.hf import export_hf
from trickster.model.generate import generate
from trickster.model.transformer import Transformer
from trickster.precision import inference_dtype
from trickster.train import checkpoint as ckpt
from trickster.train.device import resolve_device


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, timed in turns (one warm-up each), so that a slow spell of
    a shared machine hits all of them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_preset(
    preset: str, prompt_len: int, new_tokens: int, repeats: int, workdir: Path, device: torch.device
) -> dict:
    cfg = load_config(preset=preset, overrides=["model_config.vocab_size=256"])
    torch.manual_seed(0)
    model = Transformer(cfg.model).eval()
    with torch.no_grad():  # larger random weights: clear-cut greedy choices, so the two agree
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.normal_(0.0, 0.3)
    model.to(device)
    prompt = torch.randint(0, 256, (prompt_len,)).tolist()
    fns = {
        "cached": lambda: list(generate(model, prompt, new_tokens, temperature=0)),
        "uncached": lambda: list(generate(model, prompt, new_tokens, temperature=0, use_cache=False)),
    }
    row = {"preset": preset, "params": sum(p.numel() for p in model.parameters()), "hf": None}
    try:
        from transformers import LlamaForCausalLM
    except ImportError:
        LlamaForCausalLM = None
    if LlamaForCausalLM is not None:
        ckpt.save_checkpoint(workdir / preset / "ckpt", model.cpu(), cfg, ByteTokenizer(), {"step": 0})
        model.to(device)
        export_hf(workdir / preset / "ckpt", workdir / preset / "hf")
        hf_dtype = getattr(torch, inference_dtype(device))
        hf_model = LlamaForCausalLM.from_pretrained(workdir / preset / "hf", dtype=hf_dtype).to(device).eval()
        ids = torch.tensor([prompt], device=device)

        def hf_generate() -> list[int]:
            with torch.no_grad():
                out = hf_model.generate(
                    ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True
                )
            return out[0, prompt_len:].tolist()

        # the same weights must give the same greedy tokens, or the comparison means nothing
        ours, theirs = fns["cached"](), hf_generate()
        row["agree"] = sum(a == b for a, b in zip(ours, theirs, strict=True)) / new_tokens
        fns["hf"] = hf_generate
    seconds = interleaved(fns, repeats)
    row.update({name: new_tokens / s for name, s in seconds.items()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "nano"])
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args()
    device = resolve_device(args.device, "--device")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {device} ({inference_dtype(device)}), "
        f"{torch.get_num_threads()} threads, batch 1, greedy, "
        f"{args.prompt_tokens} prompt + {args.new_tokens} new tokens, median of {args.repeats}"
    )
    print(
        f"{'preset':<8} {'params':>11} {'cached tok/s':>13} {'uncached':>9} {'transformers':>13} "
        f"{'cached / transformers':>22} {'same tokens':>12}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            r = bench_preset(preset, args.prompt_tokens, args.new_tokens, args.repeats, Path(tmp), device)
            hf = "n/a" if r["hf"] is None else f"{r['hf']:,.0f}"
            ratio = "n/a" if r["hf"] is None else f"{r['cached'] / r['hf']:.2f}x"
            agree = "n/a" if r["hf"] is None else f"{r['agree']:.0%}"
            print(
                f"{r['preset']:<8} {r['params']:>11,} {r['cached']:>13,.0f} {r['uncached']:>9,.0f} "
                f"{hf:>13} {ratio:>22} {agree:>12}"
            )


if __name__ == "__main__":
    main()

"""Training throughput of presets on this machine: ms/step, tokens/s, and achieved FLOP/s as a
fraction of the measured fp32 matmul ceiling. Runs the real training loop (`trickster.train`).

    python bench/train_throughput.py                       # tiny and nano on the CPU
    python bench/train_throughput.py --presets tiny --steps 60 --text path/to/input.txt

Each preset trains for --steps steps (logging every --interval); the first interval is discarded
as warm-up and the median of the rest is reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trickster.config import load_config
from trickster.data import sources
from trickster.data.prepare import prepare
from trickster.model import flops_per_token
from trickster.train import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXTS = [
    ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
    ROOT / "tests" / "data" / "shakespeare_excerpt.txt",
]


def matmul_ceiling_gflops(size: int = 1024, repeats: int = 20) -> float:
    """Median fp32 GFLOP/s of a square matmul: the practical peak of this device."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def bench_preset(preset: str, data_dir: Path, steps: int, interval: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(
            preset=preset,
            overrides=[
                f"data_config.path={data_dir}",
                f"logging_config.output_dir={run_dir}",
                f"training_config.max_steps={steps}",
                f"training_config.log_every={interval}",
                f"training_config.eval_every={steps * 10}",
                f"training_config.save_every={steps * 10}",
                "training_config.warmup_steps=1",
                "training_config.sample_tokens=0",
                "training_config.eval_batches=1",
                "device_config.device=cpu",
                *overrides,
            ],
        )
        result = train(cfg, progress=False, echo=lambda *a: None)
    intervals = [r for r in result.history if r["event"] == "train"][1:]
    ms = statistics.median(r["ms_per_step"] for r in intervals)
    cfg = result.cfg
    tokens_per_step = cfg.training.batch_size * cfg.seq_len * cfg.training.gradient_accumulation_steps
    tok_s = tokens_per_step / (ms / 1000)
    flops = flops_per_token(cfg.model, cfg.seq_len)
    return {
        "preset": preset,
        "params": result.params,
        "batch": f"{cfg.training.batch_size}x{cfg.seq_len}",
        "ms_per_step": ms,
        "tokens_per_sec": tok_s,
        "gflops": tok_s * flops / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "nano"])
    parser.add_argument("--steps", type=int, default=None, help="default: 60 for tiny, 12 otherwise")
    parser.add_argument("--interval", type=int, default=None)
    parser.add_argument("--text", type=Path, default=next((p for p in DEFAULT_TEXTS if p.exists()), None))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every preset")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        prepare(sources.shakespeare(args.text), "char", data_dir)
        ceiling = matmul_ceiling_gflops()
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"fp32 matmul ceiling {ceiling:.0f} GFLOP/s, text {args.text.name}"
        )
        print(
            f"{'preset':<8} {'params':>10} {'batch':>8} {'ms/step':>9} {'tokens/s':>10} "
            f"{'GFLOP/s':>8} {'of ceiling':>10}"
        )
        for preset in args.presets:
            steps = args.steps or (60 if preset == "tiny" else 12)
            interval = args.interval or max(1, steps // 6)
            row = bench_preset(preset, data_dir, steps, interval, args.overrides)
            print(
                f"{row['preset']:<8} {row['params']:>10,} {row['batch']:>8} {row['ms_per_step']:>9.1f} "
                f"{row['tokens_per_sec']:>10,.0f} {row['gflops']:>8.1f} {row['gflops'] / ceiling:>10.0%}"
            )


if __name__ == "__main__":
    main()

"""A small sweep for choosing a preset's optimizer and rates: short runs of one preset on Tiny
Shakespeare (char tokenizer), one per variant, each printing its final validation loss (20 fixed
batches) and the CPU seconds it took (process time: on a shared machine wall time says little).

    python bench/sweep.py --steps 300 "" "training_config.optimizer=muon" \\
        "training_config.optimizer=muon training_config.muon_lr=0.05"

Each variant is one quoted string of overrides applied on top of the preset (and of --steps,
with a tenth of them as warm-up); the empty string is the preset itself.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from trickster.config import load_config
from trickster.data import sources
from trickster.data.prepare import prepare
from trickster.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="one quoted string of overrides per run")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--eval-every", type=int, default=0, help="also evaluate every N steps (0: at the end only)"
    )
    parser.add_argument("--text", type=Path, default=ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare(sources.shakespeare(args.text), "char", data, progress=False)
        for i, variant in enumerate(args.variants):
            cfg = load_config(
                preset=args.preset,
                overrides=[
                    f"data_config.path={data}",
                    f"logging_config.output_dir={tmp}/run{i}",
                    "logging_config.loss_plot=false",
                    f"device_config.threads={args.threads}",
                    f"training_config.max_steps={args.steps}",
                    f"training_config.warmup_steps={max(1, args.steps // 10)}",
                    f"training_config.eval_every={args.eval_every or args.steps}",
                    f"training_config.save_every={args.steps * 10}",
                    "training_config.sample_tokens=0",
                    "training_config.eval_batches=20",
                    *variant.split(),
                ],
            )
            start = time.process_time()
            result = train(cfg, progress=False, echo=lambda *a: None)
            curve = {r["step"]: round(r["val_loss"], 4) for r in result.history if r["event"] == "eval"}
            row = {
                "variant": variant or "(preset)",
                "val_loss": curve[max(curve)],
                "cpu_s": time.process_time() - start,
            }
            if args.eval_every:
                row["curve"] = curve
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Time to quality on this machine: how low the validation loss of a preset gets on Tiny Shakespeare
(char tokenizer) within a wall-time budget, through the real training loop.

    python bench/time_to_quality.py --text ../shared/data/tinyshakespeare.txt
    python bench/time_to_quality.py --preset tiny --budget 110 training_config.max_steps=1000

The clock starts at the run's `start` event and each evaluation is read at its own event time, so
the figures include evaluations, checkpoints and samples (the time a user waits), not just steps.
Prints every evaluation, then the first time each target loss was reached.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from trickster.config import load_config
from trickster.data import sources
from trickster.data.prepare import prepare
from trickster.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--budget", type=float, default=110.0, help="seconds of training wall time")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.80, 1.70])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. training_config.max_steps=1000")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        prepare(sources.shakespeare(args.text), "char", data_dir, progress=False)
        cfg = load_config(
            preset=args.preset,
            overrides=[
                f"data_config.path={data_dir}",
                f"logging_config.output_dir={tmp}/run",
                "device_config.device=cpu",
                "logging_config.loss_plot=false",
                *args.overrides,
            ],
        )
        result = train(cfg, progress=False, echo=lambda *a: None)
    t = result.cfg.training
    print(
        f"preset {args.preset}: {result.params:,} parameters, {t.max_steps} steps of "
        f"{t.batch_size} x {result.cfg.seq_len} tokens, lr {t.learning_rate}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    start = next(r["time"] for r in result.history if r["event"] == "start")
    evals = [(r["time"] - start, r["step"], r["val_loss"]) for r in result.history if r["event"] == "eval"]
    print(f"{'seconds':>8} {'step':>6} {'val loss':>9}")
    for seconds, step, loss in evals:
        print(f"{seconds:>8.1f} {step:>6} {loss:>9.4f}")
    within = [loss for seconds, _, loss in evals if seconds <= args.budget]
    print(
        f"best validation loss within {args.budget:.0f} s: {min(within):.4f}" if within else "none in budget"
    )
    for target in args.targets:
        hit = next(((s, step) for s, step, loss in evals if loss <= target), None)
        print(f"val loss <= {target}: " + (f"at step {hit[1]}, {hit[0]:.1f} s" if hit else "not reached"))


if __name__ == "__main__":
    main()

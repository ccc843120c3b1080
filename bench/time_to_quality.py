"""Time to quality on this machine: how low the validation loss of a preset gets on Tiny Shakespeare
(char tokenizer) within a wall-time budget, through the real training loop; with --nanogpt, next
to nanoGPT's own train.py on its README's CPU recipe, in the same run.

    python bench/time_to_quality.py --text ../shared/data/tinyshakespeare.txt
    python bench/time_to_quality.py --preset tiny --budget 110 training_config.max_steps=1000
    python bench/time_to_quality.py --nanogpt ../nanogpt --repeats 2 --threads 2

The clock starts at the run's `start` event and each evaluation is read at its own event time, so
the figures include evaluations, checkpoints and samples (the time a user waits), not just steps.
nanoGPT's clock starts when its train.py prints the model's size and each of its evaluations is
stamped as its line arrives (bench/nanogpt.py). With --nanogpt the two alternate (nanoGPT first
in odd repeats, ours first in even ones), each pinned to --threads threads, and the budget is
nanoGPT's own wall time to finish its 2,000 iterations. Printed: every evaluation of every run,
then per repeat and as medians: nanoGPT's time and final loss, the time each of ours took to
reach each target and its ratio to nanoGPT's whole time, and our best loss within that time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from trickster.config import load_config
from trickster.data import sources
from trickster.data.prepare import prepare
from trickster.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
sys.path.insert(0, str(ROOT / "bench"))
import nanogpt  # noqa: E402  (a sibling script)


def ours(args, data_dir: Path, run_dir: Path) -> list[tuple[float, int, float]]:
    """(seconds since the start event, step, val loss) of each evaluation of one of our runs."""
    threads = [f"device_config.threads={args.threads}"] if args.threads else []
    cfg = load_config(
        preset=args.preset,
        overrides=[
            f"data_config.path={data_dir}",
            f"logging_config.output_dir={run_dir}",
            "device_config.device=cpu",
            "logging_config.loss_plot=false",
            *threads,
            *args.overrides,
        ],
    )
    result = train(cfg, progress=False, echo=lambda *a: None)
    t = result.cfg.training
    print(
        f"ours: preset {args.preset}, {result.params:,} parameters, {t.max_steps} steps of "
        f"{t.batch_size} x {result.cfg.seq_len} tokens, {t.optimizer}, lr {t.learning_rate}"
        + (f", muon_lr {t.muon_lr}" if t.optimizer == "muon" else "")
    )
    start = next(r["time"] for r in result.history if r["event"] == "start")
    return [(r["time"] - start, r["step"], r["val_loss"]) for r in result.history if r["event"] == "eval"]


def show(evals: list[tuple[float, int, float]]) -> None:
    print(f"  {'seconds':>8} {'step':>6} {'val loss':>9}")
    for seconds, step, loss in evals:
        print(f"  {seconds:>8.1f} {step:>6} {loss:>9.4f}")


def reached(evals, target: float) -> float | None:
    return next((s for s, _, loss in evals if loss <= target), None)


def best_within(evals, budget: float) -> float | None:
    within = [loss for s, _, loss in evals if s <= budget]
    return min(within) if within else None


def alone(args, data_dir: Path, tmp: Path) -> None:
    evals = ours(args, data_dir, tmp / "run")
    show(evals)
    best = best_within(evals, args.budget)
    print(
        f"best validation loss within {args.budget:.0f} s: " + (f"{best:.4f}" if best else "none in budget")
    )
    for target in args.targets:
        hit = next(((s, step) for s, step, loss in evals if loss <= target), None)
        print(f"val loss <= {target}: " + (f"at step {hit[1]}, {hit[0]:.1f} s" if hit else "not reached"))


def against_nanogpt(args, data_dir: Path, tmp: Path) -> None:
    checkout = nanogpt.check_checkout(args.nanogpt)
    work = tmp / "nanogpt"
    nanogpt.prepare_data(args.text, work)
    rows = []
    for repeat in range(args.repeats):
        order = ["nanogpt", "ours"] if repeat % 2 == 0 else ["ours", "nanogpt"]
        runs = {}
        for who in order:
            if who == "nanogpt":
                peer = nanogpt.run(checkout, work, nanogpt.CPU_RECIPE, args.threads or 2)
                print(f"nanoGPT train.py (repeat {repeat + 1}): README CPU recipe, {peer.seconds:.1f} s")
                show(peer.evals)
                runs[who] = peer
            else:
                runs[who] = ours(args, data_dir, tmp / f"run-{repeat}")
                show(runs[who])
        peer, mine = runs["nanogpt"], runs["ours"]
        row = {
            "nanogpt_s": peer.seconds,
            "nanogpt_final": peer.evals[-1][2],
            "best": best_within(mine, peer.seconds),
        }
        for target in args.targets:
            row[target] = reached(mine, target)
        rows.append(row)

    print(
        f"\n{'repeat':>6} {'nanoGPT s':>9} {'its final':>9} "
        + " ".join(f"{'to ' + str(t):>9} {'/ nanoGPT':>9}" for t in args.targets)
        + f" {'best in its time':>16}"
    )
    for i, row in enumerate(rows, 1):
        cells = [f"{i:>6}", f"{row['nanogpt_s']:>9.1f}", f"{row['nanogpt_final']:>9.4f}"]
        for t in args.targets:
            s = row[t]
            cells += [f"{s:>9.1f}", f"{s / row['nanogpt_s']:>9.2f}"] if s else [f"{'-':>9}", f"{'-':>9}"]
        cells.append(f"{row['best']:>16.4f}" if row["best"] else f"{'-':>16}")
        print(" ".join(cells))
    median = statistics.median
    print(
        f"median over {len(rows)} repeat(s): nanoGPT {median(r['nanogpt_s'] for r in rows):.1f} s to "
        f"{median(r['nanogpt_final'] for r in rows):.4f}; ours best within its time "
        f"{median(r['best'] for r in rows if r['best']):.4f}"
    )
    for t in args.targets:
        ratios = [r[t] / r["nanogpt_s"] for r in rows if r[t]]
        if len(ratios) == len(rows):
            print(f"  to {t}: {median(r[t] for r in rows):.1f} s, {median(ratios):.2f}x nanoGPT's whole time")
        else:
            print(f"  to {t}: reached in {len(ratios)} of {len(rows)} repeats")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--budget", type=float, default=110.0, help="seconds of training wall time")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.80, 1.70])
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: run its train.py alongside")
    parser.add_argument("--repeats", type=int, default=1, help="with --nanogpt: alternating pairs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every run")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. training_config.max_steps=1000")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, text {args.text.name}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        prepare(sources.shakespeare(args.text), "char", data_dir, progress=False)
        if args.nanogpt:
            against_nanogpt(args, data_dir, Path(tmp))
        else:
            alone(args, data_dir, Path(tmp))


if __name__ == "__main__":
    main()

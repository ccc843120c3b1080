"""What training_config.async_save gains: the training thread's stall at each numbered checkpoint,
and the time of a whole short run that saves every few steps, with and without it.

    python bench/async_save.py                         # mini's shape, 12 steps, a save every 2
    python bench/async_save.py --preset midi --repeats 3 --dir /fast/disk
    python bench/async_save.py --steps 8 training_config.optimizer=adamw

Runs alternate (off, on, off, on, ...) in this one process, each a real `trickster.train` run of
--steps steps on the Shakespeare text, saving a numbered checkpoint every --save-every steps (the
last step's is `final`, on the training thread in both modes). The stall of a numbered save is the
time the training thread spends in Trainer.save: the whole write without async_save; with it, the
snapshot into memory plus any wait for the write before it (the first background save allocates
that memory, the later ones copy into it, so the two are shown apart). The run's time is train()'s,
from start to end (the last background write waited for); ms/step is the mean of its steps, saves
and evaluations not counted (a write in the background competes with them for the cores).
Evaluations are cut to one batch and no sample. The medians over --repeats runs of each mode count; compare
the two modes as a ratio, on a machine others share.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trickster.config import load_config
from trickster.data import sources
from trickster.data.prepare import prepare
from trickster.run_checkpoints import STEP_DIR
from trickster.train import loop

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
    ROOT / "tests" / "data" / "shakespeare_excerpt.txt",
]


def timed_run(preset: str, data_dir: Path, out: Path, background: bool, args) -> dict:
    """One run: the training thread's seconds in each numbered save, and the run's seconds."""
    overrides = [
        f"data_config.path={data_dir}",
        f"logging_config.output_dir={out}",
        "logging_config.progress_bar=false",
        "logging_config.loss_plot=false",
        "model_config.vocab_size=auto",
        "device_config.device=cpu",
        f"training_config.max_steps={args.steps}",
        f"training_config.save_every={args.save_every}",
        f"training_config.batch_size={args.batch}",
        f"training_config.seq_len={args.seq_len}",
        "training_config.warmup_steps=1",
        f"training_config.eval_every={args.steps}",
        f"training_config.log_every={args.steps}",  # one train event: ms/step over the whole run
        "training_config.eval_batches=1",
        "training_config.sample_every=0",
        f"training_config.async_save={str(background).lower()}",
        *args.overrides,
    ]
    cfg = load_config(preset=preset, overrides=overrides)
    stalls, save = [], loop.Trainer.save

    def timed_save(trainer, name, *rest, **kwargs):
        started = time.perf_counter()
        save(trainer, name, *rest, **kwargs)
        if STEP_DIR.match(name):
            stalls.append(time.perf_counter() - started)

    loop.Trainer.save = timed_save
    try:
        started = time.perf_counter()
        result = loop.train(cfg, echo=lambda *a, **k: None)
        seconds = time.perf_counter() - started
    finally:
        loop.Trainer.save = save
    [ms_per_step] = [r["ms_per_step"] for r in result.history if r["event"] == "train"]
    return {"stalls": stalls, "seconds": seconds, "ms_per_step": ms_per_step, "params": result.params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--text", type=Path, default=next((p for p in TEXTS if p.exists()), None))
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args()
    rows = {False: [], True: []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        data_dir = Path(tmp) / "data"
        prepare(sources.shakespeare(args.text), "char", data_dir, progress=False)
        for repeat in range(args.repeats):
            for background in (False, True):
                out = Path(tmp) / f"run-{repeat}-{background}"
                rows[background].append(timed_run(args.preset, data_dir, out, background, args))
    cfg, params = load_config(preset=args.preset, overrides=args.overrides), rows[False][0]["params"]
    saves = len(rows[False][0]["stalls"])
    print(
        f"{args.preset}: {params:,} parameters, optimizer {cfg.training.optimizer}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; {args.steps} steps of "
        f"{args.batch}x{args.seq_len}, {saves} numbered saves each; median of {args.repeats} runs"
    )
    print("async_save  stall: first save  later saves (median)  all saves  run  ms/step")
    for background in (False, True):
        runs = rows[background]
        first = statistics.median(r["stalls"][0] for r in runs)
        later = statistics.median(s for r in runs for s in r["stalls"][1:]) if saves > 1 else math.nan
        total = statistics.median(sum(r["stalls"]) for r in runs)
        seconds = statistics.median(r["seconds"] for r in runs)
        step = statistics.median(r["ms_per_step"] for r in runs)
        figures = f"{first:17.2f} s  {later:22.2f} s  {total:7.2f} s  {seconds:4.1f} s  {step:7.0f}"
        print(f"{str(background).lower():>10}  {figures}")


if __name__ == "__main__":
    main()

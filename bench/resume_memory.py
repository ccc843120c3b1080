"""Host memory of each process of a DDP job as it resumes: what loading the checkpoint (the
weights, weight_loading.load_weights; then trainer.pt with the optimizer state gathered, and handing
that state to the optimizer: loop.Trainer.load) adds to each process's resident memory at its peak.

    python bench/resume_memory.py                                   # midi's shape, AdamW, 2 processes
    python bench/resume_memory.py --sources src /tmp/old/src        # the same job from other sources
    python bench/resume_memory.py --preset mini --repeats 3

A one-process run of the preset's shape (AdamW: two moments per weight in trainer.pt) trains one
step of one short window and saves `final`; then, for each source tree in turn (`--sources`, on
PYTHONPATH; repeated `--repeats` times, the trees interleaved), a fresh copy of it is resumed for one
more step by a 2-process DDP job on the CPU (torchrun, gloo), each process running this script's
`--child` part, which wraps loop.Trainer.load and reads /proc/self/status around it: VmRSS before;
VmHWM, the peak, reset first (/proc/self/clear_refs) so that it is the peak during the load; and
VmRSS and RssFile (the part of it that is file pages, shared with the page cache) after. On the CPU
the optimizer's state is itself host memory, on both ranks; on GPUs it is not, and what a rank
holds beyond the CPU's own share is the copy of trainer.pt it read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
    ROOT / "tests" / "data" / "shakespeare_excerpt.txt",
]
MB = 1e6


def status(*fields: str) -> dict[str, int]:
    """Fields of /proc/self/status, in bytes."""
    lines = Path("/proc/self/status").read_text().splitlines()
    found = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines if line.endswith("kB")}
    return {field: found[field] for field in fields}


def read_bytes() -> int:
    """This process's rchar: bytes through read() and the like (mapped pages are not counted)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def child(out: str, argv: list[str]) -> int:
    """One process of the resumed job: `trickster train ARGV`, with Trainer.load and, before it,
    the weights' load (weight_loading.load_weights, into the model as built) measured."""
    import torch

    from trickster import cli
    from trickster.train import loop, weight_loading

    load, load_weights, found = loop.Trainer.load, weight_loading.load_weights, {}

    def measured_weights(model, file):
        before, anon, copy = status("VmRSS")["VmRSS"], [status("RssAnon")["RssAnon"]], torch.Tensor.copy_

        def sampled_copy(tensor, *args, **kwargs):  # the process's own memory as each tensor lands
            anon.append(status("RssAnon")["RssAnon"])
            return copy(tensor, *args, **kwargs)

        Path("/proc/self/clear_refs").write_text("5")
        torch.Tensor.copy_ = sampled_copy
        try:
            load_weights(model, file)
        finally:
            torch.Tensor.copy_ = copy
        found["weights_before"], found["weights_peak"] = before, status("VmHWM")["VmHWM"]
        found["weights_anon"] = max(anon) - anon[0]

    def measured_load(self, path):
        found["before"], rchar = status("VmRSS")["VmRSS"], read_bytes()
        found["peak_before"] = status("VmHWM")["VmHWM"]  # the process's peak up to the load
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
        load(self, path)
        found.update(status("VmHWM", "VmRSS", "RssFile"), rchar=read_bytes() - rchar)
        state = [v for s in self.optimizer.state.values() for v in s.values() if hasattr(v, "nbytes")]
        found["optimizer"] = sum(t.nbytes for t in state)

    loop.Trainer.load, weight_loading.load_weights = measured_load, measured_weights
    code = cli.main(argv)
    Path(f"{out}.{os.environ['RANK']}").write_text(json.dumps(found))
    return code


def resume(source: Path, config: Path, run: Path, pristine: Path, out: Path) -> list[dict]:
    """A fresh copy of the run resumed for one step by 2 processes from the sources at `source`."""
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(pristine, run)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    argv = [__file__, "--child", str(out), "train", "--config", str(config), "--resume", "--no-progress"]
    argv += ["device_config.enable_ddp=true", "training_config.max_steps=2"]
    env = {**os.environ, "PYTHONPATH": str(source.resolve()), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launcher + argv, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        sys.exit(f"the resumed job from {source} failed:\n{done.stderr[:3000]}")
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="midi")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sources", nargs="+", type=Path, default=[ROOT / "src"])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--text", type=Path, default=next((p for p in TEXTS if p.exists()), None))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        sys.exit(child(args.child, rest))
    sys.path.insert(0, str(args.sources[0].resolve()))
    from trickster.config import save_config
    from trickster.data import sources
    from trickster.data.prepare import prepare
    from trickster.train import loop

    sys.path.insert(0, str(ROOT / "bench"))
    from resume_startup import config  # sibling script: the same one-step run of the preset

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        prepare(sources.shakespeare(args.text), "char", tmp / "data", progress=False)
        cfg = config(
            args.preset, tmp / "data", tmp / "pristine", 1, ["training_config.eval_batches=2", *rest]
        )
        result = loop.train(cfg, echo=lambda *a, **k: None)
        cfg.logging.output_dir = str(tmp / "run")
        save_config(cfg, tmp / "run.yaml")
        trainer_pt = (tmp / "pristine" / "checkpoints" / "final" / "trainer.pt").stat().st_size
        rows = {source: [] for source in args.sources}
        for _ in range(args.repeats):
            for source in args.sources:
                rows[source].append(
                    resume(source, tmp / "run.yaml", tmp / "run", tmp / "pristine", tmp / "out")
                )
    print(
        f"{args.preset} (AdamW): {result.params:,} parameters, trainer.pt {trainer_pt / MB:,.0f} MB; "
        f"2 DDP processes (gloo, CPU), {os.cpu_count()} CPUs; median of {args.repeats}"
    )
    print("\nThe weights' load (weight_loading.load_weights, model.safetensors into the built model):")
    print(
        "| sources | rank | RSS before | peak during the load (VmHWM) | added at the peak | anonymous added |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for source, runs in rows.items():
        for rank in (0, 1):
            before, peak, anon = (
                statistics.median(run[rank][key] for run in runs) / MB
                for key in ("weights_before", "weights_peak", "weights_anon")
            )
            print(
                f"| {source} | {rank} | {before:,.0f} MB | {peak:,.0f} MB | {peak - before:,.0f} MB "
                f"| {anon:,.0f} MB |"
            )
    print("\nTrainer.load (trainer.pt and the optimizer state):")
    header = ["sources", "rank", "RSS before the load", "peak during the load", "added at the peak"]
    header += ["read() during the load", "RSS after (file pages)", "optimizer state"]
    print("| " + " | ".join(header) + " |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for source, runs in rows.items():
        for rank in (0, 1):

            def median(key, rank=rank, runs=runs):
                return statistics.median(run[rank][key] for run in runs) / MB

            print(
                f"| {source} | {rank} | {median('before'):,.0f} MB | {median('VmHWM'):,.0f} MB | "
                f"{median('VmHWM') - median('before'):,.0f} MB | {median('rchar'):,.0f} MB | "
                f"{median('VmRSS'):,.0f} MB "
                f"({median('RssFile'):,.0f}) | {median('optimizer'):,.0f} MB |"
            )


if __name__ == "__main__":
    main()

"""Data parallel and sharded training with torchrun, 2 CPU processes on the gloo backend.

Each comparison runs the real command on 2 processes and one process in this test with the same
global batch (2 processes x 4 windows against 1 process x 8): the losses must agree within 2e-5.
The 2-process jobs of the main comparisons, the resume from one process and the dead-process test
run under torchrun itself; the others (`forked_job`) start the same command in 2 processes forked
with the environment torchrun gives its workers (tests/children.py), which spares each job a
launcher and two interpreters' imports.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trickster import cli, run_checkpoints
from trickster.config import load_config, save_config
from trickster.errors import UserError
from trickster.observe.events import read_metrics
from trickster.train import checkpoint as ckpt
from trickster.train import checkpoint_load
from trickster.train.dist import MeshShape
from trickster.train.loop import train

from . import children
from .conftest import QUIET, collective_threads, micro_config
from .test_long_runs import auto_batch
from .test_profiling import ops_per_step, profiled_steps, read_trace
from .test_resume import written

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on POSIX")
ROOT = Path(__file__).parent.parent

RUN = {
    "training_config": {
        "max_steps": 20,
        "warmup_steps": 2,
        "gradient_accumulation_steps": 2,
        "log_every": 1,
        "eval_every": 10,
        "save_every": 10,
        "eval_batches": 2,
        "sample_tokens": 8,
    },
}


def config(shakespeare_dir, run_dir, batch_size: int, **device):
    sections = {
        "training_config": {**RUN["training_config"], "batch_size": batch_size},
        "device_config": {"device": "cpu", "threads": 1, **device},
    }
    return micro_config(shakespeare_dir, run_dir, **sections)


def torchrun(
    cfg, tmp_path: Path, *overrides: str, processes: int = 2, wait: bool = True, fault: str | None = None
):
    """`fault`: run tests/dist_child.py, which plants that fault in rank 1; the exit status is then
    the caller's to check."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    argv = [sys.executable, *launcher, "-m", *job_argv(cfg, tmp_path, fault, overrides)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert fault or result.returncode == 0, result.stderr[-3000:]
    return result


def job_argv(cfg, tmp_path: Path, fault: str | None, overrides) -> list[str]:
    """MODULE ARGS of a job's processes: `trickster train` with cfg saved beside the run, or
    tests/dist_child.py planting `fault` first."""
    path = tmp_path / f"{Path(cfg.logging.output_dir).name}.yaml"
    save_config(cfg, path)
    module = ["tests.dist_child", fault] if fault else ["trickster"]
    return [*module, "train", "--config", str(path), "--no-progress", *overrides]


def forked_job(cfg, tmp_path: Path, *overrides: str, fault: str | None = None, **job):
    """As `torchrun`, in 2 forked processes (see the module docstring); `job`: children.job's
    timeout and end_others."""
    result = children.job(*job_argv(cfg, tmp_path, fault, overrides), **job)
    assert fault or result.returncode == 0, result.stderr[-3000:]
    return result


def history(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / "metrics.jsonl")


def losses(records, kind="train", key="train_loss"):
    return [(r["step"], r[key]) for r in records if r["event"] == kind]


def assert_close_losses(a, b, tol=2e-5):
    """20 steps amplify float32 rounding: 2 x 4 windows and 1 x 8 sum the loss's gradient in other
    orders (measured with FSDP2: 1.2e-5 with the chunked loss, 6.5e-6 before it)."""
    assert [s for s, _ in a] == [s for s, _ in b]
    worst = max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True))
    assert worst <= tol, f"largest difference {worst:.2e}"


@pytest.fixture(scope="module")
def single(shakespeare_dir, tmp_path_factory):
    """One process, 8 windows per micro-batch: the reference for every 2-process run."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    return train(config(shakespeare_dir, run_dir, batch_size=8), **QUIET)


@pytest.fixture(scope="module")
def two_process_job(shakespeare_dir, tmp_path_factory):
    """two_process_job(mode) -> (run folder, stdout) of the 2-process x 4-window job, run once per
    mode for the tests that only read it (copy before changing). Steps 2 and 3 are profiled: the
    comparison with one process shows that changes nothing."""
    done = {}

    def job(mode: str) -> tuple[Path, str]:
        if mode not in done:
            folder = tmp_path_factory.mktemp(mode)
            cfg = config(shakespeare_dir, folder / "run", batch_size=4, **{mode: True})
            done[mode] = (folder / "run", torchrun(cfg, folder, "logging_config.profile_steps=[2, 3]").stdout)
        return done[mode]

    return job


@pytest.mark.parametrize("mode", ["enable_ddp", "enable_fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(mode, single, two_process_job):
    run_dir, out = two_process_job(mode)
    assert "global batch 16 = 4 per process x 2 process(es) x accumulation 2" in out
    records = history(run_dir)
    start = records[0]
    assert start["world_size"] == 2 and start["global_batch"] == 16
    assert start["parallel"] == ("ddp" if mode == "enable_ddp" else "fsdp")
    assert_close_losses(losses(records), losses(single.history))
    assert_close_losses(losses(records, "eval", "val_loss"), losses(single.history, "eval", "val_loss"))
    # one writer: every event once, and a checkpoint that one process loads
    assert len(losses(records)) == 20
    final = load_file(run_dir / "checkpoints" / "final" / run_checkpoints.WEIGHTS)
    reference = load_file(single.run_dir / "checkpoints" / "final" / run_checkpoints.WEIGHTS)
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, atol=1e-4, rtol=1e-4)
    assert checkpoint_load.load_checkpoint(run_dir).info["step"] == 20


@pytest.mark.parametrize("mode", ["enable_ddp", "enable_fsdp"])
def test_each_process_writes_its_own_profile(mode, two_process_job):
    run_dir, out = two_process_job(mode)
    collective = "gloo:all_reduce" if mode == "enable_ddp" else "gloo:all_gather"
    for rank in (0, 1):
        trace = read_trace(run_dir, rank)
        assert trace["distributedInfo"]["rank"] == rank  # written by torch, from the process group
        spans = profiled_steps(trace["traceEvents"])
        assert sorted(spans) == [2, 3]
        assert set(ops_per_step(trace["traceEvents"], spans, "aten::mm")) == {2, 3}
        assert set(ops_per_step(trace["traceEvents"], spans, collective)) == {2, 3}
        assert "aten::mm" in (run_dir / "profile" / f"rank{rank}_top_ops.txt").read_text()
    assert out.count("profile of steps 2 to 3:") == 1 and "(each process's beside it)" in out


def test_compare_scores_a_two_process_run_on_its_own_validation_set(two_process_job, capsys):
    """One process, 4 windows a batch: `compare` still scores the 2 x 4 windows the job evaluated
    (info.json records how wide the set was drawn), so it prints the job's final validation loss."""
    run_dir, _ = two_process_job("enable_ddp")
    final_eval = losses(history(run_dir), "eval", "val_loss")[-1][1]
    assert cli.main(["compare", str(run_dir / "checkpoints" / "final"), "--max-new-tokens", "4"]) == 0
    assert f"trained (final, step 20): val loss {final_eval:.4f}" in capsys.readouterr().out


def muon_config(shakespeare_dir, run_dir, batch_size: int, **device):
    """10 steps (an evaluation and a checkpoint at 10): FSDP2's Newton-Schulz on DTensors makes each
    step several times dearer than AdamW's on the CPU."""
    cfg = config(shakespeare_dir, run_dir, batch_size=batch_size, **device)
    cfg.training.optimizer, cfg.training.max_steps = "muon", 10
    return cfg


@pytest.fixture(scope="module")
def single_muon(shakespeare_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single-muon") / "run"
    return train(muon_config(shakespeare_dir, run_dir, batch_size=8), **QUIET)


@pytest.mark.parametrize("mode", ["enable_ddp", "enable_fsdp"])
def test_muon_on_two_processes_matches_one(mode, single_muon, single, shakespeare_dir, tmp_path):
    """Every process orthogonalises the whole averaged gradient of each matrix (FSDP2's shards are
    DTensors, whose matmuls and norm gather what they need), so the update is the one-process one.
    Muon's Newton-Schulz runs in bfloat16 (torch.optim.Muon): a gradient that differs in its last
    float32 bit (another summation order) can round to a neighbouring bfloat16 value, so the
    losses agree to about 1e-4 instead of 2e-5."""
    run_dir = tmp_path / "run"
    forked_job(muon_config(shakespeare_dir, run_dir, batch_size=4, **{mode: True}), tmp_path)
    records = history(run_dir)
    assert len(losses(records)) == 10
    assert_close_losses(losses(records), losses(single_muon.history), tol=3e-4)
    assert_close_losses(
        losses(records, "eval", "val_loss"), losses(single_muon.history, "eval", "val_loss"), tol=3e-4
    )
    # and Muon is what trained: AdamW's run is far from this one at step 10
    adamw_at_10 = dict(losses(single.history))[10]
    gap = abs(losses(single_muon.history)[-1][1] - adamw_at_10)
    assert gap > 20 * 3e-4, gap  # 0.015 measured: 50 times the tolerance above


def test_a_two_process_checkpoint_resumes_in_one_process(single, two_process_job, shakespeare_dir, tmp_path):
    (sharded_dir, _), run_dir = two_process_job("enable_fsdp"), tmp_path / "run"
    # continue from its step-10 checkpoint, as if the 2-process job had stopped there
    shutil.copytree(sharded_dir / "checkpoints" / "step_000010", run_dir / "checkpoints" / "step_000010")
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in history(sharded_dir) if r["step"] <= 10)
    )

    # FSDP2 saves the optimizer moments sharded: one file per process, none gathered on rank 0
    saved = run_dir / "checkpoints" / "step_000010"
    shards = sorted(p.name for p in (saved / ckpt.OPTIMIZER).iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"], shards
    assert set(checkpoint_load.load_trainer_state(saved)["optimizer"]) == {"param_groups"}
    again_dir = tmp_path / "again"
    shutil.copytree(run_dir, again_dir)

    alone = config(shakespeare_dir, run_dir, batch_size=8)
    said = []
    resumed = train(alone, resume=True, echo=said.append)
    (resume,) = [r for r in resumed.history if r["event"] == "resume"]
    assert resume["step"] == 10 and resume["changed"]["training_config.batch_size"] == [4, 8]
    assert resume["changed"]["processes"] == [2, 1]  # the job's size, said beside the settings
    assert "changed on resume: processes 2 -> 1" in said
    assert_close_losses(losses(resumed.history), losses(single.history))
    assert_close_losses(
        losses(resumed.history, "eval", "val_loss"), losses(single.history, "eval", "val_loss")
    )

    # ... and on two processes again, each reading its share of the moments
    forked_job(config(shakespeare_dir, again_dir, batch_size=4, enable_fsdp=True), tmp_path, "--resume")
    records = history(again_dir)
    assert [(r["step"], r["checkpoint"]) for r in records if r["event"] == "resume"] == [(10, "step_000010")]
    (resume,) = [r for r in records if r["event"] == "resume"]
    assert "processes" not in resume["changed"]  # 2, as saved
    assert_close_losses(losses(records), losses(single.history))


def test_resume_auto_in_a_finished_job_s_run_does_nothing_on_every_process(
    two_process_job, shakespeare_dir, tmp_path
):
    """A requeue script reruns the job's torchrun command with resume: auto once the run has
    ended: rank 0 finds it finished and tells the others; each exits with status 0, rank 0 alone
    says so, and nothing in the folder changes (`best` was saved again, in full, every time)."""
    source, run_dir = two_process_job("enable_fsdp")[0], tmp_path / "run"
    shutil.copytree(source, run_dir)
    files = written(run_dir)
    cfg = config(shakespeare_dir, run_dir, batch_size=4, enable_fsdp=True)
    result = forked_job(cfg, tmp_path, "training_config.resume=auto")
    assert result.stdout.splitlines() == [
        f"{run_dir} already finished at step 20 (checkpoints/final); nothing to do. To train further, resume "
        "with a larger training_config.max_steps (e.g. training_config.max_steps=40), or start a new run "
        "with --out"
    ]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert written(run_dir) == files


@pytest.mark.slow
def test_a_damaged_sharded_optimizer_index_is_one_line_without_torchs_tracebacks(
    two_process_job, shakespeare_dir, tmp_path
):
    """dcp.load logs each failed read of the index (.metadata) with its traceback on the root
    logger: 18 lines on stderr above the one error line. A subprocess: under pytest the root
    logger has pytest's handler, not stderr."""
    run_dir = Path(shutil.copytree(two_process_job("enable_fsdp")[0], tmp_path / "run"))
    info = json.loads((run_dir / "checkpoints" / "final" / "info.json").read_text())
    del info["sha256"]  # saved before checksums (since, a damaged index is refused before dcp reads it)
    (run_dir / "checkpoints" / "final" / "info.json").write_text(json.dumps(info))
    index = run_dir / "checkpoints" / "final" / ckpt.OPTIMIZER / ".metadata"
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    path = tmp_path / "alone.yaml"
    save_config(config(shakespeare_dir, run_dir, batch_size=8), path)
    argv = [sys.executable, "-m", "trickster", "train", "--config", str(path), "--resume", "--no-progress"]
    argv.append("training_config.max_steps=30")  # past the 20 it has done
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    # the reason in brackets is torch's own words: 'truncated' on torch 2.13, 'metadata is None' on 2.11
    assert "final/optimizer refused or damaged (" in result.stderr, result.stderr
    assert result.stderr.endswith("); resume from another checkpoint\n"), result.stderr


def test_a_flipped_byte_in_another_process_s_optimizer_shard_stops_the_resumed_job_with_one_line(
    two_process_job, shakespeare_dir, tmp_path
):
    """Rank 0 records the checksums of the whole folder once every process's shard is in: rank 1's
    too. One byte flipped in rank 1's shard (the middle of its moments: it still loads) is refused
    on both processes of the resumed job, rank 0 having summed it while they loaded it, before any
    of them uses it: nothing changes."""
    run_dir = Path(shutil.copytree(two_process_job("enable_fsdp")[0], tmp_path / "run"))
    final = run_dir / "checkpoints" / "final"
    recorded = json.loads((final / "info.json").read_text())["sha256"]
    shards = sorted(p.relative_to(final).as_posix() for p in (final / ckpt.OPTIMIZER).iterdir())
    assert shards == ["optimizer/.metadata", "optimizer/__0_0.distcp", "optimizer/__1_0.distcp"]
    for name in shards:
        assert recorded[name] == hashlib.sha256((final / name).read_bytes()).hexdigest(), name
    shard = final / "optimizer" / "__1_0.distcp"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    files = written(run_dir)
    cfg = config(shakespeare_dir, run_dir, batch_size=4, enable_fsdp=True)
    argv = job_argv(cfg, tmp_path, None, ["--resume", "training_config.max_steps=30"])
    result = children.job(*argv, timeout=120, end_others=False)
    line = (
        f"error: {shard} no longer matches the checksum saved with it (changed or damaged on disk since it "
        f"was written); move final out of {run_dir / 'checkpoints'} to resume from step_000010 (step 10), "
        "the newest intact checkpoint (nothing was changed)\n"
    )
    assert result.returncode == 2 and result.stderr == line * 2, result.stderr[-3000:]
    assert written(run_dir) == files


@pytest.mark.parametrize(("saved", "resumed"), [("enable_ddp", "enable_fsdp"), ("enable_fsdp", "enable_ddp")])
def test_a_checkpoint_resumes_in_the_other_mode(
    saved, resumed, single, two_process_job, shakespeare_dir, tmp_path
):
    """DDP's checkpoint (optimizer state gathered in trainer.pt) continued under FSDP2, which
    shards it as it loads; FSDP2's (optimizer shards) continued under DDP, with 2 x 2 windows and
    accumulation 4, the same global batch: the losses go on as the uninterrupted run's, the
    validation losses too (the same windows, split another way)."""
    source, run_dir = two_process_job(saved)[0], tmp_path / "run"
    shutil.copytree(source / "checkpoints" / "step_000010", run_dir / "checkpoints" / "step_000010")
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in history(source) if r["step"] <= 10)
    )
    cfg = config(shakespeare_dir, run_dir, batch_size=4, **{resumed: True})
    split = (
        ()
        if resumed == "enable_fsdp"
        else ("training_config.batch_size=2", "training_config.gradient_accumulation_steps=4")
    )
    forked_job(cfg, tmp_path, "--resume", *split)
    records = history(run_dir)
    assert [(r["step"], r["checkpoint"]) for r in records if r["event"] == "resume"] == [(10, "step_000010")]
    assert_close_losses(losses(records), losses(single.history))
    assert_close_losses(losses(records, "eval", "val_loss"), losses(single.history, "eval", "val_loss"))


def test_a_ddp_checkpoint_resumed_by_ddp_goes_on_exactly_as_the_uninterrupted_job(
    two_process_job, shakespeare_dir, tmp_path
):
    """The 2-process DDP job's checkpoint of step 10 (optimizer state gathered in trainer.pt, which
    rank 0 alone hands to the optimizer, broadcasting it) continued by 2 DDP processes: the same
    losses, bit for bit, and the same final weights as the job that was never stopped."""
    source, run_dir = two_process_job("enable_ddp")[0], tmp_path / "run"
    shutil.copytree(source / "checkpoints" / "step_000010", run_dir / "checkpoints" / "step_000010")
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in history(source) if r["step"] <= 10)
    )
    forked_job(config(shakespeare_dir, run_dir, batch_size=4, enable_ddp=True), tmp_path, "--resume")
    records = history(run_dir)
    assert [(r["step"], r["checkpoint"]) for r in records if r["event"] == "resume"] == [(10, "step_000010")]
    assert losses(records) == losses(history(source))
    assert losses(records, "eval", "val_loss") == losses(history(source), "eval", "val_loss")
    resumed, uninterrupted = (
        load_file(d / "checkpoints" / "final" / run_checkpoints.WEIGHTS) for d in (run_dir, source)
    )
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in resumed)


def test_only_rank_0_brings_a_ddp_checkpoint_s_optimizer_state_into_memory(shakespeare_dir, tmp_path):
    """A one-process run of 17 million parameters (trainer.pt: its AdamW moments, 135 MB) resumed
    by 2 DDP processes: while Trainer.load runs, rank 1 reads (rchar) and maps (RssFile) less
    than a tenth of trainer.pt's bytes, its optimizer state coming from rank 0; rank 0, which
    loads and sums the file, brings in all of it. Each process read the whole file before: 8
    processes on one machine held 8 copies."""
    model = {"hidden_dim": 512, "num_layers": 4, "num_heads": 8, "mlp_dim": 2048, "max_seq_len": 32}
    training = {"batch_size": 2, "seq_len": 32, "max_steps": 1, "warmup_steps": 0, "optimizer": "adamw"}
    training |= {"eval_batches": 2, "eval_every": 100, "save_every": 100, "sample_tokens": 0}
    cfg = micro_config(shakespeare_dir, tmp_path / "run", model_config=model, training_config=training)
    cfg.device = cfg.device.model_copy(update={"threads": 1})
    train(cfg, **QUIET)
    size = (tmp_path / "run" / "checkpoints" / "final" / "trainer.pt").stat().st_size
    assert size > 90e6
    cfg.device = cfg.device.model_copy(update={"enable_ddp": True})
    cfg.training.max_steps = 2
    path, out = tmp_path / "resume.yaml", tmp_path / "brought_in"
    save_config(cfg, path)
    result = children.job(
        "tests.peak_child", str(out), "resume", "--config", str(path), "--resume", "--no-progress"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    brought_in = [json.loads(Path(f"{out}.{rank}").read_text())["brought_in"] for rank in (0, 1)]
    assert brought_in[1] < size / 10 and brought_in[0] > size, (brought_in, size)


FSDP = {"batch_size": 4, "enable_fsdp": True, "timeout_s": 120}


def spiking(cfg):
    """30 steps, a checkpoint every 5, no evaluation or samples between, a spike window of 8."""
    t = cfg.training
    t.max_steps, t.save_every, t.eval_every, t.sample_tokens, t.spike_window = 30, 5, 100, 0, 8
    return cfg


@pytest.mark.slow
def test_fsdp2_rolls_back_a_loss_spike_as_if_its_batches_were_never_drawn(shakespeare_dir, tmp_path):
    """Spiked by a raised learning rate (tests/dist_child.py, "spike"), the 2-process FSDP2 job goes
    back to its step-15 checkpoint, each process loading its shard of the weights and moments, and
    then trains exactly as the same job told from the start to pass over the spike's batches."""
    spiked_dir, clean_dir = tmp_path / "spiked", tmp_path / "clean"
    result = forked_job(spiking(config(shakespeare_dir, spiked_dir, **FSDP)), tmp_path, fault="spike")
    assert result.returncode == 0, result.stderr[-3000:]
    spiked = history(spiked_dir)
    (rollback,) = [r for r in spiked if r["event"] == "rollback"]
    first, last = rollback["first_step"], rollback["last_step"]
    assert (rollback["step"], rollback["checkpoint"]) == (15, "step_000015") and 17 <= first <= last
    replayed = losses(spiked[spiked.index(rollback) :])
    assert [step for step, _ in replayed] == list(range(16, 31))

    # the draws of steps first-1 .. last: step s draws 2(s-1) and 2s-1 (2 micro-batches a step)
    skip = f"skip:{2 * (first - 2)}:{2 * last}"
    result = forked_job(spiking(config(shakespeare_dir, clean_dir, **FSDP)), tmp_path, fault=skip)
    assert result.returncode == 0, result.stderr[-3000:]
    assert replayed == [(step, loss) for step, loss in losses(history(clean_dir)) if step > 15]
    a, b = (load_file(d / "checkpoints" / "final" / run_checkpoints.WEIGHTS) for d in (spiked_dir, clean_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batch_size_auto_is_measured_once_and_used_by_every_process(micro, tmp_path):
    """Rank 0 measures (memory.choose_batch), every process trains with its choice: 32 windows a
    step as 2 processes x micro-batch 4 x accumulation 4, the same losses as one process taking
    micro-batch 4 x accumulation 8 (a process that chose otherwise would draw other windows)."""
    cfg = auto_batch(micro, windows_fitting=5.5, max_steps=3, log_every=1)
    cfg.device.threads, cfg.device.timeout_s, cfg.device.enable_fsdp = 1, 120, True
    result = forked_job(cfg, tmp_path)
    assert "batch_size auto: micro-batch 4 x 2 process(es) x accumulation 4 = 32 windows" in result.stdout
    run_dir = Path(cfg.logging.output_dir)
    stored = load_config(run_dir / "config.yaml").training
    assert (stored.batch_size, stored.gradient_accumulation_steps) == (4, 4)
    alone = micro_config(cfg.data.path, tmp_path / "alone", training_config={"log_every": 1})
    alone.model, t = cfg.model, alone.training
    t.max_steps, t.warmup_steps, t.save_every, t.sample_tokens = 3, 1, 2, 0
    t.batch_size, t.gradient_accumulation_steps = 4, 8
    assert_close_losses(losses(history(run_dir)), losses(train(alone, **QUIET).history))


def test_a_dead_process_ends_the_job(shakespeare_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = config(shakespeare_dir, run_dir, batch_size=4, enable_ddp=True, timeout_s=30)
    proc = torchrun(
        cfg, tmp_path, "training_config.max_steps=100000", "training_config.eval_every=100000", wait=False
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and '"train"' not in _read(run_dir / "metrics.jsonl"):
            time.sleep(0.2)
        workers = _children(proc.pid)  # torchrun starts one process per rank
        assert len(workers) >= 2, workers
        killed_at = time.time()
        os.kill(workers[-1], signal.SIGKILL)
        proc.wait(timeout=60)
        took = time.time() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert took < 60, took


def test_sigterm_to_one_process_stops_every_process_after_the_same_step(shakespeare_dir, tmp_path):
    """SIGTERM reaches rank 1 alone during step 5 (tests/dist_child.py): the stop flag travels in the
    step's all-reduce, so both processes stop after step 5 and save its FSDP2 checkpoint together.
    Rank 1 exits with 143, which ends the others under torchrun (and here), before rank 0, slow to
    write (1.5 s), has said how the run stopped: the processes exit together."""
    run_dir = tmp_path / "run"
    cfg = config(shakespeare_dir, run_dir, batch_size=4, enable_fsdp=True, timeout_s=60)
    result = forked_job(cfg, tmp_path, fault="term-at-step:5")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    assert "stopped by SIGTERM at step 5; saved checkpoints/step_000005" in result.stdout
    # the command that continues it starts as many processes: one alone may not hold the sharded run
    config_file = run_dir / "config.yaml"
    again = f"continue with: torchrun --nproc-per-node 2 -m trickster train --config {config_file} --resume"
    assert again in result.stdout, result.stdout[-2000:]
    assert history(run_dir)[-1]["event"] == "stopped" and history(run_dir)[-1]["step"] == 5
    saved = run_checkpoints.latest(run_dir)
    assert (
        saved.name == "step_000005" and checkpoint_load.load_trainer_state(saved)["train_state"]["step"] == 5
    )
    assert sorted(p.name for p in (saved / ckpt.OPTIMIZER).iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]


@pytest.mark.parametrize(
    ("fault", "line"),
    [
        (
            "disk-full",
            "the disk is full at step 5: could not write {} (No space left on device); free disk space",
        ),
        ("bug", "process 0 failed (RuntimeError: planted); see its traceback"),
    ],
)
def test_a_stop_that_rank_0_fails_to_record_ends_every_process_at_once(
    fault, line, shakespeare_dir, tmp_path
):
    """SIGTERM reaches rank 1 during step 5 and rank 0's write of the `stopped` event fails
    (tests/dist_child.py): the disk is full, or a bug raises. Rank 0 meets the others all the
    same and hands them its line: each process ends at once with it (exit status 2; rank 0 with
    its traceback after a bug). Rank 0 used to leave the others at the barrier: gloo broke it with
    its traceback as rank 0 exited, NCCL waits out device_config.timeout_s (300 s here). No
    process is ended for another's error, as on another node of a job (the test kills what is
    left after 90 s)."""
    run_dir = tmp_path / "run"
    cfg = config(shakespeare_dir, run_dir, batch_size=4, enable_ddp=True, timeout_s=300)
    began = time.monotonic()
    result = forked_job(cfg, tmp_path, fault=f"term-{fault}-at-step:5", timeout=90, end_others=False)
    assert time.monotonic() - began < 60, result.stderr[-3000:]
    assert f"error: {line.format(run_dir / 'metrics.jsonl')}" in result.stderr
    if fault == "disk-full":
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert run_checkpoints.latest(run_dir).name == "step_000005"
    assert history(run_dir)[-1]["event"] == "train"  # the `stopped` event was not written


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "async_save"])
def test_a_checkpoint_that_rank_0_fails_to_write_ends_every_process_with_its_line(
    shakespeare_dir, tmp_path, background
):
    """Rank 0's first checkpoint meets a full disk (tests/dist_child.py): every process ends with
    its line, exit status 2, no traceback. The others waited for it at a barrier and heard only
    that a process was lost (gloo, as rank 0 exited; NCCL on another node: after timeout_s).
    No process is ended for another's error, as on another node of a job. Written in the
    background (training_config.async_save), the line comes at the next wait, on both."""
    run_dir = tmp_path / "run"
    cfg = config(shakespeare_dir, run_dir, batch_size=4, enable_ddp=True, timeout_s=300)
    cfg.training.async_save = background
    result = forked_job(cfg, tmp_path, fault="disk-full-in-save:1", timeout=90, end_others=False)
    target = run_dir / "checkpoints" / "step_000010"
    line = f": could not write checkpoint {target} (No space left on device)"  # at the step it was found
    assert result.returncode == 2 and result.stderr.count(line) == 2, result.stderr[-3000:]
    assert result.stderr.count("error: the disk is full at step ") == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "another process" not in result.stderr
    assert run_checkpoints.latest(run_dir) is None


@pytest.mark.slow
def test_a_rank_0_killed_while_the_others_wait_for_its_answer_leaves_them_one_line(shakespeare_dir, tmp_path):
    """Rank 0 is killed (SIGKILL: it says nothing) while it opens the run folder for the job
    (rank0.on_main, outside any step's guard; tests/dist_child.py): rank 1, waiting in the
    broadcast of its answer, ends with one line, not gloo's traceback. It is not ended for rank
    0's death, as on another node of a job."""
    cfg = config(shakespeare_dir, tmp_path / "run", batch_size=4, enable_ddp=True, timeout_s=300)
    began = time.monotonic()
    result = forked_job(cfg, tmp_path, fault="kill-main-opening", timeout=90, end_others=False)
    assert time.monotonic() - began < 60, result.stderr[-3000:]
    assert result.returncode == -signal.SIGKILL  # rank 0's
    lines = result.stderr.splitlines()  # rank 1's alone: rank 0 said nothing
    assert len(lines) == 1, result.stderr[-3000:]
    line = lines[0]
    said = "error: process 0 of the job ended without a word (killed?) or stopped answering while the others"
    assert line.startswith(f"{said} waited for its answer: "), line
    assert "peer" in line and "This is typically caused" not in line, line  # gloo's first sentence
    assert line.endswith("see torchrun's summary for which process and why")


def test_a_silent_process_ends_the_job_after_timeout_s_with_one_line(shakespeare_dir, tmp_path):
    """Rank 1 stops answering at its third step (tests/dist_child.py): rank 0's collective times
    out after device_config.timeout_s and it ends with one line and exit status 2, not gloo's
    traceback."""
    run_dir = tmp_path / "run"
    cfg = config(shakespeare_dir, run_dir, batch_size=4, enable_fsdp=True, timeout_s=2)
    began = time.monotonic()
    result = forked_job(cfg, tmp_path, fault="hang-at-step:3")
    assert time.monotonic() - began < 60
    assert result.returncode == 2, result.stderr[-3000:]
    line = "error: another process of the job ended or stopped answering (within device_config.timeout_s=2 s)"
    assert f"{line} during a training step at step 3: Timed out" in result.stderr
    assert "no checkpoint was saved yet" in result.stderr and "Traceback" not in result.stderr
    start, *_, last = history(run_dir)
    assert last | {"time": 0} == {
        "event": "stopped",
        "step": 2,
        "time": 0,
        "tokens_seen": 2 * start["tokens_per_step"],
        "reason": "lost-process",
        "during": "a training step",
    }


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a subreaper to wait for the orphans")
def test_the_workers_of_a_killed_torchrun_end_with_one_line_each(shakespeare_dir, tmp_path):
    """torchrun killed with SIGKILL as its 2 workers start (tests/launcher_killed.py): its store
    is gone before they join, and they used to end after timeout_s with a DistNetworkError
    traceback (exit status 1). Each ends with one line and exit status 2, and no run folder."""
    run_dir = tmp_path / "run"
    cfg = config(shakespeare_dir, run_dir, batch_size=4, enable_ddp=True, timeout_s=2)
    launcher = ["--standalone", "--nproc-per-node=2", "-m", *job_argv(cfg, tmp_path, None, ())]
    result = children.run("tests.launcher_killed", *launcher, env={"OMP_NUM_THREADS": "1"}, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [2, 2], result.stderr[-3000:]
    line = (
        "error: the job's torchrun launcher or another of its processes ended or stopped answering (within "
        "device_config.timeout_s=2 s) while this process joined the job: "
    )
    ours = [text for text in result.stderr.splitlines() if text.startswith("error: ")]
    assert len(ours) == 2 and all(text.startswith(line) for text in ours), result.stderr[-3000:]
    assert all(text.endswith("or starts it if it has none)") for text in ours), ours
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not run_dir.exists()


def test_a_process_dead_in_a_sharded_checkpoint_leaves_the_one_before_to_resume(
    single, shakespeare_dir, tmp_path
):
    """Rank 1 dies as the FSDP2 checkpoint of step 20, `final`, begins (tests/dist_child.py),
    before its shard of the optimizer state is written, and the job is killed: no `final`
    (complete or not) is left to resume from, and --resume continues from step 10 as the
    uninterrupted run."""
    run_dir = tmp_path / "run"
    cfg = config(shakespeare_dir, run_dir, batch_size=4, enable_fsdp=True, timeout_s=30)
    result = forked_job(cfg, tmp_path, fault="die-in-save:2")
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert not (run_dir / "checkpoints" / "final").exists()
    assert run_checkpoints.latest(run_dir).name == "step_000010"
    forked_job(cfg, tmp_path, "--resume")
    records = history(run_dir)
    assert [(r["step"], r["checkpoint"]) for r in records if r["event"] == "resume"] == [(10, "step_000010")]
    assert_close_losses(losses(records), losses(single.history))
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = _read(task / "children").split()
        found += [int(p) for p in text]
    return sorted(found)


def test_mesh_shape_must_multiply_to_the_number_of_processes(micro):
    cfg = micro(device_config={"enable_fsdp": True, "mesh_shape": [2, 3]})
    with pytest.raises(UserError, match=r"mesh_shape \[2, 3\] multiplies to 2 x 3 = 6, but the job has 4"):
        MeshShape.choose(cfg.device, 4)
    assert MeshShape.choose(cfg.device, 6) == MeshShape(2, 3)
    ddp = micro(device_config={"enable_ddp": True, "mesh_shape": [1, 2]})  # the tutorial's N300
    assert MeshShape.choose(ddp.device, 2) == MeshShape(2, 1)


def test_one_process_through_the_distributed_path(micro, capsys):
    """`enable_ddp` without torchrun: a process group of one, same losses as the plain path."""
    plain = train(micro(training_config={"max_steps": 6, "warmup_steps": 1, "log_every": 1}), **QUIET)
    cfg = micro(
        training_config={"max_steps": 6, "warmup_steps": 1, "log_every": 1},
        device_config={"enable_ddp": True},
        logging_config={"output_dir": str(Path(plain.run_dir).parent / "ddp")},
    )
    path = Path(plain.run_dir).parent / "ddp.yaml"
    save_config(cfg, path)
    assert cli.main(["train", "--config", str(path), "--no-progress"]) == 0
    assert "processes: 1 (ddp" in capsys.readouterr().out
    assert_close_losses(losses(history(Path(cfg.logging.output_dir))), losses(plain.history), tol=0)
    assert not torch.distributed.is_initialized()


def test_a_start_that_fails_after_joining_frees_its_process_groups(micro, capsys):
    """A job whose processes stop with an error (here --resume with nothing to resume) frees its
    process groups before it exits: left to the interpreter's exit, a gloo thread could abort the
    process (SIGABRT, "terminate called without an active exception", in 4 of 10 two-process
    starts under torchrun) instead of its exit status 2. Seen here as gloo's threads, in a group
    of one."""
    cfg = micro(device_config={"enable_ddp": True})
    path = Path(cfg.logging.output_dir).parent / "run.yaml"
    save_config(cfg, path)
    before = collective_threads()
    assert cli.main(["train", "--config", str(path), "--no-progress", "--resume"]) == 2
    assert "error: nothing to resume in" in capsys.readouterr().err
    assert collective_threads() == before


def test_a_finished_fsdp2_run_frees_its_process_groups(micro, capsys):
    """FSDP2's parameters are DTensors, whose sharding cache keeps their device mesh, and with it
    the mesh's process groups; torch.distributed.nn.functional, imported once a group exists, keeps
    that group as its functions' default. `trickster train` frees them as it leaves the job: their
    gloo threads, left running into the interpreter's exit, aborted a two-process test now and then
    (SIGABRT, "terminate called without an active exception")."""
    cfg = micro(training_config={"max_steps": 2, "warmup_steps": 1}, device_config={"enable_fsdp": True})
    path = Path(cfg.logging.output_dir).parent / "run.yaml"
    save_config(cfg, path)
    before = collective_threads()
    assert cli.main(["train", "--config", str(path), "--no-progress"]) == 0
    assert "processes: 1 (fsdp" in capsys.readouterr().out
    assert collective_threads() == before


def test_activation_checkpointing_gives_the_same_losses(micro):
    steps = {"max_steps": 6, "warmup_steps": 1, "log_every": 1}
    plain = train(micro(training_config=steps), **QUIET)
    cfg = micro(training_config=steps, device_config={"activation_checkpointing": True})
    cfg.logging.output_dir = str(Path(plain.run_dir).parent / "recompute")
    recomputed = train(cfg, **QUIET)
    assert_close_losses(losses(recomputed.history), losses(plain.history), tol=1e-6)


def test_mega_shape_under_fsdp2_with_recompute_and_bf16(shakespeare_dir, tmp_path):
    """mega's structure (grouped-query attention, untied output) scaled down, trained the way mega
    is meant to be: FSDP2, activation checkpointing, bfloat16 autocast."""
    run_dir = tmp_path / "run"
    cfg = config(
        shakespeare_dir,
        run_dir,
        batch_size=2,
        enable_fsdp=True,
        activation_checkpointing=True,
        dtype="bfloat16",
    )
    cfg.model.num_heads, cfg.model.num_kv_heads, cfg.model.tie_embeddings = 8, 2, False
    forked_job(cfg, tmp_path, "training_config.max_steps=8", "training_config.eval_every=8")
    train_losses = [loss for _, loss in losses(history(run_dir))]
    assert all(math.isfinite(x) for x in train_losses) and train_losses[-1] < train_losses[0]
    loaded = checkpoint_load.load_checkpoint(run_dir)
    assert loaded.model.output.weight is not loaded.model.tok_embeddings.weight
    assert loaded.model.cfg.num_kv_heads == 2
    # `best`, saved right after `final` at step 8, links its weights and optimizer shards
    best, final = run_dir / "checkpoints" / "best", run_dir / "checkpoints" / "final"
    files = sorted(p.relative_to(final) for p in final.rglob("*") if p.is_file())
    shared = [f for f in files if (best / f).stat().st_ino == (final / f).stat().st_ino]
    shards = [f for f in files if f.parts[0] == ckpt.OPTIMIZER]
    assert len(shards) >= 2 and sorted(shared) == sorted([Path(run_checkpoints.WEIGHTS), *shards])
    assert (
        checkpoint_load.load_trainer_state(best)["optimizer"]
        == checkpoint_load.load_trainer_state(final)["optimizer"]
    )


def test_a_nan_in_one_ranks_shard_is_seen_by_every_rank(shakespeare_dir, tmp_path):
    """Under FSDP2 rank 1 alone holds the poisoned shard (tests/dist_child.py): both ranks must find
    the weights non-finite, skip the sample and `best` together, and stop together at the
    non-finite limit, rather than rank 0 entering a collective alone and waiting for the timeout."""
    run_dir = tmp_path / "run"
    cfg = config(shakespeare_dir, run_dir, batch_size=4, enable_fsdp=True, timeout_s=120)
    steps = ("training_config.eval_every=2", "training_config.max_nonfinite_steps=2")
    result = forked_job(cfg, tmp_path, *steps, fault="nan-shard")
    assert "training stopped at step 4: 2 updates in a row had a non-finite loss" in result.stderr
    evals = {r["step"]: r for r in history(run_dir) if r["event"] == "eval"}
    assert evals[2]["val_loss"] is None and "sample" not in evals[2]
    assert math.isfinite(evals[0]["val_loss"]) and "sample" in evals[0]
    assert not (run_dir / "checkpoints" / "best").exists()


@pytest.fixture(scope="module")
def eot_dir(tmp_path_factory):
    """The excerpt as 20 documents: the char tokenizer then has an end-of-text (stop) token."""
    from tests.conftest import EXCERPT
    from trickster.data import sources
    from trickster.data.prepare import prepare

    folder = tmp_path_factory.mktemp("eot")
    text = EXCERPT.read_text()
    size = len(text) // 20
    for i in range(20):
        (folder / f"{i:02d}.txt").write_text(text[i * size : (i + 1) * size])
    prepare(sources.text_files([str(folder / "*.txt")]), "char", folder / "data", 0.3)
    return folder / "data"


@pytest.mark.parametrize("mode", ["enable_ddp", "enable_fsdp"])
def test_samples_during_training_follow_rank_0_even_past_a_stop_token(mode, eot_dir, tmp_path):
    """Rank 1 draws the stop token at every turn (tests/dist_child.py). Under DDP it never samples
    (rank 0 holds the whole model); under FSDP2 it must sample, since every token gathers the
    layers from both ranks, and follow rank 0's tokens past its own stop token."""
    run_dir = tmp_path / "run"
    cfg = config(eot_dir, run_dir, batch_size=4, timeout_s=120, **{mode: True})
    log = tmp_path / "rank1-samples.txt"
    result = forked_job(
        cfg,
        tmp_path,
        "training_config.max_steps=4",
        "training_config.eval_every=2",
        fault=f"stop-token:{log}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    samples = [r["sample"] for r in history(run_dir) if r["event"] == "eval"]
    assert len(samples) == 3 and all(len(s) > len("ROMEO:") for s in samples), samples
    rank1 = log.read_text().splitlines() if log.exists() else []
    assert len(rank1) == (3 if mode == "enable_fsdp" else 0)


def lora_config(shakespeare_dir, run_dir, base: Path, batch_size: int, **device):
    """4 steps of LoRA fine-tuning of `base`, an evaluation and the final checkpoint at 4."""
    lora = {"init_from": str(base), "lora": {"rank": 4}, "max_steps": 4, "eval_every": 4}
    sections = {
        "training_config": {**RUN["training_config"], **lora, "batch_size": batch_size},
        "device_config": {"device": "cpu", "threads": 1, "timeout_s": 120, **device},
    }
    return micro_config(shakespeare_dir, run_dir, **sections)


@pytest.mark.parametrize("mode", ["enable_ddp", "enable_fsdp"])
def test_lora_on_two_processes_matches_one_and_saves_gathered_adapters(
    mode, single, shakespeare_dir, tmp_path
):
    """LoRA fine-tuning of the reference run: under FSDP2 the adapters are sharded like every
    weight, and the checkpoint must hold them gathered (it failed to write them: "invalid python
    storage"), equal to those of one process with the same global batch."""
    reference = train(lora_config(shakespeare_dir, tmp_path / "alone", single.run_dir, 8), **QUIET)
    run_dir = tmp_path / "run"
    forked_job(lora_config(shakespeare_dir, run_dir, single.run_dir, 4, **{mode: True}), tmp_path)
    assert_close_losses(losses(history(run_dir)), losses(reference.history))
    a, b = (load_file(d / "checkpoints" / "final" / "lora.safetensors") for d in (run_dir, reference.run_dir))
    assert a.keys() == b.keys() and len(a) == 8  # A and B of wq and wv in 2 blocks
    for name, tensor in b.items():
        torch.testing.assert_close(a[name], tensor, atol=1e-5, rtol=1e-5)

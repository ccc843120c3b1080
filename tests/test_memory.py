"""Out of memory: the one line names what ran out, a micro-batch and accumulation that the plan's
formula fits in the memory given, and the checkpoint to resume from."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trickster import cli, footprint
from trickster.config import MAX_ACCUMULATION, load_config, save_config
from trickster.errors import UserError
from trickster.model.transformer import Transformer
from trickster.train import loop
from trickster.train.device import allocation_failed
from trickster.train.dist import Dist
from trickster.train.loop import train
from trickster.train.memory import check_fits, choose_batch, job_fit, out_of_memory

from . import children
from .conftest import QUIET, micro_config
from .test_plan import saved_activation_bytes

GiB = 1024**3
CPU = torch.device("cpu")


def test_the_suggested_micro_batch_fits_and_keeps_the_global_batch(shakespeare_dir, tmp_path):
    cfg = micro_config(
        shakespeare_dir, tmp_path, training_config={"batch_size": 64, "gradient_accumulation_steps": 2}
    )
    cfg.model.vocab_size = 128
    # room for the state and about 10 windows by the formula
    one = footprint.memory_estimate(cfg, batch_size=1)
    budget = one.state + 10.5 * (one.activations + one.logits)
    cfg.device.memory_gib = budget / footprint.HEADROOM / GiB
    line = str(out_of_memory(cfg, CPU, Dist(), "a training step", 12, Path("run/checkpoints/step_000010")))
    micro, accumulation = map(
        int, re.search(r"batch_size=(\d+) with gradient_accumulation_steps=(\d+)", line).groups()
    )
    assert micro * accumulation == 128  # 64 x 2 windows per step, as before
    assert micro <= 10 and footprint.memory_estimate(cfg, batch_size=micro).total <= budget
    assert "during a training step at step 12 (micro-batch 64 x 64 tokens)" in line
    assert "continue from checkpoints/step_000010 with --resume" in line
    assert "\n" not in line


def fsdp_config(processes: int, windows: float):
    """The nano preset sharded by FSDP over `processes`, micro-batch 72 of 64 tokens, and the
    memory limit (device_config.memory_gib) that one step of `windows` windows fills on each
    process, counted here from the model's own tensors rather than by footprint's formula: the
    process's shard of the float32 weights, gradients and two AdamW moments (16 bytes a parameter;
    FSDP2 splits each tensor's first dimension, padded to a multiple of `processes`), the root and
    two blocks gathered in float32 while they compute, the loss's float32 gradient for the output
    matrix, and per window the tensors autograd saves (measured) and the loss's three float32
    tensors of logits. The suggested micro-batch accumulates: FSDP2 then also keeps each process's
    whole float32 gradients until the last micro-batch, and between micro-batches the other blocks
    gathered (less than the activations they follow here: not counted). A context of 64 keeps a
    window (about 8 MiB) small beside that state."""
    overrides = ["device_config.enable_fsdp=true", "device_config.device=cpu", "device_config.dtype=float32"]
    overrides += ["training_config.batch_size=72", "training_config.gradient_accumulation_steps=1"]
    cfg = load_config(preset="nano", overrides=[*overrides, "training_config.seq_len=64"])
    model = Transformer(cfg.model)
    shard = sum(math.ceil(p.shape[0] / processes) * p[0].numel() for p in model.parameters())
    root = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("layers."))
    gathered = root + 2 * sum(p.numel() for p in model.layers[0].parameters())
    whole = sum(p.numel() for p in model.parameters())
    state = 16 * shard + 4 * gathered + 4 * model.output.weight.numel() + 4 * whole
    saved = saved_activation_bytes(cfg, 2, 64) - saved_activation_bytes(cfg, 1, 64)
    window = saved + 3 * 64 * cfg.model.vocab_size * 4
    budget = state + windows * window
    cfg.device.memory_gib = budget / footprint.HEADROOM / GiB
    return cfg, budget


def suggested_micro_batch(line: str) -> int:
    found = re.search(r"suggests training_config.batch_size=(\d+) with", line)
    return int(found.group(1)) if found else 0  # 0: "even a micro-batch of 1 is too large"


@pytest.mark.parametrize("processes", [2, 4])
def test_under_fsdp_the_suggested_micro_batch_counts_the_sharded_state(processes):
    """Each of the processes keeps 1/N of the weights, gradients and AdamW state: the advice of
    an out-of-memory step and of check_fits is the largest micro-batch that fits beside that
    share, 8 of the 8.5 windows fsdp_config counts room for, more than the same memory holds
    beside the whole state of one process. The 72 windows a process computes per step split into
    8 x 9 from a fit of 8 windows only (7 gives 6 x 12, 9 gives 9 x 8): a formula half a window
    off (4 MiB) changes the line."""
    cfg, budget = fsdp_config(processes, windows=8.5)
    job = Dist(world_size=processes, mode="fsdp")
    oom = str(out_of_memory(cfg, CPU, job, "a training step", 3, None))
    with pytest.raises(UserError) as refused:
        check_fits(cfg, CPU, job)
    for line in (oom, str(refused.value)):
        assert "suggests training_config.batch_size=8 with gradient_accumulation_steps=9 " in line, line
    alone = suggested_micro_batch(str(out_of_memory(cfg, CPU, Dist(), "a training step", 3, None)))
    assert alone < 8


def test_when_one_window_does_not_fit_the_line_says_so(shakespeare_dir, tmp_path):
    cfg = micro_config(shakespeare_dir, tmp_path, training_config={"batch_size": 1})
    cfg.model.vocab_size = 128
    line = str(out_of_memory(cfg, CPU, Dist(), "an evaluation", 0, None))
    assert "even a micro-batch of 1 is too large: lower training_config.seq_len" in line
    assert "no checkpoint was saved yet" in line


@pytest.mark.parametrize(
    ("windows", "fit", "expected"),
    [
        (64, 24, (16, 4)),
        (64, 64, (64, 1)),
        (64, 100, (64, 1)),
        (61, 60, (31, 2)),
        (12, 5, (4, 3)),
        (7, 1, (1, 7)),
    ],
)
def test_global_batch_split_into_micro_batch_and_accumulation(windows, fit, expected):
    micro, accumulation = footprint.split_global_batch(windows, 1, fit)
    assert (micro, accumulation) == expected
    assert micro <= max(fit, 1) and micro * accumulation >= windows


def test_global_batch_tokens_round_to_the_nearest_number_of_windows():
    """global_batch_tokens 1,000 of 64-token windows is 15.6 windows: 16, the nearest (15 would
    lose 40 tokens a step where 16 adds 24); 1,000 of 128 is 7.8: 8; 900 of 128 is 7.03: 7. Over 2
    processes, a multiple of 2: 1,000 / 64 / 2 = 7.8 -> 8 each, 16 in all."""
    cases = [(1000, 64, 1, 16), (1000, 128, 1, 8), (900, 128, 1, 7), (1000, 64, 2, 16)]
    for tokens, seq_len, world_size, windows in cases:
        settings = ["batch_size=auto", f"global_batch_tokens={tokens}", f"seq_len={seq_len}"]
        cfg = load_config(overrides=[f"training_config.{s}" for s in settings])
        assert footprint.global_windows(cfg, world_size) == windows, (tokens, seq_len, world_size)


def auto_config(shakespeare_dir, tmp_path, windows_fitting: float):
    """The micro config with the memory limit that plan's formula fills with `windows_fitting`
    windows of 64 tokens (the formula matches autograd's saved tensors: test_plan.py)."""
    cfg = micro_config(shakespeare_dir, tmp_path)
    cfg.model.vocab_size = 128
    one = footprint.memory_estimate(cfg, batch_size=1, accumulating=True)
    window = footprint.memory_estimate(cfg, batch_size=2, accumulating=True).total - one.total
    budget = one.total + (windows_fitting - 1) * window
    cfg.device.memory_gib = budget / footprint.HEADROOM / GiB
    return cfg, budget, window


def test_auto_batch_is_the_largest_that_fits_and_keeps_the_global_batch(shakespeare_dir, tmp_path):
    cfg, budget, formula_window = auto_config(shakespeare_dir, tmp_path, windows_fitting=5.5)
    rng = torch.get_rng_state()
    chosen = choose_batch(cfg, CPU, Dist(), windows=32)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's generators are untouched
    assert abs(chosen.window_bytes - formula_window) / formula_window < 0.02
    # 5 windows fit, 6 do not; the 32 windows of a step split exactly: 4 x 8
    assert (chosen.micro_batch, chosen.accumulation, chosen.global_batch) == (4, 8, 32)
    assert (
        footprint.memory_estimate(cfg, batch_size=5, accumulating=True).total
        <= budget
        < footprint.memory_estimate(cfg, batch_size=6, accumulating=True).total
    )
    roomy, _, _ = auto_config(shakespeare_dir, tmp_path, windows_fitting=100)
    assert choose_batch(roomy, CPU, Dist(), windows=32).micro_batch == 32  # capped at the step's


def test_auto_batch_when_not_even_one_window_fits(shakespeare_dir, tmp_path):
    cfg, _, _ = auto_config(shakespeare_dir, tmp_path, windows_fitting=0.5)
    with pytest.raises(UserError, match="a micro-batch of one window of 64 tokens does not fit"):
        choose_batch(cfg, CPU, Dist(), windows=8)


def test_a_run_just_within_memory_starts_and_one_just_beyond_is_refused(shakespeare_dir, tmp_path):
    """check_fits refuses by plan's formula against the whole memory given: a step the formula
    puts 0.1% under device_config.memory_gib trains, and so does one 0.1% over (the activations'
    formula is not checked on GPUs: a step would have to be over with half of them); 0.1% over
    with half the activations, the line names the micro-batch, or the model when its state alone
    is over, and no run folder is made."""
    training = {"max_steps": 2, "warmup_steps": 1, "eval_every": 2, "save_every": 2, "sample_tokens": 0}
    cfg = micro_config(shakespeare_dir, tmp_path / "run", training_config=training)
    cfg.model.vocab_size = 128  # the char vocabulary, padded as training pads it
    need = footprint.memory_estimate(cfg)
    for gib, folder in [(need.total * 1.001 / GiB, "within"), (need.total * 0.999 / GiB, "over")]:
        cfg.device.memory_gib, cfg.logging.output_dir = gib, str(tmp_path / folder)
        assert train(cfg, **QUIET).history  # trained: nothing refused it
    half = need.state + (need.total - need.state) / 2  # with half the activations
    for gib, expected in [
        (half * 0.999 / GiB, "one training step does not fit in memory (device_config.memory_gib"),
        (need.state * 0.999 / GiB, "the model is too big for cpu (device_config.memory_gib"),
    ]:
        cfg.device.memory_gib = gib
        cfg.logging.output_dir = str(tmp_path / "refused")
        with pytest.raises(UserError, match=re.escape(expected)):
            train(cfg, **QUIET)
        assert not (tmp_path / "refused").exists()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the process's size from /proc")
def test_an_allocation_the_system_refuses_while_building_is_one_line(shakespeare_dir, tmp_path):
    """device_config.memory_gib lets a 2 GiB model past check_fits, and the process may grow by
    only 1 GiB more (RLIMIT_AS, set once torch is imported): the real CPU allocator refuses a
    weight while the model is built, and that becomes model_too_big's line."""
    save_config(micro_config(shakespeare_dir, tmp_path / "run"), tmp_path / "micro.yaml")
    argv = ["train", "--config", str(tmp_path / "micro.yaml"), "--no-progress"]
    argv += ["model_config.hidden_dim=8192", "device_config.memory_gib=1000"]
    script = (
        "import re, resource, sys, torch, trickster.cli\n"
        "size = int(re.search(r'VmSize:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size * 1024 + 2**30, resource.RLIM_INFINITY))\n"
        f"sys.exit(trickster.cli.main({argv!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert "building it failed to allocate memory (its weights alone: 2.0 GiB)" in result.stderr
    assert "lower model_config.hidden_dim" in result.stderr


@pytest.mark.slow
def test_the_processes_of_a_cpu_job_each_get_their_share_of_the_ram(shakespeare_dir, tmp_path, monkeypatch):
    """A step that fits in the RAM of a machine does not fit in half of it: the 2 processes of a
    torchrun job on a CPU (LOCAL_WORLD_SIZE 2, as torchrun says) are refused before anything is
    written, as check_fits refuses them; each process on a GPU has the GPU's memory to itself."""
    training = {"max_steps": 2, "warmup_steps": 1, "eval_every": 2, "save_every": 2, "sample_tokens": 0}
    device = {"device": "cpu", "threads": 1, "dtype": "float32", "compile": False}
    cfg = micro_config(shakespeare_dir, tmp_path / "run", training_config=training, device_config=device)
    cfg.model.vocab_size = 128  # the char vocabulary, padded as training pads it
    ram = int(1.05 * footprint.memory_estimate(cfg, processes=2).total)  # 2 processes: DDP replicas
    monkeypatch.setattr(footprint, "device_memory", lambda device: (ram, "RAM"))
    job = Dist(world_size=2, mode="ddp", local_world_size=2)
    check_fits(cfg, CPU, Dist())
    check_fits(cfg, torch.device("cuda"), job)
    refused = "one training step does not fit in memory (RAM / 2 processes of cpu"
    with pytest.raises(UserError, match=re.escape(refused)):
        check_fits(cfg, CPU, job)
    save_config(cfg, tmp_path / "job.yaml")
    argv = ["train", "--config", str(tmp_path / "job.yaml"), "--no-progress"]
    result = children.job("tests.dist_child", f"ram:{ram}", *argv)
    assert result.returncode == 2, result.stderr[-3000:]
    assert refused in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_torchrun_job_is_fitted_as_ddp_whether_or_not_its_config_asks_for_it(micro):
    """torchrun's processes train under DDP without device_config.enable_ddp (dist.setup): its
    accumulated step holds no_sync's copy of the gradients all the same, and a job with room for
    one window beside the state but not beside that copy is refused naming DDP, as one whose config
    says enable_ddp is (it was fitted as a single process's, with a micro-batch that did not fit)."""
    cfg = micro(model_config={"vocab_size": 128}, training_config={"seq_len": 16})
    one = footprint.memory_estimate(cfg, batch_size=1)
    fixed, window = one.state, one.activations + one.logits
    assert one.gradients > 2 * window  # the copy takes more than the room left
    usable = fixed + 3 * window
    job = Dist(world_size=2, mode="ddp")
    for asked in (True, False):
        cfg.device.enable_ddp = asked
        with pytest.raises(
            UserError, match=re.escape("with it DDP keeps a second float32 copy of the gradients")
        ):
            job_fit(cfg, CPU, job, 16, (fixed, window), usable)
    assert job_fit(cfg, CPU, Dist(), 16, (fixed, window), usable) == (3, usable)  # one process: no copy


def test_the_allocation_failures_this_torch_raises_are_told_apart():
    """The errors torch raises when a tensor cannot be allocated, made for real: a CPU allocation
    of 4 EiB (refused at once: more than any address space) and a size whose bytes overflow 64
    bits; a CUDA out-of-memory error by its type. Run it under each torch the project supports
    (the GPU machine's 2.11 too): the CPU's are told apart by their texts."""
    for make in (
        lambda: torch.empty(2**62, dtype=torch.uint8),
        lambda: torch.empty(10**18, 64, device="meta"),
    ):
        with pytest.raises(RuntimeError) as refused:
            make()
        assert allocation_failed(refused.value), refused.value
    assert allocation_failed(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert allocation_failed(MemoryError())
    assert not allocation_failed(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))


def test_a_model_that_fails_to_allocate_in_a_cpu_job_names_the_process_share(micro, monkeypatch):
    """A weight the allocator refuses while the model is built, in one of the 2 processes of a CPU
    job (LOCAL_WORLD_SIZE 2): the line names the share of the RAM the process has, as check_fits
    does, not the whole RAM (a MemoryError, as the CPU raises it, planted in the model's build)."""
    from trickster.train import setup

    monkeypatch.setattr(footprint, "device_memory", lambda device: (8 * GiB, "RAM"))

    def refused(*args):
        raise MemoryError()

    monkeypatch.setattr(setup, "Transformer", refused)
    job = Dist(rank=1, world_size=2, mode="ddp", local_world_size=2)
    with pytest.raises(UserError) as ended:
        setup.build_model(micro(model_config={"vocab_size": 64}), None, job, CPU, None, None)
    assert "the model is too big for cpu (RAM / 2 processes, 4.0 GiB): " in str(ended.value)
    assert "building it failed to allocate memory" in str(ended.value)


def test_a_validation_set_too_big_for_a_process_share_names_the_share(shakespeare_dir, tmp_path):
    """The processes of a CPU job each hold the whole validation set in their share of the RAM: the
    refusal compared with that share but said the whole RAM ('more than the RAM (62.8 GiB)' for a
    set of 40 GiB), a line that contradicted itself."""
    from trickster.train.memory import check_validation_set

    cfg = micro_config(shakespeare_dir, tmp_path)
    capacity, _ = footprint.device_memory(CPU)
    job = Dist(world_size=2, local_world_size=2, mode="ddp")
    per_batch = 24 * cfg.training.batch_size * job.world_size * cfg.seq_len
    cfg.training.eval_batches = math.ceil(0.75 * capacity / per_batch)  # over half the RAM, under all
    share = footprint.size_text(capacity // 2)
    with pytest.raises(UserError, match=rf"more than the RAM / 2 processes \({re.escape(share)}\)"):
        check_validation_set(cfg, job)
    check_validation_set(cfg, Dist())  # one process has the whole RAM


def test_a_global_batch_past_the_accumulation_limit_is_one_line_at_once():
    """global_batch: 1e18 with batch_size: auto searched 1e18 / micro-batch accumulation counts for
    a divisor (the run hung before its first line); and a split whose exact divisor lay past
    MAX_ACCUMULATION set a gradient_accumulation_steps the config refuses (a traceback)."""
    with pytest.raises(UserError, match=r"batch_size auto: a global batch of 1,000,000,000,000,000,000 "):
        footprint.split_global_batch(10**18, 1, 30_000)
    limit = MAX_ACCUMULATION
    assert footprint.split_global_batch(limit, 1, 1) == (1, limit)
    # 3,999,998 windows, 4 fit: the fewest steps is the limit; the exact 1,999,999 lies past it
    assert footprint.split_global_batch(4 * limit - 2, 1, 4) == (4, limit)


def test_a_step_the_cpu_allocator_refuses_is_one_line_whose_advice_runs(micro, tmp_path, monkeypatch, capsys):
    """A CPU short of RAM refuses a step's tensor with a plain RuntimeError (DefaultCPUAllocator's,
    made for real here by asking for 4 EiB), not torch.OutOfMemoryError: one line, exit status 2,
    as a CUDA out-of-memory error is. Before any checkpoint, the command it gives, run as it says
    (the micro-batch and accumulation suggested, training_config.resume=auto), trains in the same
    folder; the same command alone is refused there, and --resume finds nothing to resume."""
    training = {"max_steps": 2, "warmup_steps": 1, "eval_every": 2, "save_every": 2, "sample_tokens": 0}
    save_config(micro(training_config=training), tmp_path / "micro.yaml")
    argv = ["train", "--config", str(tmp_path / "micro.yaml"), "--no-progress"]
    real_step = loop.Trainer.step

    def refused_once(self):
        monkeypatch.setattr(loop.Trainer, "step", real_step)
        torch.empty(2**62, dtype=torch.uint8)

    monkeypatch.setattr(loop.Trainer, "step", refused_once)
    assert cli.main(argv) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: out of memory (RAM of cpu") and "\n" not in line, line
    assert "during a training step at step 1 (micro-batch 8 x 64 tokens)" in line
    suggested = r"batch_size=(\d+) with gradient_accumulation_steps=(\d+) .*training_config.resume=auto"
    advice = re.search(suggested, line)
    micro_batch, accumulation = map(int, advice.groups())
    assert micro_batch * accumulation == 8  # the 8 windows per step the run was given
    changed = [f"training_config.batch_size={micro_batch}"]
    changed += [f"training_config.gradient_accumulation_steps={accumulation}"]
    assert cli.main([*argv, *changed]) == 2  # the folder is taken: why the line names resume=auto
    assert cli.main([*argv, *changed, "--resume"]) == 2
    assert cli.main([*argv, *changed, "training_config.resume=auto"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "final" / "COMPLETE").exists()


@pytest.mark.parametrize("memory_mib", [4, 6, 8.1])
def test_a_torchrun_job_is_checked_and_advised_as_ddp_whether_or_not_its_config_asks_for_it(
    micro, memory_mib
):
    """check_fits and the out-of-memory line size a torchrun job without device_config.enable_ddp
    as the DDP job it is (no gradients made as the activations go: the buckets hold them), as they
    size one whose config asks for it. They sized it as one process: 8.1 MiB let its step of 16
    windows through that DDP's does not fit, and 4 or 6 MiB advised a micro-batch twice the one
    that fits under DDP."""
    unasked = micro(model_config={"vocab_size": 128}, training_config={"batch_size": 16})
    unasked.device.memory_gib = memory_mib / 1024
    asked = unasked.model_copy(deep=True)
    asked.device.enable_ddp = True
    job = Dist(world_size=2, mode="ddp")

    def lines(cfg) -> tuple[str, str]:
        oom = str(out_of_memory(cfg, CPU, job, "a training step", 3, None))
        try:
            check_fits(cfg, CPU, job)
        except UserError as refused:
            return oom, str(refused)
        return oom, "fits"

    ddp = lines(asked)
    assert "suggests training_config.batch_size=" in ddp[0] and "does not fit" in ddp[1]
    assert lines(unasked) == ddp

"""Correctness of the fast paths (not their speed, which bench/ measures): the hand-written RMSNorm
backward, float16 with a GradScaler, torch.compile, and the MFU the logs report."""

import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from trickster import run_checkpoints
from trickster.cli import main
from trickster.model.transformer import RMSNormFunction, Transformer
from trickster.train import device, weight_loading
from trickster.train.loop import train

from .conftest import QUIET, events


def test_rmsnorm_backward_matches_numerical_gradients():
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: RMSNormFunction.apply(a, w, 1e-5), (x, weight))


def test_rmsnorm_matches_the_plain_formula_and_its_autograd():
    x = torch.randn(4, 6, 32, requires_grad=True)
    weight = torch.randn(32, requires_grad=True)
    plain = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight
    fast = RMSNormFunction.apply(x, weight, 1e-5)
    assert torch.equal(plain, fast)  # the same operations in the same order
    grad_out = torch.randn_like(plain)
    expected = torch.autograd.grad(plain, (x, weight), grad_out)
    got = torch.autograd.grad(fast, (x, weight), grad_out)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_float16_with_a_grad_scaler_tracks_float32(micro, tmp_path):
    steps = {"max_steps": 4, "warmup_steps": 1, "eval_every": 4, "eval_batches": 1, "save_every": 4}
    base = train(micro(training_config=steps), **QUIET)
    cfg = micro(
        training_config=steps,
        device_config={"dtype": "float16"},
        logging_config={"output_dir": str(tmp_path / "fp16")},
    )
    fp16 = train(cfg, **QUIET)
    for a, b in zip(events(base, "train"), events(fp16, "train"), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.03)
    trainer = torch.load(tmp_path / "fp16" / "checkpoints" / "final" / "trainer.pt", weights_only=True)
    assert trainer["scaler"]["scale"] > 0  # the scaler's state travels with the checkpoint


@pytest.mark.slow
def test_compiled_training_tracks_eager_and_saves_a_plain_model(micro, tmp_path):
    steps = {
        "max_steps": 4,
        "warmup_steps": 1,
        "log_every": 1,
        "eval_every": 4,
        "save_every": 4,
        "sample_tokens": 0,
    }
    eager = train(micro(training_config=steps), **QUIET)
    run = tmp_path / "compiled"
    cfg = micro(
        training_config=steps,
        device_config={"compile": True},
        logging_config={"output_dir": str(run)},
    )
    compiled = train(cfg, **QUIET)
    for a, b in zip(events(eager, "train"), events(compiled, "train"), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    # the checkpoint holds the plain module's names (no "_orig_mod." prefix) and loads into one
    weights = load_file(run / "checkpoints" / "final" / "model.safetensors")
    assert not any("_orig_mod" in name for name in weights)
    plain = Transformer(compiled.cfg.model)
    weight_loading.load_weights(plain, run / "checkpoints" / "final" / run_checkpoints.WEIGHTS)
    x = torch.randint(0, 60, (1, 16))
    eager_model = Transformer(eager.cfg.model)
    weight_loading.load_weights(
        eager_model, eager.run_dir / "checkpoints" / "final" / run_checkpoints.WEIGHTS
    )
    torch.testing.assert_close(plain(x)[0], eager_model(x)[0], rtol=1e-3, atol=1e-4)


def test_speed_and_mfu_are_timed_on_the_steps_alone(micro, monkeypatch):
    """A clock that jumps: every training forward adds STEP seconds to time.perf_counter, and the
    evaluation at step 4 (between the timed intervals of steps 3-4 and 5-6) adds EVAL, without
    sleeping. ms_per_step must be STEP plus the step's real compute: never less (a timer that misses
    the step) and without EVAL / 2 (a timer that counts the evaluation). Tokens/s and MFU must
    follow from that time, MFU against the configured peak."""
    step_s, eval_s, peak_tflops = 20.0, 1000.0, 0.5  # far above any real step, even on a busy machine
    clock, jumped, evaluations = time.perf_counter, [0.0], []
    monkeypatch.setattr(time, "perf_counter", lambda: clock() + jumped[0])
    forward = Transformer.forward

    def timed(self, *args, **kwargs):
        if self.training:
            jumped[0] += step_s
        else:  # evaluation mode: one forward per evaluation (eval_batches 1, no samples drawn)
            evaluations.append(len(evaluations))
            jumped[0] += eval_s if len(evaluations) == 2 else 0.0
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Transformer, "forward", timed)
    training = {"max_steps": 6, "warmup_steps": 1, "log_every": 2, "eval_every": 4, "eval_batches": 1}
    training["sample_tokens"] = 0
    result = train(micro(training_config=training, device_config={"peak_tflops": peak_tflops}), **QUIET)
    assert [r["step"] for r in events(result, "eval")] == [0, 4, 6] and len(evaluations) == 3
    start = events(result, "start")[0]
    assert start["peak_flops_per_device"] == peak_tflops * 1e12
    assert start["peak_source"] == "device_config.peak_tflops"
    step_flops = start["flops_per_token"] * start["tokens_per_step"]
    logged = events(result, "train")
    assert [r["step"] for r in logged] == [2, 4, 6]
    for r in logged:
        assert 1000 * step_s <= r["ms_per_step"] < 1000 * (step_s + eval_s / 4), r
        assert r["tokens_per_sec"] == pytest.approx(start["tokens_per_step"] / (r["ms_per_step"] / 1000))
        assert r["mfu"] == pytest.approx(step_flops / (r["ms_per_step"] / 1000) / (peak_tflops * 1e12))
        assert r["mfu"] <= step_flops / step_s / (peak_tflops * 1e12)
        assert r["peak_memory_gib"] is None  # only measured on CUDA


def test_mfu_against_the_measured_ceiling_is_a_plausible_fraction(micro):
    result = train(micro(training_config={"max_steps": 6, "eval_every": 6, "save_every": 6}), **QUIET)
    start = events(result, "start")[0]
    assert start["peak_source"] == "measured matmul" and start["peak_flops_per_device"] > 1e9
    # the measured ceiling is what MFU divides by (its value swings with the machine's load)
    step_flops = start["flops_per_token"] * start["tokens_per_step"]
    for r in events(result, "train"):
        achieved = step_flops / (r["ms_per_step"] / 1000)
        assert r["mfu"] > 0 and r["mfu"] == pytest.approx(achieved / start["peak_flops_per_device"])


@pytest.mark.parametrize("busy_timings", [1, 2], ids=["busy-at-the-start", "busy-throughout"])
def test_an_mfu_over_100_percent_times_the_ceiling_again(micro, monkeypatch, busy_timings):
    """A ceiling timed while other programs held the cores reads low, and every MFU high (a busy
    2-core machine logged 'MFU 169%'). Over 100%, the ceiling is timed again and the larger kept;
    an MFU still over 100% is logged as none and shown as n/a, never as a figure."""
    timings = []

    def timed(*args):
        """The first `busy_timings` timings read 1 kFLOP/s, as if the cores were taken; then 1
        PFLOP/s, above any CPU. (A real timing, made while pytest -n 2's other worker holds the
        cores, can read below this run's own rate again and time a third time.)"""
        timings.append(args)
        return 1e3 if len(timings) <= busy_timings else 1e15

    monkeypatch.setattr(device, "time_matmuls", timed)
    device.matmul_ceiling.cache_clear()  # timed for this run, and after it for the next ones
    lines = []
    training = {"max_steps": 4, "warmup_steps": 1, "log_every": 2, "eval_every": 4, "sample_tokens": 0}
    try:
        result = train(micro(training_config=training), echo=lines.append)
    finally:
        device.matmul_ceiling.cache_clear()
    assert events(result, "start")[0]["peak_flops_per_device"] == 1e3
    shown = [line.partition("MFU ")[2] for line in lines if line.startswith("step ") and "train loss" in line]
    mfus = [r["mfu"] for r in events(result, "train")]
    if busy_timings == 1:  # timed again at the first log: plausible from then on
        assert len(timings) == 2
        assert all(0 < m <= 1 for m in mfus) and all(int(s.rstrip("%")) <= 100 for s in shown), shown
    else:  # timed again at each log, read low once more the first time
        assert len(timings) == 3
        assert mfus[0] is None and shown[0] == "n/a (over 100% of measured matmul)"
        assert 0 < mfus[1] <= 1 and int(shown[1].rstrip("%")) <= 100


def test_fp16_and_compile_flags_set_the_config(shakespeare_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--data", str(shakespeare_dir), "--out", str(out), "--fp16"]
    overrides = [
        "training_config.max_steps=1",
        "training_config.warmup_steps=0",
        "model_config.max_seq_len=32",
        "training_config.batch_size=2",
    ]
    assert main(argv + ["--no-progress", *overrides]) == 0
    saved = (out / "config.yaml").read_text()
    assert "dtype: float16" in saved and "compile: false" in saved
    with pytest.raises(SystemExit) as exit_info:  # one precision at a time
        main(["train", "--preset", "tiny", "--fp16", "--bf16"])
    assert exit_info.value.code == 2


CHURN = """
import resource, sys, torch
from trickster.train.device import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():  # activations of a few hundred KB to a few MB, written, then freed, as in a CPU step
    held = [torch.ones(100_000 * (1 + i % 7)) for i in range(24)]
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keeping_freed_memory_stops_the_page_faults_of_every_step():
    def faults(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
        return float(out.stdout)

    plain, kept = faults("plain"), faults("keep")
    assert plain > 500, (plain, kept)  # glibc gives the big blocks back, and every step faults them in again
    assert kept < plain / 5, (plain, kept)


def test_a_gpu_never_times_its_ceiling_again_during_a_run(monkeypatch):
    """The ceiling's timing holds two 8192 x 8192 matrices: in the middle of a GPU run whose batch
    fills the memory it could fail the run. There an MFU over a measured ceiling is only not shown."""

    def timed_again(*args):
        raise AssertionError("the ceiling was timed again on a GPU")

    monkeypatch.setattr(device, "time_matmuls", timed_again)
    measured = device.Peak(1e12, "measured matmul", 1e12)
    assert device.utilisation(measured, 2e12, torch.device("cuda", 0), "bfloat16") == (None, measured)
    assert device.utilisation(measured, 5e11, torch.device("cuda", 0), "bfloat16") == (0.5, measured)

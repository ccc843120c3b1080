"""scripts/gpu_check.py without a GPU: its command line, its table, its use of a lent GPU's few
minutes (time limit, planned times, caps, results written as each step ends), that every step
refuses cleanly here, and (--cpu-dry-run) the steps at toy size on the CPU."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import gpu_check  # noqa: E402
import gpu_figures  # noqa: E402
import gpu_profile  # noqa: E402
import gpu_runs  # noqa: E402
import gpu_steps  # noqa: E402

from . import children  # noqa: E402

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a GPU")


def test_the_command_line_chooses_steps():
    assert gpu_check.parse_args([]).steps == list(gpu_check.CHECKS)
    figures = gpu_check.parse_args(["--steps", "tutorial", "nanogpt", "generate", "--nanogpt", "ng"])
    assert figures.steps == ["tutorial", "nanogpt", "generate"] and figures.nanogpt == Path("ng")
    assert gpu_check.parse_args(["--steps", "mega", "probe"]).steps == ["mega", "probe"]
    assert gpu_check.parse_args(["--cpu-dry-run"]).steps == list(gpu_check.STEPS)
    assert gpu_check.parse_args(["--cpu-dry-run", "--steps", "probe", "fsdp"]).steps == ["probe", "fsdp"]
    assert sorted(gpu_check.ORDER) == sorted(gpu_check.STEPS) == sorted(gpu_check.PLANNED_S)
    assert gpu_check.parse_args(["--time-limit", "540"]).time_limit == 540
    with pytest.raises(SystemExit) as bad:
        gpu_check.parse_args(["--time-limit", "0"])
    assert bad.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(["--steps", "warp"])
    assert exit_.value.code == 2


def test_the_summary_is_one_table_with_a_dash_for_what_a_step_does_not_measure():
    results = [
        gpu_runs.Result(
            "nano", val_loss=1.4567, tokens_per_sec=812345.6, mfu=0.3141, peak_gib=1.5, seconds=61
        ),
        gpu_runs.Result("mega", "FAIL", notes=["out of memory", "plan said 60 GiB"]),
    ]
    lines = gpu_check.summary_table(results).splitlines()
    columns = "step status val loss tokens/s MFU peak GiB save s load s time s notes"
    assert lines[0].split() == columns.split()
    assert lines[2].split() == ["nano", "PASS", "1.457", "812,346", "31.4%", "1.50", "-", "-", "61"]
    assert lines[3].split()[:9] == ["mega", "FAIL", "-", "-", "-", "-", "-", "-", "-"]
    assert lines[3].endswith("out of memory; plan said 60 GiB")


def test_a_failing_step_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(ctx):
        raise KeyError("a bug")

    def failing(ctx):
        raise gpu_runs.StepFailed("the loss did not fall")

    def exits(ctx):  # as bench/nanogpt.py does for a folder that is not a nanoGPT checkout
        sys.exit("error: peers/nanogpt is not a nanoGPT checkout")

    fake = {
        "probe": broken,
        "nano": failing,
        "nanogpt": exits,
        "resume": lambda ctx: gpu_runs.Result("resume"),
    }
    monkeypatch.setattr(gpu_check, "STEP_FUNCTIONS", fake)
    ctx = gpu_runs.Context(tmp_path, tmp_path, dry_run=True)
    results = gpu_check.run_steps(ctx, list(fake), echo=lambda *a, **k: None)
    assert [r.status for r in results] == ["FAIL", "FAIL", "FAIL", "PASS"]
    assert "KeyError" in results[0].notes[0] and (tmp_path / "probe.traceback").is_file()
    assert results[1].notes == ["the loss did not fall"]
    assert results[2].notes == ["error: peers/nanogpt is not a nanoGPT checkout"]
    assert all(r.seconds is not None for r in results)


def test_the_time_limit_stops_the_running_step_and_its_process_and_skips_the_rest(tmp_path, monkeypatch):
    """A GPU machine lent for minutes kills a command that runs over: the table must come first."""
    pid_file = tmp_path / "worker.pid"
    worker = "import time; time.sleep(60)"
    launcher = (  # as torchrun: its worker in a session of its own
        "import subprocess, sys, time\n"
        f"worker = subprocess.Popen([sys.executable, '-c', {worker!r}], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(worker.pid))\n"
        "time.sleep(60)"
    )

    def slow(ctx):  # a step waiting on a process, as the training steps do
        subprocess.run([sys.executable, "-c", launcher], timeout=120)
        return gpu_runs.Result("nano")

    fake = {"probe": lambda ctx: gpu_runs.Result("probe"), "nano": slow, "resume": slow}
    monkeypatch.setattr(gpu_check, "STEP_FUNCTIONS", fake)
    ctx = gpu_runs.Context(tmp_path, tmp_path, dry_run=True)
    bystander = subprocess.Popen([sys.executable, "-c", worker])  # not the step's: spared
    started = time.monotonic()
    results = gpu_check.run_steps(ctx, list(fake), echo=lambda *a, **k: None, time_limit=2)
    assert bystander.poll() is None
    bystander.kill()
    assert time.monotonic() - started < 10
    assert [r.status for r in results] == ["PASS", "SKIP", "SKIP"]
    assert results[1].notes == ["stopped at the time limit of 2 s"]
    assert results[2].notes == ["not started: the time limit of 2 s"]
    worker = int(pid_file.read_text())
    for _ in range(100):  # killed; init reaps it, which may take a moment
        if not Path(f"/proc/{worker}").exists() or "zombie" in Path(f"/proc/{worker}/status").read_text():
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the launcher's worker {worker} survived the time limit")
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_the_time_limit_ends_a_steps_processes_without_raising_inside_its_waits(tmp_path, monkeypatch):
    """An exception raised inside subprocess's waits can leave Popen's wait lock held, and the wait
    subprocess.run makes on its way out then hangs for ever (a test of the limit hung so, under
    load): the limit kills the step's processes, so its waits return normally, and raises only in
    work done in this process."""
    returned = []

    def waits_on_processes(ctx):
        for _ in range(3):  # a process started after the limit is killed too
            done = subprocess.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=120)
            returned.append(done.returncode)
        return gpu_runs.Result("nano")

    def computes(ctx):
        while True:
            sum(range(1000))

    fake = {"nano": waits_on_processes, "plan": computes}
    monkeypatch.setattr(gpu_check, "STEP_FUNCTIONS", fake)
    ctx = gpu_runs.Context(tmp_path, tmp_path, dry_run=True)
    started = time.monotonic()
    results = gpu_check.run_steps(ctx, list(fake), echo=lambda *a, **k: None, caps={"nano": 1, "plan": 1})
    assert time.monotonic() - started < 20
    assert returned == [-signal.SIGKILL] * 3
    assert [(r.status, r.notes) for r in results] == [("SKIP", ["stopped at its cap of 1 s"])] * 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_step_that_would_overrun_the_time_left_is_not_started_and_one_running_long_is_capped(
    tmp_path, monkeypatch
):
    """On a GPU lent for minutes: a step planned longer than the time left is left for the next
    attempt while a shorter one after it still runs; a step over its cap is stopped and the
    rest go on. Each result is in OUT as the step ends (a later kill leaves them there)."""
    out = tmp_path / "out"
    out.mkdir()
    seen = []

    def quick(ctx):
        seen.append(sorted(p.name for p in out.iterdir()))  # what an earlier step left there
        (ctx.work / "quick.log").write_text("a log\n")
        (ctx.work / "run" / "checkpoints").mkdir(parents=True, exist_ok=True)
        (ctx.work / "run" / "checkpoints" / "model.safetensors").write_bytes(b"0" * 100)
        (ctx.work / "run" / "metrics.jsonl").write_text("{}\n")
        return gpu_runs.Result("nano", notes=["fast"])

    def endless(ctx):
        time.sleep(60)

    fake = {"probe": quick, "mega": quick, "fsdp": endless, "nano": quick}
    monkeypatch.setattr(gpu_check, "STEP_FUNCTIONS", fake)
    ctx = gpu_runs.Context(tmp_path / "work", tmp_path, dry_run=True)
    ctx.work.mkdir()
    planned = {"probe": 1, "mega": 1000, "fsdp": 1, "nano": 1}
    started = time.monotonic()
    results = gpu_check.run_steps(
        ctx, list(fake), echo=lambda *a, **k: None, time_limit=30, caps={"fsdp": 1}, out=out, planned=planned
    )
    assert time.monotonic() - started < 10
    assert [r.status for r in results] == ["PASS", "SKIP", "SKIP", "PASS"]
    assert results[1].notes[0].startswith("not started: planned 1000 s, ")
    assert results[2].notes == ["stopped at its cap of 1 s"]
    assert seen == [[], ["logs.tgz", "results.jsonl", "summary.txt"]]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["step"], r["status"]) for r in lines] == [(r.step, r.status) for r in results]
    assert (out / "summary.txt").read_text() == gpu_check.summary_table(results) + "\n"
    with tarfile.open(out / "logs.tgz") as tar:
        names = tar.getnames()
    assert "work/quick.log" in names and "work/run/metrics.jsonl" in names
    assert not any("checkpoints" in name or name.endswith(".safetensors") for name in names), names


def test_the_versions_file_names_the_machine_and_the_software():
    import gpu_out

    text = gpu_out.versions()
    assert f"torch {torch.__version__}" in text and "python " in text and "MemTotal" in text


@no_gpu
@pytest.mark.parametrize("step", gpu_check.STEPS)
def test_every_step_refuses_cleanly_without_a_gpu(step, tmp_path):
    ctx = gpu_runs.Context(tmp_path, tmp_path, dry_run=False)
    with pytest.raises(gpu_runs.StepFailed, match=f"^{step} needs a CUDA GPU and none is visible$"):
        gpu_check.STEP_FUNCTIONS[step](ctx)


@no_gpu
def test_without_a_gpu_the_check_says_so_in_one_line(capsys):
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU is visible" in err and "--cpu-dry-run" in err


@pytest.mark.slow
def test_a_cpu_dry_run_trains_resumes_and_shards_at_toy_size(tmp_path, capsys, monkeypatch):
    run = subprocess.run

    def forked_unless_torchrun(command, cwd, env, timeout, **capture):
        """`python -m trickster ...` forked from the preloaded server (tests/children.py); the
        torchrun jobs start real interpreters."""
        if command[1:3] != ["-m", "trickster"]:
            return run(command, cwd=cwd, env=env, timeout=timeout, **capture)
        return children.run("trickster", *command[3:], cwd=cwd, env=env, timeout=timeout)

    monkeypatch.setattr(gpu_runs.subprocess, "run", forked_unless_torchrun)
    argv = ["--cpu-dry-run", "--steps", "nano", "resume", "fsdp", "mega", "--work", str(tmp_path)]
    assert gpu_check.main(argv) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.split()[:1] in (["nano"], ["resume"], ["fsdp"], ["mega"])
    }
    assert [rows[step][1] for step in ("nano", "resume", "fsdp", "mega")] == ["PASS"] * 4
    for run in ("fsdp-reference", "fsdp", "fsdp-cpu", "mega"):  # 64 GiB of disk on the GPU machine
        assert (tmp_path / run / "metrics.jsonl").is_file() and not (tmp_path / run / "checkpoints").exists()
    mega = " ".join(rows["mega"])  # its comparison with the plan, at toy size: figures, no bounds
    assert "ms (plan " in mega and "(plan nan ms)" not in mega and "peak not measured (plan " in mega


@pytest.mark.slow
def test_a_cpu_dry_run_of_the_figure_steps_runs_their_code_at_toy_size(tmp_path, capsys):
    """What a lent GPU's first attempt runs first, through the same code on the CPU: the tutorial's
    schedule, gpt2's two throughput rows, the largest-batch search, then the tutorial's run
    resumed (and generated from on the CPU) and served to concurrent requests."""
    steps = ["tutorial", "gpt2", "maxbatch", "resume", "serve"]
    argv = [
        "--cpu-dry-run",
        "--steps",
        *steps,
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert gpu_check.main(argv) == 0, capsys.readouterr().out
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == steps
    assert "tutorial resumed at 30 to 35" in lines[3] and "refused for the context" in lines[4]


@pytest.mark.slow
def test_the_probes_cpu_capable_checks_pass_on_this_cpu():
    """kv_cache and collectives take a device: on the CPU (gloo) they run the same code paths."""
    import gpu_probe

    assert gpu_probe.kv_cache("cpu").endswith("ok")
    assert gpu_probe.collectives("cpu").startswith("gloo: sum_across, from_rank0")


def test_the_figure_steps_time_generation_on_a_cpu_and_skip_nanogpt_without_a_checkout(tmp_path):
    ctx = gpu_runs.Context(tmp_path, tmp_path, dry_run=True)
    assert gpu_figures.step_nanogpt(ctx).status == "SKIP"
    result = gpu_figures.step_generate(ctx)  # `tiny` for 20 tokens on the CPU
    assert result.status == "PASS" and len(result.notes) == 1
    assert result.notes[0].startswith("tiny: cached ") and "tokens/s" in result.notes[0]


@pytest.mark.parametrize("threshold", [0, 1, 2, 3, 7, 8, 100, 4096])
def test_the_largest_batch_search_finds_the_threshold_with_few_trials(threshold):
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= threshold

    assert gpu_steps.largest(fits) == threshold
    assert len(tried) <= 2 * max(threshold, 1).bit_length() + 2, tried
    assert gpu_steps.largest(lambda b: True, limit=64) == 64  # never failing: stops at the limit


def test_a_later_command_with_the_same_work_folder_finds_the_run_an_earlier_one_trained(tmp_path):
    """A lent GPU runs the check over several commands: `resume` and `serve` in the second use the
    tutorial's run the first left in --work, once its final checkpoint is complete."""
    ctx = gpu_runs.Context(tmp_path, tmp_path, dry_run=True)
    assert ctx.trained_run("tutorial", "nano") is None
    (tmp_path / "nano" / "checkpoints" / "final").mkdir(parents=True)
    (tmp_path / "tutorial" / "checkpoints" / "final").mkdir(parents=True)
    (tmp_path / "nano" / "checkpoints" / "final" / "COMPLETE").write_text("ok\n")
    assert ctx.trained_run("tutorial", "nano") == tmp_path / "nano"  # the tutorial's was cut short
    (tmp_path / "tutorial" / "checkpoints" / "final" / "COMPLETE").write_text("ok\n")
    assert ctx.trained_run("tutorial", "nano") == tmp_path / "tutorial"


@pytest.mark.slow
def test_a_cpu_dry_run_brings_back_where_the_speed_steps_time_goes(tmp_path, capsys):
    """gpt2 records two warm-up steps of its compiled row; the tutorial, whose figure a dry run
    counts as missed, an extra short run: each table of operators comes back in --out, the trace in
    logs.tgz, and the step's notes quote the table's top rows."""
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--cpu-dry-run", "--steps", "gpt2", "tutorial", "--work", str(work), "--out", str(out)]
    assert gpu_check.main(argv) == 0, capsys.readouterr().out
    notes = {json.loads(line)["step"]: json.loads(line)["notes"] for line in open(out / "results.jsonl")}
    with tarfile.open(out / "logs.tgz") as logs:
        packed = logs.getnames()
    for step, trace in (("gpt2", "gpt2-profile"), ("tutorial", "tutorial-profile/profile")):
        table = (out / f"{step}_top_ops.txt").read_text()
        # operator rows: a share of the total in percent, and a count of calls at the end
        ops = [line.split()[0] for line in table.splitlines() if "%" in line and line.split()[-1].isdigit()]
        assert len(ops) >= 3, table
        quoted = next(note for note in notes[step] if f"{step}_top_ops.txt" in note)
        places = [quoted.index(f" {name} ") for name in ops[:3]]
        assert places == sorted(places), (ops[:3], quoted)
        assert f"{work.name}/{trace}/rank0.pt.trace.json.gz" in packed


def test_the_quoted_rows_of_a_gpu_table_are_its_kernels_and_their_share_of_gpu_time():
    """The table a GPU writes, laid out by torch's own table builder (no GPU here to profile): its
    rows are quoted with their Self CUDA %, not the Self CPU % before it, and neither a kernel's name
    with spaces in it nor an empty cell shifts the columns."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import EventList, FunctionEventAvg, _build_table

    device_us = {"aten::mm": 500, "void gemm_kernel<128, 64>": 300, "aten::add": 20, "aten::mul": 100}
    events = []
    for name, gpu_us in device_us.items():
        event = FunctionEventAvg()
        event.key, event.count, event.device_type, event.is_user_annotation = name, 2, DeviceType.CUDA, False
        event.self_cpu_time_total = event.cpu_time_total = 1000 - gpu_us  # CPU time ranks them the other way
        event.self_device_time_total = event.device_time_total = gpu_us
        event.use_device = "cuda"
        event.overload_name = "out" if name == "aten::mm" else ""  # a column with empty cells
        events.append(event)
    table = _build_table(EventList(events), sort_by="self_device_time_total")
    total = sum(device_us.values())
    expected = [
        (name, f"{100 * device_us[name] / total:.2f}%")
        for name in ("aten::mm", "void gemm_kernel<128, 64>", "aten::mul")
    ]
    assert gpu_profile.top_rows(table, 3) == expected

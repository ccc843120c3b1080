"""bench/ scripts are measurements, not tests; this checks how they measure, not what."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench"


def bench_module(name: str):
    sys.path.insert(0, str(BENCH))  # the scripts import their siblings
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.mark.slow
def test_every_row_of_the_throughput_grid_runs_in_a_fresh_process(shakespeare_dir):
    """One process for all rows hits torch.compile's recompile limit after 8 compiled rows (then
    runs eagerly without a word) and keeps one running peak-memory figure for all of them."""
    throughput = bench_module("train_throughput")
    small = [
        "model_config.hidden_dim=32",
        "model_config.num_layers=1",
        "model_config.num_heads=2",
        "model_config.mlp_dim=64",
        "model_config.max_seq_len=32",
        "training_config.batch_size=2",
        "device_config.threads=1",
    ]
    rows = [throughput.measure_in_process("tiny", shakespeare_dir, 4, 1, small) for _ in range(2)]
    pids = {row["pid"] for row in rows}
    assert len(pids) == 2 and os.getpid() not in pids
    for row in rows:
        assert row["batch"] == "2x32" and row["ms_per_step"] > 0 and row["tokens_per_sec"] > 0


def test_the_step_profile_splits_a_real_step_and_accounts_for_its_time():
    profile_step = bench_module("profile_step")
    step, flops = profile_step.our_step(layers=1, width=64, heads=2, context=32, batch=4)
    assert flops > 0
    # the profile covers the step: its ops add up to about the step's measured time. Each try
    # takes the two figures back to back (the least of three of each); on a machine others share,
    # a burst of load in one of them puts them apart, so up to five tries, one of which must agree
    tries = []
    for _ in range(5):
        timed = min(profile_step.ms_per_step(step, 5) for _ in range(3))
        parts = min((profile_step.breakdown(step, 5) for _ in range(3)), key=lambda p: p["total"])
        assert set(parts) == {"matmul", "attention", "other", "total"}
        assert parts["matmul"] > 0 and parts["attention"] > 0 and parts["other"] > 0
        assert parts["total"] == pytest.approx(parts["matmul"] + parts["attention"] + parts["other"])
        tries.append((round(parts["total"], 2), round(timed, 2)))
        if 0.3 * timed < parts["total"] < 3 * timed:
            break
    else:
        raise AssertionError(f"profiled ms vs timed ms in each try: {tries}")


def test_the_checkpoint_benchmark_links_and_writes_what_it_says(tmp_path, monkeypatch, capsys):
    """Its linked saves must really link (the same file as final's), else it times a copy."""
    from trickster import run_checkpoints
    from trickster.train import checkpoint as ckpt

    bench = bench_module("checkpoint_save")
    reused = []
    real = ckpt.save_checkpoint

    def spy(target, *args, reuse=None, **kwargs):
        folder = real(target, *args, reuse=reuse, **kwargs)
        if reuse is not None:
            reused.append(
                (folder / run_checkpoints.WEIGHTS).stat().st_ino
                == (reuse / run_checkpoints.WEIGHTS).stat().st_ino
            )
        return folder

    monkeypatch.setattr(ckpt, "save_checkpoint", spy)
    monkeypatch.setattr(
        sys, "argv", ["checkpoint_save.py", "--preset", "tiny", "--repeats", "1", "--dir", str(tmp_path)]
    )
    bench.main()
    assert reused == [True, True]
    out = capsys.readouterr().out
    assert "written again" in out and "moments in shard files" in out
    assert list(tmp_path.iterdir()) == []  # its folder is gone


def test_the_batch_benchmark_times_nanogpts_recipe_on_the_same_tokens(shakespeare_dir, monkeypatch, capsys):
    """The peer's batches must be windows of the same token file, targets one ahead, or the
    ratio compares other work."""
    import numpy as np

    from trickster.data.loader import load_data

    bench = bench_module("batch_draw")
    tokens = load_data(shakespeare_dir).train
    x, y = bench.nanogpt_get_batch(tokens.shards[0].filename, tokens.dtype, 32, 4)
    whole = np.asarray(tokens)
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        (start,) = [s for s in range(len(whole) - 32) if np.array_equal(whole[s : s + 32], row_x)][:1]
        assert np.array_equal(whole[start + 1 : start + 33], row_y)
    argv = ["--data", str(shakespeare_dir), "--shapes", "4x32", "--draws", "3", "--repeats", "1"]
    monkeypatch.setattr(sys, "argv", ["batch_draw.py", *argv])
    bench.main()
    assert "     4x32" in capsys.readouterr().out


def test_the_long_run_generator_writes_a_finished_run_that_trickster_runs_reads(tmp_path, capsys):
    """Its events must be the ones the training loop writes, field for field, or the benchmark
    times reading something no run holds."""
    from tests.test_docs import written_events
    from trickster.cli import main
    from trickster.observe.events import iter_metrics
    from trickster.observe.runs import read_run

    bench = bench_module("long_run_read")
    path = bench.write_run(tmp_path / "long", steps=45, eval_every=20, sample_chars=30)
    problems = []
    events = list(iter_metrics(path, problems))
    assert problems == []
    assert [e["event"] for e in events].count("train") == 45
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 20, 40, 45]  # and at the last step, as the loop does
    assert all(len(e["sample"]) == 30 for e in evals)
    written = written_events()
    for e in events:
        assert set(e) - {"event", "step", "time"} == written[e["event"]], e["event"]
    run = read_run(tmp_path / "long")
    assert run.problem is None and run.status == "finished"
    assert (run.step, run.max_steps) == (45, 45)
    best = min(evals[1:], key=lambda e: e["val_loss"])  # the untrained evaluation is never best
    assert run.best_eval == best and events[-1]["best_val_loss"] == best["val_loss"]
    assert main(["runs", str(tmp_path / "long")]) == 0
    assert "45/45" in capsys.readouterr().out


def test_the_long_run_benchmark_measures_each_child_alone_with_the_src_it_is_given(tmp_path):
    """A child's ru_maxrss starts from the peak of the process that spawned it, and RUSAGE_CHILDREN
    is the largest of every child so far: a small command measured from a big process, or after a
    big command, would show their peak. PYTHONPATH must select the checkout measured."""
    bench = bench_module("long_run_read")
    sources = {}
    for name, megabytes in (("big", 128), ("small", 0)):
        package = tmp_path / name / "trickster"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "__main__.py").write_text(
            f"import sys\nheld = b'x' * ({megabytes} << 20)\nprint('{name}', sys.argv[1:])\n"
        )
        sources[name] = tmp_path / name
    parent = 256 << 20
    held = b"x" * parent  # noqa: F841 (this process is bigger than either command, as pytest with torch is)
    _, big, output = bench.measure(sources["big"], ["runs", "x"])
    assert output == "big ['runs', 'x']\n"
    _, small, output = bench.measure(sources["small"], ["runs", "x"])
    assert output == "small ['runs', 'x']\n"
    assert 128 << 20 < big < parent and small < 64 << 20, (big, small)

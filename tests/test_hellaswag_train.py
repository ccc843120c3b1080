"""HellaSwag during training (training_config.hellaswag_every): scored at step 0, every N steps and
at the end; each scoring's counts are those `trickster eval --task hellaswag` gives on the
checkpoint of that step; a run that scores trains exactly as one that does not; the file is read
before the first step or the run does not start; a kill after a scoring resumes exactly. The
files are written here from the Shakespeare excerpt (no network)."""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import pytest
import torch

from trickster import cli, run_checkpoints
from trickster.data.tokenizers import CharTokenizer
from trickster.errors import UserError
from trickster.observe import hellaswag, plots
from trickster.observe.curves import MAX_POINTS, Curves
from trickster.observe.report import build_report
from trickster.observe.runs import format_runs, read_run
from trickster.train import dist, hellaswag_eval
from trickster.train.dist import Dist
from trickster.train.hellaswag_eval import HellaSwagEval
from trickster.train.loop import train
from trickster.train.run_lock import run_dir_in_use

from .conftest import EXCERPT, QUIET, events, micro_config
from .test_dist import config as dist_config
from .test_dist import forked_job
from .test_hellaswag import excerpt_examples, write_file
from .test_resume import CRASH_RUN, assert_same_weights, crash, curve
from .test_tracking import read_csv, wandb_records

FIRST = 16  # training_config.hellaswag_examples of these tests: the file holds more


def labelled(count: int, seed: int = 3) -> list[dict]:
    """Excerpt examples (only characters the char model knows) with labels 0-3 in turn; the sixth
    has a digit, which the char vocabulary lacks."""
    examples = excerpt_examples(count, seed=seed)
    for i, example in enumerate(examples):
        example["label"] = i % 4
    examples[5]["endings"][1] += " 1984"
    return examples


@pytest.fixture
def hellaswag_file(tmp_path, monkeypatch) -> Path:
    """24 examples, the product's line count set to match (in this process only)."""
    return write_file(tmp_path / "hellaswag_val.jsonl", labelled(24), monkeypatch)


def scoring(path: Path, every: int = 4, **training) -> dict:
    return {"hellaswag_every": every, "hellaswag_examples": FIRST, "hellaswag_file": str(path), **training}


def eval_task(capsys, checkpoint: Path, path: Path, first: int = FIRST) -> dict:
    capsys.readouterr()
    argv = ["eval", str(checkpoint), "--task", "hellaswag", "--hellaswag-file", str(path)]
    assert cli.main([*argv, "--max-examples", str(first), "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_scored_at_step_0_every_n_steps_and_at_the_end_as_eval_scores_each_checkpoint(
    micro, hellaswag_file, capsys
):
    said: list[str] = []
    cfg = micro(training_config=scoring(hellaswag_file, max_steps=10, save_every=4))
    result = train(cfg, echo=said.append)

    scored = events(result.history, "hellaswag")
    assert [r["step"] for r in scored] == [0, 4, 8, 10]
    tokens = {r["step"]: r["tokens_seen"] for r in events(result.history, "train")}
    for record, name in zip(scored[1:], ["step_000004", "step_000008", "final"], strict=True):
        by_eval = eval_task(capsys, result.run_dir / "checkpoints" / name, hellaswag_file)
        assert by_eval["step"] == record["step"]
        keys = ("acc", "acc_norm", "correct", "correct_norm", "scored", "examples", "cut", "skipped")
        assert {k: record[k] for k in keys} == {k: by_eval[k] for k in keys}
        assert record["tokens_seen"] == tokens[record["step"]]
        shown = (
            f"step {record['step']:>6}: HellaSwag acc_norm {record['acc_norm']:.4f}, acc {record['acc']:.4f}"
        )
        assert any(line.startswith(shown) for line in said), shown
    # the first 16 of 24, the sixth left out (a digit): the same 15 every time
    assert {(r["examples"], r["scored"]) for r in scored} == {(16, 15)}
    assert scored[0]["skipped"] == {"unknown_characters": 1, "ending_too_long": 0, "empty": 0}
    assert "the first 16 of the 24 validation examples" in "\n".join(said)
    assert "left out: 1 with characters outside the model's vocabulary" in "\n".join(said)


def test_a_run_that_scores_trains_exactly_as_one_that_does_not(shakespeare_dir, hellaswag_file, tmp_path):
    """With dropout, a model left in eval mode or a random number drawn would change every loss
    after the first scoring; samples and the final weights must be the same too."""
    training = {"max_steps": 8, "eval_every": 4, "save_every": 8}
    sections = {"model_config": {"dropout": 0.1}}
    plain = train(
        micro_config(shakespeare_dir, tmp_path / "plain", training_config=training, **sections), **QUIET
    )
    with_scoring = {**training, **scoring(hellaswag_file, every=3)}
    cfg = micro_config(shakespeare_dir, tmp_path / "scored", training_config=with_scoring, **sections)
    scored = train(cfg, **QUIET)

    assert [r["step"] for r in events(scored.history, "hellaswag")] == [0, 3, 6, 8]
    assert curve(scored.history) == curve(plain.history)
    assert_same_weights(plain.run_dir / "checkpoints" / "final", scored.run_dir / "checkpoints" / "final")


def test_without_the_file_offline_the_run_stops_before_it_starts(
    micro, hellaswag_file, tmp_path, monkeypatch
):
    monkeypatch.setenv("TRICKSTER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hellaswag, "VAL_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")
    cfg = micro(training_config={"max_steps": 2, "warmup_steps": 1, "hellaswag_every": 1})
    with pytest.raises(UserError, match=r"pass the local copy with training_config\.hellaswag_file=FILE$"):
        train(cfg, **QUIET)
    run_dir = Path(cfg.logging.output_dir)
    assert not run_dir_in_use(run_dir) and not (run_dir / "metrics.jsonl").exists()  # nothing written

    # the copy `trickster eval --task hellaswag` cached is read without the network
    cached = tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(hellaswag_file.read_bytes())
    said: list[str] = []
    result = train(cfg, echo=said.append)
    assert [r["step"] for r in events(result.history, "hellaswag")] == [0, 1, 2]
    assert f"validation examples ({cached})" in "\n".join(said)

    # the run done and the file gone, `resume: auto` (a requeue) says it has finished, as without HellaSwag
    cached.unlink()
    said.clear()
    again = train(cfg, resume="auto", echo=said.append)
    assert again.finished_before and "already finished at step 2" in "\n".join(said)


@pytest.mark.parametrize(
    ("training", "waiting"),
    [
        ({"hellaswag_examples": FIRST}, "training_config.hellaswag_examples takes"),
        ({"hellaswag_file": "FILE"}, "training_config.hellaswag_file takes"),
        (
            {"hellaswag_file": "FILE", "hellaswag_examples": FIRST},
            "training_config.hellaswag_file and training_config.hellaswag_examples take",
        ),
        ({"hellaswag_file": "FILE", "hellaswag_every": 2}, None),
    ],
)
def test_hellaswag_keys_set_without_hellaswag_every_are_kept_and_said_once(
    micro, hellaswag_file, training, waiting
):
    """A config may hold the file and the count for later: the run trains, scores nothing, and
    says once at its start why not; with hellaswag_every it scores and says nothing of the kind."""
    training = {k: str(hellaswag_file) if v == "FILE" else v for k, v in training.items()}
    said: list[str] = []
    result = train(micro(training_config={"max_steps": 2, "warmup_steps": 1, **training}), echo=said.append)
    notes = [line for line in said if "effect only with" in line]
    scored = [r["step"] for r in events(result.history, "hellaswag")]
    if waiting is None:
        assert notes == [] and scored == [0, 2]
        return
    expected = f"note: {waiting} effect only with training_config.hellaswag_every, which is not set: "
    assert notes == [expected + "this run scores no HellaSwag"] and scored == []
    first_step = next(i for i, line in enumerate(said) if line.startswith("step "))
    assert said.index(notes[0]) < first_step  # said at the start, before training


def test_more_processes_than_scorable_examples_is_refused(micro, hellaswag_file):
    """Every process scores a share, in as many passes as the others: none may be left empty."""
    cfg = micro(training_config=scoring(hellaswag_file, hellaswag_examples=3))
    tokenizer = CharTokenizer.from_texts([EXCERPT.read_text()])
    assert len(HellaSwagEval(cfg, tokenizer, Dist(rank=0, world_size=3)).rows) == 1
    fewer = (
        "hellaswag_examples=3 leaves 3 HellaSwag examples this model can score, fewer than the 4 processes"
    )
    with pytest.raises(UserError, match=fewer):
        HellaSwagEval(cfg, tokenizer, Dist(rank=0, world_size=4))


def test_passes_are_as_many_on_every_process_and_hold_every_row_once(micro, hellaswag_file, monkeypatch):
    monkeypatch.setattr(hellaswag_eval, "on_main", lambda job, read, *args: read(*args))  # each process reads
    cfg = micro(training_config=scoring(hellaswag_file, hellaswag_examples=24))
    tokenizer = CharTokenizer.from_texts([EXCERPT.read_text()])
    for batch_tokens in (1, 700, 2000, 10**6):
        shares = [HellaSwagEval(cfg, tokenizer, Dist(rank=r, world_size=3)) for r in range(3)]
        passes = [share.passes(batch_tokens) for share in shares]
        assert len({len(p) for p in passes}) == 1 and all(batch for p in passes for batch in p)
        rows = [id(row) for share in shares for row in share.rows]
        assert sorted(id(row) for p in passes for batch in p for row in batch) == sorted(rows)
        assert len(rows) == 23


def test_compiled_blocks_are_scored_eagerly_without_compiling_anything(micro, hellaswag_file, tmp_path):
    """Each pass has its own rows and width: compiling for them would stall a run at every scoring."""
    from torch._dynamo.utils import counters

    from trickster.data.loader import load_data
    from trickster.model.transformer import Transformer
    from trickster.model.vocab import resolve_vocab

    cfg = micro(training_config=scoring(hellaswag_file))
    data = load_data(cfg.data.path)
    cfg = resolve_vocab(cfg, data.tokenizer)
    model = Transformer(cfg.model)
    dist.compile_blocks(model)
    scorer = HellaSwagEval(cfg, data.tokenizer, Dist())
    compiled = counters["stats"]["unique_graphs"]
    accuracy = scorer.score(model.train(), torch.device("cpu"), "float32", 8 * 64)
    assert counters["stats"]["unique_graphs"] == compiled
    assert accuracy.scored == 15 and model.training


# --------------------------------------------------------------------------- kill and resume


@pytest.fixture(scope="module")
def full_size_file(tmp_path_factory) -> Path:
    """10,042 examples, as many as the real file: the killed run is another process, where the
    line count cannot be changed."""
    path = tmp_path_factory.mktemp("hellaswag") / "hellaswag_val.jsonl"
    examples = labelled(hellaswag.VAL_EXAMPLES, seed=4)
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def scoring_run(full_size_file) -> dict:
    """test_resume's kill run (dropout, 12 steps, checkpoints at 4 and 8), scoring at 0, 4, 8, 12."""
    return {**CRASH_RUN, "training_config": {**CRASH_RUN["training_config"], **scoring(full_size_file)}}


@pytest.fixture(scope="module")
def scoring_reference(shakespeare_dir, scoring_run, tmp_path_factory):
    return train(
        micro_config(shakespeare_dir, tmp_path_factory.mktemp("reference") / "run", **scoring_run), **QUIET
    )


@pytest.mark.parametrize("moment", ["before-hellaswag", "after-hellaswag"])
def test_a_kill_around_a_scoring_resumes_exactly(
    moment, shakespeare_dir, scoring_run, scoring_reference, tmp_path
):
    """Killed as the scoring at step 8 starts, or just after it wrote its event, the run resumes
    from step_000008 (saved before it), scores step 8 again and logs it once."""
    run, reference, run_dir = scoring_run, scoring_reference, tmp_path / "run"
    crash(shakespeare_dir, run_dir, moment, 3, run=run)
    assert run_checkpoints.latest(run_dir).name == "step_000008"

    resumed = train(micro_config(shakespeare_dir, run_dir, **run), resume=True, **QUIET)

    def scorings(history) -> list[tuple]:
        return [
            (r["step"], r["correct"], r["correct_norm"], r["scored"]) for r in events(history, "hellaswag")
        ]

    assert [s[0] for s in scorings(resumed.history)] == [0, 4, 8, 12]
    assert scorings(resumed.history) == scorings(reference.history)
    assert curve(resumed.history) == curve(reference.history)
    assert_same_weights(run_dir / "checkpoints" / "final", reference.run_dir / "checkpoints" / "final")


@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups on POSIX")
@pytest.mark.parametrize("mode", ["enable_ddp", "enable_fsdp"])
def test_two_processes_score_a_share_each_and_log_the_sum(
    mode, shakespeare_dir, full_size_file, tmp_path, capsys
):
    """24 examples, 23 scorable (the sixth has a digit): shares of 12 and 11, one example a forward
    pass (256 tokens a micro-batch, rows of up to 65), 11 passes each; FSDP2 gathers the weights in
    every pass, so a process with a pass more would hang the job."""
    cfg = dist_config(shakespeare_dir, tmp_path / "run", batch_size=4, **{mode: True})
    cfg.training.hellaswag_every, cfg.training.hellaswag_examples = 10, 24
    cfg.training.hellaswag_file = str(full_size_file)
    forked_job(cfg, tmp_path)

    run_dir = Path(cfg.logging.output_dir)
    scored = events(run_dir, "hellaswag")
    assert [(r["step"], r["scored"], r["examples"]) for r in scored] == [
        (0, 23, 24),
        (10, 23, 24),
        (20, 23, 24),
    ]
    for record, name in zip(scored[1:], ["step_000010", "final"], strict=True):
        by_eval = eval_task(capsys, run_dir / "checkpoints" / name, full_size_file, first=24)
        keys = ("correct", "correct_norm", "scored", "cut", "skipped")
        assert {k: record[k] for k in keys} == {k: by_eval[k] for k in keys}, name


# --------------------------------------------------------------------------- where the points go


def test_csv_tensorboard_wandb_the_report_and_the_runs_table_show_each_scoring(
    micro, hellaswag_file, tmp_path, monkeypatch, trained_run
):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in ("DIR", "CONFIG_DIR", "CACHE_DIR", "DATA_DIR"):
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / f"wandb-{name.lower()}"))
    monkeypatch.setenv("WANDB_MODE", "offline")  # nothing is sent
    monkeypatch.setenv("WANDB_SILENT", "true")
    logging = {"tensorboard": True, "use_wandb": True}
    run = train(
        micro(training_config=scoring(hellaswag_file, max_steps=8), logging_config=logging), **QUIET
    ).run_dir
    scored = events(run, "hellaswag")
    points = [(r["step"], r["acc_norm"], r["acc"]) for r in scored]
    assert [p[0] for p in points] == [0, 4, 8]

    rows = [r for r in read_csv(run / "metrics.csv") if r["event"] == "hellaswag"]
    assert [(int(r["step"]), float(r["acc_norm"]), float(r["acc"])) for r in rows] == points
    board = EventAccumulator(str(run / "tensorboard")).Reload()
    for tag, column in (("hellaswag/acc_norm", 1), ("hellaswag/acc", 2)):
        logged = [(e.step, e.value) for e in board.Scalars(tag)]
        assert logged == [(p[0], pytest.approx(p[column])) for p in points], tag
    history: dict[int, dict] = {}
    for record in wandb_records(Path(glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))[0])):
        if record.HasField("history"):
            items = {
                i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json)
                for i in record.history.item
            }
            history.setdefault(items["_step"], {}).update(items)
    assert [
        (s, history[s]["hellaswag/acc_norm"], history[s]["hellaswag/acc"]) for s, _, _ in points
    ] == points

    page = build_report(run)
    assert "<h2>HellaSwag accuracy</h2>" in page
    assert f"{points[-1][1]:.4f} (step 8)" in page  # the summary's card: the last scoring
    figure = plots.hellaswag_figure(read_run(run, for_report=True).metrics.curves)
    by_step = figure.axes[0]
    assert [list(line.get_xdata()) for line in by_step.lines[:2]] == [[0, 4, 8]] * 2
    assert [list(line.get_ydata()) for line in by_step.lines[:2]] == [
        [p[1] for p in points],
        [p[2] for p in points],
    ]
    assert "HellaSwag accuracy" not in build_report(trained_run)

    table = format_runs([read_run(run), read_run(trained_run)])
    assert table[0].split()[7:9] == ["hellaswag", "tokens"]  # after "best val loss"
    assert f"{points[-1][1]:.4f}" in table[1] and table[2].split()[5] == "-"
    assert "hellaswag" not in format_runs([read_run(trained_run)])[0]


def test_the_curves_keep_a_bounded_number_of_points_and_drop_those_a_rollback_replaced():
    def scoring_at(step: int) -> dict:
        return {
            "event": "hellaswag",
            "step": step,
            "tokens_seen": 10 * step,
            "acc_norm": step / 1e6,
            "acc": 0.25,
        }

    curves = Curves.from_records([scoring_at(step) for step in range(2 * MAX_POINTS + 1)])
    assert len(curves.hellaswag_step) <= MAX_POINTS and curves.hellaswag_step[:3] == [0, 4, 8]
    assert curves.hellaswag_acc_norm == [step / 1e6 for step in curves.hellaswag_step]
    rollback = {"event": "rollback", "step": 4, "last_step": 9, "peak_loss": 9.0}
    curves = Curves.from_records([scoring_at(step) for step in (0, 4, 8)] + [rollback, scoring_at(8)])
    assert curves.hellaswag_step == [0, 4, 8] and curves.hellaswag_tokens == [0, 40, 80]

import json
import re
import shlex
import shutil
import signal
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from trickster import run_checkpoints
from trickster.config import config_from_dict, load_config
from trickster.data import sources
from trickster.data.prepare import prepare
from trickster.data.tokenizers import load_tokenizer
from trickster.errors import UserError
from trickster.model.generate import generate
from trickster.model.transformer import Transformer
from trickster.model.vocab import padded_vocab
from trickster.train import checkpoint_load, weight_loading
from trickster.train.loop import train
from trickster.train.optim import lr_at

from . import children
from .conftest import QUIET, events, micro_config


@pytest.mark.slow
def test_tutorial_checks_on_a_short_cpu_run(shakespeare_dir, tmp_path):
    """The lab's checks on the `tiny` preset: loss falls by 20%, validation improves, the sample
    reads like words, and the saved model reloads identically."""
    cfg = load_config(
        preset="tiny",
        overrides=[
            f"data_config.path={shakespeare_dir}",
            f"logging_config.output_dir={tmp_path / 'run'}",
            "training_config.batch_size=8",
            "training_config.max_steps=60",
            "training_config.warmup_steps=6",
            "training_config.log_every=2",
            "training_config.eval_every=30",
            "training_config.eval_batches=4",
        ],
    )
    result = train(cfg, progress=False, **QUIET)
    losses = [r["train_loss"] for r in events(result, "train")]
    assert [r["step"] for r in events(result, "train")] == list(range(2, 61, 2))  # log_every=2
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last <= 0.8 * first, (first, last)
    vals = [r["val_loss"] for r in events(result, "eval")]
    assert vals[-1] < vals[0]
    sample = events(result, "eval")[-1]["sample"]
    words = sample.split()
    letters = sum(c.isalpha() for c in sample)
    assert len(words) >= 10, sample
    assert letters / len(sample) >= 0.6, sample

    # round trip: a freshly constructed model from the saved files gives identical logits and text
    loaded = checkpoint_load.load_checkpoint(result.run_dir / "checkpoints" / "final")
    idx = torch.tensor([loaded.tokenizer.encode("ROMEO: Is it so?")])
    reference = Transformer(loaded.cfg.model)
    weight_loading.load_weights(reference, loaded.path / run_checkpoints.WEIGHTS)
    reference.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(idx)[0], reference(idx)[0])
    text_a = list(generate(loaded.model, idx[0].tolist(), 50, temperature=0.8, seed=3))
    text_b = list(generate(reference, idx[0].tolist(), 50, temperature=0.8, seed=3))
    assert text_a == text_b


def test_run_folder_holds_config_tokenizer_metrics_and_checkpoints(micro):
    result = train(micro(), **QUIET)
    run = result.run_dir
    for name in ("config.yaml", "tokenizer.json", "metrics.jsonl", "manifest.json"):
        assert (run / name).is_file(), name
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best", "final", "step_000020"]
    for name in names:
        folder = run / "checkpoints" / name
        assert run_checkpoints.is_complete(folder)
        assert {"model.safetensors", "config.yaml", "tokenizer.json", "trainer.pt", "info.json"} <= {
            p.name for p in folder.iterdir()
        }
    train_events, eval_events = events(result, "train"), events(result, "eval")
    assert [r["step"] for r in train_events] == list(range(2, 41, 2))
    assert {"train_loss", "lr", "tokens_per_sec", "grad_norm"} <= set(train_events[0])
    assert [r["step"] for r in eval_events] == [0, 20, 40]
    for r in eval_events:
        assert r["val_perplexity"] == pytest.approx(torch.tensor(r["val_loss"]).exp().item(), rel=1e-5)
        assert r["sample"].startswith("ROMEO:")
    best = json.loads((run / "checkpoints" / "best" / "info.json").read_text())
    assert best["val_loss"] == min(r["val_loss"] for r in eval_events[1:])
    saved = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    # auto resolved: the tokenizer's 61 characters padded to 64 rows
    assert saved.model.vocab_size == padded_vocab(load_tokenizer(run / "tokenizer.json").vocab_size) == 64


def test_resume_from_a_mid_run_checkpoint_matches_the_uninterrupted_run(micro, tmp_path):
    """Copy step 20 of a finished 40-step run to a new folder, resume: same losses, same weights."""
    cfg = micro(
        training_config={"gradient_accumulation_steps": 2, "log_every": 1}, model_config={"dropout": 0.1}
    )
    full = train(cfg, **QUIET)

    partial_dir = tmp_path / "partial"
    (partial_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(full.run_dir / "checkpoints" / "step_000020", partial_dir / "checkpoints" / "step_000020")
    lines = (full.run_dir / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= 20]
    kept += [line for line in lines if json.loads(line)["step"] > 20][:3]  # as if killed after 23
    (partial_dir / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    resumed_cfg = cfg.model_copy(deep=True)
    resumed_cfg.logging.output_dir = str(partial_dir)
    resumed = train(resumed_cfg, resume=True, **QUIET)

    def losses(result, kind, key):
        return [(r["step"], r[key]) for r in events(result, kind)]

    assert losses(resumed, "train", "train_loss") == losses(full, "train", "train_loss")
    assert losses(resumed, "eval", "val_loss") == losses(full, "eval", "val_loss")
    a = load_file(full.run_dir / "checkpoints" / "final" / "model.safetensors")
    b = load_file(partial_dir / "checkpoints" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_model_shape(micro):
    cfg = micro(training_config={"max_steps": 4, "save_every": 2, "eval_every": 2, "warmup_steps": 1})
    train(cfg, **QUIET)
    changed = cfg.model_copy(deep=True)
    changed.model.hidden_dim = 32
    with pytest.raises(UserError, match=r"model_config changed \(hidden_dim\)"):
        train(changed, resume=True, **QUIET)
    with pytest.raises(UserError, match="--resume"):
        train(cfg, **QUIET)  # would overwrite the finished run


def test_the_model_learns_the_next_token_not_the_one_after(tmp_path):
    """On a cyclic alphabet the next token is determined: greedy decoding must continue it."""
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    corpus = sources.Corpus("alphabet", [alphabet * 400])
    prepare(corpus, "char", tmp_path / "data")
    cfg = micro_config(
        tmp_path / "data",
        tmp_path / "run",
        training_config={
            "max_steps": 60,
            "eval_every": 60,
            "save_every": 60,
            "sample_tokens": 0,
            "log_every": 10,
        },
    )
    result = train(cfg, **QUIET)
    loaded = checkpoint_load.load_checkpoint(result.run_dir)
    ids = loaded.tokenizer.encode("ghij")
    out = loaded.tokenizer.decode(generate(loaded.model, ids, 6, temperature=0))
    assert out == "klmnop"


def test_lr_schedule_warmup_then_cosine_to_the_floor(micro):
    t = micro(
        training_config={"max_steps": 100, "warmup_steps": 10, "learning_rate": 1.0, "min_lr": 0.1}
    ).training
    assert lr_at(0, t) == pytest.approx(0.1)
    assert lr_at(9, t) == pytest.approx(1.0)
    assert lr_at(10, t) == pytest.approx(1.0)
    assert lr_at(55, t) == pytest.approx(0.55)
    assert lr_at(100, t) == pytest.approx(0.1) and lr_at(500, t) == pytest.approx(0.1)
    assert all(lr_at(s, t) >= lr_at(s + 1, t) for s in range(10, 120))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes(shakespeare_dir, tmp_path):
    run = tmp_path / "run"
    argv = [
        "train",
        "--preset",
        "tiny",
        "--data",
        str(shakespeare_dir),
        "--out",
        str(run),
        "--no-progress",
        "training_config.max_steps=100000",
        "training_config.eval_every=100000",
        "training_config.log_every=1",
        "model_config.hidden_dim=32",
        "model_config.num_layers=1",
        "model_config.mlp_dim=64",
        "training_config.batch_size=2",
        "training_config.warmup_steps=1",
    ]
    proc = children.Child("trickster", *argv)
    deadline = time.time() + 60
    while time.time() < deadline and '"train"' not in _read(run / "metrics.jsonl"):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    saved = run_checkpoints.latest(run)
    assert saved is not None and saved.name.startswith("step_")
    step = run_checkpoints.checkpoint_step(saved)
    assert "stopped by SIGINT" in out
    # the line says how to go on: '--resume' alone did not say to what (a quick start has none)
    said = re.search(r"continue with: trickster (train --config \S+ --resume)$", out, re.M)
    assert said, out
    more = [*shlex.split(said.group(1)), f"training_config.max_steps={step + 3}"]
    done = children.run("trickster", *more, timeout=120)
    assert done.returncode == 0, done.stderr
    assert run_checkpoints.checkpoint_step(run / "checkpoints" / "final") == step + 3


def _read(path):
    return path.read_text() if path.exists() else ""


def test_weight_decay_applies_to_matrices_only(micro):
    from trickster.train.optim import build_optimizer

    cfg = micro()
    cfg.model.vocab_size = 65
    model = Transformer(cfg.model)
    decay, no_decay = build_optimizer(model, cfg.training, torch.device("cpu")).param_groups
    assert decay["weight_decay"] == cfg.training.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("norm.weight") for p in no_decay["params"])
    assert len(no_decay["params"]) == 2 * cfg.model.num_layers + 1
    total = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())


def test_bfloat16_autocast_on_cpu_tracks_float32(micro, tmp_path):
    """Mixed precision changes rounding, not the result: losses agree to a few percent."""
    base = train(micro(training_config={"max_steps": 10, "eval_every": 10, "save_every": 10}), **QUIET)
    cfg = micro(
        training_config={"max_steps": 10, "eval_every": 10, "save_every": 10},
        device_config={"dtype": "bfloat16"},
        logging_config={"output_dir": str(tmp_path / "bf16")},
    )
    bf16 = train(cfg, **QUIET)
    for a, b in zip(events(base, "train"), events(bf16, "train"), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.03)
    weights = load_file(tmp_path / "bf16" / "checkpoints" / "final" / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())  # master weights stay fp32


def test_quiet_log_level_prints_nothing(micro, capsys, tmp_path):
    """Nor does `trickster train` add its closing 'done:' and 'next:' lines."""
    from trickster.cli import main
    from trickster.config import save_config

    cfg = micro(
        training_config={"max_steps": 4, "eval_every": 2, "warmup_steps": 1},
        logging_config={"log_level": "warning"},
    )
    save_config(cfg, tmp_path / "quiet.yaml")
    assert main(["train", "--config", str(tmp_path / "quiet.yaml")]) == 0
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "run" / "checkpoints" / "final" / "COMPLETE").is_file()  # it did train


def test_the_closing_line_says_1_step_not_1_steps(micro, capsys, tmp_path):
    """A run of one step (as a max_time spent during the first one leaves) ends `done: 1 step;`."""
    from trickster.cli import main
    from trickster.config import save_config

    cfg = micro(training_config={"max_steps": 1, "eval_every": 1, "warmup_steps": 0})
    save_config(cfg, tmp_path / "one.yaml")
    assert main(["train", "--config", str(tmp_path / "one.yaml"), "--no-progress"]) == 0
    closing = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")]
    assert len(closing) == 1 and closing[0].startswith("done: 1 step; best val loss "), closing


def test_the_header_says_what_each_evaluation_measures(micro, monkeypatch):
    """The windows the header names are the ones each evaluation runs the model over."""
    from trickster.train import loop

    seen = []

    def counting(model, batches, *args, **kwargs):
        seen.append(sum(len(x) for x, _ in batches) * batches[0][0].shape[1])
        return evaluate(model, batches, *args, **kwargs)

    evaluate = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", counting)
    lines = []
    train(micro(training_config={"max_steps": 40, "eval_every": 20}), echo=lines.append, progress=False)
    header = [line for line in lines if line.startswith("evaluation:")]
    assert header == [
        "evaluation: at step 0, every 20 steps and at the end, on the same 32 windows of 64 tokens "
        "of the val split (2,048 tokens)"
    ]
    assert seen == [2048, 2048, 2048]  # steps 0, 20 and 40


def test_a_slow_evaluation_says_how_far_it_got_once(micro, monkeypatch):
    """A first evaluation that runs long (a large model on a CPU) is not a minute of silence; a
    fast one says nothing, and neither do the evaluations after the first slow one."""
    from trickster.train.console import SlowPass

    short = {"max_steps": 4, "eval_every": 2, "warmup_steps": 1}
    lines = []
    train(micro(training_config=short), echo=lines.append, progress=False)
    assert not [line for line in lines if "evaluating" in line]

    monkeypatch.setattr(SlowPass, "AFTER_SECONDS", 0.0)
    lines = []
    cfg = micro(training_config=short)
    cfg.logging.output_dir = cfg.logging.output_dir + "-slow"
    train(cfg, echo=lines.append, progress=False)
    said = [i for i, line in enumerate(lines) if "evaluating" in line]
    assert len(said) == 1, lines
    assert re.fullmatch(r"step {6}0: evaluating: 1 of 4 batches in \d+ s, about \d+ s to go", lines[said[0]])
    assert lines[said[0] + 1].startswith("step      0: val loss ")

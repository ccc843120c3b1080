"""Fine-tuning: prompt/response data with a loss mask, and init_from (LoRA: test_lora.py)."""

from __future__ import annotations

import html
import json
import sys

import numpy as np
import pytest
import torch
import yaml

from trickster import cli, run_checkpoints
from trickster.config import config_from_dict
from trickster.data.loader import BatchSampler, load_data, split_rows, window_rows
from trickster.data.summary import NO_SEPARATOR
from trickster.model.transformer import IGNORE_INDEX, Transformer
from trickster.observe.report import build_report
from trickster.train import checkpoint_load
from trickster.train.loop import train
from trickster.train.validate import evaluate, validation_batches

from . import children
from .conftest import QUIET, events, finetune_config, write_records
from .test_tracking import HAS_TENSORBOARD, HAS_WANDB, wandb_records


def test_the_loss_mask_travels_with_the_tokens(chat_data):
    out, records = chat_data
    data = load_data(out)
    meta = data.meta
    index = json.loads((out / "index.json").read_text())
    assert meta["loss_mask"]["dtype"] == "uint8" and meta["layout"] == "shards"
    for split in ("train", "val"):  # a mask beside every shard, one byte per token
        for shard in index[split]:
            assert (out / shard["mask"]).stat().st_size == (out / shard["file"]).stat().st_size
    assert data.train.loss_mask is not None and len(data.train.loss_mask) == len(data.train)
    n_train = meta["train_records"]
    assert n_train + meta["val_records"] == len(records) and meta["val_records"] == 6
    tokens, mask = np.asarray(data.train), np.asarray(data.train.loss_mask)
    # the masked tokens are exactly the prompts, the covered ones the responses (+ end-of-text, if any)
    assert data.tokenizer.decode(tokens[mask == 0]) == "".join(r["prompt"] for r in records[:n_train])
    assert data.tokenizer.decode(tokens[mask == 1]) == "".join(r["response"] for r in records[:n_train])
    assert meta["train_loss_tokens"] == int(mask.sum())

    # windows: the targets of prompt tokens are IGNORE_INDEX, every other target is the next token
    starts = torch.tensor([0, 7, 100, len(tokens) - 33])
    x, y = split_rows(window_rows(data.train, starts, 32), 32)
    for row, s in enumerate(starts.tolist()):
        assert x[row].tolist() == tokens[s : s + 32].tolist()
        want = [
            t if m else IGNORE_INDEX
            for t, m in zip(tokens[s + 1 : s + 33], mask[s + 1 : s + 33], strict=True)
        ]
        assert y[row].tolist() == want
    assert (y == IGNORE_INDEX).any() and (y != IGNORE_INDEX).any()


def test_windows_without_any_response_are_redrawn(chat_data):
    """With 3-token windows most starts fall inside a prompt; no row may come back target-less."""
    data = load_data(chat_data[0])
    sampler = BatchSampler(data.train, seq_len=3, batch_size=16, seed=0)
    for _ in range(20):
        _, y = sampler.next_batch()
        assert (y != IGNORE_INDEX).any(dim=1).all()


def test_prompt_tokens_carry_no_gradient(chat_data):
    data = load_data(chat_data[0])
    cfg = config_from_dict(
        {"model_config": dict(vocab_size=data.tokenizer.vocab_size, hidden_dim=32, num_layers=1, num_heads=2)}
    )
    model = Transformer(cfg.model)
    x, y = BatchSampler(data.train, seq_len=48, batch_size=4, seed=1).next_batch()
    final = {}  # the final norm's output: the loss's only input from each position
    hook = model.norm.register_forward_hook(lambda module, args, out: final.update(h=out))
    _, loss = model(x, y)
    hook.remove()
    final["h"].retain_grad()
    loss.backward()
    grad = final["h"].grad.abs().sum(dim=-1)  # (B, T)
    prompt = y == IGNORE_INDEX
    assert prompt.any() and (~prompt).any()
    assert torch.all(grad[prompt] == 0)  # a prompt token as a target contributes nothing
    assert torch.all(grad[~prompt] > 0)
    with torch.no_grad():
        logits, _ = model(x)
    by_hand = torch.nn.functional.cross_entropy(logits[~prompt], y[~prompt])
    torch.testing.assert_close(loss, by_hand)


def test_init_from_starts_from_the_trained_weights(trained_run, chat_data, tmp_path):
    cfg = finetune_config(
        trained_run, chat_data[0], tmp_path / "full", max_steps=2, eval_every=2, save_every=2
    )
    result = train(cfg, **QUIET)
    base = checkpoint_load.load_checkpoint(trained_run).model
    first_eval = [r for r in result.history if r["event"] == "eval"][0]
    assert first_eval["step"] == 0
    expected = evaluate(
        base, validation_batches(load_data(chat_data[0]), cfg), torch.device("cpu"), "float32"
    )
    assert first_eval["val_loss"] == pytest.approx(expected, rel=1e-6)
    fresh = Transformer(cfg.model)  # a random model scores far worse
    assert evaluate(
        fresh, validation_batches(load_data(chat_data[0]), cfg), torch.device("cpu"), "float32"
    ) > (expected + 0.5)


def test_a_fine_tune_reads_its_init_from_checkpoint_once(trained_run, chat_data, tmp_path, monkeypatch):
    """A fresh fine-tune reads the init_from checkpoint's config.yaml and tokenizer.json once each
    (by the checkpoint's readers), and records the checkpoint it read them in. The tokenizer was
    read three times (twice to compare it with the data's, once more to load the weights) and the
    config twice: init_from names a run folder, resolved to its `best` anew each time, which the
    base run's own training may have replaced in between."""
    cfg = finetune_config(trained_run, chat_data[0], tmp_path / "ft", max_steps=2, eval_every=2, save_every=2)
    reads = []
    for name in ("read_config", "read_tokenizer"):
        real = getattr(checkpoint_load, name)
        monkeypatch.setattr(
            checkpoint_load, name, lambda path, real=real, name=name: reads.append((name, path)) or real(path)
        )
    result = train(cfg, **QUIET)
    best = trained_run / "checkpoints" / "best"
    assert sorted(name for name, path in reads if path == best) == ["read_config", "read_tokenizer"], reads
    assert events(result, "start")[0]["init_from"]["checkpoint"] == str(best.resolve())


def test_a_fine_tune_records_the_checkpoint_it_started_from(trained_run, chat_data, tmp_path, capsys):
    """init_from names a run folder; the run records what it resolved to (that run's `best`, which
    later training may replace): its absolute path, step and save time, read here from its info.json."""
    cfg = finetune_config(trained_run, chat_data[0], tmp_path / "ft", max_steps=2, eval_every=2, save_every=2)
    result = train(cfg, **QUIET)
    best = trained_run.resolve() / "checkpoints" / "best"
    best_info = json.loads((best / "info.json").read_text())
    want = {"checkpoint": str(best), "step": best_info["step"], "saved": best_info["saved"]}
    assert events(result, "start")[0]["init_from"] == want
    final_info = json.loads((result.run_dir / "checkpoints" / "final" / "info.json").read_text())
    assert final_info["init_from"] == want
    assert events(trained_run, "start")[0]["init_from"] is None  # trained from scratch
    assert run_checkpoints.read_info(trained_run / "checkpoints" / "final").get("init_from") is None

    assert cli.main(["info", "--checkpoint", str(result.run_dir)]) == 0
    assert f"fine-tuned from {best} (step {want['step']}, saved {want['saved']})" in capsys.readouterr().out
    assert f"fine-tuned from {best} (step {want['step']})" in build_report(result.run_dir)


def test_records_without_an_end_of_text_id_are_said_to_run_together(trained_run, tmp_path, capsys):
    """The trained run's char tokenizer (one document, no end-of-text id) joins the records back to
    back: data prepare says so. A tokenizer built from the records has the id, and no note."""
    write_records(tmp_path / "chat.jsonl", count=10)
    argv = ["data", "prepare", "jsonl", str(tmp_path / "chat.jsonl"), "--workers", "1"]
    assert cli.main([*argv, "--tokenizer-from", str(trained_run), "--out", str(tmp_path / "a")]) == 0
    assert NO_SEPARATOR in capsys.readouterr().out
    assert cli.main([*argv, "--tokenizer", "char", "--out", str(tmp_path / "b")]) == 0
    assert NO_SEPARATOR not in capsys.readouterr().out


def test_a_fine_tunes_samples_continue_a_prompt_of_the_records_unless_the_user_set_one(
    trained_run, chat_data, tmp_path, capsys, monkeypatch
):
    """Started from the base run's config.yaml (sample prompt ROMEO:, which the records never
    wrote), the samples a fine-tune prints and logs continue a prompt of the validation records,
    and its config.yaml says so; a sample prompt given on the command line still wins. `next:`
    offers the prompt the samples continue, pasteable as it is: it offered one of the records'
    even when the user had set ROMEO:, which the llama.cpp line after an export offers. The prompt
    is found once a run (each search reads up to 1M mask tokens): the samples and `next:` share it
    (it was found twice, by setup.open_run and by Trainer.result)."""
    from trickster.config import load_config
    from trickster.data import record_prompts

    from .test_cli import words_bash_reads

    found, real = [], record_prompts.record_prompt

    def counted(data):
        found.append(real(data))
        return found[-1]

    for module in list(sys.modules.values()):  # each caller imported it by name, or asks the module
        if module.__name__.startswith("trickster") and getattr(module, "record_prompt", None) is real:
            monkeypatch.setattr(module, "record_prompt", counted)
    data, records = chat_data
    val_prompts = [r["prompt"] for r in records[-len(records) // 10 :]]
    assert load_config(trained_run / "config.yaml").training.sample_prompt == "ROMEO:"
    settings = {"max_steps": 2, "warmup_steps": 1, "eval_every": 2, "save_every": 2, "seq_len": 48}
    argv = ["train", "--config", str(trained_run / "config.yaml"), "--data", str(data), "--no-progress"]
    argv += [f"training_config.{key}={value}" for key, value in settings.items()]
    argv += [f"training_config.init_from={trained_run}", "training_config.sample_tokens=3"]

    assert cli.main([*argv, "--out", str(tmp_path / "ft")]) == 0
    out = capsys.readouterr().out
    printed = [line for line in out.splitlines() if line.startswith("  sample: ")]
    samples = [e["sample"] for e in events(tmp_path / "ft", "eval")]
    assert len(samples) == len(printed) == 2  # steps 0 and 2
    prompt = load_config(tmp_path / "ft" / "config.yaml").training.sample_prompt
    assert prompt in val_prompts
    assert found == [prompt]  # once, for the samples and the hint
    next_line = out.splitlines()[-1].removeprefix("next: ")
    assert words_bash_reads(next_line) == ["trickster", "generate", str(tmp_path / "ft"), "--prompt", prompt]
    assert all(sample.startswith(prompt) and len(sample) > len(prompt) for sample in samples)
    first_line = prompt.split("\n")[0]
    assert all(line.startswith("  sample: " + first_line) for line in printed)

    assert cli.main([*argv, "--out", str(tmp_path / "mine"), "training_config.sample_prompt=ROMEO:"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"{tmp_path / 'mine'} --prompt ROMEO:")
    samples = [e["sample"] for e in events(tmp_path / "mine", "eval")]
    assert len(samples) == 2 and all(sample.startswith("ROMEO:") for sample in samples)
    assert load_config(tmp_path / "mine" / "config.yaml").training.sample_prompt == "ROMEO:"


@pytest.mark.skipif(not (HAS_WANDB and HAS_TENSORBOARD), reason="needs wandb and tensorboard")
def test_what_a_fine_tune_records_of_its_config_is_what_it_samples_with(
    trained_run, chat_data, tmp_path, capsys, monkeypatch
):
    """W&B's run config, TensorBoard's run/config text, config.yaml and the report page all say
    the sample prompt the fine-tune's samples continue (a prompt of the records): W&B and
    TensorBoard showed the base model's ROMEO:, the config as given before the run fitted it.
    Resumed by the command that started it (the base model's config.yaml again), the samples
    keep that prompt, where they went back to ROMEO:."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trickster.config import load_config

    for name in ("DIR", "CONFIG_DIR", "CACHE_DIR", "DATA_DIR"):
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / f"wandb-{name.lower()}"))
    monkeypatch.setenv("WANDB_MODE", "offline")  # nothing is sent
    monkeypatch.setenv("WANDB_SILENT", "true")
    data, _ = chat_data
    run = tmp_path / "ft"
    argv = ["train", "--config", str(trained_run / "config.yaml"), "--data", str(data), "--no-progress"]
    argv += ["--out", str(run), f"training_config.init_from={trained_run}", "training_config.sample_tokens=3"]
    settings = {"warmup_steps": 1, "eval_every": 2, "save_every": 2, "seq_len": 48}
    argv += [f"training_config.{key}={value}" for key, value in settings.items()]
    tracked = ["logging_config.use_wandb=true", "logging_config.tensorboard=true"]

    assert cli.main([*argv, *tracked, "training_config.max_steps=2"]) == 0
    prompt = load_config(run / "config.yaml").training.sample_prompt
    assert prompt != "ROMEO:" and all(e["sample"].startswith(prompt) for e in events(run, "eval"))
    (offline,) = run.glob("wandb/offline-run-*/run-*.wandb")
    config = {}
    for record in wandb_records(offline):
        if record.HasField("run") or record.HasField("config"):
            updates = record.run.config.update if record.HasField("run") else record.config.update
            config.update({u.key: json.loads(u.value_json) for u in updates})
    assert config["training_config"]["sample_prompt"] == prompt
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    (text,) = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("run/config/text_summary")]
    shown = "\n".join(line.removeprefix("    ") for line in text.splitlines())
    assert yaml.safe_load(shown)["training_config"]["sample_prompt"] == prompt
    assert html.escape(prompt.split("\n")[0]) in build_report(run).split("sample_prompt")[1][:200]

    capsys.readouterr()
    assert cli.main([*argv, "training_config.max_steps=4", "--resume"]) == 0
    assert "training_config.sample_prompt" not in capsys.readouterr().out  # not said to have changed
    assert load_config(run / "config.yaml").training.sample_prompt == prompt
    samples = [e["sample"] for e in events(run, "eval")]
    assert len(samples) == 3 and all(sample.startswith(prompt) for sample in samples)  # steps 0, 2, 4


def test_a_fine_tune_killed_before_its_first_checkpoint_is_sent_to_the_command_that_starts_it_again(
    trained_run, chat_data, tmp_path, capsys
):
    """A fine-tune shorter than save_every (the guide's: 300 steps, tiny's save_every 500) saves
    only at its end; killed before, it leaves a run folder without a checkpoint. The same command
    again was refused with 'pass --resume to continue a run there', and --resume then found nothing
    to resume: the line names resume=auto, which starts it afresh there."""
    out = tmp_path / "ft"
    settings = {"max_steps": 6, "warmup_steps": 1, "eval_every": 3, "save_every": 100, "seq_len": 48}
    argv = ["train", "--config", str(trained_run / "config.yaml"), "--data", str(chat_data[0])]
    argv += [f"training_config.{key}={value}" for key, value in settings.items()]
    argv += [f"training_config.init_from={trained_run}", "--out", str(out), "--no-progress"]
    killed = children.run("tests.crash_child", "before-batch", "5", *argv)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert events(out, "start") and not list((out / "checkpoints").iterdir())

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "saved no checkpoint to continue from" in err and "training_config.resume=auto" in err
    assert cli.main([*argv, "--resume"]) == 2  # nothing to resume, as the old line's fix met
    assert cli.main([*argv, "training_config.resume=auto"]) == 0
    assert run_checkpoints.read_info(out / "checkpoints" / "final")["step"] == 6
    assert len(events(out, "start")) == 1  # afresh: the killed start's events are gone


def test_a_fine_tune_without_out_is_sent_to_a_folder_of_its_own(trained_run, chat_data, capsys):
    """Started from the base run's config.yaml, whose output_dir is the base run itself, a fine-tune
    without --out was told 'pass --resume to continue it': that resumes the base run instead."""
    before = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    argv = ["train", "--config", str(trained_run / "config.yaml"), "--data", str(chat_data[0])]
    assert cli.main([*argv, f"training_config.init_from={trained_run}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"is in {trained_run}, the folder this fine-tune would write" in err and "--out runs/NAME" in err
    assert "--resume" not in err
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == before

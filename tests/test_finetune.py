"""Fine-tuning: prompt/response data with a loss mask, init_from, and LoRA merged on export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trickster import cli
from trickster.config import config_from_dict
from trickster.data.loader import IGNORE_INDEX, BatchSampler, load_data, windows
from trickster.model import lora
from trickster.model.transformer import Transformer
from trickster.train import checkpoint as ckpt
from trickster.train.loop import train
from trickster.train.validate import evaluate, validation_batches

from .conftest import EXCERPT, micro_config

QUIET = {"echo": lambda *a: None}


def write_records(path, count=60):
    """Prompt: a line of the excerpt; response: the line after it (only the excerpt's characters)."""
    lines = [line for line in EXCERPT.read_text().splitlines() if line.strip()]
    records = [{"prompt": lines[i] + "\n", "response": lines[i + 1] + "\n"} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


@pytest.fixture(scope="module")
def base_run(shakespeare_dir, tmp_path_factory):
    """A micro char model pre-trained 20 steps on the excerpt: what we fine-tune."""
    run = tmp_path_factory.mktemp("base") / "run"
    cfg = micro_config(
        shakespeare_dir, run, training_config={"max_steps": 20, "eval_every": 20, "save_every": 20}
    )
    train(cfg, **QUIET)
    return run


@pytest.fixture(scope="module")
def chat_data(base_run, tmp_path_factory):
    """The records prepared with the base model's tokenizer."""
    folder = tmp_path_factory.mktemp("chat")
    records = write_records(folder / "chat.jsonl")
    out = folder / "data"
    argv = ["data", "prepare", "jsonl", str(folder / "chat.jsonl"), "--format", "prompt-response"]
    assert cli.main([*argv, "--tokenizer-from", str(base_run), "--out", str(out)]) == 0
    return out, records


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
    x, y = windows(data.train, starts, 32)
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


def finetune_config(base_run, data_dir, run_dir, **training):
    """The base run's own config (same model), pointed at new data, a new folder and init_from."""
    cfg = ckpt.read_config(ckpt.resolve(base_run))
    cfg.data.path = str(data_dir)
    cfg.logging.output_dir = str(run_dir)
    values = {"max_steps": 10, "warmup_steps": 1, "eval_every": 10, "save_every": 5, "log_every": 1}
    values.update({"seq_len": 48, "sample_tokens": 0, "init_from": str(base_run), **training})
    return config_from_dict(
        {**cfg.to_dict(), "training_config": {**cfg.to_dict()["training_config"], **values}}
    )


def test_init_from_starts_from_the_trained_weights(base_run, chat_data, tmp_path):
    cfg = finetune_config(base_run, chat_data[0], tmp_path / "full", max_steps=2, eval_every=2, save_every=2)
    result = train(cfg, **QUIET)
    base = ckpt.load_checkpoint(base_run).model
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


def test_lora_trains_only_adapters_and_the_merged_export_equals_the_adapted_model(
    base_run, chat_data, tmp_path
):
    lora_cfg = {"rank": 4, "alpha": 8, "targets": ["wq", "v_proj", "w2"]}
    cfg = finetune_config(base_run, chat_data[0], tmp_path / "lora", learning_rate=1e-2, lora=lora_cfg)
    result = train(cfg, **QUIET)
    final = result.run_dir / "checkpoints" / "final"

    # the base weights did not move; the adapters did
    base = load_file(ckpt.resolve(base_run) / ckpt.WEIGHTS)
    after = load_file(final / ckpt.WEIGHTS)
    assert base.keys() == after.keys() and all(torch.equal(base[k], after[k]) for k in base)
    adapters = load_file(final / lora.ADAPTERS)
    assert len(adapters) == 2 * 3 * cfg.model.num_layers
    assert all(k.rsplit(".", 2)[-2] in ("wq", "wv", "w2") for k in adapters)
    assert all(adapters[k].abs().sum() > 0 for k in adapters if k.endswith("lora_b"))

    # the adapted model as trained: base weights + adapters
    adapted = Transformer(cfg.model)
    lora.apply_lora(adapted, cfg.training.lora)
    ckpt.load_weights(adapted, final / ckpt.WEIGHTS)
    adapted.eval()
    merged = ckpt.load_checkpoint(final).model  # load_checkpoint merges
    assert not any(isinstance(m, lora.LoRALinear) for m in merged.modules())
    idx = torch.tensor([load_data(chat_data[0]).tokenizer.encode("ROMEO:\nIs it so?")])
    with torch.no_grad():
        want = adapted(idx)[0]
        torch.testing.assert_close(merged(idx)[0], want)
        assert not torch.allclose(ckpt.load_checkpoint(base_run).model(idx)[0], want, atol=1e-3)

    # ... and so is the Hugging Face export
    from transformers import AutoModelForCausalLM

    assert cli.main(["export", str(final), "--out", str(tmp_path / "hf")]) == 0
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, want)

    # resuming a LoRA run from step 5 ends with the same adapters as the uninterrupted run
    partial = tmp_path / "partial"
    (partial / "checkpoints").mkdir(parents=True)
    shutil.copytree(result.run_dir / "checkpoints" / "step_000005", partial / "checkpoints" / "step_000005")
    resumed_cfg = cfg.model_copy(deep=True)
    resumed_cfg.logging.output_dir = str(partial)
    train(resumed_cfg, resume=True, **QUIET)
    again = load_file(partial / "checkpoints" / "final" / lora.ADAPTERS)
    assert all(torch.equal(again[k], adapters[k]) for k in adapters)

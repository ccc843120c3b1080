"""LoRA: adapters on a finished model's linear layers, trained alone, merged for generation and export."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from trickster import cli, run_checkpoints
from trickster.config import LoraConfig, ModelConfig
from trickster.data.loader import load_data
from trickster.model import lora
from trickster.model.flops import flops_per_token
from trickster.model.transformer import Transformer
from trickster.train import checkpoint_load, checkpoint_path, weight_loading
from trickster.train.loop import train

from .conftest import QUIET, counted_flops_per_token, events, finetune_config


def small_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=40, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_seq_len=24)
    return Transformer(cfg)


def test_hugging_face_names_mean_our_layers():
    cfg = LoraConfig(targets=["q_proj", "wk", "v_proj", "gate_proj", "up_proj", "down_proj", "o_proj"])
    assert lora.target_names(cfg) == sorted(lora.TARGETS)
    assert set(lora.HF_NAMES.values()) == set(lora.TARGETS)


def test_each_hugging_face_target_adapts_the_layer_the_export_gives_that_name():
    """gate_proj, up_proj, ... as the Hugging Face export names our weights (export/hf.py TO_HF)."""
    from trickster.export.hf import TO_HF, rename

    for hf_name in lora.HF_NAMES:
        model = small_model()
        lora.apply_lora(model, LoraConfig(rank=2, targets=[hf_name]))
        adapted = sorted(
            name.removesuffix(".lora_a") + ".weight"
            for name, _ in model.named_parameters()
            if name.endswith("lora_a")
        )
        assert len(adapted) == 2  # the layer of each of the two blocks
        assert all(rename(name, TO_HF).endswith(f".{hf_name}.weight") for name in adapted), (hf_name, adapted)


def test_an_adapter_adds_alpha_over_rank_times_b_a_and_merging_folds_in_the_same():
    """y = x W^T + (alpha / rank) x A^T B^T, by hand: rank 2, alpha 8, so the update counts 4 times."""
    torch.manual_seed(0)
    base = torch.nn.Linear(3, 5, bias=False)
    layer = lora.LoRALinear(base, rank=2, alpha=8)
    with torch.no_grad():
        layer.lora_a.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))  # (rank, in)
        layer.lora_b.copy_(torch.arange(10.0).reshape(5, 2))  # (out, rank)
    x = torch.tensor([[1.0, -1.0, 0.5]])
    # x A^T = [1 + 0 + 1, -1] = [2, -1]; B row i = [2i, 2i + 1], so (x A^T B^T)_i = 4i - 2i - 1 = 2i - 1
    update = torch.tensor([[2.0 * i - 1 for i in range(5)]])
    weight = base.weight.detach().clone()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ weight.T + 4 * update)
        model = torch.nn.Sequential(layer)
        lora.merge_lora(model)
        assert type(model[0]) is torch.nn.Linear and model[0].weight.requires_grad  # a plain layer again
        torch.testing.assert_close(model(x), x @ weight.T + 4 * update)  # W + 4 B A


def test_adapters_start_as_the_base_model_and_only_they_train():
    model, base = small_model(), small_model()
    count = lora.apply_lora(model, LoraConfig(rank=2, alpha=4, targets=["wq", "v_proj", "w2"]))
    # per block, rank x (in + out) for wq (32 -> 32), wv (32 -> 32) and w2 (64 -> 32); two blocks
    assert count == 2 * 2 * ((32 + 32) + (32 + 32) + (64 + 32))
    idx = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], base(idx)[0])  # B starts at zero
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(name.endswith((".lora_a", ".lora_b")) for name in trainable)
    assert len(trainable) == 2 * 3 * 2  # A and B of three layers in each of two blocks
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count


@pytest.mark.parametrize(
    ("targets", "kv_heads"),
    [(["wq", "wv"], None), (["wq", "wv"], 2), (["w2"], None), (list(lora.TARGETS), 2)],
)
def test_flops_per_token_of_a_lora_step_are_what_torch_counts(targets, kv_heads):
    """No weight gradient for the frozen model (the output projection included), and in the first
    block, whose input is the frozen embedding's output, no input gradient before the first
    adapter: with w2 alone adapted, that block's attention has no backward pass at all. A step
    costs about two thirds of full training, which the MFU once counted (1.5x too high)."""
    cfg = ModelConfig(
        vocab_size=40,
        hidden_dim=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=kv_heads,
        mlp_dim=64,
        max_seq_len=24,
    )
    lora_cfg = LoraConfig(rank=4, targets=targets)
    torch.manual_seed(0)
    model = Transformer(cfg)
    lora.apply_lora(model, lora_cfg)
    counted = counted_flops_per_token(model, batch=2, seq_len=24)
    assert flops_per_token(cfg, 24, lora_cfg) == pytest.approx(counted, rel=1e-9)


def test_lora_trains_only_adapters_and_the_merged_export_equals_the_adapted_model(
    trained_run, chat_data, tmp_path
):
    lora_cfg = {"rank": 4, "alpha": 8, "targets": ["wq", "v_proj", "w2"]}
    cfg = finetune_config(trained_run, chat_data[0], tmp_path / "lora", learning_rate=1e-2, lora=lora_cfg)
    result = train(cfg, **QUIET)
    final = result.run_dir / "checkpoints" / "final"

    # the base weights did not move; the adapters did
    base = load_file(checkpoint_path.resolve(trained_run) / run_checkpoints.WEIGHTS)
    after = load_file(final / run_checkpoints.WEIGHTS)
    assert base.keys() == after.keys() and all(torch.equal(base[k], after[k]) for k in base)
    adapters = load_file(final / lora.ADAPTERS)
    assert len(adapters) == 2 * 3 * cfg.model.num_layers
    assert all(k.rsplit(".", 2)[-2] in ("wq", "wv", "w2") for k in adapters)
    assert all(adapters[k].abs().sum() > 0 for k in adapters if k.endswith("lora_b"))

    # its MFU counts the FLOPs of a step of this LoRA model, as torch counts them
    model = Transformer(cfg.model)
    lora.apply_lora(model, cfg.training.lora)
    counted = counted_flops_per_token(model, batch=1, seq_len=cfg.seq_len)
    assert events(result, "start")[0]["flops_per_token"] == pytest.approx(counted, rel=1e-9)

    # the adapted model as trained: base weights + adapters
    adapted = Transformer(cfg.model)
    lora.apply_lora(adapted, cfg.training.lora)
    weight_loading.load_weights(adapted, final / run_checkpoints.WEIGHTS)
    adapted.eval()
    merged = checkpoint_load.load_checkpoint(final).model  # load_checkpoint merges
    assert not any(isinstance(m, lora.LoRALinear) for m in merged.modules())
    idx = torch.tensor([load_data(chat_data[0]).tokenizer.encode("ROMEO:\nIs it so?")])
    with torch.no_grad():
        want = adapted(idx)[0]
        torch.testing.assert_close(merged(idx)[0], want)
        assert not torch.allclose(checkpoint_load.load_checkpoint(trained_run).model(idx)[0], want, atol=1e-3)

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


def test_a_lora_run_resumes_after_its_init_from_source_is_gone(trained_run, chat_data, tmp_path):
    """The checkpoint holds the base weights and the adapters: resuming needs nothing else."""
    source = tmp_path / "base"
    shutil.copytree(trained_run, source)
    lora_cfg = {"rank": 2, "alpha": 4, "targets": ["wq", "w2"]}
    cfg = finetune_config(source, chat_data[0], tmp_path / "full", max_steps=4, save_every=2, lora=lora_cfg)
    train(cfg, **QUIET)
    partial = tmp_path / "partial"
    (partial / "checkpoints").mkdir(parents=True)
    step = "checkpoints/step_000002"
    shutil.copytree(tmp_path / "full" / step, partial / step)
    shutil.rmtree(source)
    resumed_cfg = cfg.model_copy(deep=True)
    resumed_cfg.logging.output_dir = str(partial)
    train(resumed_cfg, resume=True, **QUIET)
    # the resumed run still knows where its weights first came from
    origin = run_checkpoints.read_info(partial / "checkpoints" / "final")["init_from"]
    assert origin["checkpoint"] == str(source.resolve() / "checkpoints" / "best")
    for file in (run_checkpoints.WEIGHTS, lora.ADAPTERS):
        want = load_file(tmp_path / "full" / "checkpoints" / "final" / file)
        got = load_file(partial / "checkpoints" / "final" / file)
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_lora_run_counts_its_parameters_once_those_of_the_model_it_trains(
    trained_run, chat_data, tmp_path, capsys
):
    """The header's `parameters:`, the fine-tune line's total and the start event's params all
    count the model as trained: the base weights and the adapters; `info` and `plan` name the
    adapters beside the base model's count (they gave the base count alone, with a LoRA step's FLOPs)."""
    lora_cfg = {"rank": 2, "alpha": 4, "targets": ["wq", "w2"]}
    cfg = finetune_config(trained_run, chat_data[0], tmp_path / "lora", max_steps=2, lora=lora_cfg)
    lines = []
    result = train(cfg, echo=lambda *args, **kwargs: lines.append(" ".join(map(str, args))))
    model = Transformer(cfg.model)
    lora.apply_lora(model, cfg.training.lora)
    counted = sum(p.numel() for p in model.parameters())
    header = next(line for line in lines if "parameters: " in line)
    assert header.endswith(f"parameters: {counted:,}"), header
    finetune_line = next(line for line in lines if "trainable parameters of" in line)
    assert finetune_line.endswith(f"of {counted:,}"), finetune_line
    assert events(result, "start")[0]["params"] == counted
    base = sum(p.numel() for p in Transformer(cfg.model).parameters())
    capsys.readouterr()
    assert cli.main(["info", "--checkpoint", str(tmp_path / "lora")]) == 0
    described = capsys.readouterr().out.splitlines()
    assert f"{counted - base:,}" in next(line for line in described if "LoRA adapters" in line)
    assert f"{counted:,}" in next(line for line in described if "with adapters" in line)
    run_config = str(tmp_path / "lora" / "config.yaml")
    assert cli.main(["plan", "--no-bench", "--device", "cpu", "--config", run_config]) == 0
    planned = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("parameters:"))
    assert planned.startswith(f"parameters: {base:,} and {counted - base:,} in LoRA adapters"), planned

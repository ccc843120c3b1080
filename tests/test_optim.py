"""The optimizer split (Muon on the block matrices, AdamW on the rest) and its learning rates."""

from __future__ import annotations

import pytest
import torch

from trickster.config import LoraConfig, TrainingConfig
from trickster.config_help import config_keys_help
from trickster.model import lora
from trickster.model.transformer import Transformer
from trickster.train.optim import build_optimizer, lr_at, set_lr

CPU = torch.device("cpu")


def model_and_config(micro, **training):
    cfg = micro(training_config=training, model_config={"num_kv_heads": 2, "tie_embeddings": False})
    cfg.model.vocab_size = 65
    return Transformer(cfg.model), cfg


def names_by_group(model, optimizer) -> list[set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [{names[id(p)] for p in group["params"]} for group in optimizer.param_groups]


def test_muon_takes_the_block_matrices_and_adamw_the_embedding_head_and_norms(micro):
    model, cfg = model_and_config(micro, optimizer="muon", muon_lr=0.05, muon_weight_decay=0.01)
    optimizer = build_optimizer(model, cfg.training, CPU)
    muon, adamw_matrices, adamw_vectors = names_by_group(model, optimizer)
    layers = cfg.model.num_layers
    assert len(muon) == 7 * layers
    assert all(n.split(".")[-2] in ("wq", "wk", "wv", "wo", "w1", "w2", "w3") for n in muon)
    assert adamw_matrices == {"tok_embeddings.weight", "output.weight"}
    assert adamw_vectors == {n for n, _ in model.named_parameters() if n.endswith("norm.weight")}
    assert len(adamw_vectors) == 2 * layers + 1
    muon_group, decay, no_decay = optimizer.param_groups
    assert muon_group["weight_decay"] == 0.01 and muon_group["momentum"] == cfg.training.muon_momentum
    assert decay["weight_decay"] == cfg.training.weight_decay and no_decay["weight_decay"] == 0.0

    # one step moves every parameter, and each optimizer keeps its own kind of state
    idx = torch.randint(0, 65, (2, 17))
    model(idx[:, :-1], idx[:, 1:])[1].backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    state = optimizer.state
    assert set(state[model.layers[0].attention.wq.weight]) == {"momentum_buffer"}
    assert {"exp_avg", "exp_avg_sq"} <= set(state[model.tok_embeddings.weight])
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_adamw_alone_by_default(micro):
    model, cfg = model_and_config(micro)
    optimizer = build_optimizer(model, cfg.training, CPU)
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 2


def test_both_follow_one_schedule_each_from_its_own_peak(micro):
    model, cfg = model_and_config(
        micro, optimizer="muon", learning_rate=0.004, min_lr=0.0004, muon_lr=0.02, warmup_steps=5
    )
    optimizer = build_optimizer(model, cfg.training, CPU)
    for step in (0, 4, 20, cfg.training.max_steps):
        logged = set_lr(optimizer, step, cfg.training)
        assert logged == lr_at(step, cfg.training)
        muon, *adamw = [group["lr"] for group in optimizer.param_groups]
        assert adamw == [logged, logged]
        assert muon == pytest.approx(logged * 5)  # muon_lr / learning_rate
    assert muon == pytest.approx(0.002)  # the floor, scaled alike


def test_lora_adapters_train_with_adamw_even_when_muon_is_asked_for(micro):
    model, cfg = model_and_config(micro, optimizer="muon")
    lora.apply_lora(model, LoraConfig(rank=2, targets=["wq", "w2"]))
    optimizer = build_optimizer(model, cfg.training, CPU)
    assert isinstance(optimizer, torch.optim.AdamW)
    trained = set().union(*names_by_group(model, optimizer))
    assert trained and all(lora.is_adapter(n) for n in trained)


def test_the_schedule_warms_up_linearly_then_follows_a_cosine_down_to_the_floor():
    """learning_rate 0.01, min_lr 0.001, 4 warmup steps, 14 in all: values worked out by hand."""
    t = TrainingConfig(learning_rate=0.01, min_lr=0.001, warmup_steps=4, max_steps=14)
    lr = [lr_at(step, t) for step in range(20)]
    assert lr[:5] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])  # the peak from step 3 to 4
    assert lr[9] == pytest.approx(0.0055)  # half-way through the decay: half-way down to the floor
    assert lr[14:] == pytest.approx([0.001] * 6)  # the floor at max_steps and after
    assert all(a > b for a, b in zip(lr[4:14], lr[5:15], strict=True))  # decreasing
    for k in range(11):  # a cosine: as far above the mid-point k steps in as below it k steps from the end
        assert lr[4 + k] + lr[14 - k] == pytest.approx(0.011)


def test_adamw_takes_the_betas_of_the_config(micro):
    model, cfg = model_and_config(micro, betas=[0.8, 0.9])
    optimizer = build_optimizer(model, cfg.training, CPU)
    assert [group["betas"] for group in optimizer.param_groups] == [(0.8, 0.9), (0.8, 0.9)]


def newton_schulz_gain(singular_value: float, steps: int = 5) -> float:
    """Where Muon's quintic Newton-Schulz iteration (Keller Jordan's coefficients, which
    torch.optim.Muon takes) sends one singular value: on a matrix whose singular values are all
    equal, the iteration acts on that one number."""
    a, b, c = 3.4445, -4.7750, 2.0315
    s = singular_value
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


def test_muon_scales_each_update_by_sqrt_of_rows_over_cols_as_keller_jordan_and_nanochat_do(micro):
    """The update's size, worked out from the shapes alone. With a gradient whose singular values
    are all 1, Muon's first step orthogonalises G / ||G||_F (singular values 1 / sqrt(min(rows,
    cols))), so every entry of the update is lr * scale * newton_schulz_gain(...) times G's.
    `scale` is sqrt(max(1, rows / cols)) in Keller Jordan's Muon, modded-nanogpt and nanochat
    (torch.optim.Muon's adjust_lr_fn="original"); "match_rms_adamw" (Moonshot's) would give
    0.2 * sqrt(max(rows, cols)): 2.77 for both MLP matrices here, not 1.73 and 1."""
    model, cfg = model_and_config(micro, optimizer="muon", muon_lr=0.02)
    optimizer = build_optimizer(model, cfg.training, CPU)
    block = model.layers[0].feed_forward
    w1, w2 = block.w1.weight, block.w2.weight  # (mlp_dim, hidden) and (hidden, mlp_dim)
    assert w1.shape == (192, 64) and w2.shape == (64, 192)
    torch.manual_seed(0)
    for p in (w1, w2):  # a semi-orthogonal gradient: every singular value 1
        q, _ = torch.linalg.qr(torch.randn(max(p.shape), min(p.shape), dtype=torch.float64))
        p.grad = (q if p.shape[0] >= p.shape[1] else q.T).float().contiguous()
    grads = {p: p.grad.clone() for p in (w1, w2)}
    before = {p: p.detach().clone() for p in (w1, w2)}
    optimizer.step()

    gain = newton_schulz_gain(1 / 64**0.5)
    for p, scale in ((w1, (192 / 64) ** 0.5), (w2, 1.0)):
        step = before[p] - p.detach()
        expected = 0.02 * scale * gain * grads[p]
        # Newton-Schulz runs in bfloat16: within 2% of the exact step, where the other setting is 60% off
        assert step.norm().item() == pytest.approx(expected.norm().item(), rel=0.02)
        cosine = torch.nn.functional.cosine_similarity(step.flatten(), expected.flatten(), dim=0)
        assert cosine.item() > 0.999
    # what stays whatever the iteration does: both matrices have 64 singular values alike
    ratio = (before[w1] - w1.detach()).norm() / (before[w2] - w2.detach()).norm()
    assert ratio.item() == pytest.approx(3**0.5, rel=0.02)


def test_train_help_describes_the_warmup_and_the_accumulation_the_loop_runs():
    """`trickster train --help` said the warmup starts from 0 and accumulated gradients are summed;
    the first step runs at learning_rate / warmup_steps (nanoGPT's shape), and the loop divides each
    micro-batch's loss by their number: the mean gradient, so the learning rate needs no rescaling."""
    t = TrainingConfig(learning_rate=0.01, min_lr=0.001, warmup_steps=4, max_steps=14)
    assert lr_at(0, t) == pytest.approx(0.01 / 4)
    listed = " ".join(config_keys_help(width=10_000).split())
    assert "linear warmup, from learning_rate / warmup_steps at the first step to learning_rate" in listed
    assert "Micro-batches whose gradients are averaged before each optimizer step" in listed
    assert "training_config.batch_size [16]: Windows per micro-batch in each process" in listed

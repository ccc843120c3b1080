"""`trickster plan`: the memory formula against what autograd and AdamW really hold, the advice
when a run does not fit, and the measured time estimate against a real run."""

from __future__ import annotations

import contextlib
import functools
import re
import statistics
import time

import pytest
import torch

from trickster import footprint, plan, plan_benchmark
from trickster.cli import main
from trickster.config import config_from_dict, load_config, save_config
from trickster.errors import UserError
from trickster.model import lora
from trickster.model.flops import flops_per_token, parameter_breakdown
from trickster.model.transformer import Transformer
from trickster.presets import preset_names
from trickster.train import device as device_module
from trickster.train.loop import train
from trickster.train.optim import build_optimizer

from .conftest import QUIET, counted_flops_per_token, micro_config

GiB = 1024**3
CPU_DEVICE = torch.device("cpu")


def saved_activation_bytes(cfg, batch: int, seq_len: int) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass (weights left out)."""
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    fixed = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in fixed:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    idx = torch.randint(0, cfg.model.vocab_size, (batch, seq_len + 1))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx[:, :-1], idx[:, 1:])
    return sum(saved.values())


@pytest.mark.parametrize(
    "model",
    [
        {"hidden_dim": 64, "num_layers": 2, "num_heads": 4, "mlp_dim": 192, "vocab_size": 65},
        {
            "hidden_dim": 128,
            "num_layers": 3,
            "num_heads": 4,
            "num_kv_heads": 2,
            "mlp_dim": 448,
            "vocab_size": 96,
        },
        {"hidden_dim": 96, "num_layers": 1, "num_heads": 2, "mlp_dim": 256, "vocab_size": 300},
    ],
    ids=["micro", "gqa", "wide-vocab"],
)
def test_activation_formula_matches_the_tensors_autograd_saves(model):
    cfg = config_from_dict({"model_config": {**model, "max_seq_len": 64}})
    measured = saved_activation_bytes(cfg, batch=4, seq_len=64)
    formula = footprint.activation_bytes(cfg, tokens=4 * 64)
    assert abs(formula - measured) / measured < 0.01, (formula, measured)


def saved_bfloat16_bytes(model_config: dict, fsdp: bool, checkpointing: bool, tokens: tuple[int, int]) -> int:
    """Bytes autograd saves in one bfloat16 autocast forward pass, under FSDP2 on a one-process
    group or not. Weights and autocast's copies of them are left out (the plan counts those apart)."""
    from trickster.train import dist
    from trickster.train.device import autocast_for

    device = {"device": "cpu", "dtype": "bfloat16", "enable_fsdp": fsdp}
    cfg = config_from_dict({"model_config": model_config, "device_config": device})
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    model.checkpoint_activations = checkpointing
    weights = {tuple(p.shape) for p in model.parameters()}
    weights |= {shape[::-1] for shape in weights}  # a linear keeps its bfloat16 weight transposed
    job = dist.setup(cfg.device, "cpu") if fsdp else None
    step = dist.parallelize(model, job, CPU_DEVICE) if fsdp else model
    saved = {}

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter) and tuple(tensor.shape) not in weights:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    idx = torch.randint(0, cfg.model.vocab_size, (tokens[0], tokens[1] + 1))
    try:
        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            autocast_for(CPU_DEVICE, "bfloat16"),
        ):
            step(idx[:, :-1], idx[:, 1:])
    finally:
        if fsdp:
            dist.shutdown()
    return sum(saved.values())


@pytest.mark.parametrize("fsdp", [False, True], ids=["autocast", "fsdp2"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["all-kept", "recomputed"])
def test_bfloat16_activation_formula_matches_the_tensors_autograd_saves(fsdp, checkpointing):
    """Under FSDP2 with bfloat16 the residual stream is bfloat16 (the weights are gathered so);
    under plain autocast it is float32 and each projection casts its input anew. With activation
    checkpointing the peak is what the forward keeps plus one block recomputed in the backward:
    that block is measured as the difference between the model and the model one block shorter.
    Bytes per token are the slope between 3 and 6 windows of 40 tokens (what does not grow with the
    batch, such as the rotary tables, drops out; 120 and 240 rows match no weight's shape)."""
    model = {"vocab_size": 96, "hidden_dim": 128, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2}
    model |= {"mlp_dim": 384, "max_seq_len": 64}

    def measured(windows: int) -> int:
        kept = saved_bfloat16_bytes(model, fsdp, checkpointing, (windows, 40))
        if checkpointing:
            whole = saved_bfloat16_bytes(model, fsdp, False, (windows, 40))
            kept += whole - saved_bfloat16_bytes({**model, "num_layers": 2}, fsdp, False, (windows, 40))
        return kept

    per_token = (measured(6) - measured(3)) / (3 * 40)
    device = {"dtype": "bfloat16", "enable_fsdp": fsdp, "activation_checkpointing": checkpointing}
    cfg = config_from_dict({"model_config": model, "device_config": device})
    formula = footprint.activation_bytes_per_token(cfg)
    assert abs(formula - per_token) / per_token < 0.01, (formula, per_token)


def one_real_step(model, cfg):
    """A forward, backward and optimizer step on a batch of 2 x 16 tokens; returns the optimizer."""
    optimizer = build_optimizer(model, cfg.training, CPU_DEVICE)
    idx = torch.randint(0, 65, (2, 17))
    model(idx[:, :-1], idx[:, 1:])[1].backward()
    optimizer.step()
    return optimizer


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_weights_gradients_and_optimizer_state_match_a_real_step(optimizer):
    cfg = config_from_dict(
        {
            "model_config": {
                "hidden_dim": 64,
                "num_layers": 2,
                "num_heads": 4,
                "num_kv_heads": 2,
                "mlp_dim": 192,
                "vocab_size": 65,
            },
            "training_config": {"optimizer": optimizer},
        }
    )
    model = Transformer(cfg.model)
    optimizer = one_real_step(model, cfg)
    memory = footprint.memory_estimate(cfg)
    assert memory.weights == sum(p.numel() * p.element_size() for p in model.parameters())
    assert memory.gradients == sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    moments = [
        t
        for s in optimizer.state.values()
        for k, t in s.items()
        if k in ("exp_avg", "exp_avg_sq", "momentum_buffer")
    ]
    assert memory.optimizer == sum(t.numel() * t.element_size() for t in moments)
    assert memory.logits == 3 * 16 * 512 * 65 * 4  # the default micro-batch, 16 x 512 tokens: one chunk
    gpt2 = footprint.memory_estimate(load_config(preset="gpt2-small"))
    assert gpt2.logits <= 3 * 2**25 * 4  # a chunk, not 16 x 1024 x 50,304 float32 logits twice (6.6 GB)


def test_a_run_that_does_not_fit_gets_a_batch_that_does(monkeypatch):
    monkeypatch.setattr(footprint, "device_memory", lambda device: (1 * GiB, "RAM"))
    cfg = load_config(preset="nano")
    result = plan.make_plan(cfg, torch.device("cpu"), measure=False)
    assert not result.fits and len(result.advice) == 1
    text = plan.format_plan(result)
    assert "DOES NOT FIT" in text and "to fit: lower the micro-batch" in text
    batch = int(text.split("training_config.batch_size=")[1].split()[0])
    accumulation = int(text.split("training_config.gradient_accumulation_steps=")[1].split()[0])
    usable = footprint.HEADROOM * GiB
    assert footprint.memory_estimate(cfg, batch_size=batch).total <= usable
    assert footprint.memory_estimate(cfg, batch_size=batch + 1).total > usable
    assert batch * accumulation >= cfg.training.batch_size


def test_a_run_fits_only_with_a_tenth_of_the_memory_to_spare(monkeypatch):
    """The plan leaves 10% of the memory free for what its formula leaves out (the allocator's
    cache, the CUDA context): a step needing 85% of the RAM fits, one needing 95% does not. The
    figure is the documented one (docs/long-runs.md, watching.md), written out, not HEADROOM."""
    cfg = load_config(preset="nano")
    need = footprint.memory_estimate(cfg).total
    for share, fits in [(0.85, True), (0.95, False)]:
        ram = int(need / share)
        monkeypatch.setattr(footprint, "device_memory", lambda device, ram=ram: (ram, "RAM"))
        planned = plan.make_plan(cfg, torch.device("cpu"), measure=False)
        assert planned.fits == fits, share
        assert "(90% of " in plan.format_plan(planned)


def test_a_model_whose_state_alone_does_not_fit_is_told_to_shrink(monkeypatch):
    monkeypatch.setattr(footprint, "device_memory", lambda device: (16 * GiB, "RAM"))
    result = plan.make_plan(load_config(preset="mega"), torch.device("cpu"), measure=False)
    assert result.memory.least > footprint.HEADROOM * 16 * GiB  # 1.1B parameters x 16 bytes and more
    (advice,) = result.advice
    assert "weights, gradients and AdamW state alone need" in advice
    suggested = advice.split("such as preset ")[1].split(",")[0]
    budget = footprint.HEADROOM * 16 * GiB

    def preset(name):
        cfg = load_config(preset=name)
        cfg.model.vocab_size = 256 if cfg.model.vocab_size == "auto" else cfg.model.vocab_size
        return cfg, parameter_breakdown(cfg.model).total

    def total(name):
        return footprint.memory_estimate(preset(name)[0]).total

    assert total(suggested) <= budget  # the suggestion fits, and no larger preset below mega does
    between = [n for n in preset_names() if preset(suggested)[1] < preset(n)[1] < preset("mega")[1]]
    assert all(total(n) > budget for n in between)  # (gpt2-small, the next below mega, now fits)


def test_time_estimate_is_measured_and_close_to_a_real_run(micro):
    cfg = micro(training_config={"max_steps": 12, "warmup_steps": 2, "log_every": 2, "eval_every": 12})
    ratios, sizes = [], []
    for attempt in range(3):  # a neighbour test's burst on the 2 shared cores can skew one pair
        estimate = plan.make_plan(cfg, torch.device("cpu"))
        bench = estimate.bench
        # the micro model itself, unless contention made its steps too slow to time in 10 s
        sizes.append((bench.layers, bench.batch_size, bench.seq_len))
        cfg.logging.output_dir += str(attempt)
        trained = train(cfg, **QUIET)
        real = statistics.median([r["tokens_per_sec"] for r in trained.history if r["event"] == "train"][1:])
        ratios.append(bench.tokens_per_sec / real)
        if 0.25 < ratios[-1] < 4 and sizes[-1] == (2, 8, 64):
            break
    assert sizes[-1] == (2, 8, 64) and 0.25 < ratios[-1] < 4, (sizes, ratios)
    tokens = 1_000_000
    fpt = flops_per_token(estimate.cfg.model, cfg.seq_len)
    assert estimate.seconds(tokens) == pytest.approx(tokens * fpt / bench.flops_per_sec)


def test_plan_command_prints_the_figures(shakespeare_dir, tmp_path, capsys, monkeypatch):
    # time enough for the benchmark on a loaded machine (10 s left one 0.6 s step "too long to
    # time" at a load of 10 on 2 cores): this test reads the figures, not the time limit
    timed_for_longer = functools.partial(plan_benchmark.benchmark, seconds=60.0)
    monkeypatch.setattr(plan, "benchmark", timed_for_longer)
    config = tmp_path / "micro.yaml"
    save_config(micro_config(shakespeare_dir, tmp_path / "run"), config)
    assert main(["plan", "--config", str(config), "--tokens", "2.5M", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    cfg = micro_config(shakespeare_dir, tmp_path / "run")
    # auto: its data's vocabulary (data_config.path is prepared; test_plan_data checks the figure)
    cfg.model.vocab_size = int(re.search(r"^model: .*, vocab (\d+)$", out, re.M).group(1))
    params = parameter_breakdown(cfg.model).total
    assert f"parameters: {params:,}" in out and f"data: {shakespeare_dir} (data_config.path)" in out
    assert "compute-optimal (~20 per parameter)" in out and f"{20 * params:,}" in out
    assert "--tokens" in out and "2,500,000" in out
    assert "fits:" in out and "time (estimate): the model, batch 8 x 64, " in out
    assert "(formula in trickster/footprint.py)" in out and "AdamW state (2 x float32)" in out
    assert not (tmp_path / "run").exists()  # planning trains nothing


def test_the_plan_names_the_optimizer_whose_state_it_counts():
    """tiny trains with Muon: one momentum per block matrix, not AdamW's two moments."""
    tiny = plan.make_plan(load_config(preset="tiny"), torch.device("cpu"), measure=False)
    text = plan.format_plan(tiny)
    assert re.search(rf"^  Muon \+ AdamW state +{plan._gib(tiny.memory.optimizer)}$", text, re.M), text
    assert "AdamW state (2 x float32)" not in text


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("5000000", 5_000_000), ("5M", 5_000_000), ("2.5b", 2_500_000_000), ("2e9", 2 * 10**9)],
)
def test_token_budgets_read_like_people_write_them(text, tokens):
    assert plan.parse_tokens(text) == tokens


@pytest.mark.parametrize("text", ["lots", "-5", "0", "5X", ""])
def test_a_bad_token_budget_is_refused(text):
    with pytest.raises(UserError, match="--tokens must be a positive number"):
        plan.parse_tokens(text)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_lora_run_keeps_gradients_and_optimizer_state_for_the_adapters_only(optimizer):
    lora_cfg = {"rank": 4, "targets": ["wq", "v_proj", "w2"]}
    model_cfg = {"hidden_dim": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "mlp_dim": 192}
    cfg = config_from_dict(
        {
            "model_config": {**model_cfg, "vocab_size": 65, "tie_embeddings": False},
            "training_config": {"optimizer": optimizer, "init_from": "runs/base", "lora": lora_cfg},
        }
    )
    model = Transformer(cfg.model)
    lora.apply_lora(model, cfg.training.lora)
    optimizer = one_real_step(model, cfg)
    memory = footprint.memory_estimate(cfg)
    assert memory.weights == sum(p.numel() * p.element_size() for p in model.parameters())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert memory.gradients == sum(g.numel() * g.element_size() for g in grads)
    moments = [t for s in optimizer.state.values() for t in s.values() if t.ndim > 0]
    assert memory.optimizer == sum(t.numel() * t.element_size() for t in moments)
    assert model.output.weight.grad is None and memory.loss_gradient == 0  # the frozen output


def test_a_lora_run_is_counted_and_timed_as_a_lora_step(micro, monkeypatch):
    """A LoRA step computes no gradients for the frozen weights: the plan counts that step's FLOPs
    (as torch counts them), and its benchmark times the copy with the run's adapters. Counted and
    timed as full training, the time estimate came out about 1.5x too long."""
    built = []
    build_optimizer = plan_benchmark.build_optimizer
    monkeypatch.setattr(
        plan_benchmark,
        "build_optimizer",
        lambda model, *args: built.append(model) or build_optimizer(model, *args),
    )
    lora_cfg = {"rank": 4, "targets": ["wq", "wv"]}
    cfg = micro(model_config={"vocab_size": 65}, training_config={"init_from": "runs/base", "lora": lora_cfg})
    estimate = plan.make_plan(cfg, CPU_DEVICE, measure=False)
    with contextlib.suppress(plan_benchmark.BenchSkipped):  # (if this machine is too busy to time anything)
        estimate.bench = plan_benchmark.benchmark(cfg, CPU_DEVICE, seconds=2)
    (model,) = built  # micro has 2 layers: the benchmark's copy is the whole model
    assert any(isinstance(m, lora.LoRALinear) for m in model.modules())
    counted = counted_flops_per_token(model, batch=1, seq_len=cfg.seq_len)
    assert estimate.flops_per_token == pytest.approx(counted, rel=1e-9)
    if estimate.bench is not None:
        bench = estimate.bench
        assert bench.flops_per_token == pytest.approx(
            counted_flops_per_token(model, 1, bench.seq_len), rel=1e-9
        )
        assert estimate.seconds(10**6) == pytest.approx(10**6 * counted / bench.flops_per_sec)


@pytest.mark.parametrize("adapted", [True, False], ids=["lora", "full"])
def test_a_fine_tune_is_planned_without_a_compute_optimal_budget(micro, adapted):
    """~20 tokens per parameter is the budget of a model trained from scratch: a fine-tune's model
    is trained already. Its plan says instead what the fine-tune trains (the adapters: as many as
    the parameters that still take gradients once the adapters are on)."""
    training = {"init_from": "runs/base"}
    if adapted:
        training["lora"] = {"rank": 4, "targets": ["wq", "wv"]}
    estimate = plan.make_plan(micro(training_config=training), CPU_DEVICE, measure=False)
    text = plan.format_plan(estimate)
    model = Transformer(estimate.cfg.model)
    if adapted:
        lora.apply_lora(model, estimate.cfg.training.lora)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert f"trains {trained:,} parameters, its LoRA adapters (rank 4 on wq, wv)" in text, text
    else:
        assert f"trains all {sum(p.numel() for p in model.parameters()):,} parameters" in text, text
    assert "compute-optimal (" not in text and not re.search(r"\([0-9.,]+ per parameter", text), text
    assert "this config (40 steps x 512)" in text


def test_a_cpu_times_a_lora_copy_whose_real_training_state_fits(monkeypatch):
    """The CPU limit on the benchmark's copy counts what a LoRA step really holds (frozen weights
    without gradients or AdamW state), not full training's 16 bytes per parameter: a copy whose
    state, measured after a real step, is just under the limit is timed; full training is not."""
    lora_cfg = {"rank": 4, "targets": ["wq", "wv"]}
    model_cfg = {"hidden_dim": 64, "num_layers": 2, "num_heads": 4, "mlp_dim": 192, "vocab_size": 65}
    full = config_from_dict({"model_config": model_cfg})
    tuned = config_from_dict(
        {"model_config": model_cfg, "training_config": {"init_from": "runs/base", "lora": lora_cfg}}
    )
    model = Transformer(tuned.model)
    lora.apply_lora(model, tuned.training.lora)
    optimizer = one_real_step(model, tuned)
    held = [*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None)]
    held += [t for s in optimizer.state.values() for t in s.values() if t.ndim > 0]
    monkeypatch.setattr(plan_benchmark, "CPU_COPY_BYTES", sum(t.numel() * t.element_size() for t in held))
    monkeypatch.setattr(plan_benchmark, "_timed_steps", lambda *args: "timed")
    assert plan_benchmark.benchmark(tuned, CPU_DEVICE) == "timed"
    with pytest.raises(plan_benchmark.BenchSkipped, match="too big to time on a CPU"):
        plan_benchmark.benchmark(full, CPU_DEVICE)


def test_fsdp_divides_the_model_state_by_the_shard_count():
    cfg = load_config(preset="mega", overrides=["training_config.gradient_accumulation_steps=1"])
    one, eight = footprint.memory_estimate(cfg, processes=1), footprint.memory_estimate(cfg, processes=8)
    for name in ("weights", "optimizer"):
        assert getattr(eight, name) == pytest.approx(getattr(one, name) / 8, abs=8)
    assert eight.activations == one.activations  # each process still computes its own micro-batch
    b = parameter_breakdown(cfg.model)
    # the sharded float32 gradients, held where the activations were once the backward pass is done
    assert one.kept - eight.kept == pytest.approx(4 * b.total * (1 - 1 / 8), abs=8)
    root_and_two_blocks = b.embedding + b.output + b.final_norm + 2 * b.per_block
    assert eight.gathered == 2 * root_and_two_blocks  # bfloat16 weights gathered while computing
    replicated = load_config(preset="mega", overrides=["device_config.enable_fsdp=false"])
    assert footprint.memory_estimate(replicated, processes=8).weights == 4 * b.total  # DDP: whole replicas
    hybrid = load_config(preset="mega", overrides=["device_config.mesh_shape=[2, 4]"])
    assert plan.make_plan(hybrid, torch.device("cpu"), measure=False).memory.shards == 4


@pytest.mark.parametrize("processes", [2, 4])
def test_under_fsdp_the_plan_fits_the_micro_batch_beside_each_process_share(processes):
    """The plan's micro-batch, advised for a run that does not fit and chosen for batch_size:
    auto, is the largest whose step fits beside the state each of the FSDP processes keeps, more
    than fits beside the whole state of one process."""
    overrides = ["device_config.enable_fsdp=true", "device_config.dtype=float32"]
    cfg = load_config(preset="nano", overrides=[*overrides, "training_config.batch_size=64"])
    one = footprint.memory_estimate(cfg, batch_size=1, processes=processes)
    budget = one.state + 8.5 * (one.activations + one.logits)
    cfg.device.memory_gib = budget / footprint.HEADROOM / GiB

    def advised(n: int) -> int:
        (advice,) = plan.make_plan(cfg, CPU_DEVICE, measure=False, processes=n).advice
        return int(advice.split("training_config.batch_size=")[1].split()[0])

    def total(batch: int) -> int:
        return footprint.memory_estimate(cfg, batch_size=batch, processes=processes).total

    auto = cfg.model_copy(deep=True)
    auto.training.batch_size, auto.training.global_batch = "auto", 64 * processes
    chosen = plan.make_plan(auto, CPU_DEVICE, measure=False, processes=processes).cfg.training
    assert (chosen.batch_size, chosen.gradient_accumulation_steps) == (8, 8)  # 64 per process, 8 fit
    for micro in (advised(processes), chosen.batch_size):
        assert total(micro) <= budget < total(micro + 1)
    assert advised(1) < advised(processes)


def test_the_processes_of_a_cpu_plan_share_its_ram_as_training_does(monkeypatch):
    """`trickster plan --processes 2 --device cpu` plans 2 processes on this machine, each with
    half its RAM, as training gives the processes of a CPU job (LOCAL_WORLD_SIZE): a step that fits
    in the whole RAM but not in half of it does not fit, and the advice fits it in half."""
    cfg = load_config(preset="nano")  # data parallel: each process holds the whole model
    need = footprint.memory_estimate(cfg, processes=2).total
    ram = int(1.5 * need / footprint.HEADROOM)
    monkeypatch.setattr(footprint, "device_memory", lambda device: (ram, "RAM"))
    assert plan.make_plan(cfg, CPU_DEVICE, measure=False).fits
    shared = plan.make_plan(cfg, CPU_DEVICE, measure=False, processes=2)
    text = plan.format_plan(shared)
    assert (
        not shared.fits and f"({footprint.HEADROOM:.0%} of {plan._gib(ram // 2)} RAM / 2 processes)" in text
    )
    batch = int(text.split("training_config.batch_size=")[1].split()[0])
    assert footprint.memory_estimate(cfg, batch_size=batch, processes=2).total <= footprint.HEADROOM * ram / 2
    # FSDP over more processes on one machine divides its RAM as much as the model's state
    monkeypatch.setattr(footprint, "device_memory", lambda device: (16 * GiB, "RAM"))
    (advice,) = plan.make_plan(load_config(preset="mega"), CPU_DEVICE, measure=False).advice
    assert "shard" not in advice and advice.endswith(", or a device with more memory"), advice


def test_a_plan_of_several_processes_counts_them_as_ddp_whether_or_not_the_config_asks(monkeypatch):
    """`trickster plan --processes 2` plans the torchrun job the config makes: without
    device_config.enable_fsdp it trains under DDP (dist.setup), asked or not, and DDP's buckets
    hold the gradients from step to step. The plan counted a config that does not ask as one
    process's step, taking off the gradients made as the activations go, which DDP never does:
    its rows and its advice were those of another job than the one torchrun runs."""
    unasked = load_config(preset="nano")
    asked = load_config(preset="nano", overrides=["device_config.enable_ddp=true"])
    ram = int(0.8 * 2 * footprint.memory_estimate(asked, processes=2).total)  # nano needs accumulation
    monkeypatch.setattr(footprint, "device_memory", lambda device: (ram, "RAM"))
    for n in (1, 2):
        plans = [
            plan.format_plan(plan.make_plan(c, CPU_DEVICE, measure=False, processes=n))
            for c in (asked, unasked)
        ]
        assert (plans[0] == plans[1]) == (n == 2), plans  # one process without asking: no DDP
    assert "less grads made as activations go" not in plans[0]


def test_activation_checkpointing_keeps_only_the_block_inputs():
    cfg = load_config(preset="midi", overrides=["device_config.activation_checkpointing=false"])
    recomputed = load_config(preset="midi", overrides=["device_config.activation_checkpointing=true"])
    full, kept = footprint.activation_bytes_per_token(cfg), footprint.activation_bytes_per_token(recomputed)
    d, layers = cfg.model.hidden_dim, cfg.model.num_layers
    per_layer = (full - (2 * d + 1) * 4 - 8) // layers
    assert kept == layers * d * 4 + per_layer + (2 * d + 1) * 4 + 8  # inputs, and one block recomputed
    assert kept < full / 4


@pytest.mark.parametrize("preset", ["nano", "mega"])
def test_the_fitting_batch_is_the_largest_whose_whole_step_fits(preset):
    """The micro-batch the plan fits in a budget is the largest whose counted step fits in it. The
    loss's chunk of logits does not grow with the batch once full: mega's vocabulary fills it within
    one window, and dividing the room by a window's activations and logits gave 131 windows on a
    141 GB H200 where its step's bytes hold 220 (gpu_check's maxbatch would have failed there).
    A step of one window: none of these micro-batches accumulates (tests/test_fsdp_memory.py)."""
    one_window = ["training_config.batch_size=1", "training_config.gradient_accumulation_steps=1"]
    cfg = load_config(preset=preset, overrides=["device_config.dtype=bfloat16", *one_window])
    for batch in (1, 2, 7, 64, 220):
        step = footprint.memory_estimate(cfg, batch_size=batch).total
        assert footprint.fitting_batch(cfg, step) == batch
        assert footprint.fitting_batch(cfg, step - 1) == batch - 1
    assert footprint.fitting_batch(cfg, footprint.memory_estimate(cfg, batch_size=1).state) == 0


def test_a_model_too_big_for_one_gpu_is_told_how_many_to_shard_over(monkeypatch):
    """A GPU of 16 GiB (no GPU is used: the plan asks its memory only)."""
    monkeypatch.setattr(footprint, "device_memory", lambda device: (16 * GiB, "GPU memory"))
    cfg = load_config(
        preset="mega", overrides=["device_config.enable_fsdp=false", "device_config.compile=false"]
    )
    gpu = torch.device("cuda")
    (advice,) = plan.make_plan(cfg, gpu, measure=False).advice
    assert "not built yet" not in advice and "device_config.enable_fsdp=true" in advice
    gpus = int(advice.split("--processes ")[1].split("`")[0])
    cfg.device.enable_fsdp = True
    assert plan.make_plan(cfg, gpu, measure=False, processes=gpus).fits


def test_the_benchmark_times_float32_in_tf32_and_puts_the_setting_back(micro, monkeypatch):
    """On this CPU the benchmark is told it runs on CUDA (the TF32 flag is a process-wide setting
    a CPU has too): its steps run with TF32 on, and the setting is back as it was afterwards."""
    matmul = torch.backends.cuda.matmul
    flag, tf32 = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    before, during = getattr(matmul, flag), []
    monkeypatch.setattr(
        plan_benchmark,
        "set_matmul_precision",
        lambda device: device_module.set_matmul_precision(torch.device("cuda")),
    )
    timed_steps = plan_benchmark._timed_steps

    def spy(*args):
        during.append(getattr(matmul, flag))
        return timed_steps(*args)

    monkeypatch.setattr(plan_benchmark, "_timed_steps", spy)
    with contextlib.suppress(plan_benchmark.BenchSkipped):  # (if this machine is too busy to time anything)
        plan_benchmark.benchmark(micro(model_config={"vocab_size": 65}), torch.device("cpu"), seconds=2)
    assert during == [tf32] and before != tf32
    assert getattr(matmul, flag) == before


@pytest.mark.parametrize("recompute", [False, True])
def test_the_benchmark_recomputes_activations_when_the_run_does(micro, monkeypatch, recompute):
    """With activation checkpointing every block runs its forward twice a step: the benchmark's
    rate must include that, or the plan's step time is a quarter short."""
    calls = {"model": 0, "block": 0}

    class Counted(Transformer):
        def __init__(self, cfg):
            super().__init__(cfg)
            for block in self.layers:
                block.register_forward_pre_hook(lambda *args: calls.__setitem__("block", calls["block"] + 1))

        def forward(self, *args, **kwargs):
            calls["model"] += 1
            return super().forward(*args, **kwargs)

    monkeypatch.setattr(plan_benchmark, "Transformer", Counted)
    cfg = micro(model_config={"vocab_size": 65}, device_config={"activation_checkpointing": recompute})
    with contextlib.suppress(plan_benchmark.BenchSkipped):
        plan_benchmark.benchmark(cfg, torch.device("cpu"), seconds=2)
    # one step at least (a busy machine may time only one before BenchSkipped), each a whole one
    assert calls["model"] >= 1
    assert calls["block"] == calls["model"] * cfg.model.num_layers * (2 if recompute else 1)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["mega", "gpt2-small"])
def test_plan_answers_within_20_seconds_even_for_the_largest_presets(preset, capsys):
    start = time.perf_counter()
    assert main(["plan", "--preset", preset, "--device", "cpu"]) == 0
    assert time.perf_counter() - start < 20
    out = capsys.readouterr().out
    assert "time (estimate)" in out or "time: not measured: " in out
    assert main(["plan", "--preset", preset, "--no-bench", "--processes", "8"]) == 0
    out = capsys.readouterr().out
    assert "time: not measured (--no-bench)" in out and "8 processes" in out


def test_one_process_whose_accumulation_does_not_fit_is_told_what_it_holds():
    """In one process a step of one micro-batch makes its gradients as it frees the activations; a
    step of several keeps the earlier micro-batches' gradients beside them. With room for one
    window alone but not accumulated, the advice named FSDP2's whole gradients and gathered weights
    ("0.0 MiB more") to a job with no FSDP; it names the gradients kept, nano's float32 gradients
    (4 bytes a parameter of the model built), and no sharding, which divides no one process's step."""
    nano = load_config(preset="nano")
    single = footprint.memory_estimate(nano, 1, accumulating=False).total
    accumulated = footprint.memory_estimate(nano, 1, accumulating=True).total
    room = (single + accumulated) / 2 / footprint.HEADROOM / GiB
    cfg = load_config(preset="nano", overrides=[f"device_config.memory_gib={room}"])
    (advice,) = plan.make_plan(cfg, CPU_DEVICE, measure=False).advice
    gradients = 4 * sum(p.numel() for p in Transformer(cfg.model).parameters())
    assert advice.startswith(
        "with gradient accumulation the earlier micro-batches' gradients are kept beside the "
        f"activations ({footprint.size_text(gradients)} more), which do not fit: set "
        "training_config.batch_size=1 and training_config.gradient_accumulation_steps=1 "
    ), advice
    assert "FSDP" not in advice and "shard" not in advice


def test_a_one_step_plan_says_one_step(capsys):
    """`trickster plan` of a one-step config said 'this config (1 steps x ...)'."""
    argv = ["plan", "--preset", "tiny", "--no-bench", "--device", "cpu", "training_config.max_steps=1"]
    assert main(argv) == 0
    assert "this config (1 step x " in capsys.readouterr().out

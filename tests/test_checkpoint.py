"""Checkpoints: saved and reloaded exactly, refused when incomplete, damaged or disagreeing with their
config, never unpickled; loaded for generate, eval and compare with the weights as saved, nothing
random on the way (the model is built on the meta device), and the compute dtype for the device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import children, peak_child
from trickster import cli, run_checkpoints
from trickster.config import ModelConfig, config_from_dict
from trickster.data.loader import load_data
from trickster.data.tokenizers import CharTokenizer
from trickster.errors import UserError
from trickster.model import generate as generation
from trickster.model import lora
from trickster.model.generate import generate
from trickster.model.transformer import KVCache, Transformer
from trickster.observe.runs import read_run
from trickster.precision import inference_dtype
from trickster.serve import offered
from trickster.train import checkpoint as ckpt
from trickster.train import checkpoint_load, checksums
from trickster.train.loop import train
from trickster.train.weights import weights_to_save

from .conftest import QUIET, events, micro_config

MODEL = {
    "vocab_size": 65,
    "hidden_dim": 32,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "max_seq_len": 32,
}


def saved_model(shakespeare_dir, tmp_path, tie: bool = True):
    cfg = config_from_dict({"model_config": {**MODEL, "tie_embeddings": tie}})
    torch.manual_seed(3)
    model = Transformer(cfg.model)
    tokenizer = load_data(shakespeare_dir).tokenizer
    target = ckpt.save_checkpoint(tmp_path / "checkpoints" / "final", model, cfg, tokenizer, {"step": 1})
    return model, target


@pytest.mark.parametrize("tie", [True, False])
def test_loading_gives_the_saved_weights_without_drawing_random_ones(
    shakespeare_dir, tmp_path, monkeypatch, tie
):
    model, target = saved_model(shakespeare_dir, tmp_path, tie)
    initialised = []
    real_init = Transformer.init_weights

    def spy(self, generator=None):
        initialised.extend(p.device.type for p in self.parameters())
        return real_init(self, generator)

    monkeypatch.setattr(Transformer, "init_weights", spy)
    rng = torch.get_rng_state()
    loaded = checkpoint_load.load_checkpoint(target).model
    assert set(initialised) == {"meta"}  # the random initialisation touched no real tensor
    assert torch.equal(torch.get_rng_state(), rng)  # ... and drew nothing from the global RNG
    saved = load_file(target / run_checkpoints.WEIGHTS)
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, model.state_dict()[name], rtol=0, atol=0)
        assert name in saved or (tie and name == "output.weight")
    assert (loaded.output.weight is loaded.tok_embeddings.weight) == tie
    assert torch.equal(loaded.rope_cos, model.rope_cos) and torch.equal(loaded.rope_sin, model.rope_sin)
    idx = torch.randint(0, 65, (1, 12))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model.eval()(idx)[0])


def test_the_compute_dtype_is_bfloat16_on_ampere_gpus_and_float32_elsewhere(
    shakespeare_dir, tmp_path, monkeypatch
):
    _, target = saved_model(shakespeare_dir, tmp_path)
    assert checkpoint_load.load_checkpoint(target).dtype == "float32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert inference_dtype(torch.device("cuda")) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert inference_dtype(torch.device("cuda")) == "float32"


def test_generation_keeps_its_kv_cache_in_the_compute_dtype(monkeypatch):
    torch.manual_seed(0)
    model = Transformer(config_from_dict({"model_config": MODEL}).model)
    caches, outputs = [], []
    real_empty = KVCache.empty.__func__
    monkeypatch.setattr(
        KVCache, "empty", classmethod(lambda cls, *a: caches.append(a[-1]) or real_empty(cls, *a))
    )
    model.output.register_forward_hook(lambda module, args, out: outputs.append(out.dtype))
    tokens = list(generation.generate(model, [1, 2, 3], 5, temperature=0, dtype=torch.bfloat16))
    assert len(tokens) == 5 and caches == [torch.bfloat16] and set(outputs) == {torch.bfloat16}
    caches.clear()
    list(generation.generate(model, [1, 2, 3], 5, temperature=0))  # on a CPU: the weights' float32
    assert caches == [torch.float32]


def small(**changes) -> ModelConfig:
    values = dict(vocab_size=40, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_seq_len=24)
    return ModelConfig(**{**values, **changes})


def _saved(tmp_path, **model_changes):
    cfg = config_from_dict({"model_config": small(**model_changes).model_dump()})
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    tokenizer = CharTokenizer("".join(chr(65 + i) for i in range(40)))
    path = ckpt.save_checkpoint(tmp_path / "ck", model, cfg, tokenizer, {"step": 0})
    return model, path


def without_checksums(path) -> None:
    """The checkpoint at `path` as versions before 2026-11-30 saved it: no checksums in info.json
    (so its files may be rewritten, as the shape an older version wrote)."""
    info = json.loads((path / "info.json").read_text())
    del info[checksums.SUMS]
    (path / "info.json").write_text(json.dumps(info))


def test_save_and_reload_give_identical_logits_and_generations(tmp_path):
    model, path = _saved(tmp_path)
    loaded = checkpoint_load.load_checkpoint(path)
    idx = torch.randint(0, 40, (2, 10))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(idx)[0], loaded.model(idx)[0])
    assert list(generate(model, [3, 4], 15, 1.0, seed=1)) == list(
        generate(loaded.model, [3, 4], 15, 1.0, seed=1)
    )
    assert loaded.model.output.weight is loaded.model.tok_embeddings.weight  # still tied


@pytest.mark.parametrize(
    ("saved_text", "edited_text", "message"),
    [
        ("vocab_size: 40", "vocab_size: 41", r"tok_embeddings.weight is \(40, 32\).*needs \(41, 32\)"),
        ("tie_embeddings: true", "tie_embeddings: false", r"missing output.weight, unexpected nothing"),
    ],
    ids=["wrong-vocab-size", "missing-untied-output"],
)
def test_reload_catches_weights_that_disagree_with_the_config(tmp_path, saved_text, edited_text, message):
    _, path = _saved(tmp_path)
    config = path / "config.yaml"
    config.write_text(config.read_text().replace(saved_text, edited_text))
    with pytest.raises(UserError, match=message):
        checkpoint_load.load_checkpoint(path)


@pytest.mark.parametrize(
    ("saved_text", "edited_text", "message"),
    [
        (
            "hidden_dim: 32",
            "hidden_dim: 100000000",
            r"tok_embeddings.weight is \(40, 32\) in model.safetensors, the config needs \(40, 100000000\)",
        ),
        ("vocab_size: 40", "vocab_size: 1e18", r"makes a model of 3.2e\+19 parameters, too big to build"),
        (
            "num_layers: 2",
            "num_layers: 100000000",
            "model_config.num_layers is 100,000,000, model.safetensors holds 2",
        ),
        (
            "max_seq_len: 24",
            "max_seq_len: 1e15",
            "rotary tables for model_config.max_seq_len 1,000,000,000,000,000",
        ),
    ],
    ids=["hidden-dim", "vocab-size-overflows", "num-layers", "max-seq-len"],
)
def test_an_edited_config_is_refused_before_the_model_is_allocated(
    tmp_path, monkeypatch, saved_text, edited_text, message
):
    """A config.yaml edited by hand (sizes no weights file can match, or tables no memory holds)
    is refused from the shapes in the weights' header: the model is never given memory (on the
    old code, an allocator's traceback, or a hundred million blocks built one after another)."""
    _, path = _saved(tmp_path)
    config = path / "config.yaml"
    config.write_text(config.read_text().replace(saved_text, edited_text))
    monkeypatch.setattr(checkpoint_load, "empty_model", lambda *args: pytest.fail("the model was allocated"))
    with pytest.raises(UserError, match=message) as refused:
        checkpoint_load.load_checkpoint(path)
    assert str(refused.value).startswith(f"{config} does not match") or "does not fit" in str(refused.value)


@pytest.mark.parametrize(
    ("model", "edits", "message"),
    [
        (
            {},
            {"num_heads: 4": "num_heads: 8"},
            "model_config.num_heads is 8, model.safetensors was saved with 4",
        ),
        (
            {"num_kv_heads": 2},
            {"num_heads: 4": "num_heads: 8", "num_kv_heads: 2": "num_kv_heads: 4"},
            "model_config.num_heads is 8, model.safetensors was saved with 4",
        ),
        ({}, {"rope_theta: 10000.0": "rope_theta: 500000.0"}, "model_config.rope_theta is 500000.0"),
    ],
    ids=["num-heads", "num-heads-and-kv-heads", "rope-theta"],
)
def test_an_edited_config_that_keeps_every_shape_is_refused(tmp_path, model, edits, message):
    """More heads of the same width split the same wq, wk and wv otherwise: every shape matches,
    and (on the old code) the model loaded and computed garbage. The weights' header records the
    model_config they were saved with."""
    _, path = _saved(tmp_path, **model)
    config = path / "config.yaml"
    text = config.read_text()
    for saved, edited in edits.items():
        assert saved in text
        text = text.replace(saved, edited)
    config.write_text(text)
    with pytest.raises(UserError, match=message) as refused:
        checkpoint_load.load_checkpoint(path)
    assert "put back its model_config" in str(refused.value)


def test_weights_saved_without_a_recorded_config_still_load(tmp_path):
    """Checkpoints written before the model_config was recorded in the weights' header load as
    they did, checked by their shapes alone."""
    model, path = _saved(tmp_path)
    weights = path / run_checkpoints.WEIGHTS
    without_checksums(path)  # also written before 2026-11-30
    save_file(load_file(weights), weights, metadata={"format": "pt"})  # the old header
    loaded = checkpoint_load.load_checkpoint(path)
    idx = torch.randint(0, 40, (2, 10))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(idx)[0], loaded.model(idx)[0])


@pytest.mark.parametrize(
    ("rank", "message"),
    [
        (
            "1000000000000000",
            r"layers.0.attention.wq.lora_a is \(4, 32\) in lora.safetensors, the config needs",
        ),
        ("1e18", "too big to build"),
    ],
    ids=["rank-1e15", "rank-overflows"],
)
def test_an_edited_lora_rank_is_refused_before_the_model_is_allocated(tmp_path, monkeypatch, rank, message):
    training = {"init_from": str(tmp_path), "lora": {"rank": 4}}
    cfg = config_from_dict({"model_config": small().model_dump(), "training_config": training})
    model = Transformer(cfg.model)
    lora.apply_lora(model, cfg.training.lora)
    tokenizer = CharTokenizer("".join(chr(65 + i) for i in range(40)))
    path = ckpt.save_checkpoint(tmp_path / "ck", model, cfg, tokenizer, {"step": 0})
    assert checkpoint_load.load_checkpoint(path).model.cfg == cfg.model  # as saved, it loads
    config = path / "config.yaml"
    config.write_text(config.read_text().replace("rank: 4", f"rank: {rank}"))
    monkeypatch.setattr(checkpoint_load, "empty_model", lambda *args: pytest.fail("the model was allocated"))
    with pytest.raises(UserError, match=message):
        checkpoint_load.load_checkpoint(path)


def test_memory_the_device_refuses_while_loading_is_one_line(tmp_path, monkeypatch):
    """A model that fits the device but not the memory other programs left: torch's own
    out-of-memory error (as a full GPU raises it) becomes one line, not a traceback."""
    _, path = _saved(tmp_path)

    def full(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(checkpoint_load, "empty_model", full)
    with pytest.raises(UserError, match=f"loading {path} on cpu failed to allocate memory"):
        checkpoint_load.load_checkpoint(path)


def test_reload_catches_dtype_drift(tmp_path):
    _, path = _saved(tmp_path)
    without_checksums(path)  # else the checksum refuses the file before its dtypes are read
    weights = load_file(path / "model.safetensors")
    save_file({k: v.half() for k, v in weights.items()}, path / "model.safetensors")
    with pytest.raises(UserError, match="torch.float16, the config needs .* torch.float32"):
        checkpoint_load.load_checkpoint(path)


def test_incomplete_checkpoint_is_never_loaded(tmp_path):
    _, path = _saved(tmp_path)
    (path / "COMPLETE").unlink()
    with pytest.raises(UserError, match="incomplete"):
        checkpoint_load.load_checkpoint(path)


def test_loading_never_unpickles_code(tmp_path):
    """A trainer.pt that would run code when unpickled is refused, and the code does not run."""
    _, path = _saved(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"payload": Exploit()}, path / "trainer.pt")
    with pytest.raises(UserError, match="refused or damaged"):
        checkpoint_load.load_trainer_state(path)
    assert not marker.exists()


def test_recover_puts_back_only_a_complete_copy_and_deletes_the_rest(tmp_path, dead_pid, live_pid):
    """A kill between replace_dir's two renames leaves `best` under its old hidden name: recover
    puts it back if it is complete; a half copy, a copy of a checkpoint in place and a staging
    folder of a dead writer go; a live writer's staging folder stays."""
    folder = tmp_path / "checkpoints"

    def plant(name: str, complete: bool) -> None:
        (folder / name).mkdir(parents=True)
        (folder / name / run_checkpoints.WEIGHTS).write_bytes(b"w")
        if complete:
            (folder / name / run_checkpoints.COMPLETE).write_text("")

    plant(f".best.old-{dead_pid}", complete=True)  # best is missing: its only copy
    plant(f".final.old-{dead_pid}", complete=False)  # final is missing, and this copy is half
    plant("step_000002", complete=True)
    plant(f".step_000002.old-{dead_pid}", complete=True)  # step_000002 is in place: a stale copy
    plant(f".step_000004.tmp-{dead_pid}", complete=False)
    plant(f".step_000006.tmp-{live_pid}", complete=False)
    repairs = run_checkpoints.recover(tmp_path)
    assert sorted(repairs) == [
        f"removed .final.old-{dead_pid}, left by an interrupted write",
        f"removed .step_000002.old-{dead_pid}, left by an interrupted write",
        f"removed .step_000004.tmp-{dead_pid}, left by an interrupted write",
        "restored checkpoints/best from an interrupted replacement",
    ]
    assert sorted(p.name for p in folder.iterdir()) == [f".step_000006.tmp-{live_pid}", "best", "step_000002"]
    assert run_checkpoints.is_complete(folder / "best")


def test_loading_weights_holds_about_one_tensor_beyond_the_model(tmp_path):
    """Every process of a job loads the whole model.safetensors. Read whole before it was copied,
    it stayed mapped, its pages resident in each process (4.4 GB for a 1.1B model in float32, on
    each of 8 processes). Read tensor by tensor, a process's peak grows by about its largest
    tensor (2.4M parameters here, 9.4 MB), not the file's 226 MB; the weights come out bit for bit
    those saved. Measured in a process of its own (tests/peak_child.py, `load`)."""
    shape = {"vocab_size": 65, "hidden_dim": 768, "num_layers": 6, "num_heads": 12, "mlp_dim": 3072}
    shape["max_seq_len"] = 32
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**shape))
    file, out = tmp_path / run_checkpoints.WEIGHTS, tmp_path / "peak"
    save_file(weights_to_save(model), file)
    size = file.stat().st_size
    assert size > 200e6

    result = children.run("tests.peak_child", str(out), "load", json.dumps(shape), str(file))

    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(Path(f"{out}.0").read_text())
    assert found["added"] < size / 8, (found, size)
    assert found["sha256"] == peak_child.digests(model)


def test_a_save_goes_through_beside_a_checkpoint_whose_info_is_damaged(tmp_path):
    """Saving reads no other checkpoint: step_000001's damaged info.json (refused when resuming from
    it, with its own fix) did not stop the run's next save (it did when the save chose its
    disk-error fix up front, from the newest checkpoint's step)."""
    cfg = config_from_dict({"model_config": small().model_dump()})
    model = Transformer(cfg.model)
    tokenizer = CharTokenizer("".join(chr(65 + i) for i in range(40)))
    folder = tmp_path / "run" / "checkpoints"
    first = ckpt.save_checkpoint(folder / "step_000001", model, cfg, tokenizer, {"step": 1})
    (first / "info.json").write_text("{ damaged")
    second = ckpt.save_checkpoint(folder / "step_000002", model, cfg, tokenizer, {"step": 2})
    assert run_checkpoints.is_complete(second) and run_checkpoints.read_info(second)["step"] == 2


# ------------------------------------------------------------------ the val loss a checkpoint records


@pytest.fixture(scope="module")
def off_step_run(shakespeare_dir, tmp_path_factory) -> Path:
    """An 8-step micro run evaluated at steps 0, 4 and 8 and saved at 6: step_000006 is saved
    between two evaluations; best and final at step 8, its last evaluation's."""
    run = tmp_path_factory.mktemp("off-step") / "run"
    training = {"max_steps": 8, "warmup_steps": 1, "eval_every": 4, "save_every": 6, "sample_tokens": 0}
    train(micro_config(shakespeare_dir, run, training_config=training), **QUIET)
    return run


def measured_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in events(run, "eval")}


def test_a_checkpoint_saved_between_evaluations_records_the_step_its_loss_was_measured_at(off_step_run):
    """step_000006's info.json held `val_loss` = step 4's loss, as if measured at step 6: `trickster
    info`, serve and the report showed it as the checkpoint's own."""
    losses = measured_losses(off_step_run)
    assert sorted(losses) == [0, 4, 8]
    between = run_checkpoints.read_info(off_step_run / "checkpoints" / "step_000006")
    assert (between["step"], between["val_loss"], between["val_loss_step"]) == (6, losses[4], 4)
    for name in ("best", "final"):
        info = run_checkpoints.read_info(off_step_run / "checkpoints" / name)
        assert (info["step"], info["val_loss"], info["val_loss_step"]) == (8, losses[8], 8)


def test_trickster_info_says_when_a_checkpoints_loss_was_measured(off_step_run, capsys):
    losses = measured_losses(off_step_run)
    lines = {}
    for name in ("step_000006", "final"):
        assert cli.main(["info", "--checkpoint", str(off_step_run / "checkpoints" / name)]) == 0
        lines[name] = next(
            line for line in capsys.readouterr().out.splitlines() if line.startswith("checkpoint:")
        )
    assert f"(step 6, val loss {losses[4]:.4f} measured at step 4, best " in lines["step_000006"]
    assert f"(step 8, val loss {losses[8]:.4f}, best {losses[8]:.4f})" in lines["final"]


def test_the_report_and_the_models_card_say_when_a_checkpoints_loss_was_measured(off_step_run):
    losses = measured_losses(off_step_run)
    shown = {path.name: (m.step, m.shown()) for path, m in read_run(off_step_run).checkpoints}
    assert shown["step_000006"] == (6, f"{losses[4]:.4f} measured at step 4")
    assert shown["final"] == shown["best"] == (8, f"{losses[8]:.4f}")
    assert cli.main(["report", str(off_step_run)]) == 0
    page = (off_step_run / "report.html").read_text()
    assert f"step 6, val loss {losses[4]:.4f} measured at step 4" in page
    card = offered.describe("step_000006", off_step_run / "checkpoints" / "step_000006", None).card()
    assert (card["step"], card["val_loss"], card["val_loss_step"]) == (6, losses[4], 4)

"""Every bad input a user can make: one `error: ...` line on stderr, exit status 2, no traceback.

Each case builds its inputs inside a temporary folder, calls `trickster.cli.main(argv)` in-process
and checks the exit status, that stderr is exactly one line without a traceback, that the line
names the problem (case-specific substrings), and that no file that existed before was lost or
changed. One subprocess test proves the same for the real process.
"""

from __future__ import annotations

import builtins
import bz2
import errno
import functools
import gzip
import hashlib
import io
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trickster import cli, footprint
from trickster.config import config_from_dict, save_config
from trickster.data import sources
from trickster.data.new_tokenizer import build_tokenizer
from trickster.data.tokenizers import BPETokenizer, HFTokenizer, load_tokenizer
from trickster.model.transformer import Transformer
from trickster.train import loop, optim, run_lock
from trickster.train.checkpoint import save_checkpoint

from . import fake_hub
from .conftest import EXCERPT, QUIET, micro_config
from .dist_child import spiking_schedule

HAS_CUDA = torch.cuda.is_available()


# --------------------------------------------------------------------------- fixtures and helpers


class Env:
    """What a case builds its inputs with; every path it creates lies under `tmp`."""

    def __init__(self, tmp: Path, data: Path, run: Path, monkeypatch: pytest.MonkeyPatch):
        self.tmp, self.data, self.run, self.monkeypatch = tmp, data, run, monkeypatch
        self.redirection = ""  # the shell's part of how the case is run (`>&-`), shown in docs/ERRORS.md
        self.environment = ""  # variables set for the command (`PYTHONIOENCODING=ascii`), shown before it

    def write(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def config(self, name: str = "micro.yaml", **sections) -> str:
        """A valid micro config file (data: the prepared excerpt, run: tmp/run)."""
        path = self.tmp / name
        save_config(micro_config(self.data, self.tmp / "run", **sections), path)
        return str(path)

    def copy_data(self) -> Path:
        return Path(shutil.copytree(self.data, self.tmp / "data-copy"))

    def copy_run(self) -> Path:
        return Path(shutil.copytree(self.run, self.tmp / "run-copy"))

    def copy_checkpoint(self, name: str = "final") -> Path:
        return Path(shutil.copytree(self.run / "checkpoints" / name, self.tmp / "ckpt"))

    def prepare_text(self, text: str, name: str = "tiny", tokenizer: str = "char") -> str:
        """`trickster data prepare text` on a small file; returns the prepared folder."""
        corpus = self.write(f"{name}.txt", text)
        out = str(self.tmp / f"{name}-data")
        assert cli.main(["data", "prepare", "text", corpus, "--tokenizer", tokenizer, "--out", out]) == 0
        return out


def snapshot(*roots: Path) -> dict[Path, str]:
    """Each file's checksum, and each folder (a refusal that makes an empty one leaves it behind)."""
    files = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                files[path] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                files[path] = "folder"
    return files


def staging_leftovers(*roots: Path) -> list[Path]:
    kinds = (
        ".tmp-",
        ".old-",
        ".deleted-",
    )  # atomic.py's staged and replaced folders, run_checkpoints.remove's
    return [p for root in roots for p in root.rglob(".*") if any(kind in p.name for kind in kinds)]


Build = Callable[[Env], list]


def case(
    case_id: str,
    build: Build,
    *expected: str,
    xfail: str | None = None,
    skip_if: bool = False,
    skip_reason: str = "",
):
    marks = []
    if xfail:
        marks.append(pytest.mark.xfail(reason=xfail, strict=True))
    if skip_if:
        marks.append(pytest.mark.skip(reason=skip_reason))
    return pytest.param(build, expected, id=case_id, marks=marks)


def micro_train(env: Env, *overrides: str, **sections) -> list[str]:
    return ["train", "--config", env.config(**sections), "--no-progress", *overrides]


# --------------------------------------------------------------------------- case builders


def _report_on_the_folder_of_runs(env: Env) -> list[str]:
    for name in ("tiny", "nano"):
        env.write(f"runs/{name}/metrics.jsonl", "")
    return ["report", str(env.tmp / "runs")]


def _imported_char_model(env: Env) -> str:
    """The char run exported and imported back: a BPE tokenizer with no unknown token."""
    hf, imported = env.tmp / "hf", env.tmp / "imported"
    assert cli.main(["export", str(env.run), "--out", str(hf)]) == 0
    assert cli.main(["import", "hf", str(hf), "--out", str(imported)]) == 0
    return str(imported)


def _generate_on_an_imported_char_model(env: Env) -> list[str]:
    return ["generate", _imported_char_model(env), "--prompt", "ROMEO§"]


def _malformed_yaml(env: Env) -> list[str]:
    path = env.write("broken.yaml", "model_config:\n  hidden_dim: [64\ntraining_config: {\n")
    return ["train", "--config", path]


def _yaml_not_mapping(env: Env) -> list[str]:
    return ["train", "--config", env.write("list.yaml", "- model_config\n- training_config\n")]


def _yaml_not_utf8(env: Env) -> list[str]:
    path = env.write("latin1.yaml", "# caf\xe9\nmodel_config: {}\n".encode("latin-1"))
    return ["train", "--config", path]


def _section_not_mapping(env: Env) -> list[str]:
    return ["train", "--config", env.write("scalar.yaml", "model_config: 5\n")]


def _unknown_section_in_file(env: Env) -> list[str]:
    return ["train", "--config", env.write("typo.yaml", "modle_config:\n  hidden_dim: 64\n")]


def _unknown_key_in_file(env: Env) -> list[str]:
    return ["train", "--config", env.write("typo.yaml", "model_config:\n  hiden_dim: 64\n")]


def _wrong_type_in_file(env: Env) -> list[str]:
    path = env.write("type.yaml", "training_config:\n  max_steps: lots\n")
    return ["train", "--config", path]


def _huge_number_in_file(env: Env) -> list[str]:
    return ["train", "--config", env.write("huge.yaml", "training_config:\n  max_steps: 1e30\n")]


def _switch_for_a_number_in_file(env: Env) -> list[str]:
    return ["train", "--config", env.write("switch.yaml", "training_config:\n  max_steps: true\n")]


def _quoted_switch_in_file(env: Env) -> list[str]:
    return ["train", "--config", env.write("quoted.yaml", 'logging_config:\n  loss_plot: "no"\n')]


def _key_given_twice(env: Env) -> list[str]:
    path = env.write(
        "twice.yaml", "training_config:\n  max_steps: 100\n  learning_rate: 0.001\n  max_steps: 200\n"
    )
    return ["train", "--config", path]


def _trained_run_copy_with(env: Env, *overrides: str) -> list[str]:
    run = env.copy_run()
    return ["train", "--config", env.config(), "--out", str(run), "--no-progress", *overrides]


def _corrupt(path: Path, keep_fraction: float | None = None, content: bytes | None = None) -> None:
    if content is not None:
        path.write_bytes(content)
    else:
        raw = path.read_bytes()
        path.write_bytes(raw[: int(len(raw) * keep_fraction)])


def _flip_byte(path: Path) -> None:
    """One byte in the middle of the file inverted, as a bad sector or a stray write leaves it: a
    weights or trainer-state file still parses (the middle is tensor data)."""
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _without_checksums(checkpoint: Path) -> None:
    """The checkpoint as versions before 2026-11-30 saved it: no checksums in its info.json."""
    from trickster.train import checksums  # here: the checksum cases also run against older sources

    info = json.loads((checkpoint / "info.json").read_text())
    del info[checksums.SUMS]
    (checkpoint / "info.json").write_text(json.dumps(info))


def _resummed(checkpoint: Path) -> None:
    """A checkpoint whose trainer.pt a case rewrote with values a run could have saved (a run that
    trained longer): its info.json records the sums of its files as they are now, as saving does."""
    from trickster.train import checksums

    info = json.loads((checkpoint / "info.json").read_text())
    info[checksums.SUMS] = checksums.record(checkpoint)
    (checkpoint / "info.json").write_text(json.dumps(info))


def _world_size_without_rank(env: Env) -> list[str]:
    env.monkeypatch.setenv("WORLD_SIZE", "2")  # exported by hand, or left from another job
    env.monkeypatch.delenv("RANK", raising=False)
    return micro_train(env)


def _world_size_not_a_number(env: Env) -> list[str]:
    env.monkeypatch.setenv("WORLD_SIZE", "two")
    return micro_train(env)


def _rank_not_a_number(env: Env) -> list[str]:
    for name, value in {"RANK": "²", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        env.monkeypatch.setenv(name, value)
    return micro_train(env, "device_config.enable_ddp=true")


def _master_port_in_use(env: Env) -> list[str]:
    """A process given RANK 0 by hand keeps the job's store, on a MASTER_PORT another program holds."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 29519))  # a fixed port keeps docs/ERRORS.md's row as it is
    except OSError:
        holder.bind(("127.0.0.1", 0))
    holder.listen()
    env.monkeypatch.setattr(env, "port_holder", holder, raising=False)  # open until the case ends
    variables = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**variables, "MASTER_PORT": str(holder.getsockname()[1])}.items():
        env.monkeypatch.setenv(name, value)
    return micro_train(env, "device_config.enable_ddp=true", "device_config.timeout_s=20")


def _truncated_train_bin(env: Env) -> list[str]:
    data = env.copy_data()
    _corrupt(data / "train" / "000000.bin", keep_fraction=0.5)
    return micro_train(env, f"data_config.path={data}")


def _damaged_meta(env: Env) -> list[str]:
    data = env.copy_data()
    _corrupt(data / "meta.json", content=b'{"format": 1, "dtype": ')
    return micro_train(env, "--data", str(data))


def _data_tokenizer_is_a_folder(env: Env) -> list[str]:
    data = env.copy_data()
    (data / "tokenizer.json").unlink()
    (data / "tokenizer.json").mkdir()
    return micro_train(env, "--data", str(data))


def _corpus_shorter_than_window(env: Env) -> list[str]:
    data = env.prepare_text("to be or not to be, that is the question.\n" * 3)
    return micro_train(env, "--data", data, "model_config.max_seq_len=256", "training_config.seq_len=200")


def _val_split_shorter_than_window(env: Env) -> list[str]:
    """The train split holds windows of 201 tokens, the validation split (a tenth) does not."""
    data = env.prepare_text("to be or not to be, that is the question.\n" * 30)
    return micro_train(env, "--data", data, "model_config.max_seq_len=256", "training_config.seq_len=200")


def _run_dir_is_file(env: Env) -> list[str]:
    return micro_train(env, "--out", env.write("taken", "my notes\n"))


def _already_trained(env: Env) -> list[str]:
    return _trained_run_copy_with(env)


def _resume_done_run(env: Env) -> list[str]:
    """--resume of a run at its max_steps (12): it evaluated again, logged resume, eval and end, and
    ended (a minute on a CPU for a larger model), leaving the user where they were."""
    return _trained_run_copy_with(env, "--resume", "training_config.max_steps=12")


def _resume_changed_model(env: Env) -> list[str]:
    return _trained_run_copy_with(env, "--resume", "model_config.hidden_dim=32")


def _resume_with_init_from(env: Env) -> list[str]:
    """A run trained from scratch, continued with init_from: its checkpoint is what a resume reads."""
    base = "run-copy/checkpoints/step_000006"
    return _trained_run_copy_with(
        env, "--resume", "training_config.max_steps=16", "training_config.init_from=" + base
    )


def _resume_saved_before_a_limit(env: Env) -> list[str]:
    """A run whose config.yaml (and its checkpoints') holds what an older version allowed."""
    run = env.copy_run()
    for config in [run / "config.yaml", *run.glob("checkpoints/*/config.yaml")]:
        config.write_text(config.read_text().replace("sample_tokens: 40", "sample_tokens: 200000"))
    return ["train", "--config", run / "config.yaml", "--out", run, "--no-progress", "--resume"]


def _resume_with_a_setting_of_the_wrong_kind(env: Env) -> list[str]:
    """A run whose config.yaml (and its checkpoints') was edited by hand: `learning_rate: abc`.
    The checkpoints still load (generate, serve); training with it names the key and the fix."""
    run = env.copy_run()
    for config in [run / "config.yaml", *run.glob("checkpoints/*/config.yaml")]:
        text = config.read_text()
        assert "learning_rate: 0.003\n" in text
        config.write_text(text.replace("learning_rate: 0.003\n", "learning_rate: abc\n"))
    return ["train", "--config", run / "config.yaml", "--out", run, "--no-progress", "--resume"]


def _resume_with_another_optimizer(env: Env) -> list[str]:
    return _trained_run_copy_with(env, "--resume", "training_config.optimizer=muon")


def _resume_with_another_seed(env: Env) -> list[str]:
    return _trained_run_copy_with(env, "--resume", "training_config.seed=8", "training_config.max_steps=80")


def _resume_damaged_trainer_state(env: Env, checksums: bool = True) -> list[str]:
    argv = _trained_run_copy_with(env, "--resume")
    final = env.tmp / "run-copy" / "checkpoints" / "final"
    if not checksums:
        _without_checksums(final)
    _corrupt(final / "trainer.pt", keep_fraction=0.3)
    return argv


def _resume_flipped(*names: str) -> Build:
    """A resume whose checkpoints' files `names` ("final/trainer.pt") each have a byte flipped."""

    def build(env: Env) -> list[str]:
        argv = _trained_run_copy_with(env, "--resume")
        for name in names:
            _flip_byte(env.tmp / "run-copy" / "checkpoints" / name)
        return argv

    return build


def _swap_two_letters(path: Path) -> None:
    """A character tokenizer's "ab" saved as "ba": still a valid tokenizer, each letter read as the
    other."""
    path.write_text(path.read_text().replace("abc", "bac", 1))


def _flipped(command: str, name: str = "model.safetensors", change=_flip_byte) -> Build:
    """A copy of the run's final checkpoint whose file `name` was changed (a byte flipped), read by
    `command`."""

    def build(env: Env) -> list:
        ckpt = env.copy_checkpoint()
        change(ckpt / name)
        return {
            "generate": lambda: ["generate", ckpt, "--max-new-tokens", "2"],
            "eval": lambda: ["eval", ckpt, "--device", "cpu"],
            "compare": lambda: ["compare", ckpt, "--max-new-tokens", "2"],
            "info": lambda: ["info", "--checkpoint", ckpt],
            "export-hf": lambda: ["export", ckpt, "--format", "hf", "--out", env.tmp / "hf"],
            "export-gguf": lambda: ["export", ckpt, "--format", "gguf", "--out", env.tmp / "micro.gguf"],
            "serve": lambda: ["serve", ckpt, "--port", "0", "--device", "cpu"],
            "init-from": lambda: micro_train(env, f"training_config.init_from={ckpt}"),
            "lora": lambda: micro_train(
                env, f"training_config.init_from={ckpt}", "training_config.lora={rank: 2}"
            ),
            "tokenizer-from": lambda: _jsonl([RECORD, RECORD], "--tokenizer-from", str(ckpt))(env),
        }[command]()

    return build


def _lora_adapters_flipped(env: Env) -> list[str]:
    """A LoRA fine-tune's final checkpoint whose adapters (lora.safetensors) have a flipped byte."""
    steps = ("max_steps=4", "warmup_steps=1", "eval_every=4", "save_every=4", "sample_tokens=0")
    out = env.tmp / "lora-run"
    lora = (f"training_config.init_from={env.run}", "training_config.lora={rank: 2}", "--out", str(out))
    assert cli.main(micro_train(env, *lora, *(f"training_config.{s}" for s in steps))) == 0
    _flip_byte(out / "checkpoints" / "final" / "lora.safetensors")
    return ["generate", str(out / "checkpoints" / "final"), "--max-new-tokens", "2"]


def _resume_lora_changed(lora: str) -> Build:
    """A LoRA fine-tune (rank 2 on wq, wv) resumed with another training_config.lora: `null` ended
    in a traceback as its optimizer state was loaded, another rank in a line that blamed the
    checkpoint ("the checkpoint and its config disagree")."""

    def build(env: Env) -> list[str]:
        steps = ("max_steps=4", "warmup_steps=1", "eval_every=4", "save_every=4", "sample_tokens=0")
        out = env.tmp / "lora-run"
        lora_run = (
            f"training_config.init_from={env.run}",
            "training_config.lora={rank: 2}",
            "--out",
            str(out),
        )
        assert cli.main(micro_train(env, *lora_run, *(f"training_config.{s}" for s in steps))) == 0
        again = (f"training_config.init_from={env.run}", "--out", str(out), "--resume")
        return micro_train(env, *again, "training_config.max_steps=8", f"training_config.lora={lora}")

    return build


def _resume_trainer_state_is_a_folder(env: Env) -> list[str]:
    argv = _trained_run_copy_with(env, "--resume")
    state = env.tmp / "run-copy" / "checkpoints" / "final" / "trainer.pt"
    state.unlink()
    state.mkdir()
    return argv


def _resume_run_file_is_a_folder(name: str) -> Build:
    """A resume that cannot write one of the run's files: metrics.jsonl must keep the events after
    the checkpoint (it was cut back to the checkpoint before the failed write until 2026-11-30)."""

    def build(env: Env) -> list[str]:
        argv = _trained_run_copy_with(env, "--resume")
        (env.tmp / "run-copy" / name).unlink()
        (env.tmp / "run-copy" / name).mkdir()
        return argv

    return build


def _data_file_is_a_folder(name: str) -> Build:
    def build(env: Env) -> list[str]:
        data = env.copy_data()
        (data / name).unlink()
        (data / name).mkdir()
        return micro_train(env, "--data", str(data))

    return build


def _data_with(name: str, content: str) -> Build:
    def build(env: Env) -> list[str]:
        data = env.copy_data()
        (data / name).write_text(content, encoding="utf-8")
        return micro_train(env, "--data", str(data))

    return build


def _data_meta_not_utf8(env: Env) -> list[str]:
    data = env.copy_data()
    raw = bytearray((data / "meta.json").read_bytes())
    raw[len(raw) // 2] = 0xFF  # a flipped byte: no UTF-8 sequence starts with it
    (data / "meta.json").write_bytes(bytes(raw))
    return micro_train(env, "--data", str(data))


def _flip_bytes(file: Path, start: int, count: int) -> None:
    raw = bytearray(file.read_bytes())
    raw[start : start + count] = bytes(b ^ 0xFF for b in raw[start : start + count])
    file.write_bytes(bytes(raw))


def _eval_shard_with_flipped_bytes(env: Env) -> list[str]:
    data = env.copy_data()
    _flip_bytes(data / "val" / "000000.bin", 100, 8)  # char ids < 61 become ids > 190
    return ["eval", str(env.run), "--data", str(data), "--device", "cpu"]


def _train_shard_with_flipped_bytes(env: Env) -> list[str]:
    data = env.copy_data()
    shard = data / "train" / "000000.bin"
    _flip_bytes(shard, 0, shard.stat().st_size)  # the first batch draws some
    return micro_train(env, "--data", str(data))


def _data_report_shard_with_a_changed_token(env: Env) -> list[str]:
    data = env.copy_data()
    shard = data / "train" / "000000.bin"
    raw = bytearray(shard.read_bytes())
    raw[500] = raw[501] if raw[501] != raw[500] else raw[499]  # another character of the text
    shard.write_bytes(bytes(raw))
    return ["data", "report", str(data)]


def _resume_optimizer_state_by_position(env: Env) -> list[str]:
    """trainer.pt as trickster wrote it until 2026-11-22 07:16: optimizer.state_dict() as it is."""
    argv = _trained_run_copy_with(env, "--resume")
    path = env.tmp / "run-copy" / "checkpoints" / "final" / "trainer.pt"
    trainer = torch.load(path, weights_only=True)
    optimizer = trainer["optimizer"]
    names = [name for group in optimizer["param_groups"] for name in group["params"]]
    optimizer["state"] = {names.index(name): value for name, value in optimizer["state"].items()}
    for group in optimizer["param_groups"]:
        group["params"] = [names.index(name) for name in group["params"]]
    torch.save(trainer, path)
    _without_checksums(path.parent)  # nor did it record checksums
    return argv


def _resume_other_data(env: Env) -> list[str]:
    # the excerpt's lines in reverse order: the same characters (tokenizer), other tokens
    lines = EXCERPT.read_text(encoding="utf-8").splitlines(keepends=True)
    data = env.prepare_text("".join(reversed(lines)), name="reversed")
    return _trained_run_copy_with(env, "--resume", "--data", data)


def _resume_other_tokenizer(env: Env) -> list[str]:
    # as many characters (the same model), one of them another: the same text's ids mean others
    text = EXCERPT.read_text(encoding="utf-8").replace("z", "~")
    return _trained_run_copy_with(env, "--resume", "--data", env.prepare_text(text, name="tilde"))


def _resume_own_config(run: Path, *overrides: str) -> list[str]:
    """--resume of `run` from its own config.yaml (its warmup and max_steps not the user's)."""
    return ["train", "--config", run / "config.yaml", "--out", run, "--no-progress", "--resume", *overrides]


def _stopped_run_copy(env: Env) -> Path:
    """The trained run as a stop after step 6 leaves it: step_000006 (and best), no `final`."""
    run = env.copy_run()
    shutil.rmtree(run / "checkpoints" / "final")
    return run


def _resume_below_its_checkpoint(env: Env) -> list[str]:
    """A stopped 12-step run resumed with max_steps lowered below its checkpoint's step (6)."""
    return _resume_own_config(_stopped_run_copy(env), "training_config.max_steps=4")


def _resume_below_a_given_warmup(env: Env) -> list[str]:
    """A lowered max_steps with a warmup the user gives that no longer fits (one left to the run
    is fitted again: tests/test_fitted.py)."""
    overrides = ("training_config.max_steps=10", "training_config.warmup_steps=20")
    return _resume_own_config(_stopped_run_copy(env), *overrides)


def _resume_on_small_bytes(env: Env) -> list[str]:
    """Data of another tokenizer (bytes), its val split shorter than a window: 'the val split ... has
    60 tokens, fewer than one window' came first, and sent the user to prepare it again."""
    data = env.prepare_text(EXCERPT.read_text(encoding="utf-8")[:600], name="bytes", tokenizer="byte")
    return _trained_run_copy_with(env, "--resume", "--data", data)


def _resume_on_bytes(env: Env) -> list[str]:
    """Data of another tokenizer (bytes: 256 ids) for a run whose config.yaml has the 64 rows its
    char vocabulary needed: 'set model_config.vocab_size=256' came first, which the run refuses."""
    data = env.prepare_text(EXCERPT.read_text(encoding="utf-8"), name="bytes", tokenizer="byte")
    return _resume_own_config(env.copy_run(), "--data", data)


def _run_folder_held(env: Env, run: Path) -> None:
    """`run` held by process 4242, as its lock file records it: stood for by this process holding
    the lock until the case ends."""
    import fcntl
    import weakref

    (run / ".lock").write_text("4242\n")
    fd = os.open(run / ".lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    weakref.finalize(env, os.close, fd)


def _resume_while_held(env: Env) -> list[str]:
    run = _stopped_run_copy(env)
    _run_folder_held(env, run)
    return _resume_own_config(run)


def _train_while_held(env: Env) -> list[str]:
    run = env.tmp / "busy"
    run.mkdir()
    _run_folder_held(env, run)
    return micro_train(env, "--out", str(run))


def _resume_data_prepared_again(env: Env) -> list[str]:
    # the run trained on a folder (info.json's data_path) whose data is now other: prepared again
    data = env.prepare_text("".join(reversed(EXCERPT.read_text(encoding="utf-8").splitlines(True))))
    args = _trained_run_copy_with(env, "--resume", "--data", data)
    info = env.tmp / "run-copy" / "checkpoints" / "final" / "info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "data_path": data}))
    return args


def _resume_data_prepared_again_with_bytes(env: Env) -> list[str]:
    """The run's folder (info.json's data_path) prepared again with the byte tokenizer: 'prepare it as
    it was' named neither the run's tokenizer (char) nor the folder's now."""
    data = env.prepare_text(EXCERPT.read_text(encoding="utf-8"), name="bytes", tokenizer="byte")
    args = _trained_run_copy_with(env, "--resume", "--data", data)
    info = env.tmp / "run-copy" / "checkpoints" / "final" / "info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "data_path": data}))
    return args


def _resume_resplit_data(env: Env) -> list[str]:
    # the same text with another --val-fraction: train and val overlap what the run trained on
    data = str(env.tmp / "resplit")
    assert (
        cli.main(
            ["data", "prepare", "shakespeare", "--path", str(EXCERPT), "--val-fraction", "0.3", "--out", data]
        )
        == 0
    )
    return _trained_run_copy_with(env, "--resume", "--data", data)


def _empty_folder(env: Env) -> Path:
    (env.tmp / "empty").mkdir()
    return env.tmp / "empty"


def _prepare_out_is_file(env: Env) -> list[str]:
    corpus = env.write("corpus.txt", "some text to tokenize\n" * 20)
    return ["data", "prepare", "text", corpus, "--out", env.write("taken", "my notes\n")]


def _prepare_out_under_file(env: Env) -> list[str]:
    corpus = env.write("corpus.txt", "some text to tokenize\n" * 20)
    taken = env.write("taken", "my notes\n")
    return ["data", "prepare", "text", corpus, "--out", f"{taken}/data"]


def _prepare_out_is_other_folder(env: Env) -> list[str]:
    corpus = env.write("corpus.txt", "some text to tokenize\n" * 20)
    env.write("mine/notes.txt", "my notes, not a data folder\n")
    return ["data", "prepare", "text", corpus, "--out", str(env.tmp / "mine")]


def _prepare_again_beside_the_users_notes(env: Env) -> list[str]:
    data = env.prepare_text("some text to tokenize\n" * 20)
    env.write("tiny-data/NOTES.md", "where the corpus came from\n")
    return ["data", "prepare", "text", str(env.tmp / "tiny.txt"), "--tokenizer", "byte", "--out", data]


def _offline_download(env: Env) -> list[str]:
    closed_port = functools.partial(sources.shakespeare, url="http://127.0.0.1:9/x", timeout=2)
    env.monkeypatch.setattr("trickster.commands.sources.shakespeare", closed_port)
    return ["data", "prepare", "shakespeare", "--out", str(env.tmp / "shakespeare")]


def _texts(env: Env, count: int, name: str = "texts") -> str:
    for i in range(count):
        env.write(f"{name}/{i:03d}.txt", f"document number {i} about nothing in particular\n")
    return str(env.tmp / name)


def _copies(env: Env, count: int) -> str:
    """`count` files of one text (whose hash puts it on training's side at --val-fraction 0.1)."""
    for i in range(count):
        env.write(f"copies/{i:03d}.txt", "document number 0 about nothing in particular\n")
    return str(env.tmp / "copies")


def _hf_offline(env: Env) -> list[str]:
    datasets = pytest.importorskip("datasets")
    import huggingface_hub

    env.monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 does
    env.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return ["data", "prepare", "hf", "no-such-user/no-such-dataset", "--out", str(env.tmp / "o")]


def _hf_saved(env: Env, *flags: str, columns: dict | None = None) -> list[str]:
    datasets = pytest.importorskip("datasets")
    folder = env.tmp / "saved"
    stories = datasets.Dataset.from_dict(columns or {"content": ["one story", "another story"]})
    datasets.DatasetDict({"train": stories}).save_to_disk(str(folder))
    return ["data", "prepare", "hf", str(folder), "--out", str(env.tmp / "o"), *flags]


def _stories_without_text(env: Env) -> str:
    datasets = pytest.importorskip("datasets")
    folder = env.tmp / "stories"
    stories = datasets.Dataset.from_dict({"story": ["one story", "another story"]})
    datasets.DatasetDict({"train": stories, "validation": stories}).save_to_disk(str(folder))
    return str(folder)


def _parquet(env: Env, *flags: str, columns: dict | None = None) -> list[str]:
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns or {"body": ["one story", "another story"]}), env.tmp / "d.parquet")
    return ["data", "prepare", "parquet", str(env.tmp / "d.parquet"), "--out", str(env.tmp / "o"), *flags]


def _parquet_read_as(env: Env, source: str, *flags: str) -> list[str]:
    """A Parquet file given to another source (jsonl, text)."""
    argv = _parquet(env)
    return [*argv[:2], source, *argv[3:], *flags]


def _partial_in_use(env: Env) -> list[str]:
    """The same preparation started while another process still works in o.partial (stood for by
    this process holding the folder's lock until the case ends)."""
    import fcntl
    import weakref

    (env.tmp / "o.partial").mkdir()
    fd = os.open(env.tmp / "o.partial", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    weakref.finalize(env, os.close, fd)
    return ["data", "prepare", "text", _texts(env, 2), "--out", str(env.tmp / "o")]


def _partial_of_another_user(env: Env) -> list[str]:
    """o.partial left by another user, which this one may not open (the tests run as root, who
    may: the refusal is planted in os.open)."""
    (env.tmp / "o.partial").mkdir()
    os_open, denied = os.open, str(env.tmp / "o.partial")

    def guarded_open(path, *args, **kwargs):
        if os.fspath(path) == denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), denied)
        return os_open(path, *args, **kwargs)

    env.monkeypatch.setattr(os, "open", guarded_open)
    return ["data", "prepare", "text", _texts(env, 2), "--out", str(env.tmp / "o")]


def _partial_finished(env: Env) -> list[str]:
    """A preparation killed as its finished folder was being renamed to o: o.partial is whole."""
    env.write("o.partial/meta.json", "{}")
    env.write("o.partial/index.json", "{}")
    return ["data", "prepare", "text", _texts(env, 2), "--out", str(env.tmp / "o")]


def _interrupted_preparation(env: Env, chunks_done: int = 0) -> tuple[str, Path]:
    """A `--tokenizer char` preparation of 40 texts into o, interrupted after `chunks_done` chunks
    were written: o.partial is left."""
    from trickster.data import encode as encode_module
    from trickster.data import prepare as prepare_module

    texts, out = _texts(env, 40), env.tmp / "o"
    encode_chunk, calls = encode_module.encode_chunk, []

    def interrupted(task):
        calls.append(task)
        if len(calls) > chunks_done:
            raise KeyboardInterrupt
        return encode_chunk(task)

    env.monkeypatch.setattr(encode_module, "encode_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_module.prepare(sources.text_files([texts]), "char", out, workers=1, chunk_chars=64, **QUIET)
    env.monkeypatch.undo()
    return texts, out


def _partial_with_other_settings(env: Env) -> list[str]:
    """An interrupted `--tokenizer char` preparation, continued with `--tokenizer byte`."""
    texts, out = _interrupted_preparation(env)
    return ["data", "prepare", "text", texts, "--tokenizer", "byte", "--out", str(out)]


def _partial_of_edited_input(env: Env) -> list[str]:
    """An interrupted preparation, continued after one of its files was edited."""
    texts, out = _interrupted_preparation(env)
    with (Path(texts) / "001.txt").open("a") as edited:
        edited.write("one more line\n")
    return ["data", "prepare", "text", texts, "--out", str(out)]


def _partial_of_an_older_version(env: Env) -> list[str]:
    """An interrupted preparation started by a version of trickster that recorded no version."""
    texts, out = _interrupted_preparation(env)
    progress = env.tmp / "o.partial" / "progress.json"
    record = json.loads(progress.read_text())
    del record["settings"]["version"]
    progress.write_text(json.dumps(record))
    return ["data", "prepare", "text", texts, "--out", str(out)]


def _partial_with_a_damaged_tokenizer(env: Env) -> list[str]:
    """An interrupted preparation, some documents done, whose saved tokenizer.json lost its second
    half (a disk fault): the shards it wrote cannot be read without it."""
    texts, out = _interrupted_preparation(env, chunks_done=1)
    saved = env.tmp / "o.partial" / "tokenizer.json"
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    return ["data", "prepare", "text", texts, "--out", str(out)]


def _partial_with_pending_tokens_cut_short(env: Env) -> list[str]:
    """A preparation of two files read in pieces (blocks of 256 bytes here), interrupted inside the
    first, whose pending.bin (the tokens of its pieces so far) then lost its end (a disk fault)."""
    from trickster.data import documents, textfile
    from trickster.data import encode as encode_module
    from trickster.data import prepare as prepare_module

    lines = EXCERPT.read_text(encoding="utf-8").split("\n")
    for n in range(2):
        env.write(f"big/{n}.txt", "\n".join(lines[n * 100 : n * 100 + 100]))
    texts, out = str(env.tmp / "big"), env.tmp / "o"
    encode_chunk, calls = encode_module.encode_chunk, []

    def interrupted(task):
        calls.append(task)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return encode_chunk(task)

    for module in (textfile, documents):
        env.monkeypatch.setattr(module, "BLOCK_BYTES", 256)
    env.monkeypatch.setattr(encode_module, "encode_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_module.prepare(sources.text_files([texts]), "byte", out, workers=1, chunk_chars=64, **QUIET)
    env.monkeypatch.setattr(encode_module, "encode_chunk", encode_chunk)
    pending = env.tmp / "o.partial" / "pending.bin"
    pending.write_bytes(pending.read_bytes()[:1])
    return ["data", "prepare", "text", texts, "--tokenizer", "byte", "--workers", "1", "--out", str(out)]


def _blank_documents(env: Env) -> list[str]:
    """Three files of whitespace only: nothing is left once blank documents are dropped."""
    for i, blank in enumerate([" \n", "\n\n", "\t \n"]):
        env.write(f"blank/{i}.txt", blank)
    return ["data", "prepare", "text", str(env.tmp / "blank"), "--out", str(env.tmp / "o")]


def _gpt2_offline(env: Env) -> list[str]:
    """No tiktoken cache and no network: tiktoken's download fails as it would offline."""
    pytest.importorskip("tiktoken")
    import tiktoken.load
    import tiktoken.registry

    from trickster.data import tokenizers

    def offline(url):
        raise ConnectionError(f"cannot reach {url}")

    env.monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(env.tmp / "empty-cache"))
    env.monkeypatch.setattr(tiktoken.load, "read_file", offline)
    env.monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget an encoding loaded earlier
    # a fresh memo for the duration of the case (restored afterwards with the old one)
    env.monkeypatch.setattr(
        tokenizers, "_gpt2_encoding", functools.cache(tokenizers._gpt2_encoding.__wrapped__)
    )
    corpus = env.write("gpt2.txt", "some text\n")
    return ["data", "prepare", "text", corpus, "--tokenizer", "gpt2", "--out", str(env.tmp / "gpt2")]


def _records_from_a_folder(env: Env) -> list[str]:
    env.write("chats/a.jsonl", '{"messages": []}\n')
    return ["data", "prepare", "jsonl", str(env.tmp / "chats"), "--format", "messages", "--out", "o"]


def _empty_path(env: Env) -> list[str]:
    """`trickster data prepare text "$CORPUS"` with CORPUS unset, in a folder (the case's working
    folder) that holds other files."""
    env.write("work/notes.txt", "notes that are not the corpus\n")
    return ["data", "prepare", "text", "", "--out", str(env.tmp / "o")]


def _fifo(path: Path) -> str:
    os.mkfifo(path)  # nothing writes to it: reading would wait forever
    return str(path)


def _prepare_with(*flags: str) -> Build:
    def build(env: Env) -> list[str]:
        corpus = env.write("corpus.txt", "To be, or not to be, that is the question.\n" * 20)
        return ["data", "prepare", "text", corpus, *flags, "--out", str(env.tmp / "out")]

    return build


def _eval_text(content: str | bytes, *flags: str) -> Build:
    def build(env: Env) -> list[str]:
        return ["eval", str(env.run), "--text", env.write("held-out.txt", content), "--device", "cpu", *flags]

    return build


def _eval_other_tokenizer(env: Env) -> list[str]:
    data = env.prepare_text(
        "some unrelated text with its own characters 0123456789\n" * 40, name="other", tokenizer="byte"
    )
    return ["eval", str(env.run), "--data", data, "--device", "cpu"]


HELLASWAG_LINE = {"ctx": "ROMEO: speak", "endings": ["on.", "no more.", "again.", "to me."], "label": 1}


def _hellaswag(lines: list, *flags: str, count: int = 3) -> Build:
    """eval --task hellaswag on a file of `lines` (records, or text as it is) where the product
    expects `count` (HellaSwag's 10,042 made small)."""

    def build(env: Env) -> list[str]:
        env.monkeypatch.setattr("trickster.observe.hellaswag.VAL_EXAMPLES", count)
        text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        path = env.write("hellaswag_val.jsonl", text)
        return [
            "eval",
            str(env.run),
            "--task",
            "hellaswag",
            "--hellaswag-file",
            path,
            "--device",
            "cpu",
            *flags,
        ]

    return build


def _hellaswag_offline(env: Env) -> list[str]:
    env.monkeypatch.setenv("TRICKSTER_CACHE_DIR", str(env.tmp / "cache"))
    env.monkeypatch.setattr("trickster.observe.hellaswag.VAL_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")
    return ["eval", str(env.run), "--task", "hellaswag", "--device", "cpu"]


def _hellaswag_cache_cut_short(env: Env) -> list[str]:
    env.monkeypatch.setenv("TRICKSTER_CACHE_DIR", str(env.tmp / "cache"))
    env.write("cache/hellaswag/hellaswag_val.jsonl", json.dumps(HELLASWAG_LINE) + "\n")
    return ["eval", str(env.run), "--task", "hellaswag", "--device", "cpu"]


def _train_hellaswag_offline(env: Env) -> list[str]:
    _hellaswag_offline(env)
    return micro_train(env, "training_config.hellaswag_every=100")


def _train_hellaswag_unreadable(env: Env) -> list[str]:
    env.monkeypatch.setattr("trickster.observe.hellaswag.VAL_EXAMPLES", 3)
    line = json.dumps({**HELLASWAG_LINE, "ctx": "In 1984, a man [title]"}) + "\n"
    path = env.write("hellaswag_val.jsonl", line * 3)
    return micro_train(env, "training_config.hellaswag_every=100", f"training_config.hellaswag_file={path}")


def _compare_other_tokenizer(env: Env) -> list[str]:
    data = env.prepare_text(
        "some unrelated text with its own characters 0123456789\n" * 40, name="other", tokenizer="byte"
    )
    return ["compare", str(env.run), "--data", data, "--max-new-tokens", "2"]


def _compare_base_of_another_shape(env: Env) -> list[str]:
    """A checkpoint with the run's tokenizer and a narrower model: its weights cannot stand in."""
    from trickster.train import checkpoint_load, checkpoint_path

    run = checkpoint_load.files_at(checkpoint_path.resolve(env.run))
    raw = run.cfg.to_dict()
    raw["model_config"]["hidden_dim"] = 32
    cfg = config_from_dict(raw)
    path = env.tmp / "narrow"
    save_checkpoint(path, Transformer(cfg.model), cfg, run.tokenizer, {"step": 0})
    return ["compare", str(env.run), "--base", str(path), "--max-new-tokens", "2"]


def _stdout_closed(env: Env, command: str = "generate") -> list[str]:
    """`trickster generate RUN >&-`: Python's sys.stdout is None (an AttributeError's traceback)."""
    env.monkeypatch.setattr(sys, "stdout", None)
    env.redirection = ">&-"
    return [command, str(env.run), "--max-new-tokens", "2"]


class _FullDisk(io.StringIO):
    """A stdout sent to a file on a full disk (`> /dev/full`): every write fails."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _stdout_on_a_full_disk(env: Env) -> list[str]:
    env.monkeypatch.setattr(sys, "stdout", _FullDisk())
    env.redirection = "> /dev/full"
    return ["chat", str(env.run), "--max-new-tokens", "2"]


def _stdout_in_ascii(env: Env) -> list[str]:
    """`PYTHONIOENCODING=ascii trickster generate` of a model that writes 'é' (so would a latin-1
    locale or cp1252 on Windows with a byte model's U+FFFD): a UnicodeEncodeError's traceback."""
    from trickster.data.tokenizers import CharTokenizer

    shape = dict(vocab_size=64, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32, max_seq_len=16)
    cfg = config_from_dict({"model_config": shape})
    torch.manual_seed(0)
    save_checkpoint(env.tmp / "accents", Transformer(cfg.model), cfg, CharTokenizer("aé"), {"step": 0})
    env.monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    env.environment = "PYTHONIOENCODING=ascii"
    return ["generate", str(env.tmp / "accents"), "--prompt", "a", "--max-new-tokens", "20", "--seed", "0"]


def _stdin_write_only(env: Env) -> list[str]:
    """`trickster chat RUN 0> FILE`: stdin opened for writing only; reading it failed with EBADF in
    an OSError's traceback."""
    descriptor = os.open(env.tmp / "typed.txt", os.O_WRONLY | os.O_CREAT)
    env.monkeypatch.setattr(sys, "stdin", open(descriptor, encoding="utf-8"))  # noqa: SIM115
    env.redirection = "0> typed.txt"
    return ["chat", str(env.run), "--max-new-tokens", "2"]


def _folder_of_runs(env: Env) -> list[str]:
    """runs/ itself, where `trickster train` puts every run folder (it said 'train first')."""
    shutil.copytree(env.run, env.tmp / "runs" / "shakespeare")
    return ["generate", str(env.tmp / "runs"), "--max-new-tokens", "2"]


def _ckpt_without(name: str) -> Build:
    def build(env: Env) -> list[str]:
        ckpt = env.copy_checkpoint()
        (ckpt / name).unlink()
        return ["generate", str(ckpt), "--max-new-tokens", "2"]

    return build


def _tokenizer_folder_in(checkpoint: Path) -> Path:
    (checkpoint / "tokenizer.json").unlink()
    (checkpoint / "tokenizer.json").mkdir()
    return checkpoint


def _run_checkpoint_tokenizer_is_a_folder(env: Env) -> list[str]:
    final = _tokenizer_folder_in(env.copy_run() / "checkpoints" / "final")
    return ["generate", str(final), "--max-new-tokens", "2"]


def _ckpt_with_corrupt(name: str, keep_fraction: float | None = None, content: bytes | None = None) -> Build:
    def build(env: Env) -> list[str]:
        ckpt = env.copy_checkpoint()
        _corrupt(ckpt / name, keep_fraction, content)
        return ["generate", str(ckpt), "--max-new-tokens", "2"]

    return build


def _ckpt_config_disagrees(env: Env) -> list[str]:
    ckpt = env.copy_checkpoint()
    config = ckpt / "config.yaml"
    config.write_text(config.read_text().replace("mlp_dim: 192", "mlp_dim: 128"))
    return ["generate", str(ckpt), "--max-new-tokens", "2"]


def _ckpt_config_edited(command: str, saved: str, edited: str) -> Build:
    """A checkpoint whose config.yaml was edited by hand (`saved` -> `edited`), loaded by `command`."""

    def build(env: Env) -> list:
        ckpt = env.copy_checkpoint()
        config = ckpt / "config.yaml"
        assert saved in config.read_text()
        config.write_text(config.read_text().replace(saved, edited))
        return {
            "generate": ["generate", ckpt, "--max-new-tokens", "2"],
            "info": ["info", "--checkpoint", ckpt],
            "export-hf": ["export", ckpt, "--format", "hf", "--out", env.tmp / "hf"],
            "export-gguf": ["export", ckpt, "--format", "gguf", "--out", env.tmp / "micro.gguf"],
            "serve": ["serve", ckpt, "--port", "0"],
        }[command]

    return build


def _gguf_of_tokenizer(kind: str) -> Build:
    """A checkpoint whose tokenizer GGUF does not hold: an imported Hugging Face one (`imported`),
    or a bpe whose tokenizer.json was edited to split the text on blanks, not as GPT-2 (`edited-bpe`)."""

    def build(env: Env) -> list:
        bpe = build_tokenizer("bpe", iter([EXCERPT.read_text()[:2000]]), with_eot=True, vocab_size=300)
        edited = {**bpe.tokenizer_json, "pre_tokenizer": {"type": "Whitespace"}}
        tokenizer = HFTokenizer(bpe.tokenizer_json) if kind == "imported" else BPETokenizer(edited)
        shape = dict(vocab_size=320, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32, max_seq_len=32)
        cfg = config_from_dict({"model_config": shape})
        save_checkpoint(env.tmp / kind, Transformer(cfg.model), cfg, tokenizer, {"step": 0})
        return ["export", env.tmp / kind, "--format", "gguf", "--out", env.tmp / "m.gguf"]

    return build


def _run_without_complete(env: Env) -> list[str]:
    run = env.copy_run()
    for marker in run.glob("checkpoints/*/COMPLETE"):
        marker.unlink()
    return ["generate", str(run), "--max-new-tokens", "2"]


def _compare_info_without_step(env: Env) -> list[str]:
    ckpt = env.copy_checkpoint()
    (ckpt / "info.json").write_text("{}\n")  # valid JSON, but no step to print
    return ["compare", str(ckpt), "--max-new-tokens", "2"]


def _resume_damaged_info(env: Env) -> list[str]:
    """The newest checkpoint's info.json is cut short: the resume cannot tell which is newest."""
    run = env.copy_run()
    _corrupt(run / "checkpoints" / "final" / "info.json", keep_fraction=0.5)
    return ["train", "--config", env.config(), "--out", str(run), "--no-progress", "--resume"]


def _report_damaged_info(env: Env) -> list[str]:
    run = env.copy_run()
    _corrupt(run / "checkpoints" / "best" / "info.json", content=b"\xff\xfe garbage")
    return ["report", str(run), "--out", str(env.tmp / "report.html")]


def _info_on_damaged_checkpoint(env: Env) -> list[str]:
    ckpt = env.copy_checkpoint()
    _corrupt(ckpt / "model.safetensors", keep_fraction=0.5)
    return ["info", "--checkpoint", str(ckpt)]


def _foreign_weights(env: Env) -> list[str]:
    """A safetensors file from some other model: valid format, other tensor names."""
    ckpt = env.copy_checkpoint()
    save_file({"model.embed_tokens.weight": torch.zeros(65, 64)}, ckpt / "model.safetensors")
    return ["generate", str(ckpt), "--max-new-tokens", "2"]


def _config_file(name: str, text: str) -> Build:
    return lambda env: ["train", "--config", env.write(name, text)]


def _config_fifo(env: Env) -> list[str]:
    """A named pipe as the config: reading it waits for a writer that never comes."""
    fifo = env.tmp / "fifo.yaml"
    os.mkfifo(fifo)
    return ["train", "--config", str(fifo)]


def _output_dir_with_nul(env: Env) -> list[str]:
    """A micro config whose output_dir holds a NUL (YAML's "\\0" escape), which no OS call takes."""
    config = Path(env.config("nul.yaml"))
    text = config.read_text().replace(f"output_dir: {env.tmp / 'run'}", 'output_dir: "run\\0x"')
    assert "\\0" in text
    config.write_text(text)
    return ["train", "--config", str(config)]


def _output_dir_empty_in_yaml(env: Env) -> list[str]:
    """A micro config whose output_dir is "" (written from an unset shell variable): the current folder."""
    config = Path(env.config("empty.yaml"))
    text = config.read_text().replace(f"output_dir: {env.tmp / 'run'}", 'output_dir: ""')
    assert 'output_dir: ""' in text
    config.write_text(text)
    return ["train", "--config", str(config), "--no-progress"]


def _resume_copied_run_by_its_config(env: Env) -> list[str]:
    # the copy's config.yaml still names the original folder: the old code resumed that one instead
    run = env.copy_run()
    return ["train", "--config", str(run / "config.yaml"), "--no-progress", "--resume"]


def _resume_run_from_another_folder(env: Env) -> list[str]:
    """`cd /tmp && trickster train --config ~/stories/runs/s1/config.yaml --resume`: its output_dir
    (runs/s1) and data path are relative to ~/stories. The line said the folder might have been
    moved and to add --out, after which the data was not found either."""
    run = Path(shutil.copytree(env.run, env.tmp / "stories" / "runs" / "s1"))
    config = run / "config.yaml"
    config.write_text(re.sub(r"(?m)^  output_dir: .*$", "  output_dir: runs/s1", config.read_text()))
    return ["train", "--config", str(config), "--no-progress", "--resume"]


def _data_preparation_unfinished(env: Env) -> list[str]:
    (env.tmp / "stopped.partial").mkdir()
    env.write("stopped.partial/progress.json", "{}")
    return micro_train(env, "--data", str(env.tmp / "stopped"))


def _run_without_checkpoint(env: Env) -> Path:
    """What a run killed before its first save leaves: its files, an empty checkpoints/."""
    run = env.copy_run()
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    return run


def _start_where_a_run_saved_no_checkpoint(env: Env) -> list[str]:
    return micro_train(env, "--out", str(_run_without_checkpoint(env)))


def _resume_in_empty_folder(env: Env) -> list[str]:
    return micro_train(env, "--resume", "--out", str(env.tmp / "fresh"))


def _diverging_run(env: Env) -> list[str]:
    forward = Transformer.forward

    def nan_loss(self, idx, targets=None, *args, **kwargs):
        logits, loss = forward(self, idx, targets, *args, **kwargs)
        return logits, (loss * float("nan") if self.training and loss is not None else loss)

    env.monkeypatch.setattr(Transformer, "forward", nan_loss)
    return micro_train(env, "training_config.max_nonfinite_steps=2")


def _out_of_memory(env: Env, method: str, error: BaseException) -> list[str]:
    """The third training step, or the second evaluation (at step 2), runs out of memory."""
    real, calls = getattr(loop.Trainer, method), []

    def fails(self):
        calls.append(1)
        if len(calls) == (3 if method == "step" else 2):
            raise error
        return real(self)

    env.monkeypatch.setattr(loop.Trainer, method, fails)
    steps = ("training_config.max_steps=6", "training_config.save_every=2", "training_config.eval_every=2")
    return micro_train(env, *steps, "training_config.warmup_steps=1", "training_config.sample_tokens=0")


def _cpu_allocator_refuses_the_first_step(env: Env) -> list[str]:
    """The first training step asks the CPU allocator for 4 EiB, before any checkpoint: it refuses
    with a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory"), not with
    torch.OutOfMemoryError, as a CPU short of RAM does."""
    real = loop.Trainer.step

    def refused(self):
        torch.empty(2**62, dtype=torch.uint8)
        return real(self)

    env.monkeypatch.setattr(loop.Trainer, "step", refused)
    return micro_train(env, "training_config.warmup_steps=1", "training_config.sample_tokens=0")


def _step_past_a_ulimit(env: Env) -> list[str]:
    """A process whose `ulimit -v` is 1 GiB on a machine with more RAM: the step is measured
    against the limit, which it was not (it said `RAM of cpu` and the machine's size)."""
    real = resource.getrlimit
    limited = (2**30, resource.RLIM_INFINITY)
    env.monkeypatch.setattr(
        resource, "getrlimit", lambda which: limited if which == resource.RLIMIT_AS else real(which)
    )
    return micro_train(env, "training_config.batch_size=16384")


def _no_window_fits(env: Env) -> list[str]:
    """batch_size: auto in a memory_gib that holds the model's state and half a window of 64
    tokens (by plan's formula): the model fits, so the measurement says that no window does."""
    cfg = micro_config(env.data, env.tmp / "run")
    cfg.model.vocab_size = 128  # the char vocabulary, padded as training pads it
    one = footprint.memory_estimate(cfg, batch_size=1)
    gib = (one.state + (one.activations + one.logits) / 2) / 2**30
    auto = ("training_config.batch_size=auto", "training_config.global_batch=8")
    return micro_train(env, *auto, "model_config.vocab_size=128", f"device_config.memory_gib={gib:.6g}")


def _no_window_fits_accumulating(env: Env) -> list[str]:
    """batch_size: auto under FSDP2 (one process) in a memory_gib that holds the model's state and
    two and a half windows by plan's formula: a micro-batch of one fits alone, but the 8 windows
    of a step need accumulation, and FSDP2's gathered weights kept between micro-batches leave no
    room for one. 12 blocks and windows of 16 tokens: the weights kept (all but two blocks)
    outweigh a window's activations (with 2 blocks a single step's sharded gradients cost as much
    as the accumulation's whole ones, and no window fits either way)."""
    cfg = micro_config(env.data, env.tmp / "run")
    cfg.model.vocab_size = 128  # the char vocabulary, padded as training pads it
    cfg.model.num_layers, cfg.training.seq_len = 12, 16
    one = footprint.memory_estimate(cfg, batch_size=1)
    gib = (one.state + 2.5 * (one.activations + one.logits)) / footprint.HEADROOM / 2**30
    auto = (
        "training_config.batch_size=auto",
        "training_config.global_batch=8",
        "device_config.enable_fsdp=true",
        "model_config.num_layers=12",
        "training_config.seq_len=16",
    )
    return micro_train(env, *auto, "model_config.vocab_size=128", f"device_config.memory_gib={gib:.6g}")


def _no_window_fits_accumulating_ddp(env: Env) -> list[str]:
    """batch_size: auto under DDP (one process) in a memory_gib that holds the model's state and
    two and a half windows by plan's formula: a micro-batch of one fits alone, but the 8 windows of
    a step need accumulation, whose micro-batches before the last (no_sync) make a second copy of
    the gradients beside DDP's all-reduce buckets, more than the room left for one window."""
    cfg = micro_config(env.data, env.tmp / "run")
    cfg.model.vocab_size, cfg.training.seq_len = 128, 16  # the char vocabulary, padded as training pads it
    one = footprint.memory_estimate(cfg, batch_size=1)
    assert one.gradients > 1.5 * (one.activations + one.logits)  # the copy outweighs the room left
    gib = (one.state + 2.5 * (one.activations + one.logits)) / footprint.HEADROOM / 2**30
    auto = (
        "training_config.batch_size=auto",
        "training_config.global_batch=8",
        "device_config.enable_ddp=true",
    )
    return micro_train(
        env,
        *auto,
        "training_config.seq_len=16",
        "model_config.vocab_size=128",
        f"device_config.memory_gib={gib:.6g}",
    )


def _lora_too_big(env: Env) -> list[str]:
    # the largest rank the micro model's layers take (a larger one is refused before memory is counted)
    lora = ("training_config.lora={rank: 64}", "device_config.memory_gib=0.0001")
    return micro_train(env, f"training_config.init_from={env.run}", *lora)


def _time_budget_spent(env: Env) -> list[str]:
    run = env.copy_run()
    trainer = torch.load(run / "checkpoints" / "final" / "trainer.pt", weights_only=True)
    trainer["train_state"]["train_seconds"] = 5400.0  # trained for 90 minutes
    torch.save(trainer, run / "checkpoints" / "final" / "trainer.pt")
    _resummed(run / "checkpoints" / "final")
    overrides = ("training_config.max_steps=20", "training_config.max_time=1h")
    return ["train", "--config", env.config(), "--out", str(run), "--no-progress", "--resume", *overrides]


def _spikes_beyond_max_rollbacks(env: Env) -> list[str]:
    env.monkeypatch.setattr(optim, "lr_at", spiking_schedule(optim.lr_at))  # a real loss spike
    settings = ("max_steps=30", "warmup_steps=2", "eval_every=100", "save_every=5", "sample_tokens=0")
    extra = ("spike_window=8", "max_rollbacks=0")
    return micro_train(env, *(f"training_config.{s}" for s in settings + extra))


def _disk_full_at_checkpoint(env: Env) -> list[str]:
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    env.monkeypatch.setattr("trickster.train.tensor_files.save_file", no_space)
    return micro_train(env, "training_config.max_steps=4", "training_config.warmup_steps=1")


def _read_only(env: Env, folder: Path, code: int = errno.EROFS) -> None:
    """Every write, and every delete, under `folder` fails as on a read-only mount, or with the
    error `code` (the tests run as any user, and root ignores file modes)."""
    path_open, plain_open, path_unlink = Path.open, builtins.open, Path.unlink

    def refuse(path, mode: str = "w") -> None:
        if any(m in mode for m in "wax+") and Path(path).resolve().is_relative_to(folder.resolve()):
            raise OSError(code, os.strerror(code), str(path))

    def open_path(self, mode="r", *args, **kwargs):
        refuse(self, mode)
        return path_open(self, mode, *args, **kwargs)

    def open_file(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            refuse(file, mode)
        return plain_open(file, mode, *args, **kwargs)

    def unlink(self, *args, **kwargs):
        refuse(self)
        return path_unlink(self, *args, **kwargs)

    env.monkeypatch.setattr(Path, "open", open_path)
    env.monkeypatch.setattr(builtins, "open", open_file)
    env.monkeypatch.setattr(Path, "unlink", unlink)


def _resume_in_read_only_run(env: Env) -> list[str]:
    run = env.copy_run()
    _read_only(env, run)
    return ["train", "--config", env.config(), "--out", str(run), "--no-progress", "--resume"]


def _resume_on_a_full_disk(env: Env) -> list[str]:
    run = env.copy_run()
    _read_only(env, run, errno.ENOSPC)
    return ["train", "--config", env.config(), "--out", str(run), "--no-progress", "--resume"]


def _unlockable(env: Env) -> None:
    """Run folders on a file system that refuses locks (NFS without its lock service): flock fails."""

    def flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    env.monkeypatch.setattr(run_lock.fcntl, "flock", flock)


def _train_where_locks_fail(env: Env) -> list[str]:
    _unlockable(env)
    return micro_train(env, "--out", str(env.tmp / "nfs-run"))


def _resume_where_locks_fail(env: Env) -> list[str]:
    run = env.copy_run()
    _unlockable(env)
    return ["train", "--config", env.config(), "--out", str(run), "--no-progress", "--resume"]


def _refused_folder(env: Env, code: int, name: str = "refused") -> Path:
    """A folder whose every write fails with `code` (_read_only)."""
    folder = env.tmp / name
    folder.mkdir()
    _read_only(env, folder, code)
    return folder


def _prepare_into(env: Env, code: int) -> list[str]:
    """A preparation whose folder refuses its writes (the first: progress.json)."""
    corpus = env.write("corpus.txt", "some text to tokenize\n" * 20)
    return ["data", "prepare", "text", corpus, "--out", str(_refused_folder(env, code) / "data")]


def _report_on_a_full_disk(env: Env) -> list[str]:
    """A real ENOSPC: the page's name links to /dev/full, which refuses every write."""
    page = env.tmp / "full.html"
    page.symlink_to("/dev/full")
    return ["report", str(env.run), "--out", str(page)]


def _gguf_into_read_only_folder(env: Env) -> list[str]:
    folder = env.tmp / "read-only"
    folder.mkdir()
    _read_only(env, folder)
    return ["export", str(env.run), "--format", "gguf", "--out", str(folder / "m.gguf")]


def _import_under_a_file(env: Env) -> list[str]:
    """A valid model folder (an export of the run), imported to a path under a file."""
    model = env.tmp / "model"
    assert cli.main(["export", str(env.run), "--out", str(model)]) == 0
    return ["import", "hf", str(model), "--out", env.write("taken", "mine") + "/run"]


def _tracking_missing(key: str, module: str) -> Build:
    def build(env: Env) -> list[str]:
        env.monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
        return micro_train(env, logging_config={key: True})

    return build


def _hf_folder(
    env: Env,
    config: dict | str | None = None,
    *,
    tokenizer: bool = False,
    weights: str = "",
    tokenizer_folder: bool = False,
) -> str:
    """A would-be Hugging Face model folder: config.json, maybe a tokenizer.json and a weights file."""
    folder = env.tmp / "hf-model"
    folder.mkdir()
    llama = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 300,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
    }
    if config is not None:
        content = config if isinstance(config, str) else json.dumps({**llama, **config})
        (folder / "config.json").write_text(content)
    if tokenizer:
        from tokenizers import Tokenizer, models

        Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[])).save(str(folder / "tokenizer.json"))
    if weights:
        (folder / weights).write_bytes(b"pickled weights")
    if tokenizer_folder:
        (folder / "tokenizer.json").mkdir()
    return str(folder)


def _import_tokenizer(model: dict) -> Build:
    """A Hugging Face folder whose tokenizer.json holds this BPE `model` (its vocab and merges)."""

    def build(env: Env) -> list[str]:
        folder = Path(_hf_folder(env, {}))
        (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": model}))
        return ["import", "hf", str(folder), "--out", str(env.tmp / "imported")]

    return build


def _data_bpe_tokenizer_with(vocab: dict | None = None, **model_fields) -> Build:
    """The data's tokenizer.json replaced by a trained bpe whose BPE model has these fields set, and
    these entries in its vocabulary."""

    def build(env: Env) -> list[str]:
        bpe = build_tokenizer("bpe", iter([EXCERPT.read_text()[:2000]]), with_eot=True, vocab_size=300)
        model = {**bpe.tokenizer_json["model"], **model_fields}
        model["vocab"] = {**model["vocab"], **(vocab or {})}
        content = {"kind": "bpe", "tokenizer": {**bpe.tokenizer_json, "model": model}}
        return _data_with("tokenizer.json", json.dumps(content))(env)

    return build


def _import(config: dict | str | None = None, **files) -> Build:
    return lambda env: ["import", "hf", _hf_folder(env, config, **files), "--out", str(env.tmp / "imported")]


def _import_index(weight_map) -> Build:
    """A folder whose model.safetensors.index.json holds `weight_map` (its shards are not there)."""

    def build(env: Env) -> list[str]:
        folder = Path(_hf_folder(env, {}, tokenizer=True))
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        return ["import", "hf", str(folder), "--out", str(env.tmp / "imported")]

    return build


@functools.cache
def _fake_hub() -> fake_hub.FakeHub:
    """One stand-in Hub for every case (a daemon thread: it ends with the process)."""
    hub = fake_hub.FakeHub()
    fake_hub.start(hub)
    return hub


def _import_hub(
    repo_id: str,
    config: dict | str | None = None,
    *flags: str,
    tokenizer: bool = True,
    weights: str = "model.safetensors",
    gated: bool = False,
    offline: bool = False,
) -> Build:
    """`import hf ORG/NAME` from the fake Hub (a repo of `_hf_folder`'s files, none without
    config.json if `config` is "no config.json", no repo if None), with an empty cache under the
    case's folder."""

    def build(env: Env) -> list[str]:
        hub = _fake_hub()
        if config is not None:
            given = None if config == "no config.json" else config
            folder = Path(_hf_folder(env, given, tokenizer=tokenizer, weights=weights))
            hub.add(repo_id, {file.name: file.read_bytes() for file in folder.iterdir()}, gated=gated)
        hub.use(env.monkeypatch, env.tmp / "hub-cache", offline=offline)
        return ["import", "hf", repo_id, "--out", str(env.tmp / "imported"), *flags]

    return build


def _import_hub_unreachable(env: Env) -> list[str]:
    # the discard port: nothing listens there
    _fake_hub().use(env.monkeypatch, env.tmp / "hub-cache", url="http://127.0.0.1:9")
    return ["import", "hf", "org/tiny", "--out", str(env.tmp / "imported")]


def _import_mistyped_local_folder(env: Env) -> list[str]:
    """`import hf export/tny` for the folder export/tiny, offline: ORG/NAME reads as a Hub id."""
    (env.tmp / "export" / "tiny").mkdir(parents=True)
    env.monkeypatch.chdir(env.tmp)
    _fake_hub().use(env.monkeypatch, env.tmp / "hub-cache", offline=True)
    return ["import", "hf", "export/tny", "--out", str(env.tmp / "imported")]


def _import_hub_partly_cached(env: Env) -> list[str]:
    """Offline, a cached snapshot whose download stopped after config.json and tokenizer.json."""
    from .test_hf_hub import cache_layout

    cache_layout(env.tmp / "hub-cache", "org/partial", "a" * 40, Path(_hf_folder(env, {}, tokenizer=True)))
    _fake_hub().use(env.monkeypatch, env.tmp / "hub-cache", offline=True)
    return ["import", "hf", "org/partial", "--out", str(env.tmp / "imported")]


def _import_hub_disk_full(env: Env) -> list[str]:
    from huggingface_hub import file_download

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    env.monkeypatch.setattr(file_download, "http_get", disk_full)  # where each file's bytes are written
    return _import_hub("org/full", {})(env)


def _link(env: Env, name: str, *targets: str) -> str:
    """The symlink `name` to the first of `targets`, each a symlink to the next (the last to none)."""
    for link, target in zip((name, *targets), targets, strict=False):
        (env.tmp / link).symlink_to(target)
    return str(env.tmp / name)


def _jsonl(lines: list[str], *flags: str) -> Build:
    def build(env: Env) -> list[str]:
        path = env.write("chat.jsonl", "\n".join(lines) + "\n")
        return ["data", "prepare", "jsonl", path, "--out", str(env.tmp / "chat"), *flags]

    return build


def _wandb_not_logged_in(env: Env) -> list[str]:
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        env.monkeypatch.delenv(name, raising=False)
    home = env.tmp / "home"  # no ~/.netrc, no W&B settings: nobody is logged in
    for name, value in {
        "HOME": home,
        "NETRC": home / ".netrc",
        "WANDB_CONFIG_DIR": home / "wandb",
        "WANDB_DIR": home / "wandb-dir",
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # should anything try, it reaches nothing
        "WANDB_SILENT": "true",
    }.items():
        env.monkeypatch.setenv(name, str(value))
    return micro_train(env, logging_config={"use_wandb": True})


RECORD = '{"prompt": "Who is there?", "response": "Nay, answer me."}'
INSTRUCTION = '{"instruction": "Who?", "input": "", "output": "Nay."}'
CHAT_ROW = [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Nay."}]
NULL_REPLY = {"role": "assistant", "content": None}
INSTRUCTION_COLUMNS = {"instruction": ["Who?", "Stand."], "input": ["", ""], "output": ["Nay.", "I."]}
CONVERSATION = '{"messages": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Nay."}]}'
NESTED = '{"id": 1, "content": {"title": "Hamlet", "body": "Who is there?"}}'
NESTED_COLUMNS = {"content": [{"title": "Hamlet", "body": "Who is there?"}, {"title": "Lear", "body": "No."}]}


def _lora(*overrides: str) -> Build:
    return lambda env: micro_train(env, f"training_config.init_from={env.run}", *overrides)


def _lora_checkpoint_without_adapters(env: Env) -> list[str]:
    # a checkpoint whose config says LoRA, but whose lora.safetensors is gone
    ckpt = env.copy_checkpoint()
    config = ckpt / "config.yaml"
    text = config.read_text().replace("  init_from: null\n", f"  init_from: {env.run}\n")
    config.write_text(text.replace("  lora: null\n", "  lora: {rank: 4}\n"))
    return ["generate", str(ckpt), "--max-new-tokens", "2"]


def _init_from_other_tokenizer(env: Env) -> list[str]:
    # a character vocabulary of the same size as the run's, but other characters
    size = load_tokenizer(env.run / "tokenizer.json").vocab_size
    chars = "".join(chr(c) for c in range(0x3B1, 0x3B1 + size))  # Greek letters onwards
    data = env.prepare_text(chars * 30, name="greek")
    return micro_train(env, "--data", data, f"training_config.init_from={env.run}")


def _init_from_other_tokenizer_size(env: Env) -> list[str]:
    # as the guide fine-tunes, from the run's own config (its vocab_size a number by then), on data
    # prepared with a byte tokenizer: the vocabulary size differs, and the tokenizer is the cause
    data = env.prepare_text("Who is there? Nay, answer me. " * 30, name="bytes", tokenizer="byte")
    config = str(env.run / "config.yaml")
    return ["train", "--config", config, "--data", data, f"training_config.init_from={env.run}"]


def _without(package: str, *flags: str) -> Build:
    def build(env: Env) -> list[str]:
        env.monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
        return ["export", str(env.run), "--out", str(env.tmp / "out"), *flags]

    return build


def _export_into(name: str, content: str | None) -> Build:
    def build(env: Env) -> list[str]:
        out = env.tmp / name
        if content is None:
            env.write(name, "my notes\n")
        else:
            env.write(f"{name}/notes.txt", content)
        return ["export", str(env.run), "--out", str(out)]

    return build


def _export_inside_a_checkpoint(env: Env) -> list[str]:
    run = env.copy_run()
    return ["export", str(run), "--out", str(run / "checkpoints" / "final" / "hf")]


def _export_hf_disk_full(env: Env) -> list[str]:
    """safetensors' own report of a full disk, as a 1 MiB tmpfs gives it (a SafetensorError)."""
    import safetensors.torch
    from safetensors import SafetensorError

    def no_space(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    env.monkeypatch.setattr(safetensors.torch, "serialize_file", no_space)
    return ["export", str(env.run), "--out", str(env.tmp / "hf")]


def _serve(*flags: str) -> Build:
    return lambda env: ["serve", str(env.run), "--device", "cpu", *flags]


def _serve_training(*flags: str) -> Build:
    """`trickster serve` on a run before its first save (the trained run's folder without checkpoints)."""

    def build(env: Env) -> list[str]:
        run = env.tmp / "training"
        shutil.copytree(env.run, run, ignore=shutil.ignore_patterns("checkpoints"))
        return ["serve", str(run), "--device", "cpu", *flags]

    return build


def _serve_on_taken_port(env: Env) -> list[str]:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    env.monkeypatch.setattr(env, "taken", taken, raising=False)  # open until the case ends
    return ["serve", str(env.run), "--device", "cpu", "--port", str(taken.getsockname()[1])]


def _serve_run_before_its_first_save(*flags: str) -> Build:
    """`trickster serve` on a run folder as training leaves it before its first save."""

    def build(env: Env) -> list[str]:
        run = env.copy_run()
        shutil.rmtree(run / "checkpoints")
        return ["serve", str(run), "--device", "cpu", *flags]

    return build


def _serve_run_with_damaged(name: str, content: bytes) -> Build:
    """`trickster serve` before the run's first save, with its config.yaml or tokenizer.json damaged."""

    def build(env: Env) -> list[str]:
        run = env.copy_run()
        shutil.rmtree(run / "checkpoints")
        (run / name).write_bytes(content)
        return ["serve", str(run), "--device", "cpu"]

    return build


def _serve_incomplete_checkpoint(env: Env) -> list[str]:
    ckpt = env.copy_checkpoint()
    (ckpt / "COMPLETE").unlink()
    return ["serve", str(ckpt), "--device", "cpu"]


def _export_chat_template(content: str | None, out: str = "hf") -> Build:
    """`trickster export RUN --chat-template FILE` (None: a file that does not exist)."""

    def build(env: Env) -> list[str]:
        path = env.tmp / "missing.jinja" if content is None else env.write("chat.jinja", content)
        return ["export", str(env.run), "--out", str(env.tmp / out), "--chat-template", str(path)]

    return build


def _chat_template(command: str, content: str | None) -> Build:
    """`trickster serve` or `chat` with --chat-template FILE (None: a file that does not exist)."""

    def build(env: Env) -> list[str]:
        path = env.tmp / "missing.jinja" if content is None else env.write("chat.jinja", content)
        return [command, str(env.run), "--device", "cpu", "--chat-template", str(path)]

    return build


def _chat_with_a_system_message_too_long(env: Env) -> list[str]:
    """The micro model reads 64 characters: a --system of 60 and a two-character message leave a
    reply of 12 no room, so every line typed was refused as 'your message is 66 tokens'."""
    argv = _chat_template("chat", "{% for m in messages %}{{ m.content }}\n{% endfor %}")(env)
    return [*argv, "--max-new-tokens", "12", "--system", "a" * 60]


def _chat(*flags: str) -> Build:
    return lambda env: ["chat", str(env.run), "--max-new-tokens", "2", *flags]


def _generate(*flags: str) -> Build:
    return lambda env: ["generate", str(env.run), "--max-new-tokens", "2", *flags]


def _byte_model(env: Env) -> str:
    """An untrained checkpoint with the byte tokenizer, which encodes any character: nothing but
    the text itself can stop a prompt."""
    from trickster.config import config_from_dict
    from trickster.data.tokenizers import ByteTokenizer
    from trickster.train import checkpoint as ckpt

    shape = {"hidden_dim": 16, "num_layers": 1, "num_heads": 2, "mlp_dim": 32, "max_seq_len": 16}
    cfg = config_from_dict({"model_config": {**shape, "vocab_size": 256}})
    path = env.tmp / "byte-model"
    ckpt.save_checkpoint(path, Transformer(cfg.model), cfg, ByteTokenizer(), {"step": 0})
    return str(path)


# --------------------------------------------------------------------------- the matrix

CASES = [
    # ---- configuration files
    case("config-malformed-yaml", _malformed_yaml, "broken.yaml", "malformed YAML", "line "),
    case(
        "config-not-found",
        lambda env: ["train", "--config", str(env.tmp / "nope.yaml")],
        "nope.yaml not found",
        "--config",
    ),
    case("config-not-a-mapping", _yaml_not_mapping, "list.yaml", "expected a mapping"),
    case("config-not-utf8", _yaml_not_utf8, "latin1.yaml", "UTF-8"),
    case("config-section-not-mapping", _section_not_mapping, "model_config must be a mapping"),
    case(
        "config-unknown-section",
        _unknown_section_in_file,
        "unknown section 'modle_config'",
        "did you mean model_config",
    ),
    case(
        "config-unknown-key-in-file",
        _unknown_key_in_file,
        "model_config.hiden_dim",
        "did you mean model_config.hidden_dim",
    ),
    case("config-wrong-type-in-file", _wrong_type_in_file, "training_config.max_steps", "integer", "'lots'"),
    case(
        "config-number-too-big-for-an-integer",
        _huge_number_in_file,
        "huge.yaml: training_config.max_steps: input should be less than 9223372036854775808",
        "= 2**63 (got '1e30')",
    ),
    case(
        "config-date-for-a-number",
        _config_file("date.yaml", "training_config:\n  learning_rate: 2024-01-01\n"),
        "date.yaml: training_config.learning_rate: input should be a valid number",
        "(got '2024-01-01')",
    ),
    case(
        "config-switch-for-a-number",
        _switch_for_a_number_in_file,
        "training_config.max_steps: input should be an integer, not true or false (got true)",
    ),
    case(
        "config-quoted-switch",
        _quoted_switch_in_file,
        "logging_config.loss_plot: input should be true or false (got 'no'); write it without quotes",
    ),
    case(
        "config-two-unknown-keys-in-a-section",
        lambda env: [
            "train",
            "--config",
            env.write("two.yaml", "model_config:\n  hiden_dim: 64\n  num_layer: 2\n"),
        ],
        "two.yaml: unknown key model_config.hiden_dim (did you mean model_config.hidden_dim?); "
        "unknown key model_config.num_layer (did you mean model_config.num_layers?)",
    ),
    case(
        "config-number-as-a-key",
        _config_file("key.yaml", "training_config:\n  1: 2\n"),
        "key.yaml: training_config: key 1 is not a name; keys are words, such as batch_size",
    ),
    case(
        "config-nested-too-deep",
        lambda env: [
            "train",
            "--config",
            env.write("deep.yaml", "model_config: " + "[" * 10_000 + "]" * 10_000),
        ],
        "deep.yaml nests lists or mappings too deeply to read; fix the file",
    ),
    case(
        "config-integer-of-5000-digits",
        lambda env: [
            "train",
            "--config",
            env.write("digits.yaml", "training_config:\n  seed: " + "9" * 5000),
        ],
        "digits.yaml holds an integer of more than 4,300 digits, too long to read; fix the file",
    ),
    case(
        "config-hexadecimal-integer-of-5000-digits",  # read, then shown in the error line: a traceback
        _config_file("hex.yaml", "training_config:\n  seed: 0x" + "f" * 5000 + "\n"),
        "hex.yaml holds an integer of more than 4,300 digits, too long to read; fix the file",
    ),
    case(
        "config-date-that-is-no-date",  # it said 'a number too long to read (month must be in 1..12)'
        _config_file("date.yaml", "training_config:\n  seed: 2024-13-01\n"),
        "date.yaml: training_config.seed: input should be a valid integer",
        "(got '2024-13-01')",
    ),
    case(
        "config-tagged-date-that-is-no-date",
        _config_file("date.yaml", "training_config:\n  seed: !!timestamp 2024-13-01\n"),
        "date.yaml: malformed YAML at line 2, column 9: '2024-13-01' cannot be read as !!timestamp "
        "(month must be in 1..12); fix the file",
    ),
    case(
        "config-tagged-value-that-is-no-integer",  # int('abc') raised ValueError: a traceback
        _config_file("tag.yaml", "training_config:\n  seed: !!int abc\n"),
        "tag.yaml: malformed YAML at line 2, column 9: 'abc' cannot be read as !!int (invalid literal",
    ),
    case(
        "config-tagged-value-that-is-no-boolean",  # PyYAML's table of booleans raised KeyError
        _config_file("tag.yaml", "training_config:\n  seed: !!bool maybe\n"),
        "tag.yaml: malformed YAML at line 2, column 9: 'maybe' cannot be read as !!bool; fix the file",
    ),
    case(
        "config-holds-a-nul-character",
        _config_file("nul.yaml", "model_config:\n  hidden_dim: 64\0\n"),
        "nul.yaml: character '\\x00' at offset 30 cannot be in YAML",
        "remove it",
    ),
    case(
        "config-is-a-folder",
        lambda env: ["train", "--config", str(Path(env.write("conf/notes.txt", "x")).parent)],
        "/conf is a folder; pass a YAML file to --config",
    ),
    case(
        "config-is-a-fifo",
        _config_fifo,
        "fifo.yaml is not a regular file; pass a YAML file to --config",
        skip_if=not hasattr(os, "mkfifo"),
        skip_reason="no FIFOs",
    ),
    case(
        "config-of-2-mb",
        _config_file("big.yaml", "#" * 2_000_000),
        "big.yaml is 2,000,000 bytes, more than the 1,048,576 a config needs; pass the right file",
    ),
    case(
        "override-key-of-10000-characters",
        lambda env: micro_train(env, "training_config." + "k" * 10_000 + "=3"),
        "command line: unknown key training_config." + "k" * 44 + "... (10,016 characters)",
    ),
    case("config-key-given-twice", _key_given_twice, "twice.yaml", "'max_steps' is given twice", "line 4"),
    case(
        "override-not-finite",
        lambda env: ["train", "--preset", "tiny", "training_config.learning_rate=.inf"],
        "training_config.learning_rate",
        "finite number",
    ),
    # ---- overrides and cross-key checks
    case(
        "override-unknown-key",
        lambda env: ["train", "--preset", "tiny", "training_config.max_stepz=3"],
        "training_config.max_stepz",
        "max_steps",
    ),
    case(
        "override-wrong-type",
        lambda env: micro_train(env, "training_config.batch_size=abc"),
        "training_config.batch_size",
        "integer",
        "'abc'",
    ),
    case(
        "override-threads-past-any-cpu",
        lambda env: micro_train(env, "device_config.threads=1e6"),
        "device_config.threads: input should be less than or equal to 4096 (got 1000000)",
    ),
    case(
        "override-not-a-whole-number",
        lambda env: micro_train(env, "training_config.max_steps=1.5e0"),
        "training_config.max_steps: input should be a whole number (got '1.5e0')",
    ),
    case(
        "override-number-for-a-switch",
        lambda env: micro_train(env, "logging_config.progress_bar=1"),
        "logging_config.progress_bar: input should be true or false (got 1)",
    ),
    case(
        "override-beta-out-of-range",
        lambda env: micro_train(env, "training_config.betas=[1.0, 0.95]"),
        "training_config.betas[0]: input should be less than 1 (got 1.0)",
    ),
    case(
        "override-negative-batch-size",
        lambda env: micro_train(env, "training_config.batch_size=-4"),
        "training_config.batch_size",
        "expected an integer > 0 or auto (got -4)",
        "-4",
    ),
    case(
        "override-dropout-out-of-range",
        lambda env: micro_train(env, "model_config.dropout=1.5"),
        "model_config.dropout",
        "less than 1",
        "1.5",
    ),
    case(
        "override-value-of-10000-characters",
        lambda env: micro_train(env, "model_config.hidden_dim=" + "x" * 10_000),
        "model_config.hidden_dim: input should be a valid integer",
        "(got '" + "x" * 60 + "'... (10,000 characters))",
    ),
    case(
        "override-learning-rate-past-1",
        lambda env: micro_train(env, "training_config.learning_rate=1e18"),
        "training_config.learning_rate: input should be less than or equal to 1 (got '1e18')",
    ),
    case(
        "override-muon-lr-past-1",
        lambda env: micro_train(env, "training_config.optimizer=muon", "training_config.muon_lr=1e18"),
        "training_config.muon_lr: input should be less than or equal to 1 (got '1e18')",
    ),
    case(
        "override-weight-decay-zeroes-the-weights",
        lambda env: micro_train(env, "training_config.weight_decay=1e18"),
        "training_config.weight_decay x learning_rate must be < 1 (got 1e+18 x 0.003)",
        "lower training_config.weight_decay",
    ),
    case(
        "override-muon-weight-decay-zeroes-the-weights",
        lambda env: micro_train(
            env, "training_config.optimizer=muon", "training_config.muon_weight_decay=50"
        ),
        "training_config.muon_weight_decay x muon_lr must be < 1 (got 50 x 0.02)",
        "lower training_config.muon_weight_decay",
    ),
    case(
        "override-norm-eps-past-1",
        lambda env: micro_train(env, "model_config.norm_eps=1e18"),
        "model_config.norm_eps: input should be less than 1 (got '1e18')",
    ),
    case(
        "override-eval-batches-past-memory",
        lambda env: micro_train(env, "training_config.eval_batches=1e18"),
        "training_config.eval_batches 1,000,000,000,000,000,000 makes a validation set of",
        "more than the RAM",
        "lower training_config.eval_batches",
    ),
    case(
        "override-sample-tokens-past-100000",
        lambda env: micro_train(env, "training_config.sample_tokens=1e18"),
        "training_config.sample_tokens: input should be less than or equal to 100000",
        "(got 1000000000000000000)",
    ),
    case(
        "override-collective-timeout-past-1e9",
        lambda env: micro_train(env, "device_config.enable_ddp=true", "device_config.timeout_s=1e18"),
        "device_config.timeout_s: input should be less than or equal to 1000000000",
        "(got 1000000000000000000)",
    ),
    case(
        "override-accumulation-past-a-million",  # its first step never ended: 5.1e20 tokens a step
        lambda env: micro_train(env, "training_config.gradient_accumulation_steps=1e18"),
        "training_config.gradient_accumulation_steps: input should be less than or equal to 1000000",
        "(got 1000000000000000000)",
    ),
    case(
        "override-memory-past-1e18-gib",  # 1e300 GiB in bytes overflowed to inf: int() of it, a traceback
        lambda env: [
            *("plan", "--preset", "tiny", "--no-bench", "device_config.memory_gib=1e300"),
            *("training_config.batch_size=auto", "training_config.global_batch=64"),
        ],
        "device_config.memory_gib: input should be less than or equal to 1000000000000000000 (got '1e300')",
    ),
    case(
        "override-rope-theta-past-1e12",
        lambda env: micro_train(env, "model_config.rope_theta=1e18"),
        "model_config.rope_theta: input should be less than or equal to 1000000000000 (got '1e18')",
    ),
    case(
        "override-wandb-project-too-long",
        lambda env: micro_train(
            env, "logging_config.use_wandb=true", "logging_config.wandb_project=" + "p" * 200
        ),
        "logging_config.wandb_project: string should have at most 128 characters",
        "(200 characters)",
    ),
    case(
        "override-wandb-project-with-a-slash",
        lambda env: micro_train(env, "logging_config.use_wandb=true", "logging_config.wandb_project=me/proj"),
        "logging_config.wandb_project: a W&B project name cannot hold /; remove it (got 'me/proj')",
    ),
    case(
        "override-max-time-of-10000-characters",
        lambda env: micro_train(env, "training_config.max_time=" + "x" * 10_000),
        "training_config.max_time must be a duration such as 48h",
        "(got '" + "x" * 60 + "'... (10,000 characters))",
    ),
    case(
        "override-data-path-name-too-long",
        lambda env: micro_train(env, "--data", "d" * 300),
        "data_config.path: a name in the path is 300 bytes long, more than the 255 a file system allows",
        "choose a shorter path",
    ),
    case(
        "override-output-dir-name-too-long",
        lambda env: micro_train(env, "--out", "r" * 300 + "/run"),
        "logging_config.output_dir: a name in the path is 300 bytes long",
        "choose a shorter path",
    ),
    case(
        "override-output-dir-empty",
        lambda env: micro_train(env, "logging_config.output_dir="),
        "logging_config.output_dir: an empty path",
        "leave the key out",
    ),
    case(
        "config-output-dir-empty",
        _output_dir_empty_in_yaml,
        "empty.yaml: logging_config.output_dir: an empty path",
        "leave the key out",
    ),
    case(
        "override-init-from-name-too-long",
        lambda env: micro_train(env, "training_config.init_from=" + "i" * 300),
        "training_config.init_from: a name in the path is 300 bytes long",
        "choose a shorter path",
    ),
    case(  # read as null: it trained from scratch, the fine-tune asked for silently dropped
        "override-init-from-empty",
        lambda env: micro_train(env, "training_config.init_from="),
        "training_config.init_from: an empty path (an unset shell variable?)",
        "leave the key out",
    ),
    case(
        "config-output-dir-holds-nul",
        _output_dir_with_nul,
        "nul.yaml: logging_config.output_dir: a path cannot hold a NUL character; remove it",
    ),
    case(
        "hidden-dim-not-divisible-by-heads",
        lambda env: micro_train(env, "model_config.hidden_dim=100", "model_config.num_heads=8"),
        "model_config.hidden_dim (100) must be divisible by model_config.num_heads (8)",
    ),
    case(
        "heads-not-divisible-by-kv-heads",
        lambda env: micro_train(env, "model_config.num_kv_heads=3"),
        "model_config.num_heads (4) must be divisible by model_config.num_kv_heads (3)",
    ),
    case(
        "warmup-not-below-max-steps",
        lambda env: micro_train(env, "training_config.warmup_steps=40"),
        "training_config.warmup_steps must be < training_config.max_steps",
        "40 >= 40",
    ),
    case(
        "min-lr-above-learning-rate",
        lambda env: micro_train(env, "training_config.min_lr=0.01"),
        "training_config.min_lr must be <= learning_rate",
    ),
    case(
        "seq-len-above-max-seq-len",
        lambda env: micro_train(env, "training_config.seq_len=128"),
        "training_config.seq_len (128) must be <= model_config.max_seq_len (64)",
    ),
    case(
        "profile-steps-reversed",
        lambda env: micro_train(env, "logging_config.profile_steps=[5, 3]"),
        "logging_config.profile_steps must be [first, last], first <= last (got [5, 3])",
    ),
    case(
        "profile-steps-past-max-steps",
        lambda env: micro_train(env, "logging_config.profile_steps=[30, 50]"),
        "logging_config.profile_steps ends at step 50, after training_config.max_steps (40); "
        "profile steps up to 40",
    ),
    case(
        "profile-steps-from-zero",
        lambda env: micro_train(env, "logging_config.profile_steps=[0, 2]"),
        "logging_config.profile_steps",
        "greater than 0",
    ),
    case(
        "profile-steps-not-a-list",
        lambda env: micro_train(env, "logging_config.profile_steps=[2, 3"),
        "logging_config.profile_steps: input should be a list of 2 in brackets, [first, last] (got '[2, 3')",
    ),
    case(
        "override-betas-of-three-values",
        lambda env: micro_train(env, "training_config.betas=[0.9, 0.95, 0.99]"),
        "training_config.betas: input should be a list of 2 in brackets, such as [0.9, 0.95]",
    ),
    case(
        "override-without-equals",
        lambda env: micro_train(env, "training_config.max_steps"),
        "override 'training_config.max_steps' must look like section.key=value",
    ),
    case(
        "override-unknown-optimizer",
        lambda env: micro_train(env, "training_config.optimizer=moun"),
        "training_config.optimizer",
        "'adamw' or 'muon'",
        "did you mean training_config.optimizer=muon",
    ),
    case(
        "override-unknown-section",
        lambda env: micro_train(env, "trainig_config.max_steps=3"),
        "unknown section 'trainig_config'",
        "did you mean training_config",
    ),
    case(
        "override-device-cuda-without-gpu",
        lambda env: micro_train(env, "device_config.device=cuda"),
        "no CUDA GPU",
        "device_config.device=cpu",
        skip_if=HAS_CUDA,
        skip_reason="a CUDA GPU is visible",
    ),
    # ---- presets and command shape
    case(
        "unknown-preset",
        lambda env: ["train", "--preset", "tinyy"],
        "unknown preset 'tinyy'",
        "did you mean tiny",
    ),
    case(
        "preset-and-config",
        lambda env: ["train", "--preset", "tiny", "--config", env.config()],
        "--config",
        "not allowed with argument --preset",
    ),
    case(
        "train-without-model",
        lambda env: ["train", "--data", str(env.data)],
        "choose a model",
        "--preset",
        "--config",
    ),
    case("info-without-target", lambda env: ["info"], "choose what to describe", "--checkpoint"),
    case(  # a run folder alone is described as saved: a typo in it is told as generate tells it
        "info-missing-run-dir",
        lambda env: ["info", "runs/nope"],
        "error: runs/nope not found; pass a run folder",
    ),
    case(
        "info-data-folder",
        lambda env: ["info", str(env.data)],
        "is a prepared data folder, not a run",
    ),
    case(
        "info-vocab-size-not-int",
        lambda env: ["info", "--preset", "tiny", "model_config.vocab_size=big"],
        "model_config.vocab_size",
        "'big'",
    ),
    case(
        "info-unknown-key",
        lambda env: ["info", "--preset", "tiny", "model_config.hiden_dim=64"],
        "model_config.hiden_dim",
        "did you mean model_config.hidden_dim",
    ),
    case(  # a run's config.yaml is read as saved; the override's problem is still the command line's
        "info-run-config-with-a-bad-override",
        lambda env: ["info", "--config", str(env.run / "config.yaml"), "training_config.lora.rank=4"],
        "error: command line: training_config.lora adapts existing weights",
    ),
    case(  # a setting of the wrong kind a run saved is waived for info: one typed now is refused
        "info-run-config-with-an-override-of-the-wrong-kind",
        lambda env: ["info", "--config", str(env.run / "config.yaml"), "training_config.learning_rate=abc"],
        "error: command line: training_config.learning_rate: input should be a valid number",
    ),
    case(
        "unknown-subcommand",
        lambda env: ["trian"],
        "argument COMMAND: invalid choice: 'trian'",
        "did you mean train?",
    ),
    case(
        "prepare-misspelled-source",
        lambda env: ["data", "prepare", "shakspeare"],
        "invalid choice: 'shakspeare'",
        "did you mean shakespeare?",
    ),
    case(  # nanoGPT's configurator takes --max_iters=100; here settings are overrides
        "train-nanogpt-style-option",
        lambda env: micro_train(env, "--max_iters=100"),
        "unrecognized arguments: --max_iters=100",
        "did you mean training_config.max_steps=100?",
    ),
    case(
        "train-setting-as-option",
        lambda env: micro_train(env, "--max-steps", "7"),
        "unrecognized arguments: --max-steps",
        "training_config.max_steps=7",
    ),
    case(
        "generate-option-with-underscores",
        lambda env: ["generate", str(env.run), "--max_new_tokens", "5"],
        "unrecognized arguments: --max_new_tokens",
        "did you mean --max-new-tokens?",
    ),
    case(  # export merges a LoRA run's adapters itself (ELSEWHERE in cli_argparse)
        "merge-is-not-a-command",
        lambda env: ["merge", str(env.run)],
        "there is no `trickster merge`",
        "trickster export RUN --out DIR` merges a LoRA run's adapters",
    ),
    case(
        "export-has-no-merge-option",
        lambda env: ["export", str(env.run), "--merge", "--out", str(env.tmp / "out")],
        "unrecognized arguments: --merge (export merges a LoRA run's adapters into the weights it "
        "writes, always); drop --merge",
    ),
    case(  # the whole fix at once: not --merge now and --out on the next try
        "export-merge-without-out",
        lambda env: ["export", str(env.run), "--merge"],
        "drop --merge; also, the following arguments are required: --out",
    ),
    case(
        "export-merge-beside-another-unknown-option",
        lambda env: ["export", str(env.run), "--merge", "--lora-only", "--out", str(env.tmp / "out")],
        "drop --merge; also, unrecognized arguments: --lora-only",
    ),
    case("no-subcommand", lambda env: [], "required: COMMAND"),
    case("prepare-without-source", lambda env: ["data", "prepare"], "required: SOURCE"),
    case(
        "prepare-unknown-tokenizer",
        lambda env: ["data", "prepare", "python-stdlib", "--tokenizer", "wordpiece"],
        "--tokenizer",
        "invalid choice: 'wordpiece'",
    ),
    # ---- data folders
    case(
        "train-no-data-folder",
        lambda env: micro_train(env, "--data", str(env.tmp / "missing-data")),
        "missing-data: it does not exist",
        "trickster data prepare",
    ),
    case(  # it said "(meta.json missing)" of a folder that is not there
        "train-data-folder-misspelt",
        lambda env: micro_train(env, "--data", str(env.copy_data())[:-1]),
        "data-cop: it does not exist (did you mean ",
        "data-copy?)",
        "give a folder written by `trickster data prepare`",
    ),
    case(  # it said "(meta.json missing)" of the folder of stories itself
        "train-data-is-a-folder-of-text",
        lambda env: micro_train(env, "--data", str(Path(env.write("stories/a.txt", "Once.\n")).parent)),
        "stories: it holds text files, not prepared data; prepare it first (`trickster data prepare text ",
        "stories`) and give the folder that writes",
    ),
    case(  # it said "(meta.json missing)"
        "train-data-is-a-run-folder",
        lambda env: micro_train(env, "--data", str(env.run)),
        "micro-run: it is a run or checkpoint folder",
    ),
    case(  # a preparation stopped by Ctrl-C, then train: it said "(meta.json missing)"
        "train-data-preparation-unfinished",
        _data_preparation_unfinished,
        "stopped: ",
        "stopped.partial holds its unfinished preparation; run the same `trickster data prepare` command "
        "again to finish it",
    ),
    case(
        "train-data-path-unset",
        lambda env: micro_train(env, "data_config.path=null"),
        "no data",
        "--data DIR",
    ),
    case(
        "train-truncated-train-bin",
        _truncated_train_bin,
        "000000.bin holds",
        "index.json says",
        "prepare the data again",
    ),
    case("train-damaged-meta", _damaged_meta, "meta.json is damaged", "prepare the data again"),
    # meta.json not UTF-8, meta.json or index.json a folder: a UnicodeDecodeError or an OSError
    # traceback from every command that reads the folder
    case(
        "train-data-meta-not-utf8",
        _data_meta_not_utf8,
        "data-copy/meta.json is damaged",
        "prepare the data again",
    ),
    case(
        "train-data-meta-is-a-folder", _data_file_is_a_folder("meta.json"), "data-copy/meta.json is damaged"
    ),
    case(
        "train-data-index-is-a-folder",
        _data_file_is_a_folder("index.json"),
        "data-copy/index.json is damaged",
    ),
    case(  # an IndexError traceback from the embedding, when a window drew the damaged bytes
        "eval-data-shard-with-flipped-bytes",
        _eval_shard_with_flipped_bytes,
        "data-copy/val/000000.bin holds token id",
        "the file is damaged; prepare the data again",
    ),
    case(
        "train-data-shard-with-flipped-bytes",
        _train_shard_with_flipped_bytes,
        "data-copy/train/000000.bin holds token id",
        "the file is damaged; prepare the data again",
    ),
    case(  # it said 'unknown tokenizer kind None; expected one of char, ...', naming no file
        "train-data-tokenizer-an-empty-mapping",
        _data_with("tokenizer.json", "{}"),
        "data-copy/tokenizer.json is not a valid tokenizer (unknown tokenizer kind None",
        "prepare the data again",
    ),
    case(  # the tokenizers package panicked on its merges, none of which start with '##'
        "train-data-bpe-tokenizer-with-a-subword-prefix",
        _data_bpe_tokenizer_with(continuing_subword_prefix="##"),
        "data-copy/tokenizer.json is not a valid tokenizer (BPE merge 1 ",
        "the second piece does not start with the model's continuing_subword_prefix '##'); prepare the data",
    ),
    case(  # vocab_size counted its entries: a model sized by it had no row for the id, an IndexError
        "train-data-bpe-tokenizer-id-past-any-model",
        _data_bpe_tokenizer_with(vocab={"zzzz": 2**32 - 1}),
        "data-copy/tokenizer.json is not a valid tokenizer (its vocabulary gives 'zzzz' the id ",
        "4,294,967,295, past the 16,777,216 ids a model is built for); prepare the data again",
    ),
    case(
        "train-data-tokenizer-is-a-folder",
        _data_tokenizer_is_a_folder,
        "tokenizer file ",
        "/data-copy/tokenizer.json is a folder, not a file; prepare the data again",
    ),
    case(
        "vocab-size-below-tokenizer",
        lambda env: micro_train(env, "model_config.vocab_size=10"),
        "model_config.vocab_size (10) is smaller than the tokenizer's vocabulary",
        "model_config.vocab_size=",
        "auto",
    ),
    case(
        "corpus-shorter-than-window",
        _corpus_shorter_than_window,
        "fewer than one window of 201",
        "training_config.seq_len",
    ),
    case(
        "corpus-val-split-shorter-than-window",
        _val_split_shorter_than_window,
        "the val split of ",
        "fewer than one window of 201; use a larger corpus, prepare it again with a larger --val-fraction",
        "or lower training_config.seq_len",
    ),
    case("train-run-dir-is-file", _run_dir_is_file, "logging_config.output_dir", "taken is a file"),
    case(
        "train-over-trained-run",
        _already_trained,
        "already holds a trained run (its newest checkpoint: final, step 12)",
        "--resume",
        "a larger training_config.max_steps",  # --resume alone ends at once: it has done its steps
        "--out",
    ),
    case(
        "resume-run-that-has-done-its-steps",
        _resume_done_run,
        "run-copy has done its steps: its newest checkpoint (final) is at step 12",
        "training_config.max_steps is 12",
        "--resume with a larger training_config.max_steps, e.g. training_config.max_steps=24",
    ),
    case("resume-changed-model", _resume_changed_model, "cannot resume", "model_config changed (hidden_dim)"),
    case(
        "resume-lora-dropped",
        _resume_lora_changed("null"),
        "training_config.lora changed (rank 2 on wq, wv there, none here)",
        "restore it with training_config.lora={rank: 2, alpha: 16, targets: [wq, wv]}",
    ),
    case(
        "resume-lora-other-rank",
        _resume_lora_changed("{rank: 4}"),
        "training_config.lora changed (rank 2 on wq, wv there, rank 4 on wq, wv here)",
    ),
    case(
        "resume-from-scratch-run-with-init-from",
        _resume_with_init_from,
        "cannot resume from ",
        "run-copy/checkpoints/final: the run was trained from scratch",
        "never from training_config.init_from (run-copy/checkpoints/step_000006); drop init_from",
        "or start a fine-tune of run-copy/checkpoints/step_000006 with another --out",
    ),
    case(
        "resume-run-saved-before-a-training-limit",  # sample_tokens <= 100,000 since 2026-11-29 22:40
        _resume_saved_before_a_limit,
        "run-copy/config.yaml: training_config.sample_tokens: input should be less than or equal to "
        "100000 (got 200000); to continue the run, set training_config.sample_tokens on the command "
        "line within the limits, e.g. training_config.sample_tokens=100000",
    ),
    case(
        "resume-run-with-a-setting-of-the-wrong-kind",
        _resume_with_a_setting_of_the_wrong_kind,
        "run-copy/config.yaml: training_config.learning_rate: input should be a valid number, unable "
        "to parse string as a number (got 'abc'); to continue the run, set training_config.learning_rate "
        "on the command line within the limits, e.g. training_config.learning_rate=0.0003",
    ),
    case(
        "resume-with-another-optimizer",
        _resume_with_another_optimizer,
        "cannot resume",
        "training_config.optimizer=adamw",
    ),
    case(  # the seed drew the validation windows; the data order continues from the checkpoint
        "resume-with-another-seed",
        _resume_with_another_seed,
        "it was trained with training_config.seed=7",
        "set training_config.seed=7",
    ),
    case(  # cut short: no longer the bytes whose checksum was saved
        "resume-damaged-trainer-state",
        _resume_damaged_trainer_state,
        "run-copy/checkpoints/final/trainer.pt no longer matches the checksum saved with it",
        "move final out of ",
        "run-copy/checkpoints to resume from step_000006 (step 6), the newest intact checkpoint",
        "(nothing was changed)",
    ),
    case(
        "resume-damaged-trainer-state-saved-without-checksums",
        functools.partial(_resume_damaged_trainer_state, checksums=False),
        "trainer.pt refused or damaged",
        "resume from another checkpoint",
    ),
    case(
        "resume-run-manifest-is-a-folder",
        _resume_run_file_is_a_folder("manifest.json"),
        "could not write run folder",
        "(Is a directory:",
        "run-copy/manifest.json); move that folder away, then continue with --resume",
    ),
    case(
        "resume-run-tokenizer-is-a-folder",
        _resume_run_file_is_a_folder("tokenizer.json"),
        "could not write run folder",
        "(Is a directory:",
        "run-copy/tokenizer.json); move that folder away, then continue with --resume",
    ),
    case(
        "resume-run-config-is-a-folder",
        _resume_run_file_is_a_folder("config.yaml"),
        "could not write run folder",
        "(Is a directory:",
        "run-copy/config.yaml); move that folder away, then continue with --resume",
    ),
    case(
        "resume-weights-with-a-flipped-byte",
        _resume_flipped("final/model.safetensors"),
        "final/model.safetensors no longer matches the checksum saved with it (changed or damaged on disk",
        "move final out of ",
        "to resume from step_000006 (step 6), the newest intact checkpoint",
    ),
    case(
        "resume-trainer-state-with-a-flipped-byte",
        _resume_flipped("final/trainer.pt"),
        "final/trainer.pt no longer matches the checksum saved with it",
        "move final out of ",
        "to resume from step_000006 (step 6)",
    ),
    case(
        "resume-with-no-intact-checkpoint-left",
        _resume_flipped("final/trainer.pt", "step_000006/model.safetensors"),
        "final/trainer.pt no longer matches the checksum saved with it",
        "the run has no other intact checkpoint to resume from; start a new run with another --out",
    ),
    case(  # an IsADirectoryError traceback
        "resume-trainer-state-is-a-folder",
        _resume_trainer_state_is_a_folder,
        "final/trainer.pt refused or damaged (Is a directory)",
        "resume from another checkpoint",
    ),
    case(
        "resume-optimizer-state-by-position",
        _resume_optimizer_state_by_position,
        "cannot resume",
        "training_config.init_from=",
    ),
    case("resume-other-data", _resume_other_data, "prepared data changed", "trained on", "pass --data"),
    case("resume-resplit-data", _resume_resplit_data, "prepared data changed", "pass --data"),
    case("resume-other-tokenizer", _resume_other_tokenizer, "tokenizer changed", "pass --data"),
    case(  # the val split came first; its fix (prepare it again) was no fix
        "resume-on-data-of-another-tokenizer-too-small-for-a-window",
        _resume_on_small_bytes,
        "run-copy/checkpoints/final: the tokenizer changed; it was trained on ",
        "pass --data ",
    ),
    case(  # the model's vocabulary came first; its fix (vocab_size=256) the resume refuses
        "resume-on-data-of-another-tokenizer-with-more-ids",
        _resume_on_bytes,
        "run-copy/checkpoints/final: the tokenizer changed; it was trained on ",
        "pass --data ",
    ),
    case(  # it said 'has done its steps' of a run stopped halfway, and to train to 12 (twice step 6)
        "resume-with-max-steps-below-its-checkpoint",
        _resume_below_its_checkpoint,
        "cannot resume ",
        "run-copy with training_config.max_steps=4: its newest checkpoint (step_000006) is at step 6 "
        "already, and a resume cannot go back; set training_config.max_steps above 6, e.g. "
        "training_config.max_steps=12 (as the run was started), or start a new run of 4 steps with "
        "another --out (nothing was changed)",
    ),
    case(
        "resume-with-max-steps-below-a-given-warmup",
        _resume_below_a_given_warmup,
        "training_config.warmup_steps must be < training_config.max_steps (got 20 >= 10); set "
        "training_config.warmup_steps=1, a tenth of the steps",
    ),
    case(
        "train-in-a-run-folder-another-process-holds",
        _train_while_held,
        "busy is in use: process 4242 is training there; wait for it to end (or stop it), or choose "
        "another --out (nothing was changed)",
    ),
    case(  # it said 'or choose another --out', which holds none of the run's checkpoints
        "resume-in-a-run-folder-another-process-holds",
        _resume_while_held,
        "run-copy is in use: process 4242 is training there; a resume continues the run in this folder, "
        "so wait for it to end, or stop it with kill 4242 (it saves a checkpoint as it stops), then "
        "resume again (nothing was changed)",
    ),
    case("resume-data-prepared-again", _resume_data_prepared_again, "data changed", "was prepared again"),
    case(  # it said 'prepare it as it was', naming neither tokenizer
        "resume-data-prepared-again-with-another-tokenizer",
        _resume_data_prepared_again_with_bytes,
        "the tokenizer changed; ",
        "bytes-data was prepared again since the run trained on it (the run trained with char, "
        "vocabulary 61; it holds byte, vocabulary 256 now): prepare it as it was, or start a new run "
        "with another --out",
    ),
    case(  # it said to choose a new --out, though nothing was in the way of a run starting there
        "resume-with-nothing-to-resume",
        _resume_in_empty_folder,
        "nothing to resume in",
        "fresh: it holds no run; set training_config.resume=auto",
        "or drop --resume and start a run there",
    ),
    case(
        "resume-where-a-run-saved-no-checkpoint",
        lambda env: micro_train(env, "--resume", "--out", str(_run_without_checkpoint(env))),
        "nothing to resume in",
        "no complete checkpoint; set training_config.resume=auto",
        "or drop --resume and choose a new --out",
    ),
    case(  # it said to pass --resume, which found nothing to resume
        "train-where-a-run-saved-no-checkpoint",
        _start_where_a_run_saved_no_checkpoint,
        "run-copy already exists and is not empty; it holds a run that saved no checkpoint",
        "training_config.resume=auto",
    ),
    case(
        "train-out-not-empty",
        lambda env: micro_train(env, "--out", str(Path(env.write("notes/todo.txt", "read\n")).parent)),
        "notes already exists and is not empty; choose a new folder with --out",
    ),
    case(
        "resume-copied-run-by-its-config",
        _resume_copied_run_by_its_config,
        "was moved or copied",
        "add --out",
    ),
    case(
        "resume-run-from-another-folder",
        _resume_run_from_another_folder,
        "output_dir runs/s1 is relative to ",
        "stories, where the run started",
        "run the command from there (cd ",
    ),
    case(
        "override-resume-not-bool-or-auto",
        lambda env: micro_train(env, "training_config.resume=maybe"),
        "training_config.resume",
        "'maybe'",
    ),
    case(
        "override-seed-beyond-64-bits",
        lambda env: micro_train(env, f"training_config.seed={2**64}"),
        "training_config.seed",
        "less than 9223372036854775808",
    ),
    case(
        "override-keep-last-zero",
        lambda env: micro_train(env, "training_config.keep_last=0"),
        "training_config.keep_last",
        "greater than 0",
    ),
    case(
        "train-out-of-memory-in-a-step",
        functools.partial(_out_of_memory, method="step", error=torch.OutOfMemoryError("CUDA out of memory")),
        "out of memory (RAM of cpu",
        "during a training step at step 3 (micro-batch 8 x 64 tokens)",
        "training_config.batch_size=4 with gradient_accumulation_steps=2",
        "continue from checkpoints/step_000002 with --resume",
    ),
    case(
        "train-cpu-allocator-refuses-a-step",
        _cpu_allocator_refuses_the_first_step,
        "out of memory (RAM of cpu",
        "during a training step at step 1 (micro-batch 8 x 64 tokens)",
        "no checkpoint was saved yet: run the command again with that change and training_config.resume=auto",
    ),
    case(
        "train-out-of-memory-in-an-evaluation",
        functools.partial(_out_of_memory, method="evaluate", error=MemoryError()),
        "out of memory",
        "during an evaluation at step 2",
        "continue from checkpoints/step_000002",
    ),
    case(
        "train-batch-auto-without-a-global-batch",
        lambda env: micro_train(env, "training_config.batch_size=auto"),
        "batch_size: auto needs the batch to keep",
        "training_config.global_batch",
    ),
    case(
        "train-batch-auto-with-accumulation",
        lambda env: micro_train(
            env,
            "training_config.batch_size=auto",
            "training_config.global_batch=32",
            "training_config.gradient_accumulation_steps=4",
        ),
        "gradient_accumulation_steps is chosen by batch_size: auto",
    ),
    case(
        # it searched 1e18 / 30,692 divisors: a hang; its validation draws (a global batch each)
        # are too big first (the accumulation limit past them: test_memory)
        "train-batch-auto-global-batch-past-memory",
        lambda env: micro_train(
            env, "training_config.batch_size=auto", "training_config.global_batch_tokens=1e18"
        ),
        "batch_size auto: a global batch of 15,625,000,000,000,000 windows of 64 tokens makes each "
        "validation draw",
        "lower training_config.global_batch (or global_batch_tokens)",
    ),
    case(
        "train-global-batch-without-auto",
        lambda env: micro_train(env, "training_config.global_batch=32"),
        "global_batch and global_batch_tokens only apply to batch_size: auto",
    ),
    case(
        "train-model-too-big-for-memory",
        lambda env: micro_train(env, "model_config.hidden_dim=1e8"),
        "the model is too big for cpu (RAM",
        "parameters, and its weights, gradients and optimizer state need",
        "lower model_config.hidden_dim",
        "`trickster plan` shows what fits (nothing was changed)",
    ),
    case(
        "train-model-size-overflows",
        lambda env: micro_train(env, "model_config.hidden_dim=1e18"),
        "the model is too big for cpu",
        "e+",
        "lower model_config.hidden_dim",
    ),
    case(
        "train-mlp-too-big-for-memory",
        lambda env: micro_train(env, "model_config.mlp_dim=1e18"),
        "the model is too big for cpu",
        "mlp_dim",
    ),
    case(
        "train-vocabulary-too-big-for-memory",
        lambda env: micro_train(env, "model_config.vocab_size=1e18"),
        "the model is too big for cpu",
        "vocab_size",
    ),
    case(
        "train-model-too-big-with-batch-auto",
        lambda env: micro_train(
            env,
            "model_config.hidden_dim=1e8",
            "training_config.batch_size=auto",
            "training_config.global_batch=8",
        ),
        "the model is too big for cpu",
        "lower model_config.hidden_dim",
    ),
    case(
        "train-model-allocation-fails",
        # memory_gib lets the model past the formula; torch then cannot size its 1e18 x 64 embedding
        lambda env: micro_train(env, "model_config.vocab_size=1e18", "device_config.memory_gib=1e18"),
        "the model is too big for cpu (device_config.memory_gib",
        "building it failed to allocate memory (its weights alone: ",
        "lower model_config.hidden_dim, mlp_dim, num_layers or vocab_size",
    ),
    case(
        "train-micro-batch-too-big-for-memory",
        lambda env: micro_train(env, "training_config.batch_size=1e18"),
        "one training step does not fit in memory (RAM of cpu",
        "micro-batch of 1,000,000,000,000,000,000 x 64 tokens",
        "lower training_config.batch_size to ",
    ),
    case(
        "train-micro-batch-past-a-ulimit",
        _step_past_a_ulimit,
        "one training step does not fit in memory (RAM allowed by ulimit -v of cpu, 1.0 GiB)",
        "micro-batch of 16,384 x 64 tokens",
    ),
    case(
        "train-micro-batch-too-big-for-memory-gib",
        lambda env: micro_train(
            env,
            "training_config.batch_size=1024",
            "device_config.memory_gib=0.25",
            "training_config.max_steps=6",
        ),
        "one training step does not fit in memory (device_config.memory_gib of cpu, 256.0 MiB)",
        "`trickster plan` suggests training_config.batch_size=",
        "(the same 1,024 windows per step) (nothing was changed)",
    ),
    case(
        "lora-rank-too-big-for-memory",
        _lora_too_big,
        "the model is too big for cpu",
        "parameters and 32,768 more in LoRA adapters",  # the base's count, then the adapters'
        "lower training_config.lora.rank (now 64)",
    ),
    case(
        "train-batch-auto-no-window-fits",
        _no_window_fits,
        "a micro-batch of one window of 64 tokens does not fit",
        "training_config.seq_len",
    ),
    case(
        "train-batch-auto-no-window-fits-with-accumulation",
        _no_window_fits_accumulating,
        "a step of 8 windows needs gradient accumulation",
        "lower training_config.global_batch to 1 window(s) (no accumulation)",
    ),
    case(  # said "FSDP2 keeps whole float32 gradients" to DDP jobs too
        "train-batch-auto-no-window-fits-with-accumulation-under-ddp",
        _no_window_fits_accumulating_ddp,
        "a step of 8 windows needs gradient accumulation, and with it DDP keeps a second float32 copy "
        "of the gradients beside its all-reduce buckets:",
        "lower training_config.global_batch to 1 window(s) (no accumulation), shard the model over "
        "several processes instead (device_config.enable_fsdp=true)",
    ),
    case(
        "train-max-time-not-a-duration",
        lambda env: micro_train(env, "training_config.max_time=soon"),
        "training_config.max_time must be a duration such as 48h, 90m",
        "'soon'",
    ),
    case(  # seconds as YAML text with a fraction: it said only "input should be a whole number"
        "train-max-time-fraction-of-seconds",
        lambda env: ["train", "--config", env.write("budget.yaml", 'training_config:\n  max_time: "90.5"\n')],
        "budget.yaml: training_config.max_time: input should be a whole number of seconds: write 90 or 91, "
        "or 90.5s (got '90.5')",
    ),
    case(
        "resume-time-budget-spent",
        _time_budget_spent,
        "training_config.max_time (1h 00m) is spent",
        "raise max_time to continue with --resume",
    ),
    case(
        "train-loss-spikes-beyond-max-rollbacks",
        _spikes_beyond_max_rollbacks,
        "another loss spike",
        "after 0 rollbacks; the last good checkpoint is checkpoints/step_000015",
    ),
    case(
        "training-diverges",
        _diverging_run,
        "training stopped at step 2: 2 updates in a row had a non-finite loss",
        "training_config.learning_rate",
        "no checkpoint was saved yet",
        "then run the command again with training_config.resume=auto",
    ),
    case(
        "disk-full-at-checkpoint",
        _disk_full_at_checkpoint,
        "the disk is full at step 4: could not write checkpoint",
        "No space left on device",
        # the run's first checkpoint: --resume would find nothing to resume
        "free disk space, then run the command again with training_config.resume=auto",
    ),
    case(
        "resume-in-a-read-only-run-folder",
        _resume_in_read_only_run,
        "could not write run folder",
        # not 'or choose another --out': a resume continues the checkpoints of this folder
        "(Read-only file system); make the folder writable, then continue with --resume",
    ),
    case(
        "resume-on-a-full-disk",
        _resume_on_a_full_disk,
        "could not write run folder",
        "(No space left on device); free disk space, then continue with --resume",
    ),
    case(
        "train-where-the-file-system-cannot-lock",
        _train_where_locks_fail,
        "cannot lock run folder",
        "(No locks available); choose another --out, on a file system that locks files (a local disk)",
    ),
    case(  # it said 'choose another --out', where a resume finds none of the run's checkpoints
        "resume-where-the-file-system-cannot-lock",
        _resume_where_locks_fail,
        "cannot lock run folder",
        "(No locks available); copy the folder to a file system that locks files (a local disk), then "
        "continue the copy with --resume --out COPY (nothing was changed)",
    ),
    case(
        "train-into-a-system-folder",
        lambda env: micro_train(env, "--out", "/proc/self"),
        "could not write run folder /proc/self",
        "no file can be written there (as in /proc or /sys); choose another --out",
        skip_if=not Path("/proc/self").is_dir(),
        skip_reason="no /proc on this system",
    ),
    case(
        "mesh-shape-does-not-match-processes",
        lambda env: micro_train(env, "device_config.enable_fsdp=true", "device_config.mesh_shape=[1, 2]"),
        "device_config.mesh_shape [1, 2] multiplies to 1 x 2 = 2, but the job has 1 process(es)",
    ),
    case(  # a grid for two replicas, run without torchrun: it trained one process, the mesh ignored
        "mesh-shape-without-torchrun",
        lambda env: micro_train(env, "device_config.mesh_shape=[2, 1]"),
        "device_config.mesh_shape [2, 1] multiplies to 2 x 1 = 2, but the job has 1 process(es)",
    ),
    case(
        "ddp-and-fsdp-together",
        lambda env: micro_train(env, "device_config.enable_ddp=true", "device_config.enable_fsdp=true"),
        "set device_config.enable_ddp or enable_fsdp, not both",
    ),
    case(  # torch: "Distributed package doesn't have NCCL built in", a traceback
        "nccl-on-a-cpu",
        lambda env: micro_train(env, "device_config.enable_ddp=true", "device_config.backend=nccl"),
        "device_config.backend=nccl runs on CUDA GPUs only, and this job runs on cpu; set "
        "device_config.backend=auto (gloo off CUDA) or gloo",
    ),
    case(  # a group of one, then the device mesh's traceback ("Mesh should not be bigger than ...")
        "world-size-without-rank",
        _world_size_without_rank,
        "the environment says WORLD_SIZE=2 but sets no RANK: torchrun sets both for each process it "
        "starts; launch the job with torchrun --nproc-per-node 2, or unset WORLD_SIZE",
    ),
    case(  # int()'s ValueError, a traceback
        "world-size-not-a-number",
        _world_size_not_a_number,
        "the environment's WORLD_SIZE='two' is not a number of processes; launch the job with "
        "torchrun, which sets it, or unset WORLD_SIZE",
    ),
    case(  # a ValueError traceback from int()
        "rank-not-a-number",
        _rank_not_a_number,
        "the environment's RANK='²' is not a process number; launch the job with torchrun, which "
        "sets it, or unset RANK",
    ),
    case(  # said the torchrun launcher had ended, and to start the job again with torchrun
        "master-port-in-use",
        _master_port_in_use,
        "the job's store cannot listen on MASTER_ADDR=127.0.0.1 MASTER_PORT=",
        "another program, or a job still running, holds that port; set MASTER_PORT to a free one",
    ),
    # ---- data prepare
    case(
        "prepare-empty-corpus",
        lambda env: ["data", "prepare", "text", env.write("empty.txt", ""), "--out", str(env.tmp / "out")],
        "corpus 'text' holds no text: ",
        "empty.txt is empty; pass files that contain text",
    ),
    case(
        "prepare-empty-corpus-bpe",  # an end-of-text id alone was written as a prepared folder
        lambda env: [
            "data",
            "prepare",
            "text",
            env.write("empty.txt", ""),
            "--tokenizer",
            "bpe",
            "--out",
            "o",
        ],
        "empty.txt is empty",
    ),
    case(
        "prepare-empty-files-only",
        lambda env: ["data", "prepare", "text", env.write("a.txt", ""), env.write("b.txt", ""), "--out", "o"],
        "all 2 of its files are empty (the first: ",
        "a.txt)",
    ),
    case(
        "prepare-not-utf8",
        lambda env: [
            "data",
            "prepare",
            "text",
            env.write("latin1.txt", b"caf\xe9\n"),
            "--out",
            str(env.tmp / "out"),
        ],
        "latin1.txt is not UTF-8",
        "iconv",
    ),
    case(
        "prepare-glob-matches-nothing",
        lambda env: [
            "data",
            "prepare",
            "text",
            str(env.tmp / "corpus" / "*.txt"),
            "--out",
            str(env.tmp / "out"),
        ],
        "no files match",
        "*.txt",
    ),
    case(
        "prepare-text-missing-file",
        lambda env: ["data", "prepare", "text", str(env.tmp / "missing.txt"), "--out", str(env.tmp / "out")],
        "missing.txt not found",
    ),
    case(  # each format's missing file said "pass existing text files or folders"
        "prepare-jsonl-missing-file",
        lambda env: ["data", "prepare", "jsonl", "nope.jsonl", "--text-field", "text", "--out", "o"],
        "nope.jsonl not found; pass existing JSON Lines files (.jsonl) or folders",
    ),
    case(
        "prepare-parquet-missing-file",
        lambda env: ["data", "prepare", "parquet", "nope.parquet", "--text-field", "text", "--out", "o"],
        "nope.parquet not found; pass existing Parquet files or folders",
    ),
    case(
        "prepare-parquet-records-missing-file",
        lambda env: ["data", "prepare", "parquet", "nope.parquet", "--format", "alpaca", "--out", "o"],
        "nope.parquet not found; pass existing Parquet files or folders",
    ),
    case(  # "pass a text file"
        "prepare-jsonl-records-from-a-folder",
        _records_from_a_folder,
        "chats is a folder; pass a JSON Lines file (.jsonl)",
    ),
    case(
        "prepare-parquet-empty-path",
        lambda env: ["data", "prepare", "parquet", "", "--text-field", "text", "--out", "o"],
        "a path is empty (an unset shell variable?); pass Parquet files or folders",
    ),
    case(  # Path("storie/") is storie: the line named another path than the one typed
        "prepare-text-missing-folder-as-typed",
        lambda env: ["data", "prepare", "text", f"{env.tmp / 'storie'}/", "--out", str(env.tmp / "out")],
        "storie/ not found; pass existing text files or folders",
    ),
    case(
        "prepare-text-dangling-symlink",  # it said "not found" of a name `ls` shows
        lambda env: ["data", "prepare", "text", _link(env, "notes.txt", "moved/notes.txt"), "--out", "o"],
        "notes.txt is a symlink to moved/notes.txt, which does not exist; fix the link or pass",
    ),
    case(
        "prepare-text-symlink-loop",
        lambda env: ["data", "prepare", "text", _link(env, "a.txt", "b.txt", "a.txt"), "--out", "o"],
        "a.txt is a symlink loop (following it leads back to itself); fix or remove the link",
    ),
    case(
        "prepare-shakespeare-path-symlink-loop",  # "cannot be read (Too many levels of symbolic links)"
        lambda env: ["data", "prepare", "shakespeare", "--path", _link(env, "a.txt", "a.txt"), "--out", "o"],
        "a.txt is a symlink loop",
    ),
    case(
        "prepare-text-from-a-pipe",
        lambda env: ["data", "prepare", "text", _fifo(env.tmp / "pipe"), "--out", str(env.tmp / "out")],
        "pipe is not a regular file",
    ),
    case(
        "prepare-blank-file",  # one document of blanks: dropped like a blank one among many; said "is empty"
        lambda env: ["data", "prepare", "text", env.write("blank.txt", " \n\t\n  "), "--out", "o"],
        "corpus 'text' holds no text: ",
        "blank.txt holds only whitespace; pass files that contain text",
    ),
    case(
        "prepare-empty-and-blank-files",  # said "after dropping 1 blank or duplicate document"
        lambda env: ["data", "prepare", "text", env.write("e.txt", ""), env.write("b.txt", " "), "--out=o"],
        "corpus 'text' holds no text: all 2 of its files are empty or hold only whitespace (1 empty, the "
        "first: ",
        "e.txt; 1 of whitespace only); pass files that contain text",
    ),
    case(  # it said "corpus 'jsonl' is empty", naming no file
        "prepare-jsonl-empty-file",
        lambda env: ["data", "prepare", "jsonl", env.write("stories.jsonl", "\n\n"), "--text-field", "text"],
        "corpus 'jsonl' holds no text: ",
        "stories.jsonl holds no records; pass files that contain text",
    ),
    case(  # it said "corpus 'parquet' is empty", naming no file
        "prepare-parquet-without-rows",
        lambda env: _parquet(env, columns={"text": []}),
        "corpus 'parquet' holds no text: ",
        "d.parquet holds no rows; pass files that contain text",
    ),
    case(
        "prepare-shakespeare-path-blank",  # said "corpus 'shakespeare' is empty"
        lambda env: ["data", "prepare", "shakespeare", "--path", env.write("input.txt", "\n"), "--out", "o"],
        "input.txt holds only whitespace; pass --path a copy of Tiny Shakespeare (input.txt)",
    ),
    case(
        "prepare-jsonl-null-and-blank-records",  # said "after dropping 1 blank or duplicate document"
        _jsonl(['{"text": null, "body": "Who?"}', '{"text": " ", "body": "Nay."}'], "--text-field", "text"),
        "corpus 'jsonl' holds no text: all 2 of its records have no text in field \"text\" (null, empty, "
        "missing or whitespace only); they have: text, body; pass --text-field FIELD",
    ),
    case(
        "prepare-text-with-a-nul-byte",  # valid UTF-8, but a binary file or UTF-16 without its mark
        lambda env: [
            "data",
            "prepare",
            "text",
            env.write("t.txt", "T\x00o\x00 \x00b\x00e\x00"),
            "--out",
            "o",
        ],
        "t.txt holds a NUL byte (at offset 1)",
        "iconv -f utf-16",
    ),
    case(
        "prepare-text-utf16",
        lambda env: ["data", "prepare", "text", env.write("u.txt", "To be\n".encode("utf-16")), "--out", "o"],
        "u.txt is UTF-16 text",
        "iconv -f utf-16 -t utf-8",
    ),
    case(
        "prepare-text-utf32",  # its mark starts with UTF-16's: it was called UTF-16
        lambda env: ["data", "prepare", "text", env.write("u.txt", "To be\n".encode("utf-32")), "--out", "o"],
        "u.txt is UTF-32 text",
        "iconv -f utf-32 -t utf-8",
    ),
    case(
        "prepare-text-empty-path",  # "$CORPUS" unset: Path("") read the whole current folder
        _empty_path,
        "a path is empty (an unset shell variable?)",
    ),
    case(
        "prepare-file-name-with-a-line-break",  # a newline is legal in a file name: two lines
        lambda env: ["data", "prepare", "text", env.write("bad\nname.txt", b"caf\xe9"), "--out", "o"],
        "bad\\nname.txt is not UTF-8 text",
    ),
    case(
        "prepare-text-zstd",  # read as bytes it was 'not UTF-8 (iconv -f latin1)'
        lambda env: [
            "data",
            "prepare",
            "text",
            env.write("c.txt.zst", b"\x28\xb5\x2f\xfd\x00\x58"),
            "--out",
            "o",
        ],
        "c.txt.zst is compressed with zstd (unzstd FILE); decompress it first",
    ),
    case(
        "prepare-text-gzip-cut-short",  # a download that stopped half-way
        lambda env: [
            "data",
            "prepare",
            "text",
            env.write("c.txt.gz", gzip.compress(b"To be, or not to be" * 50)[:40]),
            "--out",
            "o",
        ],
        "c.txt.gz cannot be decompressed",
        "whole .gz file",
    ),
    case(
        "prepare-shakespeare-from-a-pipe",  # nothing writes to it: reading waited forever
        lambda env: ["data", "prepare", "shakespeare", "--path", _fifo(env.tmp / "pipe"), "--out", "o"],
        "pipe is not a regular file",
    ),
    case(
        "prepare-records-from-a-pipe",
        lambda env: ["data", "prepare", "jsonl", _fifo(env.tmp / "pipe"), "--format", "prompt-response"],
        "pipe is not a regular file (a pipe or device?); pass a JSON Lines file (.jsonl)",
    ),
    case(
        "prepare-empty-folder",
        lambda env: [
            "data",
            "prepare",
            "text",
            str(Path(env.write("empty/.keep", "")).parent),
            "--out",
            str(env.tmp / "out"),
        ],
        "no files found in",
        "hidden files, such as .keep, are skipped",
    ),
    case("prepare-out-is-file", _prepare_out_is_file, "taken is a file", "--out"),
    case("prepare-out-under-a-file", _prepare_out_under_file, "taken is a file", "taken/data", "--out"),
    case("prepare-out-is-other-folder", _prepare_out_is_other_folder, "mine", "--out"),
    case(
        "prepare-again-beside-the-users-notes",
        _prepare_again_beside_the_users_notes,
        "tokenizer char, now byte",
        "it holds NOTES.md, which data prepare did not write",
        "move it out of",
    ),
    case(
        "prepare-on-a-full-disk",
        lambda env: _prepare_into(env, errno.ENOSPC),
        "could not write",
        "refused/data.partial (No space left on device); free disk space, then run the "
        "same command again to continue, or choose another --out",
    ),
    case(
        "prepare-into-a-folder-without-write-permission",
        lambda env: _prepare_into(env, errno.EACCES),
        "could not write",
        "refused/data.partial (Permission denied); make the folder writable, then run "
        "the same command again to continue, or choose another --out",
    ),
    case(
        "prepare-bad-val-fraction",
        lambda env: [
            "data",
            "prepare",
            "python-stdlib",
            "--val-fraction",
            "1.5",
            "--out",
            str(env.tmp / "out"),
        ],
        "--val-fraction must be between 0 and 1",
        "1.5",
    ),
    case(
        "prepare-shakespeare-missing-path",
        lambda env: [
            "data",
            "prepare",
            "shakespeare",
            "--path",
            str(env.tmp / "missing.txt"),
            "--out",
            str(env.tmp / "out"),
        ],
        "missing.txt not found",
    ),
    case(
        "prepare-shakespeare-offline", _offline_download, "could not download http://127.0.0.1:9/x", "--path"
    ),
    case(
        "prepare-hf-offline-or-unknown", _hf_offline, "could not open dataset 'no-such-user/no-such-dataset'"
    ),
    case(
        "prepare-tinystories-offline",
        lambda env: [*_hf_offline(env)[:2], "tinystories", "--out", str(env.tmp / "o")],
        "could not open dataset 'roneneldan/TinyStories'",
        "pass its folder with --dataset FOLDER",
    ),
    case(  # the hub's rows in JSON Lines' words: it said "has no field 'text'"
        "prepare-hf-no-text-field",
        _hf_saved,
        'saved\' has no "text" field (it has: content); pass --text-field FIELD (a nested one as ',
        "OUTER.INNER)",
    ),
    case(
        "prepare-hf-no-such-split",
        lambda env: _hf_saved(env, "--split", "test"),
        "has no split 'test' (it has: train)",
        "--split",
    ),
    case(
        "prepare-tinystories-folder-without-validation",
        lambda env: [
            "data",
            "prepare",
            "tinystories",
            "--dataset",
            _texts(env, 3),
            "--out",
            str(env.tmp / "o"),
        ],
        "could not open dataset",
        "split 'validation'",
        "tinystories reads the 'text' field of splits 'train' and 'validation'",
    ),
    case(
        "prepare-tinystories-without-text-field",
        lambda env: ["data", "prepare", "tinystories", "--dataset", _stories_without_text(env), "--out", "o"],
        "stories' has no \"text\" field (it has: story); tinystories reads the 'text' field",
        "trickster data prepare hf DATASET",
    ),
    case(
        "prepare-hf-on-a-jsonl-file",
        lambda env: ["data", "prepare", "hf", env.write("rows.jsonl", '{"text": "a"}\n'), "--out", "o"],
        "rows.jsonl is a file",
        "`trickster data prepare jsonl",
    ),
    case(  # the Hub's words: "Repo id must use alphanumeric chars, '-', '_' or '.'"
        "prepare-hf-missing-local-folder",
        lambda env: ["data", "prepare", "hf", "./stories", "--out", "o"],
        "error: ./stories not found; pass an existing folder, or a dataset name on the Hub (ORG/NAME)",
    ),
    case(  # "notes.txt line 1 is not JSON (Expecting value at column 1); write one JSON object per line"
        "prepare-jsonl-plain-text-file",
        lambda env: [
            "data",
            "prepare",
            "jsonl",
            env.write("notes.txt", "To be, or not\n"),
            "--text-field",
            "t",
        ],
        "notes.txt line 1 is not JSON: the file holds plain text, not JSON Lines (one object a line); "
        "read it as text with `trickster data prepare text /",
        "notes.txt`, or write one JSON object per line",
    ),
    case(
        "prepare-jsonl-records-plain-text-file",
        lambda env: ["data", "prepare", "jsonl", env.write("notes.txt", "To be, or not\n"), "--out", "o"],
        "notes.txt line 1 is not JSON: the file holds plain text, not JSON Lines",
    ),
    case("prepare-parquet-no-column", _parquet, "has no column 'text'", "(it has: body)", "--text-field"),
    case(
        "prepare-parquet-column-not-text",  # it said what, not what to do
        lambda env: _parquet(env, columns={"text": [b"one story", b"another story"]}),
        "d.parquet: column 'text' holds binary, not text",
        "pass --text-field COLUMN naming a column of strings",
    ),
    case(
        "prepare-hf-field-not-text",  # a nested record: it said what, not what to do
        lambda env: _hf_saved(env, "--text-field", "story", columns={"story": [{"a": "b"}, {"a": "c"}]}),
        'saved\': "story" is an object (it has: a); name the field inside it that holds the text, as '
        "--text-field story.FIELD",
    ),
    case(
        "prepare-hf-field-not-text-at-all",
        lambda env: _hf_saved(env, "--text-field", "story", columns={"story": [1, 2]}),
        'saved\': "story" must be a string (got a number); pass --text-field FIELD naming a field of ',
        "strings",
    ),
    case(
        "prepare-hf-nested-field-missing",
        lambda env: _hf_saved(env, "--text-field", "story.text", columns={"story": [{"a": "b"}, {"a": "c"}]}),
        'saved\' has no "story.text" field ("story" has: a); pass --text-field FIELD (a nested one as '
        "OUTER.INNER)",
    ),
    case(  # `--text-field "$FIELD"`, FIELD unset: it read the column 'text' without a word
        "prepare-parquet-text-field-empty",
        lambda env: _parquet(env, "--text-field", "", columns={"text": ["one story", "another"]}),
        "argument --text-field: '' is empty (an unset shell variable?); give the field that holds the text",
    ),
    case(  # it was read, then not used: the dataset's own validation split was kept whole
        "prepare-tinystories-val-fraction",
        lambda env: ["data", "prepare", "tinystories", "--dataset", "stories", "--val-fraction", "0.05"],
        "--val-fraction does not apply to tinystories: its validation split is the dataset's own, whole",
        "drop --val-fraction",
    ),
    case(  # `--dataset "$DIR"`, DIR unset: it read TinyStories from the Hub
        "prepare-tinystories-dataset-empty",
        lambda env: ["data", "prepare", "tinystories", "--dataset", "", "--out", "o"],
        "argument --dataset: '' is empty (an unset shell variable?); give a dataset name or folder",
    ),
    # ---- a path argument given as "" ("$RUN", "$FILE" with the variable unset): "" read as the current
    # folder, or as the option left out, without a word
    case(  # it scored the run's own validation data
        "eval-text-empty-path",
        lambda env: ["eval", str(env.run), "--text", "", "--device", "cpu", "--max-tokens", "64"],
        "argument --text: '' is empty (an unset shell variable?); give the path of a text file",
    ),
    case(  # it scored the run's own validation data
        "eval-data-empty-path",
        lambda env: ["eval", str(env.run), "--data", "", "--device", "cpu", "--max-tokens", "64"],
        "argument --data: '' is empty (an unset shell variable?); give a prepared data folder",
    ),
    case(  # "no complete checkpoint in ."
        "eval-run-empty-path",
        lambda env: ["eval", "", "--device", "cpu"],
        "argument RUN_DIR|CHECKPOINT: '' is empty (an unset shell variable?); give a run folder",
    ),
    case(  # "--hellaswag-file  is a folder"
        "eval-hellaswag-file-empty-path",
        lambda env: ["eval", str(env.run), "--task", "hellaswag", "--hellaswag-file", ""],
        "argument --hellaswag-file: '' is empty (an unset shell variable?); give the path of hellaswag_val",
    ),
    case(  # it built a new tokenizer: data a fine-tune of the run then refused, or misread
        "prepare-tokenizer-from-empty-path",
        lambda env: [
            "data",
            "prepare",
            "text",
            env.write("t.txt", "ROMEO: hi\n" * 20),
            "--tokenizer-from",
            "",
        ],
        "argument --tokenizer-from: '' is empty (an unset shell variable?); give a run folder, a checkpoint",
    ),
    case(  # "could not open dataset '' split 'train' (list index out of range)"
        "prepare-hf-dataset-empty-path",
        lambda env: ["data", "prepare", "hf", "", "--out", "o"],
        "argument DATASET: '' is empty (an unset shell variable?); give a dataset name or folder",
    ),
    case(  # ". is a folder; pass a text file"
        "prepare-shakespeare-path-empty",
        lambda env: ["data", "prepare", "shakespeare", "--path", "", "--out", "o"],
        "argument --path: '' is empty (an unset shell variable?); give the path of a text file",
    ),
    case(  # ". has no config.json"
        "import-model-empty-path",
        lambda env: ["import", "hf", "", "--out", "imported"],
        "argument MODEL: '' is empty (an unset shell variable?); give a model folder or a Hub repo id",
    ),
    case(
        "prepare-parquet-not-parquet",
        lambda env: ["data", "prepare", "parquet", env.write("d.parquet", "not parquet"), "--out", "o"],
        "d.parquet is not a Parquet file",
    ),
    case(
        "prepare-jsonl-no-text-field",
        _jsonl([RECORD, RECORD], "--text-field", "body"),
        'chat.jsonl line 1 has no "body" field',
        "--text-field",
    ),
    case(
        "prepare-jsonl-no-record-with-text",  # 'empty' said nothing of why
        _jsonl(
            ['{"text": null, "body": "a"}', '{"text": "", "body": "b"}', '{"id": 3}'], "--text-field", "text"
        ),
        'holds no text: all 3 of its records have no text in field "text" (null, empty or missing)',
        "they have: text, body, id; pass --text-field FIELD",
    ),
    case(
        "prepare-jsonl-template-gives-no-text",
        _jsonl(['{"q": "", "a": ""}', '{"q": "", "a": ""}'], "--template", "{q}{a}"),
        "--template gives all 2 of its records no text",
        "fill those fields, or name others in --template",
    ),
    case(
        "prepare-parquet-no-row-with-text",
        lambda env: _parquet(env, columns={"text": [None, ""], "story": ["one", "two"]}),
        "all 2 of its rows have no text in column 'text'",
        "they have: text, story; pass --text-field COLUMN",
    ),
    case(
        "prepare-jsonl-nested-field-missing",  # names the keys where the path stopped
        _jsonl([NESTED, NESTED], "--text-field", "content.text"),
        'chat.jsonl line 1 has no "content.text" field ("content" has: title, body)',
        "pass --text-field FIELD (a nested one as OUTER.INNER)",
    ),
    case(
        "prepare-jsonl-nested-field-through-a-string",
        _jsonl([NESTED, NESTED], "--text-field", "content.title.text"),
        'chat.jsonl line 1: "content.title" is a string, not an object holding "text"',
    ),
    case(
        "prepare-jsonl-text-field-is-an-object",  # it said 'must be a string (got an object)'
        _jsonl([NESTED, NESTED], "--text-field", "content"),
        '"content" is an object (it has: title, body)',
        "as --text-field content.FIELD",
    ),
    case(
        "prepare-parquet-nested-column-missing",
        lambda env: _parquet(env, "--text-field", "content.text", columns=NESTED_COLUMNS),
        "d.parquet has no column 'content.text' ('content' has: title, body)",
        "pass --text-field COLUMN (a nested one as OUTER.INNER)",
    ),
    case(
        "prepare-parquet-struct-column",  # it said 'holds dict, not text'
        lambda env: _parquet(env, "--text-field", "content", columns=NESTED_COLUMNS),
        "d.parquet: column 'content' is a struct (it has: title, body)",
        "as --text-field content.FIELD",
    ),
    case(
        "prepare-jsonl-template-names-missing-field",
        _jsonl([RECORD, RECORD], "--template", "{question} {response}"),
        # it named no field the record has, nor what to do
        'chat.jsonl line 1 has no "question" field, which --template names (it has: prompt, response); '
        "name the records' fields in --template",
    ),
    case(  # said it "must name record fields in braces", which it did
        "prepare-jsonl-template-names-a-nested-field",
        _jsonl([NESTED, NESTED], "--template", "{content.title}: {content.body}"),
        "--template names {content.title}, a field inside another, which a template cannot reach; read "
        "that field alone with --text-field content.title, or name fields at the top of each record",
    ),
    case(
        "prepare-jsonl-nested-too-deep",  # json.loads raised RecursionError: a traceback
        _jsonl([RECORD, "[" * 100_000 + "]" * 100_000], "--text-field", "prompt"),
        "chat.jsonl line 2 nests arrays or objects too deeply to read",
    ),
    case(
        "prepare-jsonl-integer-too-long",  # json.loads raised ValueError (int's digit limit): a traceback
        _jsonl([RECORD, '{"prompt": ' + "9" * 5000 + "}"], "--text-field", "prompt"),
        "chat.jsonl line 2 holds an integer of more than",
    ),
    case(
        "prepare-jsonl-template-field-null",  # format_map wrote it into the text as "None"
        _jsonl([RECORD, '{"prompt": "Who?", "response": null}'], "--template", "{prompt} {response}"),
        'chat.jsonl line 2: "response", which --template names, is null',
        "drop the record",
    ),
    case(
        "prepare-jsonl-text-field-not-a-string",
        _jsonl([RECORD, '{"prompt": "Who?", "response": ["a"]}'], "--text-field", "response"),
        'chat.jsonl line 2: "response" must be a string (got an array)',
        "pass --text-field FIELD naming a field of strings, or fix or remove that record",
    ),
    case(
        "prepare-jsonl-text-field-and-template",
        _jsonl([RECORD, RECORD], "--text-field", "prompt", "--template", "{prompt}"),
        "either --text-field",
    ),
    case(
        "prepare-jsonl-format-with-text-field",
        _jsonl([RECORD, RECORD], "--format", "prompt-response", "--text-field", "prompt"),
        "--format prompt-response cannot be combined",
    ),
    case(
        "prepare-jsonl-zstd",  # read as text it was 'not UTF-8 text (bad byte at offset 1)'
        lambda env: [
            "data",
            "prepare",
            "jsonl",
            env.write("00.jsonl.zst", b"\x28\xb5\x2f\xfd\x00\x58"),
            "--text-field",
            "text",
            "--out",
            "o",
        ],
        "00.jsonl.zst is compressed with zstd (unzstd FILE); decompress it first",
    ),
    case(  # "not UTF-8 text (bad byte at offset 1); convert it to UTF-8 (for example: iconv -f latin1"
        "prepare-jsonl-gzip-named-jsonl",
        lambda env: [
            "data",
            "prepare",
            "jsonl",
            env.write("rows.jsonl", gzip.compress(b'{"text": "To be"}\n{"text": "or not"}\n')),
            "--text-field",
            "text",
        ],
        "rows.jsonl is compressed with gzip, which is read only from a name ending in .gz; rename it "
        "rows.jsonl.gz, or decompress it first",
    ),
    case(
        "prepare-text-bzip2-named-txt",
        lambda env: [
            "data",
            "prepare",
            "text",
            env.write("t.txt", bz2.compress(b"To be\n" * 9)),
            "--out",
            "o",
        ],
        "t.txt is compressed with bzip2, which is read only from a name ending in .bz2; rename it t.txt.bz2",
    ),
    case(
        "prepare-jsonl-not-utf8",  # its offset was in the decoder's buffer, not in the file
        lambda env: [
            "data",
            "prepare",
            "jsonl",
            env.write("chat.jsonl", f"{RECORD}\n".encode() + '{"prompt": "caf\xe9"}\n'.encode("latin-1")),
            "--text-field",
            "prompt",
            "--out",
            "o",
        ],
        "chat.jsonl line 2 is not UTF-8 text (bad byte at offset",
        "iconv -f latin1 -t utf-8",
    ),
    case(
        "prepare-jsonl-utf16-without-its-mark",  # it was 'line 1 is not JSON'
        lambda env: [
            "data",
            "prepare",
            "jsonl",
            env.write("u.jsonl", '{"text": "To be"}\n'.encode("utf-16-le")),
            "--text-field",
            "text",
            "--out",
            "o",
        ],
        "u.jsonl line 1 holds a NUL byte (at offset 1)",
        "iconv -f utf-16 -t utf-8",
    ),
    case(
        "prepare-jsonl-lone-surrogate",
        _jsonl([RECORD, '{"prompt": "Who?", "response": "half \\ud83d a pair"}'], "--text-field", "response"),
        'chat.jsonl line 2: "response" holds a lone surrogate (\\ud83d at character 5)',
        "fix or remove that record",
    ),
    case(  # a larger --val-fraction, which it said to pass, leaves training empty instead
        "prepare-copies-of-one-text-with-keep-duplicates",
        lambda env: ["data", "prepare", "text", _copies(env, 2), "--keep-duplicates", "--out", "o"],
        "corpus 'text' is too small to hold out a validation split: its 2 documents are copies of one "
        "text, which keep to one side of the split (none fell into validation); drop --keep-duplicates "
        "to keep one, which is cut in two, or add documents",
    ),
    case(
        "prepare-text-of-one-character",
        lambda env: ["data", "prepare", "text", env.write("x.txt", "x"), "--out", str(env.tmp / "o")],
        "its one document is 1 character long, which validation takes whole; add text",
    ),
    case(
        "prepare-one-text-with-no-character-left-for-training",
        lambda env: [
            "data",
            "prepare",
            "text",
            env.write("xy.txt", "xy"),
            "--val-fraction",
            "0.6",
            "--out",
            "o",
        ],
        "its one document is 2 characters long, and its last --val-fraction 0.6 leaves training none",
        "pass a smaller --val-fraction",
    ),
    case(  # read, then not used: near-copies were not looked for
        "prepare-near-dup-threshold-with-dedup-exact",
        lambda env: [
            "data",
            "prepare",
            "text",
            _texts(env, 2),
            "--dedup",
            "exact",
            "--near-dup-threshold",
            "0.5",
        ],
        "--near-dup-threshold applies to near-copies, which --dedup exact does not look for",
    ),
    case(
        "prepare-bad-workers",
        lambda env: ["data", "prepare", "text", _texts(env, 2), "--workers", "0", "--out", "o"],
        "--workers must be at least 1",
    ),
    case(
        "prepare-bad-shard-tokens",
        lambda env: ["data", "prepare", "text", _texts(env, 2), "--shard-tokens", "0", "--out", "o"],
        "--shard-tokens must be at least 1",
    ),
    case(  # it said "other settings (source)", and to run the command that started it: this one
        "prepare-continue-after-an-input-file-changed",
        _partial_of_edited_input,
        "o.partial holds an unfinished preparation of other input (",
        "001.txt changed); it continues only the same input: put the input back as it was, or delete ",
    ),
    case(
        "prepare-continue-with-other-settings",
        _partial_with_other_settings,
        # it named the setting alone: its value then tells which command started it
        "o.partial holds an unfinished preparation with other settings (tokenizer char, now byte)",
        "delete",
    ),
    case(
        "prepare-continue-from-an-older-version",
        _partial_of_an_older_version,
        "o.partial holds an unfinished preparation started by an older version of trickster",
        "cannot continue; delete",
    ),
    case(
        "prepare-continue-with-a-damaged-tokenizer",
        _partial_with_a_damaged_tokenizer,
        "o.partial/tokenizer.json is not a valid tokenizer",
        "delete",
    ),
    case(
        "prepare-continue-with-pending-tokens-cut-short",
        _partial_with_pending_tokens_cut_short,
        "o.partial/pending.bin is shorter than progress.json says",
        "delete",
    ),
    case("prepare-partial-in-use", _partial_in_use, "o.partial is in use: another preparation", "--out"),
    case(
        "prepare-partial-of-another-user",
        _partial_of_another_user,
        "cannot open",
        "o.partial (Permission denied); give this user access to it (or delete it)",
        "--out",
    ),
    case(
        "prepare-partial-finished-but-not-renamed",
        _partial_finished,
        "o.partial holds a finished preparation that was stopped before it took the name o",
        "rename o.partial to o",
    ),
    case(
        "prepare-near-dup-threshold-zero",
        _prepare_with("--near-dup-threshold", "0"),
        "--near-dup-threshold must be in (0, 1] (got 0)",
    ),
    case(
        "prepare-near-dup-threshold-above-one",
        _prepare_with("--near-dup-threshold", "1.5"),
        "--near-dup-threshold must be in (0, 1] (got 1.5)",
    ),
    case(  # it sent the user to `trickster --help`, which lists commands, not prepare's options
        "prepare-option-misspelt",
        _prepare_with("--tokenzier", "bpe"),
        "unrecognized arguments: --tokenzier bpe (did you mean --tokenizer?) (see `trickster data "
        "prepare text --help`)",
    ),
    case(
        "prepare-keep-duplicates-with-dedup-near",
        _prepare_with("--dedup", "near", "--keep-duplicates"),
        "--keep-duplicates keeps copies and --dedup near drops them",
        "choose one",
    ),
    case(
        "prepare-empty-after-deduplication",
        _blank_documents,  # said "after dropping 3 blank or duplicate documents": none was a copy
        "corpus 'text' holds no text: all 3 of its files hold only whitespace; pass files that contain text",
    ),
    case(  # it said "no prepared data in input.txt (meta.json missing)" of the corpus itself
        "data-report-on-the-corpus-file",
        lambda env: ["data", "report", env.write("input.txt", "To be, or not to be.\n")],
        "input.txt is a file, not a prepared data folder; prepare it first (`trickster data prepare text ",
        "input.txt`) and give the folder that writes",
    ),
    case(
        "train-data-is-a-jsonl-file",
        lambda env: micro_train(env, "--data", env.write("chat.jsonl", RECORD + "\n")),
        "chat.jsonl is a file, not a prepared data folder; prepare it first (`trickster data prepare jsonl ",
    ),
    case(
        "data-overlap-not-a-data-folder",
        lambda env: ["data", "overlap", str(env.tmp), "--text", env.write("eval.txt", "some text\n")],
        "no prepared data in",
        "trickster data prepare",
    ),
    case(
        "data-overlap-missing-text",
        lambda env: ["data", "overlap", str(env.data), "--text", str(env.tmp / "gone.txt")],
        "--text",
        "gone.txt not found",
    ),
    case(  # said "the text is 0 tokens long, too short for a 13-token overlap check"
        "data-overlap-text-blank",
        lambda env: ["data", "overlap", str(env.data), "--text", env.write("eval.txt", "\n\n")],
        "--text ",
        "eval.txt holds only whitespace; pass the file of the text to look for",
    ),
    case(
        "data-overlap-text-too-short",
        lambda env: ["data", "overlap", str(env.data), "--text", env.write("short.txt", "ROMEO:")],
        "too short for a 13-token overlap check",
        "at least 13 tokens",
    ),
    case(  # reported as sound: the size and every id were as before
        "data-report-shard-with-a-changed-token",
        _data_report_shard_with_a_changed_token,
        "data-copy/train/000000.bin: not the bytes index.json recorded (sha256), damaged",
        "prepare the data again",
    ),
    case(  # it said meta.json was missing, and to prepare data: the folder above was prepared
        "train-data-is-a-split-of-a-prepared-folder",
        lambda env: micro_train(env, "--data", str(env.data / "train")),
        "train: it is inside the prepared folder ",
        "shakespeare-char; give ",
    ),
    case(
        "data-report-not-a-data-folder",
        lambda env: ["data", "report", str(env.tmp / "nothing-here")],
        "no prepared data in",
        "trickster data prepare",
    ),
    case(
        "quickstart-zero-steps", lambda env: ["quickstart", "--steps", "0", "--path", str(EXCERPT)], "--steps"
    ),
    case(  # argparse took -1e3 for an option: "--steps: expected one argument"
        "quickstart-negative-steps-in-e-notation",
        lambda env: ["quickstart", "--steps", "-1e3", "--path", str(EXCERPT)],
        "--steps must be at least 1 (got -1000)",
    ),
    case(
        "quickstart-missing-path",
        lambda env: ["quickstart", "--path", str(env.tmp / "missing.txt")],
        "missing.txt not found",
    ),
    case(
        "quickstart-override-not-key-value",
        lambda env: ["quickstart", "--path", str(EXCERPT), "--steps", "2", "big"],
        "override 'big' must look like section.key=value",
    ),
    # ---- a run, a checkpoint or a file where KEY=VALUE settings stand
    case(
        "train-run-folder-as-setting",
        lambda env: ["train", str(env.run)],
        "is a run folder, not a KEY=VALUE setting",
        "--config",
        "config.yaml --resume",
    ),
    case(
        "train-checkpoint-as-setting",
        lambda env: ["train", str(env.run / "checkpoints" / "final")],
        "is a checkpoint, not a KEY=VALUE setting",
        "training_config.init_from=",
    ),
    case(
        "train-text-file-as-setting",
        lambda env: ["train", "--preset", "tiny", env.write("story.txt", "Once upon a time.")],
        "story.txt is a file, not a KEY=VALUE setting",
        "trickster data prepare text",
        "--data DIR",
    ),
    case("train-config-file-as-setting", lambda env: ["train", env.config()], "pass it with --config"),
    case(
        "plan-run-folder-as-setting",
        lambda env: ["plan", str(env.run)],
        "is a run folder",
        "trickster plan --config",
    ),
    case(
        "info-run-folder-with-a-setting",
        lambda env: ["info", str(env.run), "model_config.hidden_dim=32"],
        "describe it as saved with trickster info",
    ),
    # ---- tokenizers
    case(
        "prepare-bpe-vocab-too-small",
        _prepare_with("--tokenizer", "bpe", "--vocab-size", "100"),
        "too small",
        "4096",
    ),
    case(
        "prepare-bpe-vocab-too-large",  # from 2**31 the Rust trainer panicked and aborted Python
        _prepare_with("--tokenizer", "bpe", "--vocab-size", str(2**31)),
        "--vocab-size 2147483648 is too large for bpe: at most 16,777,216",
    ),
    case(
        "prepare-vocab-size-without-bpe",
        _prepare_with("--tokenizer", "char", "--vocab-size", "300"),
        "--vocab-size applies to --tokenizer bpe only",
    ),
    case(
        "prepare-gpt2-offline-without-cache", _gpt2_offline, "TIKTOKEN_CACHE_DIR", "not in tiktoken's cache"
    ),
    # ---- eval
    case("eval-missing-run-dir", lambda env: ["eval", str(env.tmp / "runs" / "nope")], "nope not found"),
    case(
        "eval-missing-text",
        lambda env: ["eval", str(env.run), "--text", str(env.tmp / "gone.txt")],
        "not found",
    ),
    case("eval-text-not-utf8", _eval_text("caf\xe9\n".encode("latin-1")), "not UTF-8", "convert"),
    case(
        "eval-text-gzip-named-txt",  # "not UTF-8 text (bad byte at offset 1); convert it to UTF-8"
        _eval_text(gzip.compress(b"ROMEO: hi\n")),
        "--text ",
        "held-out.txt is compressed with gzip, which is read only from a name ending in .gz; rename it "
        "held-out.txt.gz, or decompress it first",
    ),
    case("eval-empty-text", _eval_text(""), "is empty"),
    case(
        "eval-text-from-a-pipe",
        lambda env: ["eval", str(env.run), "--text", _fifo(env.tmp / "pipe"), "--device", "cpu"],
        "--text",
        "pipe is not a regular file",
    ),
    case("eval-text-too-short", _eval_text("a"), "too short", "at least 2"),
    case(  # it named neither the file nor where in it, nor what to do but "use only characters from
        # the training corpus" (the user may not know which those are)
        "eval-unknown-character",
        _eval_text("ROMEO: \u00a7\n"),
        "held-out.txt line 1, column 8: character '\u00a7' (U+00A7) is not in this model's character "
        "vocabulary (only the 61 characters of its training text); remove it from the file, or score the "
        "file with a model whose tokenizer reads any text (byte, bpe or gpt2)",
    ),
    case(  # the first unknown character of several, on a later line: each fix met the next one
        "eval-unknown-characters-on-a-later-line",
        _eval_text("ROMEO: hi\nJULIET: 2 + 2\tis 4\n"),
        "held-out.txt line 2, column 9: character '2' is not in this model's character vocabulary",
        ", nor are 3 more of the file's characters ('+', '\\t', '4'); remove them from the file",
    ),
    case("eval-max-tokens-zero", _eval_text("ROMEO: hi\n", "--max-tokens", "0"), "--max-tokens must be >= 1"),
    case(
        "eval-data-other-tokenizer",
        _eval_other_tokenizer,
        "uses another tokenizer",
        "(the data it trained on)",
        "--tokenizer-from",
    ),
    case(
        "eval-hellaswag-missing-file",
        lambda env: [
            "eval",
            str(env.run),
            "--task",
            "hellaswag",
            "--hellaswag-file",
            str(env.tmp / "gone.jsonl"),
        ],
        "--hellaswag-file",
        "gone.jsonl not found; pass HellaSwag's hellaswag_val.jsonl",
    ),
    case(
        "eval-hellaswag-wrong-line-count",
        _hellaswag([HELLASWAG_LINE] * 2),
        "hellaswag_val.jsonl has 2 lines, but HellaSwag's validation set has 3",
        "hellaswag_val.jsonl (from https://",
    ),
    case(
        "eval-hellaswag-label-out-of-range",
        _hellaswag([HELLASWAG_LINE, {**HELLASWAG_LINE, "label": 4}, HELLASWAG_LINE]),
        "hellaswag_val.jsonl line 2: label 4, not a JSON object with ctx (text), endings (4 texts)",
    ),
    case(
        "eval-hellaswag-three-endings",
        _hellaswag([HELLASWAG_LINE, HELLASWAG_LINE, {**HELLASWAG_LINE, "endings": ["a", "b", "c"]}]),
        "hellaswag_val.jsonl line 3: 3 endings",
    ),
    case(
        "eval-hellaswag-not-json",
        _hellaswag([HELLASWAG_LINE, "<html>", HELLASWAG_LINE]),
        "hellaswag_val.jsonl line 2 is not JSON",
    ),
    case(
        "eval-hellaswag-offline-without-cache",
        _hellaswag_offline,
        "could not download http://127.0.0.1:9/hellaswag_val.jsonl",
        "--hellaswag-file FILE",
    ),
    case(
        "eval-hellaswag-cached-file-cut-short",
        _hellaswag_cache_cut_short,
        "cache/hellaswag/hellaswag_val.jsonl has 1 line, but HellaSwag's validation set has 10,042",
        "delete it to download it again",
    ),
    case(
        "eval-hellaswag-no-example-a-char-model-reads",
        _hellaswag([{**HELLASWAG_LINE, "ctx": "In 1984, a man [title]"}] * 3),
        "none of the 3 HellaSwag examples can be scored with this model (3 with characters outside",
    ),
    case(
        "train-hellaswag-offline-without-cache",
        _train_hellaswag_offline,
        "could not download http://127.0.0.1:9/hellaswag_val.jsonl",
        "pass the local copy with training_config.hellaswag_file=FILE",
    ),
    case(
        "train-hellaswag-file-not-found",
        lambda env: micro_train(
            env, "training_config.hellaswag_every=100", "training_config.hellaswag_file=gone.jsonl"
        ),
        "training_config.hellaswag_file gone.jsonl not found; pass HellaSwag's hellaswag_val.jsonl",
    ),
    case(
        "train-hellaswag-file-a-folder",
        lambda env: micro_train(
            env, "training_config.hellaswag_every=100", f"training_config.hellaswag_file={env.tmp}"
        ),
        "training_config.hellaswag_file",
        "is a folder; pass HellaSwag's hellaswag_val.jsonl",
    ),
    case(
        "train-hellaswag-no-example-a-char-model-reads",
        _train_hellaswag_unreadable,
        "none of the 3 HellaSwag examples can be scored with this model (3 with characters outside",
        "or set training_config.hellaswag_every= (empty)",
    ),
    case(
        "eval-max-examples-without-task",
        _eval_text("ROMEO: hi\n", "--max-examples", "5"),
        "--max-examples N applies to --task hellaswag",
    ),
    case(
        "eval-hellaswag-file-without-task",
        _eval_text("ROMEO: hi\n", "--hellaswag-file", "h.jsonl"),
        "--hellaswag-file FILE applies to --task hellaswag",
    ),
    case(
        "eval-hellaswag-with-max-tokens",
        _hellaswag([HELLASWAG_LINE] * 3, "--max-tokens", "10"),
        "with --task hellaswag use --max-examples N",
    ),
    case(
        "eval-hellaswag-max-examples-zero",
        _hellaswag([HELLASWAG_LINE] * 3, "--max-examples", "0"),
        "--max-examples must be >= 1 (got 0)",
    ),
    # ---- checkpoints
    case(  # its tokenizer (BPE, no unknown token) dropped the character, and generate went on
        "generate-imported-char-model-character-it-lacks",
        _generate_on_an_imported_char_model,
        "--prompt: character '§' (U+00A7) at column 6 is not in this model's character vocabulary",
    ),
    case(
        "generate-missing-run-dir",
        lambda env: ["generate", str(env.tmp / "runs" / "nope")],
        "nope not found",
        "run folder",
    ),
    # a checkpoint named as the step (step_6) or a run misspelt said only 'not found'
    case(
        "generate-checkpoint-misnamed",
        lambda env: ["generate", str(env.run / "checkpoints" / "step_6")],
        "step_6 not found (did you mean ",
        "/checkpoints/step_000006?); ",
        "/checkpoints holds best, final, step_000006: pass one of them, or the run folder ",
    ),
    case(
        "generate-run-misspelt",
        lambda env: ["generate", str(env.copy_run().with_name("run-cpy"))],
        "run-cpy not found (did you mean",
        "run-copy?); pass a run folder",
    ),
    case(
        "generate-run-without-complete-checkpoint",
        _run_without_complete,
        "no complete checkpoint",
        "train first",
    ),
    case(
        "generate-checkpoints-folder",
        lambda env: ["generate", str(env.run / "checkpoints"), "--max-new-tokens", "2"],
        "checkpoints holds checkpoints",
        "pass the run folder",
    ),
    case(
        "generate-weights-file",
        lambda env: ["generate", str(env.run / "checkpoints" / "final" / "model.safetensors")],
        "model.safetensors is a file",
        "pass the folder that holds it",
    ),
    case(
        "generate-folder-of-runs",
        _folder_of_runs,
        "holds runs, not checkpoints",
        "pass one of them, such as",
    ),
    case(
        "generate-file-outside-a-run",
        lambda env: ["generate", env.write("corpus.txt", "ROMEO:\n"), "--max-new-tokens", "2"],
        "corpus.txt is a file, not a run or checkpoint",
        "pass a run folder",
    ),
    case(
        "generate-stdout-closed",
        _stdout_closed,
        "standard output is closed (>&-), so generate has nowhere to write its text",
        "send it to a file",
    ),
    case(
        "chat-stdout-on-a-full-disk",
        _stdout_on_a_full_disk,
        "chat could not write its text to standard output (No space left on device)",
        "free space where it goes",
    ),
    case(
        "generate-stdout-in-ascii",
        _stdout_in_ascii,
        "generate could not write 'é' (U+00E9) to standard output, whose encoding is ascii",
        "set PYTHONIOENCODING=utf-8 (or a UTF-8 locale) and run it again",
    ),
    case(
        "chat-stdin-write-only",
        _stdin_write_only,
        "standard input cannot be read (Bad file descriptor)",
        "type at a terminal, or give lines in a file or a pipe (trickster chat RUN < lines.txt)",
    ),
    case(
        "compare-stdout-closed",
        functools.partial(_stdout_closed, command="compare"),
        "standard output is closed (>&-), so compare has nowhere to write its text",
    ),
    case(
        "generate-data-folder",
        lambda env: ["generate", str(env.data), "--max-new-tokens", "2"],
        "is a prepared data folder, not a run",
        "run folder",
    ),
    case("generate-incomplete-checkpoint", _ckpt_without("COMPLETE"), "is incomplete", "use another one"),
    case(
        "generate-checkpoint-without-its-weights",  # it said the write was interrupted; it was complete
        _ckpt_without("model.safetensors"),
        "has no model.safetensors (moved or deleted)",
        "use another checkpoint",
    ),
    case(
        "generate-truncated-weights",
        _ckpt_with_corrupt("model.safetensors", keep_fraction=0.5),
        "model.safetensors is damaged",
        "use another checkpoint",
    ),
    case(
        "generate-garbage-weights",
        _ckpt_with_corrupt("model.safetensors", content=b"not a safetensors file"),
        "model.safetensors is damaged",
        "use another checkpoint",
    ),
    case(
        "generate-weights-disagree-with-config",
        _ckpt_config_disagrees,
        "ckpt/config.yaml does not match the weights saved with it",
        "layers.0.feed_forward.w1.weight is (192, 64) in model.safetensors, the config needs (128, 64)",
    ),
    case(
        "generate-config-edited-hidden-dim",
        _ckpt_config_edited("generate", "hidden_dim: 64", "hidden_dim: 100000000"),
        "ckpt/config.yaml does not match the weights saved with it",
        "tok_embeddings.weight is (64, 64) in model.safetensors, the config needs (64, 100000000)",
        "put back its model_config (and training_config.lora) as saved, or use another checkpoint",
    ),
    case(
        "generate-config-edited-num-heads",
        _ckpt_config_edited("generate", "num_heads: 4", "num_heads: 8"),
        "ckpt/config.yaml does not match the weights saved with it",
        "model_config.num_heads is 8, model.safetensors was saved with 4",
        "put back its model_config",
    ),
    case(
        "generate-checkpoint-model-field-past-a-newer-limit",  # norm_eps < 1 since 2026-11-29 22:13
        _ckpt_config_edited("generate", "norm_eps: 1.0e-05", "norm_eps: 1.0"),
        "ckpt/config.yaml: model_config.norm_eps: input should be less than 1 (got 1.0)",
        "; use another checkpoint",
    ),
    case(
        "info-checkpoint-config-edited-num-layers",
        _ckpt_config_edited("info", "num_layers: 2", "num_layers: 100000000"),
        "model_config.num_layers is 100,000,000, model.safetensors holds 2 blocks",
        "put back its model_config",
    ),
    case(
        "export-hf-config-vocabulary-overflows",
        _ckpt_config_edited("export-hf", "vocab_size: 64", "vocab_size: 1e18"),
        "ckpt/config.yaml does not match the weights saved with it",
        "too big to build",
    ),
    case(
        "export-gguf-config-edited-mlp-dim",
        _ckpt_config_edited("export-gguf", "mlp_dim: 192", "mlp_dim: 100000000"),
        "layers.0.feed_forward.w1.weight is (192, 64) in model.safetensors, the config needs (100000000, 64)",
    ),
    case(
        "serve-config-edited-max-seq-len",
        _ckpt_config_edited("serve", "max_seq_len: 64", "max_seq_len: 1e15"),
        "the model does not fit on cpu (RAM",
        "rotary tables for model_config.max_seq_len 1,000,000,000,000,000",
        "ckpt/config.yaml was edited, put back its model_config",
    ),
    case(
        "generate-missing-config",
        _ckpt_without("config.yaml"),
        "config.yaml is missing or damaged",
        "use another checkpoint",
    ),
    case(
        "generate-damaged-config",
        _ckpt_with_corrupt("config.yaml", content=b"model_config: [\n"),
        "config.yaml is missing or damaged",
    ),
    case(
        "generate-config-nested-too-deeply",
        _ckpt_with_corrupt("config.yaml", content=b"model_config: %s%s\n" % (b"[" * 100_000, b"]" * 100_000)),
        "config.yaml is missing or damaged",
        "use another checkpoint",
    ),
    case(
        "generate-missing-tokenizer",
        _ckpt_without("tokenizer.json"),
        "tokenizer.json is missing",
        "another checkpoint",
    ),
    case(  # it said 'ckpt/tokenizer.json is missing'
        "generate-tokenizer-is-a-folder",
        lambda env: ["generate", str(_tokenizer_folder_in(env.copy_checkpoint())), "--max-new-tokens", "2"],
        "tokenizer file ",
        "/ckpt/tokenizer.json is a folder, not a file; use another checkpoint",
    ),
    case(  # it said '.../final/tokenizer.json is missing', with the run's own copy beside it
        "generate-run-checkpoint-tokenizer-is-a-folder",
        _run_checkpoint_tokenizer_is_a_folder,
        "tokenizer file ",
        "/run-copy/checkpoints/final/tokenizer.json is a folder, not a file",
        "replace that folder with a copy of /",
        "/run-copy/tokenizer.json (the run's own",
        "or use another checkpoint",
    ),
    case(
        "generate-damaged-tokenizer",
        _ckpt_with_corrupt("tokenizer.json", content=b'{"kind": "char", "chars'),
        "ckpt/tokenizer.json is not a valid tokenizer",
        "use another checkpoint",
    ),
    case("generate-missing-info", _ckpt_without("info.json"), "info.json is missing or damaged"),
    case("generate-foreign-weights", _foreign_weights, "does not match its config", "another model"),
    case("info-damaged-checkpoint", _info_on_damaged_checkpoint, "model.safetensors is damaged"),
    *(
        case(
            f"{command}-weights-with-a-flipped-byte",
            _flipped(command),
            "ckpt/model.safetensors no longer matches the checksum saved with it (changed or damaged on disk "
            "since it was written); use another checkpoint",
        )
        for command in ("generate", "eval", "compare", "info", "export-hf", "export-gguf", "serve")
    ),
    case(
        "init-from-weights-with-a-flipped-byte",
        _flipped("init-from"),
        "ckpt/model.safetensors no longer matches the checksum saved with it",
        "use another checkpoint",
    ),
    case(
        "lora-base-weights-with-a-flipped-byte",
        _flipped("lora"),
        "ckpt/model.safetensors no longer matches the checksum saved with it",
        "use another checkpoint",
    ),
    case(
        "generate-lora-adapters-with-a-flipped-byte",
        _lora_adapters_flipped,
        "lora-run/checkpoints/final/lora.safetensors no longer matches the checksum saved with it",
        "use another checkpoint",
    ),
    case(
        "generate-tokenizer-with-two-letters-swapped",
        _flipped("generate", "tokenizer.json", _swap_two_letters),
        "ckpt/tokenizer.json no longer matches the checksum saved with it",
        "use another checkpoint",
    ),
    case(
        "prepare-tokenizer-from-two-letters-swapped",
        _flipped("tokenizer-from", "tokenizer.json", _swap_two_letters),
        "ckpt/tokenizer.json no longer matches the checksum saved with it",
        "pass another --tokenizer-from",
    ),
    case(
        "generate-info-not-an-object",
        _ckpt_with_corrupt("info.json", content=b"[12]\n"),
        "ckpt/info.json is missing or damaged",
    ),
    case(
        "generate-info-not-utf8",
        _ckpt_with_corrupt("info.json", content=b"\xff\xfe{}"),
        "ckpt/info.json is missing or damaged",
    ),
    case("compare-info-without-step", _compare_info_without_step, "ckpt/info.json is missing or damaged"),
    case(
        "generate-config-not-a-mapping",
        _ckpt_with_corrupt("config.yaml", content=b"- model_config\n- training_config\n"),
        "ckpt/config.yaml is missing or damaged",
    ),
    case(
        "generate-config-empty",
        _ckpt_with_corrupt("config.yaml", content=b""),
        "ckpt/config.yaml is missing or damaged",
    ),
    case(  # read as every default: vocab_size 'auto' was a ValueError traceback from the model
        "generate-config-an-empty-mapping",
        _ckpt_with_corrupt("config.yaml", content=b"{}\n"),
        "ckpt/config.yaml is missing or damaged",
        "no model_config.vocab_size",
    ),
    case(
        "generate-config-not-utf8",
        _ckpt_with_corrupt("config.yaml", content=b"\xff\xfemodel_config: {}\n"),
        "ckpt/config.yaml is missing or damaged",
    ),
    case("resume-damaged-info", _resume_damaged_info, "final/info.json is missing or damaged", "move"),
    case(
        "report-damaged-checkpoint-info",
        _report_damaged_info,
        "best/info.json is missing or damaged",
        "move",
    ),
    case(
        "compare-data-folder-missing",
        lambda env: ["compare", str(env.run), "--max-new-tokens", "2", "--data", str(env.tmp / "nope")],
        "no prepared data in",
        "nope",
    ),
    case(
        "info-checkpoint-with-preset",
        lambda env: ["info", "--checkpoint", str(env.run), "--preset", "tiny"],
        "--checkpoint describes the saved model",
        "drop --preset",
    ),
    case(
        "info-checkpoint-with-override",
        lambda env: ["info", "--checkpoint", str(env.run), "model_config.hidden_dim=32"],
        "--checkpoint describes the saved model",
        "KEY=VALUE",
    ),
    case("compare-missing-run-dir", lambda env: ["compare", str(env.tmp / "nope")], "nope not found"),
    case(
        "compare-other-tokenizer",
        _compare_other_tokenizer,
        "uses another tokenizer",
        "(the data it trained on)",
        "--tokenizer-from",
    ),
    case(
        "compare-base-missing",
        lambda env: ["compare", str(env.run), "--base", str(env.tmp / "nope"), "--max-new-tokens", "2"],
        "--base: ",
        "nope not found",
    ),
    case(
        "compare-base-of-another-shape",
        _compare_base_of_another_shape,
        "narrow is another model (model_config hidden_dim 32 there, 64 here)",
        "pass a checkpoint of the same model",
    ),
    case(
        "compare-base-with-another-tokenizer",
        lambda env: ["compare", str(env.run), "--base", _byte_model(env), "--max-new-tokens", "2"],
        "byte-model has another tokenizer than",
        "pass a checkpoint of the same model",
    ),
    case(
        "compare-base-and-untrained",
        lambda env: ["compare", str(env.run), "--base", str(env.run), "--untrained"],
        "--untrained: not allowed with argument --base",
    ),
    case(  # a Cyrillic 'а' prints as a Latin 'a', which the vocabulary holds: the code point tells them apart
        "compare-prompt-outside-vocabulary",
        lambda env: [
            "compare",
            str(env.run),
            "--untrained",
            "--prompt",
            "Rom\u0430",
            "--max-new-tokens",
            "2",
        ],
        "--prompt: character '\u0430' (U+0430) at column 4 is not in this model's character vocabulary",
        "; remove it, or use a model whose tokenizer reads any text",
    ),
    # ---- prompts and sampling flags
    case(
        "prompt-outside-vocabulary",  # it named no place, nor the other missing character
        _generate("--prompt", "ROMEO: 42"),
        "--prompt: character '4' at column 8 is not in this model's character vocabulary (only the 61 "
        "characters of its training text), nor is 1 more of the prompt's characters ('2'); remove them, or "
        "use a model whose tokenizer reads any text (byte, bpe or gpt2)",
    ),
    case("prompt-empty", _generate("--prompt", ""), "--prompt is empty"),
    case(
        "prompt-not-utf8",  # a Latin-1 terminal: Python keeps the byte 0xe9 as U+DCE9
        lambda env: ["generate", _byte_model(env), "--prompt", "caf\udce9", "--device", "cpu"],
        "--prompt is not UTF-8 text (byte 0xe9 at character 3)",
        "terminal to UTF-8",
    ),
    case("top-p-above-one", _generate("--top-p", "1.5"), "--top-p must be in (0, 1]", "1.5"),
    case("temperature-negative", _generate("--temperature", "-1"), "--temperature must be >= 0", "-1"),
    case(
        "temperature-negative-in-e-notation",
        _generate("--temperature", "-1e-3"),
        "--temperature must be >= 0 and finite (got -0.001)",
    ),
    case("top-k-zero", _generate("--top-k", "0"), "--top-k must be >= 1", "0"),
    case(
        "temperature-infinite",
        _generate("--temperature", "1e309"),
        "--temperature must be >= 0 and finite",
        "inf",
    ),
    case("seed-beyond-64-bits", _generate("--seed", str(2**64)), "--seed", "less than 9223372036854775808"),
    case(  # -1 and -2**63 are seeds, as training_config.seed and torch.manual_seed take them
        "seed-below-minus-2-to-the-63",
        _generate("--seed", str(-(2**63) - 1)),
        "--seed: '-9223372036854775809': input should be at least -9223372036854775808 = -2**63",
    ),
    case(
        "max-new-tokens-negative", _generate("--max-new-tokens", "-5"), "--max-new-tokens must be >= 0", "-5"
    ),
    case(
        "max-new-tokens-not-int",
        _generate("--max-new-tokens", "many"),
        "--max-new-tokens",
        "'many' is not a whole number",
    ),
    case(
        "compare-bad-top-p",
        lambda env: ["compare", str(env.run), "--top-p", "0"],
        "--top-p must be in (0, 1]",
    ),
    case("generate-unknown-device", _generate("--device", "tpu"), "tpu", "--device"),
    # ---- serve
    case(
        "serve-missing-run-dir",
        lambda env: ["serve", str(env.tmp / "runs" / "nope")],
        "not found",
        "pass a run folder",
    ),
    case("serve-incomplete-checkpoint", _serve_incomplete_checkpoint, "is incomplete", "use another one"),
    case(
        "serve-unknown-checkpoint",
        _serve("--checkpoints", "best,step_000999"),
        "no checkpoint step_000999 in ",  # not 'did you mean step_000006': another step, no typo
        "run; --checkpoints takes names from: best, final, step_000006, untrained",
    ),
    case(
        "serve-misspelt-checkpoint",
        _serve("--checkpoints", "bset"),
        "no checkpoint bset in ",
        "run (did you mean best?); --checkpoints takes names from: best, final, step_000006, untrained",
    ),
    case(
        "serve-checkpoints-empty",
        _serve("--checkpoints", " , "),
        "--checkpoints names no checkpoint",
        "give some of best, final, step_000006, untrained",
        "leave --checkpoints out",
    ),
    case(
        "serve-checkpoint-never-saved-while-training",
        _serve_training("--checkpoints", "step_6,untrained"),
        "no checkpoint step_6",
        "--checkpoints takes names from: untrained; or one the run saves later: best, final or step_NNNNNN",
    ),
    case(
        "serve-checkpoints-none-saved-yet",
        _serve_training("--checkpoints", "best"),
        "has saved none of these yet",
        "add untrained to answer with it meanwhile (--checkpoints best,untrained)",
    ),
    case("serve-port-in-use", _serve_on_taken_port, "is in use", "--port"),
    case("chat-template-missing", _chat_template("chat", None), "--chat-template", "cannot be read"),
    case("chat-template-broken", _chat_template("chat", "{% for %}"), "chat template does not compile"),
    case(
        "chat-system-message-leaves-no-room",
        _chat_with_a_system_message_too_long,
        "--system: with the chat template, it and a two-character message are 64 tokens",
        "a reply needs 12 more of the model's 64; shorten --system (or lower --max-new-tokens)",
    ),
    case(  # `message` outside a loop over messages: every conversation failed, one message at a time
        "chat-template-fails-on-every-conversation",
        _chat_template("chat", "{{ message.content }}"),
        "--chat-template",
        "chat.jinja fails on a conversation of one user message ('message' is undefined)",
    ),
    case(
        "export-chat-template-missing",
        _export_chat_template(None),
        "--chat-template",
        "missing.jinja cannot be read",
    ),
    case("export-chat-template-broken", _export_chat_template("{% for %}"), "chat template does not compile"),
    case(  # before anything is written: the folder stays new
        "export-chat-template-fails-on-every-conversation",
        _export_chat_template("{{ message.content }}"),
        "chat.jinja fails on a conversation of one user message ('message' is undefined)",
    ),
    case(
        "export-gguf-chat-template-fails-on-every-conversation",
        _export_chat_template("{{ message.content }}", "model.gguf"),
        "chat.jinja fails on a conversation of one user message ('message' is undefined)",
    ),
    case("chat-system-without-template", _chat("--system", "Be brief."), "--system needs a chat template"),
    case("chat-missing-run-dir", lambda env: ["chat", str(env.tmp / "nope")], "nope not found", "run folder"),
    case("serve-chat-template-missing", _chat_template("serve", None), "--chat-template", "cannot be read"),
    case(
        "serve-chat-template-broken", _chat_template("serve", "{% for %}"), "chat template does not compile"
    ),
    case(  # it started, then answered each chat request with a 400
        "serve-chat-template-fails-on-every-conversation",
        _chat_template("serve", "{{ message.content }}"),
        "--chat-template",
        "chat.jinja fails on a conversation of one user message ('message' is undefined)",
    ),
    # each of these started, then answered every chat request with a 400
    case(
        "serve-chat-template-refuses-every-conversation",
        _chat_template("serve", "{{ raise_exception('Only Llama conversations are supported.') }}"),
        "chat.jinja refuses every conversation tried (one user message; ",
        "user) with 'Only Llama conversations are supported.'; fix it",
    ),
    case(  # `m.text` for `m.content`: Jinja writes an undefined attribute as nothing
        "serve-chat-template-renders-no-text",
        _chat_template("serve", "{% for m in messages %}{{ m.text }}{% endfor %}"),
        "chat.jinja renders every conversation tried as no text",
    ),
    case(  # Tiny Shakespeare has no '<' or '|': the model's character vocabulary lacks them
        "serve-chat-template-writes-a-character-the-model-lacks",
        _chat_template("serve", "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"),
        "chat.jinja writes '<' into every conversation, a character the model's vocabulary lacks",
    ),
    case("serve-max-batch-zero", _serve("--max-batch", "0"), "--max-batch must be >= 1"),
    case("serve-max-loaded-models-zero", _serve("--max-loaded-models", "0"), "must be at least 1 (got 0)"),
    case(
        "serve-max-loaded-models-one",
        _serve("--max-loaded-models", "1"),
        "holds only best, which stays loaded",
        "pass 2 or more",
    ),
    case(
        "serve-max-loaded-models-one-before-first-save",
        _serve_run_before_its_first_save("--max-loaded-models", "1"),
        "holds only the default model, which stays loaded (untrained until",
        "pass 2 or more (or --checkpoints untrained)",
    ),
    case(
        "serve-max-loaded-models-one-with-checkpoints-yet-to-save",
        _serve_run_before_its_first_save("--checkpoints", "untrained,best", "--max-loaded-models", "1"),
        "holds only untrained, which stays loaded: the 1 other model offered would never load",
    ),
    case(
        "serve-run-config-damaged-before-first-save",
        _serve_run_with_damaged("config.yaml", b"model_config: [\n"),
        "run-copy/config.yaml is missing or damaged",
        "repair it or put back the one training wrote, or serve the run once it has saved a checkpoint",
    ),
    case(
        "serve-run-config-edited-before-first-save",
        _serve_run_with_damaged("config.yaml", b"model_config: {vocab_size: 64, hidden_dim: 63}\n"),
        "run-copy/config.yaml: model_config.hidden_dim (63) must be divisible",
        "repair it or put back the one training wrote",
    ),
    case(
        "serve-run-tokenizer-damaged-before-first-save",
        _serve_run_with_damaged("tokenizer.json", b'{"kind'),
        "run-copy/tokenizer.json is not a valid tokenizer",
        "copy there the one in the folder of its data (data_config.path)",
    ),
    case("serve-port-beyond-65535", _serve("--port", "70000"), "--port must be between 0 and 65535", "70000"),
    case("serve-port-negative", _serve("--port", "-1"), "--port must be between 0 and 65535 (got -1)"),
    case("serve-api-key-blank", _serve("--api-key", ""), "--api-key is blank", "leave the option out"),
    case(  # served, and no client could send it: httpx and openai refuse a header that is not ASCII
        "serve-api-key-not-ascii",
        _serve("--api-key", "clé"),
        "--api-key holds 'é', which an HTTP header cannot carry",
        "letters, digits and punctuation",
    ),
    case(  # served, and no client could send it: a header loses the spaces at its ends
        "serve-api-key-spaces-at-ends",
        _serve("--api-key", " key "),
        "--api-key starts or ends with a space",
        "pass it without",
    ),
    case(  # a URL is never a Host header's name: the server would have refused every request by it
        "serve-allowed-host-not-a-name",
        _serve("--allowed-host", "https://llm.example.com/"),
        "--allowed-host takes a host name as a browser sends it, such as llm.example.com",
        "not 'https://llm.example.com/'",
    ),
    case(  # with a key no Host is checked: the option would have done nothing, silently
        "serve-allowed-host-with-api-key",
        _serve("--api-key", "k", "--allowed-host", "llm.example.com"),
        "--allowed-host does nothing with --api-key",
        "leave out one of the two",
    ),
    # ---- tracking, reports, runs and plans
    case(
        "train-tensorboard-not-installed",
        _tracking_missing("tensorboard", "tensorboard"),
        "logging_config.tensorboard is true but TensorBoard is not installed",
        "pip install nano-trickster[tracking]",
    ),
    case(
        "train-wandb-not-installed",
        _tracking_missing("use_wandb", "wandb"),
        "logging_config.use_wandb is true but wandb is not installed",
        "pip install nano-trickster[tracking]",
    ),
    case(
        "train-wandb-not-logged-in",
        _wandb_not_logged_in,
        "Weights & Biases did not start",
        "wandb login",
        "WANDB_MODE=offline",
    ),
    case(
        "report-missing-run-dir",
        lambda env: ["report", str(env.tmp / "runs" / "nope")],
        "run folder",
        "nope not found",
        "trickster train",
    ),
    case("report-on-a-file", lambda env: ["report", env.write("notes.txt", "hi\n")], "notes.txt is a file"),
    case(
        "report-not-a-run-folder",
        lambda env: ["report", str(Path(env.write("photos/a.txt", "x")).parent)],
        "photos is not a run folder (no metrics.jsonl)",
    ),
    case(  # the folder `trickster runs` takes: the line named no run to pass instead
        "report-on-the-folder-of-runs",
        _report_on_the_folder_of_runs,
        "runs is not a run folder",
        "it holds runs (nano, tiny): pass one of them, such as",
        "runs/nano",
    ),
    case(  # a checkpoint folder, as `generate` takes: the line did not say where its run is
        "report-on-a-checkpoint-folder",
        lambda env: ["report", env.run / "checkpoints" / "final"],
        "final is not a run folder",
        "it lies inside the run folder",
        "pass that one",
    ),
    case(
        "report-out-in-missing-folder",
        lambda env: ["report", str(env.run), "--out", str(env.tmp / "missing" / "report.html")],
        "could not write",
        "--out",
    ),
    case(
        "report-out-on-a-full-disk",
        _report_on_a_full_disk,
        "could not write",
        "full.html (No space left on device); free disk space, or choose another --out",
        skip_if=not Path("/dev/full").exists(),
        skip_reason="needs /dev/full",
    ),
    case(
        "data-report-html-into-a-folder-without-write-permission",
        lambda env: [
            "data",
            "report",
            str(env.data),
            "--html",
            str(_refused_folder(env, errno.EACCES) / "r.html"),
        ],
        "could not write",
        "refused/r.html (Permission denied); make the folder writable, or pass another --html FILE",
    ),
    case(
        "report-out-over-the-run-metrics",
        lambda env: ["report", str(env.copy_run()), "--out", str(env.tmp / "run-copy" / "metrics.jsonl")],
        "metrics.jsonl already exists and is not an .html page",
        "--out",
    ),
    case(  # told after the whole report was printed: "(No such file or directory)"
        "data-report-html-in-a-missing-folder",
        lambda env: ["data", "report", str(env.data), "--html", str(env.tmp / "pages" / "r.html")],
        "could not write ",
        "pages/r.html (",
        "pages does not exist); pass another --html FILE",
    ),
    case(
        "data-report-html-over-meta-json",
        lambda env: [
            "data",
            "report",
            str(env.copy_data()),
            "--html",
            str(env.tmp / "data-copy" / "meta.json"),
        ],
        "meta.json already exists and is not an .html page",
        "--html",
    ),
    case("runs-missing-folder", lambda env: ["runs", str(env.tmp / "nope")], "folder", "nope not found"),
    case("runs-on-a-file", lambda env: ["runs", env.write("notes.txt", "hi\n")], "notes.txt is a file"),
    case("plan-without-target", lambda env: ["plan"], "choose what to plan", "--preset", "--config"),
    case(
        "plan-unknown-preset",
        lambda env: ["plan", "--preset", "nanoo"],
        "unknown preset 'nanoo'",
        "did you mean nano",
    ),
    case(
        "plan-config-not-found",
        lambda env: ["plan", "--config", str(env.tmp / "nope.yaml")],
        "nope.yaml not found",
    ),
    case(
        "plan-bad-tokens",
        lambda env: ["plan", "--preset", "tiny", "--tokens", "lots"],
        "--tokens must be a positive number",
        "'lots'",
    ),
    case(
        "plan-tokens-infinite",
        lambda env: ["plan", "--preset", "tiny", "--tokens", "1e400"],
        "--tokens must be a positive number",
        "'1e400'",
    ),
    case(
        "plan-unknown-device", lambda env: ["plan", "--preset", "tiny", "--device", "tpu"], "--device", "tpu"
    ),
    case(
        "plan-cuda-without-gpu",
        lambda env: ["plan", "--preset", "tiny", "--device", "cuda"],
        "--device is cuda but no CUDA GPU",
        "--device cpu",
        "--gpu H100",
        skip_if=HAS_CUDA,
        skip_reason="a CUDA GPU is visible",
    ),
    case(
        "plan-unknown-gpu",
        lambda env: ["plan", "--preset", "tiny", "--gpu", "B300"],
        "--gpu 'B300' is not a GPU the plan knows",
        "A100 40GB, A100 80GB",
    ),
    case(
        "plan-gpu-without-its-size",
        lambda env: ["plan", "--preset", "tiny", "--gpu", "V100"],
        "--gpu 'V100' comes in 2 memory sizes; choose one of V100 16GB or V100 32GB",
    ),
    case(
        "plan-gpu-and-device",
        lambda env: ["plan", "--preset", "tiny", "--gpu", "H100", "--device", "cpu"],
        "--device",
        "not allowed with argument --gpu",
    ),
    case(
        "plan-mfu-without-gpu",
        lambda env: ["plan", "--preset", "tiny", "--mfu", "0.4"],
        "--mfu is the MFU assumed for a GPU planned by name",
        "--gpu NAME",
    ),
    case(  # the line `train --data` gives: a plan counts that folder's vocabulary and tokens
        "plan-data-not-prepared",
        lambda env: ["plan", "--preset", "tiny", "--no-bench", "--data", str(env.tmp / "stories")],
        "no prepared data in",
        "stories: it does not exist",
    ),
    case(
        "plan-mfu-not-a-fraction",
        lambda env: ["plan", "--preset", "tiny", "--gpu", "H100", "--mfu", "40"],
        "--mfu must be a fraction",
        "0.4",
    ),
    # ---- Hugging Face export and import
    case(
        "export-missing-run",
        lambda env: ["export", str(env.tmp / "runs" / "nope"), "--out", str(env.tmp / "hf")],
        "nope not found",
        "run folder",
    ),
    case("export-out-not-empty", _export_into("hf", "mine\n"), "hf already exists and is not empty", "--out"),
    case(  # it was written there, and deleted with the folder when training next replaced it
        "export-out-inside-a-checkpoint",
        _export_inside_a_checkpoint,
        "run-copy/checkpoints/final/hf lies inside the checkpoint folder ",
        "run-copy/checkpoints/final, which training replaces or deletes whole",
    ),
    case(  # it wrote a Hugging Face folder named hf.gguf
        "export-hf-named-as-gguf",
        lambda env: ["export", str(env.run), "--format", "hf", "--out", str(env.tmp / "hf.gguf")],
        "is named as a GGUF file, and --format hf writes a folder",
        "pass --format gguf",
    ),
    case("export-out-empty", lambda env: ["export", str(env.run), "--out", ""], "--out", "empty path"),
    case(
        "export-gguf-out-empty",
        lambda env: ["export", str(env.run), "--format", "gguf", "--out", ""],
        "--out",
        "empty path",
    ),
    case("report-out-empty", lambda env: ["report", str(env.run), "--out", ""], "--out", "empty path"),
    case(
        "prepare-out-empty",
        lambda env: ["data", "prepare", "text", env.write("corpus.txt", "some text\n" * 20), "--out", ""],
        "--out",
        "empty path",
    ),
    case(
        "import-out-empty",
        lambda env: ["import", "hf", str(env.tmp / "model"), "--out", ""],
        "--out",
        "empty path",
    ),
    case("train-out-empty", lambda env: micro_train(env, "--out", ""), "--out", "empty path"),
    case(
        "finetune-out-empty",
        lambda env: micro_train(env, f"training_config.init_from={env.run}", "--out", ""),
        "--out",
        "empty path",
    ),
    case(
        "quickstart-out-empty",
        lambda env: ["quickstart", "--path", str(EXCERPT), "--steps", "2", "--out", ""],
        "--out",
        "empty path",
    ),
    case("export-out-is-file", _export_into("hf", None), "hf is a file", "--out"),
    case(
        "export-hf-disk-full",
        _export_hf_disk_full,
        "could not write",
        "hf (No space left on device); free disk space, or choose another --out",
    ),
    case(
        "export-unknown-format",
        lambda env: ["export", str(env.run), "--format", "onnx", "--out", str(env.tmp / "x")],
        "--format",
        "invalid choice: 'onnx'",
    ),
    case("export-without-tokenizers-package", _without("tokenizers"), "pip install 'nano-trickster[hf]'"),
    case(
        "export-gguf-existing-file",
        lambda env: ["export", str(env.run), "--format", "gguf", "--out", env.write("model.gguf", "mine")],
        "model.gguf already exists",
        "--out",
    ),
    case(
        "export-gguf-into-a-folder-holding-its-file",
        lambda env: [
            "export",
            str(env.run),
            "--format",
            "gguf",
            "--out",
            env.write("out/micro-run.gguf", "mine").removesuffix(
                "micro-run.gguf"
            ),  # out/, the run's file in it
        ],
        "out/micro-run.gguf already exists",
        "--out",
    ),
    case(
        "export-gguf-under-a-file",
        lambda env: [
            "export",
            str(env.run),
            "--format",
            "gguf",
            "--out",
            env.write("taken", "mine") + "/m.gguf",
        ],
        "taken is a file",
        "taken/m.gguf cannot be made",
        "--out",
    ),
    case(
        "export-out-under-a-file",
        lambda env: ["export", str(env.run), "--out", env.write("taken", "mine") + "/hf"],
        "taken is a file",
        "taken/hf cannot be made",
        "--out",
    ),
    case(
        "report-out-under-a-file",
        lambda env: ["report", str(env.run), "--out", env.write("taken", "mine") + "/pages/r.html"],
        "taken is a file",
        "taken/pages/r.html cannot be made",
        "--out",
    ),
    case(
        "import-out-under-a-file",
        _import_under_a_file,
        "taken is a file",
        "taken/run cannot be made",
        "--out",
    ),
    case(
        "export-gguf-into-a-read-only-folder",
        _gguf_into_read_only_folder,
        "could not write",
        "read-only/m.gguf (Read-only file system); make the folder writable, or choose another --out",
    ),
    case(
        "export-hf-into-a-read-only-folder",
        lambda env: [
            "export",
            str(env.run),
            "--format",
            "hf",
            "--out",
            str(_refused_folder(env, errno.EROFS) / "hf"),
        ],
        "could not write",
        "refused/hf (Read-only file system); make the folder writable, or choose another --out",
    ),
    case(
        "export-gguf-bfloat16",
        lambda env: [
            "export",
            str(env.run),
            "--format",
            "gguf",
            "--dtype",
            "bfloat16",
            "--out",
            str(env.tmp / "m"),
        ],
        "float32 or float16",
    ),
    case(
        "export-gguf-imported-tokenizer",
        _gguf_of_tokenizer("imported"),
        "GGUF export of an imported Hugging Face tokenizer is not supported",
        "--format hf",
        "convert_hf_to_gguf.py",
    ),
    case(
        "export-gguf-edited-bpe-tokenizer",
        _gguf_of_tokenizer("edited-bpe"),
        "this bpe tokenizer is not GPT-2's byte-level BPE",
        "use --format hf",
    ),
    case(
        "export-gguf-without-gguf-package",
        _without("gguf", "--format", "gguf"),
        "pip install 'nano-trickster[gguf]'",
    ),
    case(
        "import-missing-folder",
        lambda env: ["import", "hf", str(env.tmp / "nope"), "--out", str(env.tmp / "imported")],
        "nope: no such folder; pass a model folder",  # it said 'is not a folder', as of something there
    ),
    case(
        "import-misspelled-folder",
        lambda env: ["import", "hf", f"{_hf_folder(env, {})}le", "--out", str(env.tmp / "imported")],
        "hf-modelle: no such folder (did you mean /",
        "/hf-model?); pass a model folder or a Hub repo id ORG/NAME",
    ),
    case(  # "config.json is not a folder", as of a path to nothing
        "import-a-file-of-the-model",
        lambda env: ["import", "hf", str(Path(_hf_folder(env, {})) / "config.json"), "--out", "imported"],
        "hf-model/config.json is a file; pass the folder that holds it (/",
        "hf-model), or a Hub repo id ORG/NAME",
    ),
    case(
        "import-missing-relative-folder",
        lambda env: ["import", "hf", "./org/name", "--out", str(env.tmp / "imported")],
        "./org/name: no such folder;",
        "or a Hub repo id ORG/NAME",
    ),
    case(
        "import-revision-of-a-local-folder",
        lambda env: ["import", "hf", _hf_folder(env, {}), "--revision", "v1", "--out", str(env.tmp / "i")],
        "--revision picks a version of a Hub repo",
        "drop it",
    ),
    case(
        "import-hub-unknown-repo",
        _import_hub("no-such-org/no-such-model"),
        "no model repo 'no-such-org/no-such-model' on the Hugging Face Hub",
        "if it is private",
        "HF_TOKEN",
    ),
    case(
        "import-hub-unknown-revision",
        _import_hub("org/revisions", {}, "--revision", "v9"),
        "org/revisions has no revision 'v9'",
        "--revision",
    ),
    case(
        "import-hub-gated",
        _import_hub("org/gated", {}, gated=True),
        "org/gated is a gated repo",
        "accept its terms",
        "hf auth login",
        "HF_TOKEN",
    ),
    case(
        "import-hub-offline-not-cached",
        _import_hub("org/offline", offline=True),
        "org/offline is not (wholly) in the Hugging Face cache",
        "HF_HUB_OFFLINE=1 forbids downloading it",
        "or pass a local folder",
    ),
    case(  # it spoke of the Hub's cache alone
        "import-mistyped-local-folder",
        _import_mistyped_local_folder,
        "no folder export/tny here (did you mean export/tiny?), and export/tny is not (wholly) in the",
        "or pass a local folder",
    ),
    case(
        "import-hub-unreachable-not-cached",
        _import_hub_unreachable,
        "org/tiny is not (wholly) in the Hugging Face cache",
        "the Hub could not be reached",
        "check your connection",
    ),
    case(
        "import-hub-only-bin-weights",
        _import_hub("org/pickled", {}, weights="pytorch_model.bin"),
        "has no safetensors weights",
        "pickled .bin weights are never loaded",
        "AutoModelForCausalLM.from_pretrained('org/pickled').save_pretrained(DIR)",
    ),
    case(
        "import-hub-not-llama",
        _import_hub("org/gpt2", {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}),
        "org/gpt2@",
        "model_type 'gpt2'",
        "only Llama checkpoints",
    ),
    case(
        "import-hub-without-config",
        _import_hub("org/no-config", "no config.json"),
        "has no config.json; it is not a transformers model",
    ),
    case(
        "import-hub-without-tokenizer-json",
        _import_hub("org/slow-tokenizer", {}, tokenizer=False),
        "has no tokenizer.json; only fast tokenizers are imported",
        "AutoTokenizer.from_pretrained('org/slow-tokenizer').save_pretrained(DIR)",
    ),
    case(
        "import-hub-partly-cached-offline",
        _import_hub_partly_cached,
        "is in the Hugging Face cache without model.safetensors",
        "without HF_HUB_OFFLINE=1",
    ),
    case(
        "import-hub-disk-full",
        _import_hub_disk_full,
        "the disk is full: downloading org/full",
        "HF_HUB_CACHE",
        "what was downloaded is kept",
    ),
    case("import-folder-without-config", _import(None), "has no config.json", "save_pretrained"),
    case(  # it said "run has no config.json", as of any folder: look for a file the run never needed
        "import-a-trickster-run",
        lambda env: ["import", "hf", str(env.run), "--out", str(env.tmp / "imported")],
        "micro-run is a nano-trickster run, not a Hugging Face model, so there is nothing to import; ",
        "micro-run as it is (trickster generate /",
        "micro-run, or chat or serve), or write a Hugging Face folder from it with `trickster export /",
        "micro-run --format hf --out DIR`",
    ),
    case(
        "import-a-trickster-checkpoint",
        lambda env: ["import", "hf", str(env.run / "checkpoints" / "final"), "--out", "imported"],
        "final is a nano-trickster checkpoint, not a Hugging Face model",
        "/checkpoints/final --format hf --out DIR`",
    ),
    case(
        "import-a-trickster-runs-checkpoints-folder",
        lambda env: ["import", "hf", str(env.run / "checkpoints"), "--out", "imported"],
        "checkpoints is the checkpoints folder of the nano-trickster run /",
        "micro-run, not a Hugging Face model",
        "micro-run as it is",
    ),
    case(
        "import-a-prepared-data-folder",
        lambda env: ["import", "hf", str(env.data), "--out", "imported"],
        "shakespeare-char is a prepared data folder, not a model; train on it (trickster train --preset tiny",
    ),
    case("import-damaged-config", _import("{not json"), "config.json is missing or damaged"),
    case(
        "import-unsupported-architecture",
        _import({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}),
        "model_type 'gpt2'",
        "only Llama checkpoints (LlamaForCausalLM)",
    ),
    case(
        "import-rope-scaling",
        _import({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
        "unsupported Llama variant",
        "rope scaling 'llama3'",
    ),
    case("import-attention-bias", _import({"attention_bias": True}), "attention_bias true"),
    case(
        # transformers 5 writes rope_parameters; given rope_scaling too, it applies rope_scaling
        "import-rope-scaling-beside-rope-parameters",
        _import(
            {"rope_parameters": {"rope_type": "default"}, "rope_scaling": {"type": "linear", "factor": 2.0}}
        ),
        "unsupported Llama variant",
        "rope scaling 'linear'",
    ),
    case(
        "import-quantized",
        _import({"quantization_config": {"quant_method": "fp8"}}),
        "quantization_config (only unquantized weights)",
    ),
    case(
        "import-zero-heads", _import({"num_attention_heads": 0}), "num_attention_heads 0", "positive integers"
    ),
    case("import-heads-as-text", _import({"num_attention_heads": "4"}), "num_attention_heads '4'"),
    case(
        "import-index-without-weight-map", _import_index({}), "index.json has no weight_map", "save the model"
    ),
    case("import-index-weight-map-a-list", _import_index(["model-1.safetensors"]), "has no weight_map"),
    case(
        "import-index-missing-shard",
        _import_index({"model.norm.weight": "model-00002-of-00002.safetensors"}),
        "lists model-00002-of-00002.safetensors, which is missing",
        "copy every shard",
    ),
    case("import-without-tokenizer", _import({}), "has no tokenizer.json", "fast tokenizers"),
    case(
        "import-tokenizer-json-a-folder",
        _import({}, tokenizer_folder=True),
        "tokenizer.json is a folder, not a file",
        "put the model's tokenizer.json in its place",
    ),
    case(  # the tokenizers package panicked: a Rust backtrace and a PanicException traceback
        "import-tokenizer-merge-without-the-subword-prefix",
        _import_tokenizer(
            {"vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]], "continuing_subword_prefix": "##"}
        ),
        "hf-model/tokenizer.json: BPE merge 1 ('a', 'b'): the second piece does not start with the ",
        "continuing_subword_prefix '##'; save the tokenizer again",
    ),
    case(  # it panicked too: the merged piece is longer than the longest vocabulary entry
        "import-tokenizer-merge-longer-than-the-vocabulary",
        _import_tokenizer({"type": "BPE", "vocab": {"aaa": 0, "bbb": 1}, "merges": ["aaa bbb"]}),
        "tokenizer.json: BPE merge 1 ('aaa', 'bbb') makes 'aaabbb', which is not in the vocabulary",
        "save the tokenizer again",
    ),
    case(
        "import-pickled-weights",
        _import({}, tokenizer=True, weights="pytorch_model.bin"),
        "pickled weights",
        "safetensors",
    ),
    case("import-without-weights", _import({}, tokenizer=True), "has no model.safetensors"),
    case(
        "generate-hugging-face-folder",
        lambda env: ["generate", _hf_folder(env, {}, tokenizer=True, weights="model.safetensors")],
        "hf-model is a Hugging Face model folder",
        "trickster import hf",
    ),
    case(
        "import-out-not-empty",
        lambda env: ["import", "hf", _hf_folder(env, {}), "--out", str(env.tmp)],
        "already exists and is not empty",
    ),
    # ---- fine-tuning data and config
    case(
        "jsonl-missing-field",
        _jsonl([RECORD, '{"prompt": "Who?"}']),
        'line 2 has no "response" field (it has: prompt)',
    ),
    case(
        "jsonl-other-field-names",
        _jsonl(['{"question": "Who?", "answer": "Nay."}', RECORD]),
        'line 1 has no "prompt" field (it has: question, answer)',
        'each record needs "prompt" and "response"',
    ),
    case(  # Alpaca's records: it said only that each record needs "prompt" and "response"
        "jsonl-instruction-records",
        _jsonl([INSTRUCTION, RECORD]),
        "line 1 is an instruction record (it has: instruction, input, output); read such records with "
        "--format alpaca",
    ),
    case(  # stories as {"text": ...}: it said each record needs "prompt" and "response"
        "jsonl-text-records-without-text-field",
        _jsonl(['{"text": "Once upon a time."}', '{"text": "The end."}']),
        'line 1 has no "prompt" field (it has: text); without --text-field or --template, jsonl reads '
        "prompt/response records (for fine-tuning); pass --text-field text to read each record's text",
    ),
    case(  # a pretty-printed JSON array of stories: it said line 1 was "not JSON (Expecting value)"
        "prepare-jsonl-on-a-json-array",
        lambda env: [
            "data",
            "prepare",
            "jsonl",
            env.write("stories.json", '[\n  {"text": "Once."}\n]\n'),
            "--text-field",
            "text",
        ],  # fmt: skip
        "stories.json holds a JSON array, not JSON Lines (one object a line); convert it, for example "
        "with jq -c '.[]' ",
    ),
    case(  # the same array on one line: it said line 1 was "not a JSON object"
        "prepare-records-on-a-json-array",
        lambda env: [
            "data",
            "prepare",
            "jsonl",
            env.write("chat.json", '[{"prompt": "Who?", "response": "I"}]'),
        ],
        "chat.json holds a JSON array, not JSON Lines",
    ),
    case(  # it said the file was not UTF-8 text and to convert it with iconv
        "prepare-jsonl-on-a-parquet-file",
        lambda env: _parquet_read_as(env, "jsonl", "--text-field", "body"),
        "d.parquet is a Parquet file, not text; read it with `trickster data prepare parquet ",
    ),
    case(  # it said "pass .parquet files" only
        "prepare-parquet-on-a-jsonl-file",
        lambda env: ["data", "prepare", "parquet", env.write("stories.jsonl", '{"text": "a"}\n')],
        "stories.jsonl is not a Parquet file (",
        "read it with `trickster data prepare jsonl ",
        "stories.jsonl --text-field FIELD`, or pass .parquet files",
    ),
    case(  # it said the file was not UTF-8 text and to convert it with iconv
        "prepare-text-on-a-parquet-file",
        lambda env: _parquet_read_as(env, "text"),
        "d.parquet is a Parquet file, not text; read it with `trickster data prepare parquet ",
    ),
    case(
        "jsonl-chat-records",
        _jsonl([CONVERSATION]),
        'chat.jsonl line 1 is a chat record ("messages"); read such records with --format messages',
    ),
    case(  # the formats that read records of one shape name the one a record of another needs
        "jsonl-alpaca-on-prompt-response-records",
        _jsonl([RECORD, RECORD], "--format", "alpaca"),
        "chat.jsonl line 1 is a prompt/response record (it has: prompt, response); read such records "
        "with --format prompt-response",
    ),
    case(
        "jsonl-alpaca-missing-output",
        _jsonl([INSTRUCTION, '{"instruction": "Who?", "response": "Nay."}'], "--format", "alpaca"),
        'chat.jsonl line 2 has no "output" field (it has: instruction, response); each instruction '
        'record needs "instruction" and "output" ("input" may be left out)',
    ),
    case(
        "jsonl-alpaca-instruction-not-a-string",
        _jsonl([INSTRUCTION, '{"instruction": ["Who?"], "output": "Nay."}'], "--format", "alpaca"),
        'chat.jsonl line 2: "instruction" must be a string (got an array); fix or remove that record',
    ),
    case(
        "jsonl-alpaca-input-not-a-string",
        _jsonl([INSTRUCTION, '{"instruction": "Who?", "input": 3, "output": "Nay."}'], "--format", "alpaca"),
        'chat.jsonl line 2: "input" must be a string (got a number); write "" or leave it out for none',
    ),
    case(
        "jsonl-alpaca-empty-instruction",
        _jsonl([INSTRUCTION, '{"instruction": " ", "output": "Nay."}'], "--format", "alpaca"),
        'chat.jsonl line 2: "instruction" is empty, so there is nothing to answer; write the '
        "instruction, or remove that record",
    ),
    case(
        "jsonl-alpaca-empty-output",
        _jsonl([INSTRUCTION, '{"instruction": "Who?", "input": "", "output": ""}'], "--format", "alpaca"),
        'chat.jsonl line 2: "output" is empty, so the loss would have nothing to learn from; write the '
        "output, or remove that record",
    ),
    case(  # it said only that '#' is not in the vocabulary, which the records' own text may not hold
        "jsonl-alpaca-with-a-char-model-without-its-markup",
        lambda env: _jsonl(
            [INSTRUCTION, INSTRUCTION], "--format", "alpaca", "--tokenizer-from", str(env.run)
        )(env),
        "--format alpaca writes '### Instruction: ### Input: ### Response:' around each record, which this "
        "tokenizer cannot encode (character '#' is not in this model's character vocabulary); fine-tune a "
        "model whose tokenizer can",
    ),
    case(
        "jsonl-messages-on-instruction-records",
        _jsonl([INSTRUCTION, INSTRUCTION], "--format", "messages"),
        "chat.jsonl line 1 is an instruction record (it has: instruction, input, output); read such records "
        "with --format alpaca",
    ),
    case(
        "jsonl-messages-missing",
        _jsonl([CONVERSATION, '{"conversation": []}'], "--format", "messages"),
        'chat.jsonl line 2 has no "messages" field (it has: conversation); each chat record needs '
        '"messages", a list of {"role", "content"}',
    ),
    case(
        "jsonl-messages-not-a-list",
        _jsonl([CONVERSATION, '{"messages": "Who?"}'], "--format", "messages"),
        'chat.jsonl line 2: "messages" must be a list of {"role", "content"} messages (got a string); '
        "fix or remove that record",
    ),
    case(
        "jsonl-messages-empty-conversation",
        _jsonl([CONVERSATION, '{"messages": []}'], "--format", "messages"),
        'chat.jsonl line 2: the conversation is empty ("messages": []); remove that record',
    ),
    case(
        "jsonl-messages-message-not-an-object",
        _jsonl([CONVERSATION, '{"messages": ["Who?"]}'], "--format", "messages"),
        'chat.jsonl line 2: message 1 is a string, not an object; write each message as {"role": "...", '
        '"content": "..."}',
    ),
    case(
        "jsonl-messages-message-without-content",
        _jsonl([CONVERSATION, '{"messages": [{"role": "user"}]}'], "--format", "messages"),
        'chat.jsonl line 2: message 1 has no "content" field (it has: role); each message needs "role" '
        'and "content"',
    ),
    case(  # OpenAI's assistant message calling a tool has a null content
        "jsonl-messages-content-not-a-string",
        _jsonl(
            [CONVERSATION, '{"messages": [{"role": "assistant", "content": null}]}'], "--format", "messages"
        ),
        'chat.jsonl line 2: message 1: "content" must be a string (got null); fix or remove that record',
    ),
    case(
        "jsonl-messages-unknown-role",
        _jsonl(
            [
                CONVERSATION,
                '{"messages": [{"role": "user", "content": "Who?"}, {"role": "tool", "content": "1"}]}',
            ],
            "--format",
            "messages",
        ),
        'chat.jsonl line 2: message 2 has the role "tool"; chat records take system, user and assistant '
        "messages: remove that message, or the record",
    ),
    case(
        "jsonl-messages-no-assistant-turn",
        _jsonl([CONVERSATION, '{"messages": [{"role": "user", "content": "Who?"}]}'], "--format", "messages"),
        "chat.jsonl line 2: the conversation has no assistant message, so the loss would have nothing to "
        "learn from; add the reply, or remove that record",
    ),
    case(  # accepted: " \n" is one byte-level BPE word alone, two in the conversation chat sends
        "jsonl-messages-empty-reply",
        _jsonl(
            [
                CONVERSATION,
                '{"messages": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": " "}]}',
            ],
            "--format",
            "messages",
        ),
        'chat.jsonl line 2: message 2 is an assistant message whose "content" is empty, so there is no reply '
        "to learn; write the reply, or remove that message",
    ),
    case(
        "jsonl-messages-with-text-field",
        _jsonl([CONVERSATION, CONVERSATION], "--format", "messages", "--text-field", "messages"),
        "--format messages cannot be combined with --text-field or --template",
    ),
    # Parquet files and Hub datasets of records (they took no --format: converted to JSON Lines by hand)
    case(
        "prepare-parquet-format-with-text-field",
        lambda env: _parquet(env, "--format", "alpaca", "--text-field", "body"),
        "--format alpaca cannot be combined with --text-field",
    ),
    case(
        "prepare-parquet-records-of-another-format",
        lambda env: _parquet(env, "--format", "alpaca", columns={"messages": [CHAT_ROW, CHAT_ROW]}),
        'd.parquet row 1 is a chat record ("messages"); read such records with --format messages',
    ),
    case(
        "prepare-parquet-alpaca-null-output",
        lambda env: _parquet(
            env, "--format", "alpaca", columns={"instruction": ["Who?", "Stand."], "output": ["Nay.", None]}
        ),
        'd.parquet row 2: "output" must be a string (got null); fix or remove that record',
    ),
    case(  # a list of structs, one field null
        "prepare-parquet-messages-null-content",
        lambda env: _parquet(
            env, "--format", "messages", columns={"messages": [CHAT_ROW, [*CHAT_ROW[:1], NULL_REPLY]]}
        ),
        'd.parquet row 2: message 2: "content" must be a string (got null); fix or remove that record',
    ),
    case(
        "prepare-parquet-text-rows-with-format",
        lambda env: _parquet(env, "--format", "prompt-response", columns={"text": ["one story", "another"]}),
        'd.parquet row 1 has no "prompt" field (it has: text); it is a record of text, which parquet reads '
        "without --format: drop --format prompt-response",
    ),
    case(
        "prepare-parquet-one-record",
        lambda env: _parquet(
            env, "--format", "prompt-response", columns={"prompt": ["Who?"], "response": ["I."]}
        ),
        "d.parquet holds 1 record; at least 2 records are needed (one for training, one to validate)",
    ),
    case(
        "prepare-hf-records-of-another-format",
        lambda env: _hf_saved(env, "--format", "messages", columns=INSTRUCTION_COLUMNS),
        "split 'train' row 1 is an instruction record (it has: instruction, input, output); read such "
        "records with --format alpaca",
    ),
    case(
        "prepare-hf-text-rows-with-format",
        lambda env: _hf_saved(env, "--format", "alpaca", columns={"text": ["one story", "another"]}),
        "split 'train' row 1 has no \"instruction\" field (it has: text); it is a record of text, which hf "
        "reads without --format: drop --format alpaca",
    ),
    case(
        "prepare-hf-format-with-text-field",
        lambda env: _hf_saved(env, "--format", "messages", "--text-field", "content"),
        "--format messages cannot be combined with --text-field",
    ),
    case("jsonl-not-json", _jsonl([RECORD, "prompt: Who?"]), "chat.jsonl line 2 is not JSON"),
    case("jsonl-not-an-object", _jsonl([RECORD, '["Who?", "Me."]']), "line 2 is not a JSON object"),
    case(  # it named no fix
        "jsonl-response-not-a-string",
        _jsonl([RECORD, '{"prompt": "Who?", "response": 5}']),
        'chat.jsonl line 2: "response" must be a string (got a number); fix or remove that record',
    ),
    case(  # it named no fix
        "jsonl-empty-response",
        _jsonl([RECORD, '{"prompt": "Who?", "response": ""}']),
        'chat.jsonl line 2: "response" is empty, so the loss would have nothing to learn from; write the '
        "response, or remove that record",
    ),
    case(  # it said the corpus was "too small" and to change --val-fraction: neither was why
        "jsonl-validation-record-a-copy",
        _jsonl([RECORD, '{"prompt": "Who?", "response": "Me."}', RECORD]),
        "corpus 'jsonl' has no validation left: each document of its validation split copies a training "
        "one, and a copy goes to its first copy's side; add validation documents (records at the end of "
        "the file) that are not copies",
    ),
    case("jsonl-one-record", _jsonl([RECORD]), "chat.jsonl holds 1 record; at least 2", "(one for training"),
    case(  # it said "holds 0 record(s)", then "is empty; at least 2 are needed" (2 what?)
        "jsonl-records-file-empty",
        lambda env: ["data", "prepare", "jsonl", env.write("chat.jsonl", ""), "--out", str(env.tmp / "o")],
        "chat.jsonl is empty; at least 2 records are needed (one for training, one to validate)",
    ),
    case(
        "jsonl-missing-file",  # records by default: it said "pass the path of an existing text file"
        lambda env: ["data", "prepare", "jsonl", str(env.tmp / "nope.jsonl"), "--out", str(env.tmp / "o")],
        "nope.jsonl not found; pass the path of an existing JSON Lines file (.jsonl)",
    ),
    case(
        "jsonl-unknown-format",
        _jsonl([RECORD, RECORD], "--format", "chatml"),
        "--format",
        "invalid choice: 'chatml'",
    ),
    case(
        "prepare-tokenizer-and-tokenizer-from",
        lambda env: _jsonl([RECORD, RECORD], "--tokenizer", "byte", "--tokenizer-from", str(env.run))(env),
        "either --tokenizer",
        "--tokenizer-from",
    ),
    case(
        "prepare-tokenizer-from-missing",
        _jsonl([RECORD, RECORD], "--tokenizer-from", "/nonexistent/run"),
        "--tokenizer-from /nonexistent/run not found",
        "a prepared data folder, or a tokenizer.json",
    ),
    case(  # it said 'no complete checkpoint in empty; train first, or pass a checkpoint folder'
        "prepare-tokenizer-from-an-empty-folder",
        lambda env: [*_jsonl([RECORD, RECORD])(env), "--tokenizer-from", str(_empty_folder(env))],
        "--tokenizer-from ",
        "/empty holds no tokenizer (no tokenizer.json, no checkpoints); pass a run or checkpoint folder, "
        "a prepared data folder, or a tokenizer.json",
    ),
    case(  # it said 'data-copy is a prepared data folder, not a run'
        "prepare-tokenizer-from-data-whose-tokenizer-is-a-folder",
        lambda env: [
            *_jsonl([RECORD, RECORD])(env),
            "--tokenizer-from",
            str(_tokenizer_folder_in(env.copy_data())),
        ],
        "tokenizer file ",
        "/data-copy/tokenizer.json is a folder, not a file; pass another --tokenizer-from",
    ),
    case(
        "prepare-tokenizer-from-a-hugging-face-tokenizer-json",
        lambda env: [
            *_jsonl(['{"prompt": "a", "response": "b"}', '{"prompt": "c", "response": "d"}'])(env),
            "--tokenizer-from",
            env.write(
                "tokenizer.json",
                json.dumps(
                    {"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}}
                ),
            ),
        ],
        "tokenizer.json is not a valid tokenizer (a Hugging Face tokenizer.json, not trickster's",
        "import its model with `trickster import hf DIR`); pass another --tokenizer-from",
    ),
    case(
        "prepare-tokenizer-from-not-a-tokenizer",
        lambda env: [
            *_jsonl(['{"prompt": "a", "response": "b"}', '{"prompt": "c", "response": "d"}'])(env),
            "--tokenizer-from",
            env.write("notes.json", '{"kind": "char"}'),
        ],
        "notes.json is not a valid tokenizer",
        "pass another --tokenizer-from",
    ),
    case(
        "jsonl-character-outside-the-model-vocabulary",  # it named no file, nor which record of thousands
        lambda env: _jsonl(
            [RECORD, '{"prompt": "2 + 2?", "response": "4"}'], "--tokenizer-from", str(env.run)
        )(env),
        "chat.jsonl line 2: character '2' is not in this model's character vocabulary (only the 61 "
        "characters of its training text), nor are 2 more of the record's characters ('+', '4'); remove "
        "them from that record, or fine-tune a model whose tokenizer reads any text (byte, bpe or gpt2)",
    ),
    case(  # the character alone, without its file: a tokenizing worker met it in a document
        "prepare-text-character-outside-the-model-vocabulary",
        lambda env: [
            "data",
            "prepare",
            "text",
            env.write("more.txt", "ROMEO: hi\nJULIET: 2 + 2\n"),
            "--tokenizer-from",
            str(env.run),
            "--out",
            "o",
        ],
        "more.txt line 2, column 9: character '2' is not in this model's character vocabulary (only the 61 "
        "characters of its training text), nor is 1 more of the file's characters ('+'); remove them from "
        "the file, or fine-tune a model whose tokenizer reads any text (byte, bpe or gpt2)",
    ),
    case(  # its tokenizer (BPE, no unknown token) dropped the characters, and the data lacked them
        "prepare-text-imported-char-model-character-it-lacks",
        lambda env: [
            "data",
            "prepare",
            "text",
            env.write("more.txt", "ROMEO: hi\nJULIET: 2 + 2\n"),
            "--tokenizer-from",
            _imported_char_model(env),
            "--out",
            "o",
        ],
        "more.txt line 2, column 9: character '2' is not in this model's character vocabulary",
        "nor is 1 more of the file's characters ('+'); remove them from the file, or fine-tune",
    ),
    case(
        "jsonl-imported-char-model-character-it-lacks",
        lambda env: _jsonl(
            [RECORD, '{"prompt": "2 + 2?", "response": "4"}'], "--tokenizer-from", _imported_char_model(env)
        )(env),
        "chat.jsonl line 2: character '2' is not in this model's character vocabulary",
        "nor are 2 more of the record's characters ('+', '4'); remove them from that record",
    ),
    case(
        "jsonl-text-field-character-outside-the-model-vocabulary",
        lambda env: _jsonl(
            [RECORD, '{"prompt": "2 + 2?", "response": "4"}'],
            "--text-field",
            "prompt",
            "--tokenizer-from",
            str(env.run),
        )(env),
        "chat.jsonl line 2: character '2' is not in this model's character vocabulary",
        "nor is 1 more of the record's characters ('+'); remove them from that record",
    ),
    case(  # the template's own text: no record's fault
        "jsonl-template-character-outside-the-model-vocabulary",
        lambda env: _jsonl(
            [RECORD, RECORD.replace("Who", "Why")],
            "--template",
            "{prompt} / {response}",
            "--tokenizer-from",
            str(env.run),
        )(env),
        "character '/' in --template is not in this model's character vocabulary",
        "take it out of --template, or fine-tune",
    ),
    case(
        "parquet-character-outside-the-model-vocabulary",
        lambda env: _parquet(
            env,
            "--format",
            "prompt-response",
            "--tokenizer-from",
            str(env.run),
            columns={"prompt": ["ROMEO: who?", "JULIET: why?"], "response": ["I.", "Thou \u00e9"]},
        ),
        "d.parquet row 2: character '\u00e9' (U+00E9) is not in this model's character vocabulary",
        "remove it from that record",
    ),
    case(
        "lora-bad-rank",
        _lora("training_config.lora={rank: 0}"),
        "training_config.lora.rank",
        "greater than 0",
    ),
    case(
        "lora-rank-past-the-layers",
        _lora("training_config.lora={rank: 65, targets: [q_proj, w2]}"),
        "training_config.lora.rank must be <= 64, the narrower side of w2, wq (got 65)",
        "a larger rank adds parameters, not capacity",
    ),
    case(
        "lora-unknown-target",
        _lora("training_config.lora={targets: [wq, qkv]}"),
        "training_config.lora.targets: unknown layer 'qkv'",
        "q_proj",
    ),
    case(  # it said to pass --resume, which resumes the base run
        "finetune-into-its-base-run",
        lambda env: micro_train(env, f"training_config.init_from={env.run}", "--out", str(env.run)),
        "the folder this fine-tune would write",
        "--out runs/NAME",
    ),
    case(  # it said: input should be a valid dictionary or instance of LoraConfig
        "lora-not-a-mapping",
        lambda env: micro_train(env, "training_config.lora=true", f"training_config.init_from={env.run}"),
        "training_config.lora must be a mapping of keys to values, {rank: ..., alpha: ..., targets: ...}",
    ),
    case(
        "lora-without-init-from",
        lambda env: micro_train(env, "training_config.lora={rank: 4}"),
        "training_config.lora",
        "training_config.init_from",
    ),
    case(
        "generate-lora-checkpoint-without-adapters",
        _lora_checkpoint_without_adapters,
        "lora.safetensors is missing",
        "use another checkpoint",
    ),
    case(
        "init-from-missing-run",
        lambda env: micro_train(env, f"training_config.init_from={env.tmp / 'nope'}"),
        "error: training_config.init_from: ",
        "nope not found",
    ),
    case(
        "init-from-other-model-shape",
        _lora("model_config.hidden_dim=32"),
        "training_config.init_from",
        "another model_config (hidden_dim 64 there, 32 here)",
        "--config",
    ),
    case(
        "init-from-other-tokenizer",
        _init_from_other_tokenizer,
        "prepared with another tokenizer",
        "--tokenizer-from",
    ),
    case(
        "init-from-other-tokenizer-size",
        _init_from_other_tokenizer_size,
        "prepared with another tokenizer",
        "--tokenizer-from",
    ),
    case(
        "generate-cuda-without-gpu",
        _generate("--device", "cuda"),
        "cuda",
        "--device",
        skip_if=HAS_CUDA,
        skip_reason="a CUDA GPU is visible",
    ),
]


ERROR_TABLE = Path(__file__).parent.parent / "docs" / "ERRORS.md"
SEEN: dict[str, tuple[str, str]] = {}  # case id -> (command, error line), for docs/ERRORS.md


@pytest.fixture(scope="module", autouse=True)
def write_error_table():
    """`TRICKSTER_WRITE_ERROR_TABLE=1 pytest tests/test_cli_errors.py` rewrites docs/ERRORS.md."""
    yield
    if not os.environ.get("TRICKSTER_WRITE_ERROR_TABLE") or len(SEEN) < len(CASES) - 2:
        return
    rows = [
        "# Bad input: what you see",
        "",
        "Every case below is a test in `tests/test_cli_errors.py`: one line on stderr, exit status 2,",
        "no traceback, and no file that existed before is changed or lost. The table is written by",
        "that test (`TRICKSTER_WRITE_ERROR_TABLE=1 bash scripts/test.sh tests/test_cli_errors.py`);",
        "`data/` is a prepared data folder, `run/` a trained run, and the other paths lie in a",
        "scratch folder.",
        "",
        "| case | command | error |",
        "|---|---|---|",
    ]
    for case_id, (command, line) in SEEN.items():
        cells = [case_id, f"`{command}`", line.replace("|", "\\|")]
        rows.append("| " + " | ".join(cell.replace("\n", " ") for cell in cells) + " |")
    ERROR_TABLE.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _plain(arg: str) -> bool:
    """Shown as it is; else repr, which writes a blank, a space, a line break or a lone surrogate
    (U+DCE9 for a byte that was not UTF-8, which a UTF-8 file cannot hold) so that it can be seen."""
    if not arg.strip() or " " in arg or len(arg.splitlines()) > 1:
        return False
    return not any("\ud800" <= c <= "\udfff" for c in arg)


def _shown(text: str, places: dict[str, str]) -> str:
    for path, name in places.items():
        text = text.replace(path, name)
    return text


@pytest.mark.parametrize(("build", "expected"), CASES)
def test_bad_input_is_one_clear_line(
    build, expected, tmp_path, shakespeare_dir, trained_run, monkeypatch, capsys, request
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # presets name relative folders: keep anything they touch in here
    env = Env(tmp_path, shakespeare_dir, trained_run, monkeypatch)
    argv = [str(a) for a in build(env)]
    capsys.readouterr()  # drop what building the inputs printed
    roots = (tmp_path, shakespeare_dir, trained_run)
    before = snapshot(*roots)

    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()

    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one stderr line, got {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert code == 2, f"exit status {code}, stderr {err!r}"
    after = snapshot(*roots)
    lost = {p for p in before if p not in after}
    changed = {p for p in before if p in after and before[p] != after[p]}
    assert not lost and not changed, f"lost {sorted(lost)}, changed {sorted(changed)}"
    # a refused training start leaves no run folder or checkpoints/ of its own (data prepare keeps
    # its DIR.partial and import hf its download, to continue them)
    emptied = [p for p in after if p not in before and after[p] == "folder" and not any(p.iterdir())]
    assert argv[:1] != ["train"] or not emptied, f"new empty folders left behind: {emptied}"
    assert not staging_leftovers(*roots)
    places = {f"{shakespeare_dir}": "data", f"{trained_run}": "run", f"{tmp_path}/": "", f"{tmp_path}": "."}
    places[f"{Path(__file__).parent.parent}/"] = ""
    shown = [_shown(a if _plain(a) else repr(a), places) for a in argv]
    shown = [a if len(a) <= 120 else f"{a[:100]}...({len(a):,} characters)" for a in shown]  # 10,000
    shell = [*([env.environment] if env.environment else []), "trickster", *shown]
    command = " ".join([*shell, *([env.redirection] if env.redirection else [])])
    SEEN[request.node.callspec.id] = (command, _shown(lines[0], places))


def test_every_case_is_distinct_names_its_problem_and_is_documented():
    ids = [p.id for p in CASES]
    assert len(set(ids)) == len(ids), "two cases share an id"
    vague = [p.id for p in CASES if not p.values[1] or not all(text.strip() for text in p.values[1])]
    assert not vague, f"cases that expect no text in the error line: {vague}"
    rows = re.findall(r"^\| ([a-z0-9-]+) \| `", ERROR_TABLE.read_text(encoding="utf-8"), re.M)
    assert sorted(rows) == sorted(ids), (
        f"docs/ERRORS.md lacks {sorted(set(ids) - set(rows))} and has stale rows "
        f"{sorted(set(rows) - set(ids))}: rewrite it (see its header)"
    )


def test_a_failed_start_leaves_its_run_folder_free_for_the_next(tmp_path, shakespeare_dir, capsys):
    """A start refused after the run folder was made (here: init_from names a data folder) must
    not leave a folder that the corrected command then refuses as 'not empty'."""
    out = tmp_path / "fresh"
    training = {"max_steps": 2, "warmup_steps": 1, "eval_every": 2, "save_every": 2, "sample_tokens": 0}
    save_config(micro_config(shakespeare_dir, out, training_config=training), tmp_path / "micro.yaml")
    argv = ["train", "--config", str(tmp_path / "micro.yaml"), "--no-progress"]

    assert cli.main([*argv, f"training_config.init_from={shakespeare_dir}"]) == 2
    assert f"{shakespeare_dir} is a prepared data folder, not a run" in capsys.readouterr().err
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert (out / "checkpoints" / "final" / "COMPLETE").is_file()


def test_real_process_exits_2_without_traceback(tmp_path, shakespeare_dir):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trickster",
            "train",
            "--preset",
            "tiny",
            "training_config.max_stepz=3",
            "--data",
            str(shakespeare_dir),
            "--out",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "training_config.max_stepz" in lines[0] and "max_steps" in lines[0]
    assert result.stdout == ""
    assert not run_dir.exists()

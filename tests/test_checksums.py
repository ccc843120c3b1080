"""Checkpoint checksums on real small runs: what a save records, what a linked `best` records
without reading its weights again, a flipped byte in weights shared by hard links, and a checkpoint
that `trickster serve` reads again after training replaced it, and the checkpoint a loss spike's
rollback passes over; a save's sums taken at once while it flushes, a load's (and a resume's) while
it loads. The
one line and exit status of each command meeting a changed file are cases in
tests/test_cli_errors.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from trickster import cli, run_checkpoints
from trickster.errors import UserError
from trickster.run_checkpoints import WEIGHTS
from trickster.train import checkpoint as ckpt
from trickster.train import checkpoint_load, checksums, optim, weight_loading
from trickster.train.loop import train

from .conftest import QUIET, micro_config, text_reads
from .dist_child import spiking_schedule
from .live_server import live_server
from .test_long_runs import SPIKE
from .test_resume import written

TWELVE_STEPS = {"max_steps": 12, "warmup_steps": 2, "eval_every": 6, "save_every": 6, "sample_tokens": 0}


def flip_byte(path: Path) -> None:
    """One byte in the middle inverted, in place (every hard link to the file sees it)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0xFF]))


@pytest.fixture
def run(shakespeare_dir, tmp_path) -> Path:
    """A 12-step micro run of its own (its files are changed in place): step_000006, best, final."""
    cfg = micro_config(shakespeare_dir, tmp_path / "run", training_config=TWELVE_STEPS)
    return train(cfg, **QUIET).run_dir


def test_every_file_but_info_config_and_complete_is_recorded_with_its_sha256(run):
    for checkpoint in ("step_000006", "best", "final"):
        folder = run / "checkpoints" / checkpoint
        recorded = json.loads((folder / "info.json").read_text())["sha256"]
        on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
        for unsummed in ("info.json", "COMPLETE", "config.yaml"):
            del on_disk[unsummed]
        assert recorded == on_disk, checkpoint
        assert set(recorded) == {"model.safetensors", "tokenizer.json", "trainer.pt"}


def test_a_best_linked_to_the_checkpoint_just_saved_takes_its_sums_without_reading_them(run, monkeypatch):
    """`best` saved at the step of `final` hard-links its weights: their sum is final's, not read
    again (gigabytes for a big model); the files it writes itself are read."""
    final, best = run / "checkpoints" / "final", run / "checkpoints" / "best"
    assert os.path.samefile(final / WEIGHTS, best / WEIGHTS), "the test needs a linked best"
    read = []
    hashed = checksums.file_sha256
    monkeypatch.setattr(checksums, "file_sha256", lambda path: read.append(path.name) or hashed(path))
    loaded = checkpoint_load.load_checkpoint(final)
    read.clear()
    again = run / "checkpoints" / "again"
    ckpt.save_checkpoint(again, loaded.model, loaded.cfg, loaded.tokenizer, loaded.info, {}, reuse=final)
    assert sorted(read) == ["tokenizer.json", "trainer.pt"]
    recorded = run_checkpoints.read_info(again)["sha256"]
    assert recorded["model.safetensors"] == hashlib.sha256((final / WEIGHTS).read_bytes()).hexdigest()


def test_weights_shared_by_hard_links_are_changed_in_every_checkpoint_that_links_them(
    run, capsys, monkeypatch
):
    """A numbered checkpoint and `final` of one step share their files (the save links them): one
    flipped byte changes both, so the line names both to move aside and the one before them as the
    newest intact one; nothing is changed. The line reads each checkpoint's info.json once, for
    its step and its sums, and not the refused one's, which the resume has read."""
    folder = run / "checkpoints"
    shutil.copytree(folder / "final", folder / "step_000012", copy_function=os.link)
    flip_byte(folder / "final" / WEIGHTS)
    files = written(run)
    argv = ["train", "--config", str(run / "config.yaml"), "--no-progress", "--resume"]
    argv.append("training_config.max_steps=20")  # past the 12 it has done
    reads = text_reads(monkeypatch)
    assert cli.main(argv) == 2
    # each once by the listing that finds the newest, once by the line's (final: the first only)
    info = {
        name: reads.count(folder / name / "info.json") for name in ("final", "step_000012", "step_000006")
    }
    assert info == {"final": 1, "step_000012": 2, "step_000006": 2}, info  # were 2, 3 and 4 reads
    assert capsys.readouterr().err == (
        f"error: {folder / 'final' / WEIGHTS} no longer matches the checksum saved with it (changed "
        f"or damaged on disk since it was written); move final and step_000012 out of {folder} to resume "
        "from step_000006 (step 6), the newest intact checkpoint (nothing was changed)\n"
    )
    assert written(run) == files


def test_a_checkpoint_replaced_while_served_is_checked_when_it_is_read_again(run):
    """`trickster serve` reads a checkpoint that training replaced (a new `best`) when it is next
    asked for: a flipped byte in the new weights is refused with the line (a 500), not served."""
    httpx = pytest.importorskip("httpx")
    with live_server(run) as live:
        assert live.catalog.load("best").info["step"] == 12
        earlier = checkpoint_load.load_checkpoint(run / "checkpoints" / "step_000006")
        parts = (earlier.model, earlier.cfg, earlier.tokenizer, earlier.info)
        best = ckpt.save_checkpoint(run / "checkpoints" / "best", *parts)
        flip_byte(best / WEIGHTS)
        request = {"model": "best", "prompt": "ROMEO:", "max_tokens": 2}
        answer = httpx.post(f"{live.url}/v1/completions", json=request, timeout=60)

        assert live.catalog.current("best").info["step"] == 6  # the new card: read again
    assert answer.status_code == 500
    assert answer.json()["error"]["message"] == (
        f"model 'best' could not be loaded: {best / WEIGHTS} no longer matches the checksum saved "
        "with it (changed or damaged on disk since it was written); use another checkpoint"
    )


def test_a_rollback_passes_over_a_checkpoint_changed_on_disk_to_the_newest_intact_one(micro, monkeypatch):
    """A real loss spike at steps 17-19 rolls the run back to step_000015 (tests/test_long_runs.py);
    with a byte of its trainer.pt flipped just after it was saved, to step_000010, and the line says
    which checkpoint it passed over and why. The rollback reads each checkpoint's info.json once,
    for its step and its sums (a run evaluated only at steps 0 and 30 reads them for nothing else)."""
    monkeypatch.setattr(optim, "lr_at", spiking_schedule(optim.lr_at))
    save = ckpt.save_checkpoint

    def save_then_flip(target, *args, **kwargs):
        saved = save(target, *args, **kwargs)
        if saved.name == "step_000015":
            flip_byte(saved / "trainer.pt")
        return saved

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_flip)
    reads = text_reads(monkeypatch)
    said = []
    result = train(micro(training_config=SPIKE), echo=said.append)

    (rollback,) = [r for r in result.history if r["event"] == "rollback"]
    assert rollback["checkpoint"] == "step_000010"
    folder = result.run_dir / "checkpoints"
    for checkpoint in ("step_000005", "step_000010", "step_000015"):  # 3, 4 and 5 reads
        assert reads.count(folder / checkpoint / "info.json") == 1, checkpoint
    (line,) = [line for line in said if "loss spike at steps" in line]
    assert (
        "; passed over checkpoints/step_000015: its files no longer match the checksums saved with them "
        "(changed or damaged on disk); rolled back to checkpoints/step_000010, skipping the batches" in line
    )


def test_a_sum_info_json_records_for_a_path_outside_the_checkpoint_is_never_read(tmp_path, monkeypatch):
    """An edited info.json naming "optimizer/../../secret.bin" (which a resume's "optimizer/" takes
    in) or an absolute path: no file outside the checkpoint is read, none is judged changed."""
    checkpoint = tmp_path / "run" / "ckpt"
    (checkpoint / "optimizer").mkdir(parents=True)
    (checkpoint / "optimizer" / "0.distcp").write_bytes(b"moments")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"a file beside the run")
    sums = {
        "optimizer/0.distcp": hashlib.sha256(b"moments").hexdigest(),
        "optimizer/../../../secret.bin": "0" * 64,  # from checkpoint: optimizer -> ckpt -> run -> tmp
        str(secret): "0" * 64,
    }
    (checkpoint / "info.json").write_text(json.dumps({"sha256": sums}))
    assert (checkpoint / "optimizer/../../../secret.bin").resolve() == secret.resolve()
    read = []
    real_sha256 = checksums.file_sha256
    monkeypatch.setattr(checksums, "file_sha256", lambda path: read.append(path) or real_sha256(path))
    assert checksums.first_changed(checkpoint, ["optimizer/", str(secret)]) is None
    assert read == [checkpoint / "optimizer" / "0.distcp"]


WAIT = 10  # seconds a sum waits for what should run beside it: a test on code without it fails, not hangs


def test_a_save_sums_its_files_at_once_while_it_flushes_them_to_disk(trained_run, tmp_path, monkeypatch):
    """The sums are what a save adds to the wait of a run that stands still while it saves: they
    are taken in threads, one file beside another, while the main thread flushes the files to
    disk. Each sum here waits until a second one has begun and a file has been flushed meanwhile;
    the sums recorded are still hashlib's over the files."""
    loaded = checkpoint_load.load_checkpoint(trained_run / "checkpoints" / "final")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # threads to spare, on any machine
    summing, lock = set(), threading.Lock()
    began, two_at_once, flushed = threading.Event(), threading.Event(), threading.Event()
    real_sha256, real_fsync = checksums.file_sha256, os.fsync

    def sha256(path: Path) -> str:
        with lock:
            summing.add(path.name)
            began.set()
            if len(summing) >= 2:
                two_at_once.set()
        assert two_at_once.wait(WAIT) and flushed.wait(WAIT), f"{path.name}: {two_at_once}, {flushed}"
        digest = real_sha256(path)
        with lock:
            summing.discard(path.name)
        return digest

    def fsync(fd: int) -> None:
        staged = {p.stat().st_ino: p.name for p in tmp_path.glob(".again.tmp-*/*")}  # atomic.staging_dir
        if staged.get(os.fstat(fd).st_ino) in (WEIGHTS, "trainer.pt") and began.wait(WAIT):
            with lock:
                if summing:
                    flushed.set()
        real_fsync(fd)

    monkeypatch.setattr(checksums, "file_sha256", sha256)
    monkeypatch.setattr(os, "fsync", fsync)
    parts = (loaded.model, loaded.cfg, loaded.tokenizer, loaded.info, {"moments": torch.arange(1000.0)})
    again = ckpt.save_checkpoint(tmp_path / "again", *parts)

    recorded = run_checkpoints.read_info(again)["sha256"]
    assert recorded == {name: hashlib.sha256((again / name).read_bytes()).hexdigest() for name in recorded}
    assert sorted(recorded) == ["model.safetensors", "tokenizer.json", "trainer.pt"]


@pytest.mark.parametrize("load_fails", [False, True])
def test_a_load_reads_the_weights_while_their_sum_is_taken_and_still_refuses_a_flipped_byte(
    trained_run, tmp_path, monkeypatch, load_fails
):
    """load_checkpoint (generate, eval, serve, export, init_from) sums the files in other threads
    while it loads them: the sum of model.safetensors here waits until the weights are being
    loaded. A flipped byte is still refused in verify's line and no model comes back; a load that
    fails meanwhile (memory, say) says the file changed, as it did when the sums came first."""
    checkpoint = shutil.copytree(trained_run / "checkpoints" / "final", tmp_path / "final")
    flip_byte(checkpoint / WEIGHTS)
    loading, waited = threading.Event(), []
    real_sha256, real_load = checksums.file_sha256, weight_loading.load_weights

    def sha256(path: Path) -> str:
        if path.name == WEIGHTS:
            waited.append(loading.wait(WAIT))
        return real_sha256(path)

    def load_weights(model, file: Path) -> None:
        loading.set()
        if load_fails:
            raise UserError(f"loading {checkpoint} on cpu failed to allocate memory")
        real_load(model, file)

    monkeypatch.setattr(checksums, "file_sha256", sha256)
    monkeypatch.setattr(weight_loading, "load_weights", load_weights)
    with pytest.raises(UserError) as refused:
        checkpoint_load.load_checkpoint(checkpoint)

    assert str(refused.value) == (
        f"{checkpoint / WEIGHTS} no longer matches the checksum saved with it (changed or damaged "
        "on disk since it was written); use another checkpoint"
    )
    assert waited == [True]


@pytest.mark.parametrize("flipped", [False, True])
def test_a_resume_sums_each_file_it_reads_once_while_it_loads_it(run, shakespeare_dir, monkeypatch, flipped):
    """A resume reads the weights and trainer.pt it continues from (model and AdamW moments: 13 GB
    for `mega`) once for their sums, beside their loads: the sum of each file here waits until that
    file is being loaded (the old code summed both before loading either, then read them again), and
    each is summed once. A flipped byte in trainer.pt (the middle of the moments: it still loads) is
    refused once everything is loaded, in the line naming the newest intact checkpoint, before any
    step: nothing in the run folder changes."""
    final = run / "checkpoints" / "final"
    if flipped:
        flip_byte(final / "trainer.pt")
    files = written(run)
    loading = {WEIGHTS: threading.Event(), "trainer.pt": threading.Event()}
    summed, waited = [], {}
    real_sha256, real_weights, real_trainer = (
        checksums.file_sha256,
        weight_loading.load_weights,
        checkpoint_load.load_trainer_state,
    )

    def sha256(path: Path) -> str:
        if path.parent == final:  # not the sums of the checkpoints the resumed run saves
            summed.append(path.name)
            waited[path.name] = loading[path.name].wait(WAIT)
        return real_sha256(path)

    def load_weights(model, file: Path) -> None:
        loading[file.name].set()
        real_weights(model, file)

    def load_trainer_state(path: Path, **options) -> dict:
        loading["trainer.pt"].set()
        return real_trainer(path, **options)

    monkeypatch.setattr(checksums, "file_sha256", sha256)
    monkeypatch.setattr(weight_loading, "load_weights", load_weights)
    monkeypatch.setattr(checkpoint_load, "load_trainer_state", load_trainer_state)
    cfg = micro_config(shakespeare_dir, run, training_config={**TWELVE_STEPS, "max_steps": 14})
    if flipped:
        with pytest.raises(UserError) as refused:
            train(cfg, resume=True, **QUIET)
        assert str(refused.value) == (
            f"{final / 'trainer.pt'} no longer matches the checksum saved with it (changed or damaged on "
            f"disk since it was written); move final out of {run / 'checkpoints'} to resume from "
            "step_000006 (step 6), the newest intact checkpoint (nothing was changed)"
        )
        assert written(run) == files
    else:
        assert train(cfg, resume=True, **QUIET).state.step == 14
    assert sorted(summed) == [WEIGHTS, "trainer.pt"]
    assert waited == {WEIGHTS: True, "trainer.pt": True}

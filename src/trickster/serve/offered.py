"""One model a server offers (models.Catalog): a checkpoint as read from its folder, or `untrained`,
and its weights while they are in memory; and which of those offered is the default."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from trickster import run_checkpoints
from trickster.config import Config
from trickster.data.hf_tokens import chat_template_of
from trickster.data.tokenizers import Tokenizer
from trickster.model import lora
from trickster.model.transformer import Transformer
from trickster.serve import chat, disk
from trickster.train import checkpoint_load, checksums

UNTRAINED = "untrained"


@dataclass(eq=False)  # one is its own: a checkpoint replaced on disk is offered by a new one
class Offered:
    name: str
    path: Path  # the checkpoint (for `untrained`: the one whose shape and seed it takes)
    cfg: Config
    tokenizer: Tokenizer
    info: dict
    chat_template: chat.Template | None
    created: int = 0  # when its folder was written, as read at start (OpenAI's `created`)
    model: Transformer | None = None  # its weights, while in memory
    loading: bool = False  # a thread is reading them
    holds: int = 0  # requests that need them in memory (Catalog.hold, Catalog.release)
    used: int = 0  # when it was last asked for (a tick of Catalog.clock)
    version: tuple | None = None  # the checkpoint on disk when read (disk.version): a new one is another

    @property
    def context(self) -> int:
        return self.cfg.model.max_seq_len

    @functools.cached_property
    def system_fingerprint(self) -> str | None:
        """OpenAI's system_fingerprint: which weights answer, from the SHA-256 sums its info.json
        records for its weights, adapters and tokenizer (a new save changes it, a rewrite of info.json
        alone does not, and a new save replaces this Offered); `untrained`'s from its shape, seed and
        tokenizer. None for a checkpoint saved before the sums."""
        if self.name == UNTRAINED:
            identity = [
                self.cfg.model.model_dump(mode="json"),
                self.cfg.training.seed,
                self.tokenizer.fingerprint(),
            ]
        else:
            sums = checksums.recorded(self.path, self.info)
            identity = [sums.get(name) for name in (run_checkpoints.WEIGHTS, lora.ADAPTERS, "tokenizer.json")]
            if identity[:2] == [None, None]:
                return None
        return "fp_" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]

    def card(self) -> dict:
        """What GET /v1/models says about it, beyond OpenAI's fields: its validation loss with the
        step it was measured at (an earlier evaluation's, for a checkpoint saved between two; null
        where not known: an older checkpoint's, saved between evaluations)."""
        trained = self.name != UNTRAINED  # untrained's info: its checkpoint's, or none yet ({})
        measured = None
        if trained:
            measured = run_checkpoints.recorded_loss(self.path, self.info, self.cfg.training.eval_every)
        return {
            "step": measured.step if measured else 0,
            "val_loss": measured.loss if measured else None,
            "val_loss_step": measured.measured_at if measured else None,
            "context_length": self.context,
            "chat": self.chat_template is not None,
            "tokenizer": self.tokenizer.kind,
            "loaded": self.model is not None,  # a request for it now needs no load (nor room)
        }


def describe(name: str, path: Path, chat_template: str | None, run_files: bool = False) -> Offered:
    """The checkpoint folder at `path` as offered (with `run_files`: a run folder, whose own
    config.yaml and tokenizer.json `untrained` takes before the run's first save; no info.json)."""
    version = disk.version(path)  # before reading: a change while read shows as a newer version
    if run_files:
        (cfg, tokenizer), info = disk.run_files(path), {}
    else:
        files = checkpoint_load.files_at(path)
        cfg, tokenizer, info = files.cfg, files.tokenizer, files.info
    source = chat_template or chat_template_of(tokenizer)
    template = chat.Template(source, tokenizer) if source else None
    return Offered(name, path, cfg, tokenizer, info, template, int(path.stat().st_mtime), version=version)


def default_of(offered: dict[str, Offered]) -> str:
    """The model kept in memory for good: the checkpoint `trickster generate RUN` picks, among those
    offered (the run's best, else its newest: the highest step, `final` before a numbered one of its
    step); `untrained` only while no checkpoint is offered (a run served before its first save)."""
    if "best" in offered:
        return "best"
    trained = [o for o in offered.values() if o.name != UNTRAINED]
    if not trained:
        return next(iter(offered))
    return max(trained, key=lambda o: (o.info.get("step", 0), o.name == "final")).name


class Replaced(Exception):
    """The folder held another checkpoint than the one its Offered describes when its weights were
    read (replaced since it was described): they are not that Offered's."""


def load_whole(path: Path, device: torch.device, version: tuple | None, wait: float) -> Transformer:
    """The model of the checkpoint folder at `path`, all read from one checkpoint, though a training
    run may replace it meanwhile (a new `best`, by atomic.replace_dir's two renames): read as
    `trickster generate` reads one (checkpoint_load.load_checkpoint, through settled.read_settled), waiting up
    to `wait` seconds for a replace under way. Weights read from another checkpoint than the
    `version` described (disk.version) raise Replaced: they would have answered under the old card
    and system_fingerprint."""
    loaded = checkpoint_load.load_checkpoint(path, device, wait=wait)
    if version is not None and loaded.identity != version[:4]:
        raise Replaced(path)
    return loaded.model

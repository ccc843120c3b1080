"""The models one server offers: the checkpoints of one run (best, final, step_N) and `untrained`, a
freshly initialised model of the same shape, each named by the folder it lives in.

Configs, tokenizers and info.json of every checkpoint are read at start (so a damaged one is
reported before serving); weights are loaded on first use and then kept, except the default
checkpoint's (the run's best, as `trickster generate RUN` picks), which is loaded at start.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trickster.config import Config
from trickster.data.tokenizers import Tokenizer
from trickster.errors import UserError
from trickster.model.transformer import Transformer, untrained_like
from trickster.serve import chat
from trickster.train import checkpoint as ckpt

UNTRAINED = "untrained"


@dataclass
class Offered:
    name: str
    path: Path  # the checkpoint (for `untrained`: the one whose shape and seed it takes)
    cfg: Config
    tokenizer: Tokenizer
    info: dict
    chat_template: chat.Template | None
    model: Transformer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def context(self) -> int:
        return self.cfg.model.max_seq_len

    def card(self) -> dict:
        """What GET /v1/models says about it, beyond OpenAI's fields."""
        trained = self.name != UNTRAINED
        return {
            "step": self.info.get("step", 0) if trained else 0,
            "val_loss": self.info.get("val_loss") if trained else None,
            "context_length": self.context,
            "chat": self.chat_template is not None,
            "tokenizer": self.tokenizer.kind,
        }


class Catalog:
    def __init__(
        self,
        target: str | Path,
        device: torch.device,
        names: list[str] | None = None,
        chat_template: str | None = None,
    ):
        self.device = device
        found = _checkpoints(Path(target))
        default = ckpt.resolve(target)
        if names:
            unknown = [n for n in names if n not in found and n != UNTRAINED]
            if unknown:
                have = ", ".join([*found, UNTRAINED])
                raise UserError(
                    f"no checkpoint {unknown[0]} in {target}; --checkpoints takes names from: {have}"
                )
            found = {n: p for n, p in found.items() if n in names}
        self.offered: dict[str, Offered] = {}
        for name, path in found.items():
            self.offered[name] = _describe(name, path, chat_template)
        if not names or UNTRAINED in names:
            base = self.offered.get(default.name) or _describe(default.name, default, chat_template)
            self.offered[UNTRAINED] = Offered(
                UNTRAINED, base.path, base.cfg, base.tokenizer, base.info, base.chat_template
            )
        # the one loaded at start: the checkpoint `trickster generate TARGET` would use
        self.default = default.name if default.name in self.offered else next(iter(self.offered))

    def get(self, name: str) -> Offered | None:
        return self.offered.get(name)

    def load(self, name: str) -> Offered:
        """The model with its weights in memory (blocking: call it off the event loop)."""
        offered = self.offered[name]
        with offered.lock:
            if offered.model is None:
                if name == UNTRAINED:
                    offered.model = untrained_like(offered.cfg).to(self.device).eval()
                else:
                    offered.model = ckpt.load_checkpoint(offered.path, self.device).model
        return offered


def _checkpoints(target: Path) -> dict[str, Path]:
    """Complete checkpoints by name: best and final first, then the numbered ones, oldest first."""
    if ckpt.is_complete(target) or (target / ckpt.WEIGHTS).exists():
        return {target.name: ckpt.resolve(target)}
    folder = target / "checkpoints"
    named = [folder / n for n in ("best", "final") if ckpt.is_complete(folder / n)]
    found = {p.name: p for p in [*named, *ckpt.numbered(target)]}
    if not found:
        ckpt.resolve(target)  # raises the error that says what is missing
    return found


def _describe(name: str, path: Path, chat_template: str | None) -> Offered:
    cfg, tokenizer, info = ckpt.read_config(path), ckpt.read_tokenizer(path), ckpt.read_info(path)
    source = chat_template or _template_of(tokenizer)
    template = chat.Template(source, tokenizer) if source else None
    return Offered(name, path, cfg, tokenizer, info, template)


def _template_of(tokenizer: Tokenizer) -> str | None:
    """An imported Hugging Face tokenizer's chat template (the default one, if it names several)."""
    template = getattr(tokenizer, "config", {}).get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None

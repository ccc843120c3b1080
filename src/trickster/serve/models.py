"""The models one server offers: the checkpoints of one run (best, final, step_N) and `untrained`, a
freshly initialised model of the same shape, each named by the folder it lives in.

Configs, tokenizers and info.json of every checkpoint are read at start (so a damaged one is
reported before serving). The default checkpoint's weights (the run's best, as `trickster generate
RUN` picks) are loaded at start and stay; the others' are loaded on first use and kept while there is
room: at most `max_loaded` models are in memory at once, the default among them. A request holds its
model from before its prompt is queued until the engine has finished its last sequence; making room
unloads the least recently used model that no request holds. When every loaded model is held, a
request for another one waits for the first to be released (a server with hundreds of checkpoints
stays within the memory of `max_loaded` models, however many clients ask for different ones), in
line: room goes to the waiting requests in the order they arrived, while a request for a loaded
model takes it at once.

A training run served as it trains writes a new `best` (or `final`) into the same name: `current`
notices (three `stat`s a request: the folder's, its weights' and its info.json's) and offers the
new one from then on, its weights loaded by the next request for it. The requests that hold the old one finish
on it (each decodes with one whole model, never a mix), and it is unloaded when the last lets go.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trickster.atomic import being_replaced
from trickster.config import Config
from trickster.data.tokenizers import Tokenizer
from trickster.errors import UserError
from trickster.model.transformer import Transformer, untrained_like
from trickster.serve import chat
from trickster.serve.limits import MAX_LOADED_MODELS
from trickster.train import checkpoint as ckpt

UNTRAINED = "untrained"
REPLACE_WAIT = 2.0  # seconds a load waits for a checkpoint being replaced (a moment between two renames)


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
    version: tuple | None = None  # the checkpoint on disk when read (_version): a new one is another

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
            "loaded": self.model is not None,  # a request for it now needs no load (nor room)
        }


class Catalog:
    def __init__(
        self,
        target: str | Path,
        device: torch.device,
        names: list[str] | None = None,
        chat_template: str | None = None,
        max_loaded: int = MAX_LOADED_MODELS,
    ):
        self.device, self.max_loaded, self.chat_template = device, max_loaded, chat_template
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
                UNTRAINED, base.path, base.cfg, base.tokenizer, base.info, base.chat_template, base.created
            )
        # the one loaded at start, and never unloaded: the checkpoint `trickster generate TARGET` would use
        self.default = default.name if default.name in self.offered else next(iter(self.offered))
        if max_loaded < 1:
            raise UserError(f"--max-loaded-models must be at least 1 (got {max_loaded})")
        if max_loaded == 1 and len(self.offered) > 1:
            raise UserError(
                f"--max-loaded-models 1 holds only {self.default}, which stays loaded: the "
                f"{len(self.offered) - 1} other models offered would never load; pass 2 or more "
                f"(or --checkpoints {self.default})"
            )
        self.changed = threading.Condition()  # guards line and every Offered's model, loading, holds, used
        self.clock = itertools.count(1)
        # the holds waiting for room to load their model, by arrival (their tick of `clock`): room goes
        # to the first, so none waits behind later ones (the threads a Condition wakes take its lock
        # in no set order)
        self.line: list[int] = []
        # replaced on disk but still held by requests decoding with them: in memory until let go
        self.retired: list[Offered] = []

    def get(self, name: str) -> Offered | None:
        return self.offered.get(name)

    def current(self, name: str) -> Offered | None:
        """The model offered as `name`, as its checkpoint is on disk now. A folder replaced since it
        was read (a training run's new best or final) is read anew (not its weights: the next hold
        loads them) and offered from now on; requests holding the old one finish on it. A rewritten
        info.json alone (training updates a val_loss) updates the card. Costs three `stat`s when
        nothing changed; a folder missing (deleted, or between a replace's two renames) or
        unreadable (damaged, or being replaced again) leaves the one read before."""
        offered = self.offered.get(name)
        if offered is None or name == UNTRAINED:
            return offered
        version = _version(offered.path)
        if version is None or version == offered.version:
            return offered
        try:
            fresh = _describe(name, offered.path, self.chat_template)
        except UserError:
            return offered
        if fresh.version != version or _version(offered.path) != version:
            return offered  # replaced again while it was read: the next request reads it
        with self.changed:
            if self.offered[name] is not offered:  # another request read it first
                return self.offered[name]
            if offered.version is not None and version[:4] == offered.version[:4]:
                # the same checkpoint: only info.json was rewritten
                offered.info, offered.version = fresh.info, version
                return offered
            self.offered[name] = fresh
            if offered.holds:
                self.retired.append(offered)
            else:
                offered.model = None  # the engine holds no batch of an unheld model: it is freed
            self.changed.notify_all()
        return fresh

    def gone(self, name: str) -> bool:
        """Whether a checkpoint offered at start has left the disk since (a training run that prunes
        its old checkpoints, served as it trains) and is not in memory: it can no longer be loaded."""
        offered = self.offered[name]
        if name == UNTRAINED or offered.model is not None or (offered.path / ckpt.WEIGHTS).is_file():
            return False
        return not being_replaced(offered.path)  # a run writing a new `best` is not deleting it

    def replacing(self, name: str) -> bool:
        """Whether the checkpoint is missing for a replace under way (atomic.being_replaced)."""
        return name != UNTRAINED and being_replaced(self.offered[name].path)

    def hold(self, name: str | Offered, load: bool = True) -> Offered | None:
        """The model with its weights in memory, kept there until `release` of the Offered it returns
        (the one asked for, or the one offered in its place when that was replaced on disk and
        unloaded before this hold: use what it returns). Blocking when it
        must be loaded (call it off the event loop): concurrent holds of one model load it once, and
        a hold waits while held models fill `max_loaded`, served in the order the waiting ones came.
        With load=False it takes the model only if it is in memory already (None otherwise), and
        never waits for more than the lock."""
        offered = self.offered[name] if isinstance(name, str) else name
        with self.changed:
            if offered is not self.offered[offered.name] and offered not in self.retired:
                # replaced on disk since the request read it, and unloaded as no one held it: its
                # folder holds the new checkpoint now (loading it there would give the old card the
                # new weights, out of the count of `max_loaded`), so the request holds the new one,
                # of the same run, tokenizer and shape (a resume keeps them)
                offered = self.offered[offered.name]
            if not load and offered.model is None:
                return None
            offered.holds += 1  # from now on it is not unloaded
            offered.used = turn = next(self.clock)
            try:
                while offered.model is None and not self._claim(offered, turn):
                    self.changed.wait()  # for its load by another request, or for its turn and room
            finally:
                self._leave_line(turn)
            if offered.model is not None:
                return offered
        try:
            model = self._read(offered)
        except BaseException:
            with self.changed:
                offered.loading = False
                self._let_go(offered)
            raise
        with self.changed:
            offered.model, offered.loading = model, False
            self.changed.notify_all()
        return offered

    def release(self, name: str | Offered) -> None:
        """One hold fewer. The model stays in memory until another one needs its room (one replaced
        on disk since goes with its last hold)."""
        with self.changed:
            self._let_go(self.offered[name] if isinstance(name, str) else name)

    def load(self, name: str) -> Offered:
        """The model with its weights in memory, held by no one (blocking: call it off the event loop)."""
        offered = self.hold(name)
        self.release(offered)
        return offered

    def _let_go(self, offered: Offered) -> None:
        """One hold fewer (under `changed`)."""
        offered.holds -= 1
        if not offered.holds and offered in self.retired:
            self.retired.remove(offered)
            offered.model = None
        self.changed.notify_all()

    def _claim(self, offered: Offered, turn: int) -> bool:
        """Whether this thread is to load `offered` (under `changed`): no other is, the hold that
        arrived at `turn` is first in line for room, and there is room."""
        if offered.loading:  # it waits for that load, not for room
            self._leave_line(turn)
            return False
        if turn not in self.line:
            bisect.insort(self.line, turn)  # arrival order, also for one back in line after a failed load
        if self.line[0] != turn or not self._make_room():
            return False
        offered.loading = True
        self._leave_line(turn)
        return True

    def _leave_line(self, turn: int) -> None:
        """Out of the line for room (under `changed`); the next one in line may find room already."""
        if turn in self.line:
            first = self.line[0] == turn
            self.line.remove(turn)
            if first:
                self.changed.notify_all()

    def _make_room(self) -> bool:
        """Unload the least recently used models no request holds until one more fits (under
        `changed`); False, unloading nothing, when held ones and the default fill the room."""
        every = [*self.offered.values(), *self.retired]  # a retired one is held: it counts, and stays
        resident = [o for o in every if o.model is not None or o.loading]
        idle = [o for o in resident if o.model is not None and not o.holds and o.name != self.default]
        excess = len(resident) + 1 - self.max_loaded
        if excess > len(idle):
            return False
        for offered in sorted(idle, key=lambda o: o.used)[: max(excess, 0)]:
            offered.model = None  # the engine drops its batch when idle: nothing else refers to it
        return True

    def _read(self, offered: Offered) -> Transformer:
        if offered.name == UNTRAINED:
            return untrained_like(offered.cfg).to(self.device).eval()
        return _load_whole(offered.path, self.device)


def _load_whole(path: Path, device: torch.device) -> Transformer:
    """The model of the checkpoint folder at `path`, all read from one checkpoint, though a training
    run may replace it meanwhile (a new `best`, by atomic.replace_dir's two renames): a load that
    found it missing between the renames, or that read part of the old folder and part of the new,
    is made again once the new one is in place, for up to REPLACE_WAIT seconds."""
    deadline = time.monotonic() + REPLACE_WAIT
    while True:
        before = _identity(path)
        try:
            model = ckpt.load_checkpoint(path, device).model
        except Exception:
            replaced = being_replaced(path) or _identity(path) != before
            if not replaced or time.monotonic() > deadline:
                raise
        else:
            if _identity(path) == before or time.monotonic() > deadline:
                return model
        time.sleep(0.01)


def _identity(path: Path) -> tuple[int, ...] | None:
    """Which checkpoint is at `path`, told apart without reading it: the folder's and its weights'
    identity (a new checkpoint is a new folder renamed into place, with new files: the folder's inode
    alone is not enough, as ext4 gives the inode of the folder a save deleted to the next one it
    makes). None when either is missing."""
    try:
        folder, weights = path.stat(), (path / ckpt.WEIGHTS).stat()
    except OSError:
        return None
    return folder.st_dev, folder.st_ino, weights.st_ino, weights.st_mtime_ns


def _version(path: Path) -> tuple[int, ...] | None:
    """The checkpoint's _identity (its first four) and what its info.json says (a rewrite renames
    a new file over it). None when any is missing."""
    checkpoint = _identity(path)
    try:
        info = (path / "info.json").stat()
    except OSError:
        return None
    return None if checkpoint is None else (*checkpoint, info.st_ino, info.st_mtime_ns, info.st_size)


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
    version = _version(path)  # before reading: a change while read shows as a newer version
    cfg, tokenizer, info = ckpt.read_config(path), ckpt.read_tokenizer(path), ckpt.read_info(path)
    source = chat_template or _template_of(tokenizer)
    template = chat.Template(source, tokenizer) if source else None
    return Offered(name, path, cfg, tokenizer, info, template, int(path.stat().st_mtime), version=version)


def _template_of(tokenizer: Tokenizer) -> str | None:
    """An imported Hugging Face tokenizer's chat template (the default one, if it names several)."""
    template = getattr(tokenizer, "config", {}).get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None

"""The models one server offers: the checkpoints of one run (best, final, step_N) and `untrained`, a
freshly initialised model of the same shape, each named by the folder it lives in. A run that has
saved no checkpoint yet offers `untrained`, shaped by the run's own config.yaml and tokenizer.json.

Configs, tokenizers and info.json of every checkpoint are read at start (so a damaged one is
reported before serving: left out, said in a line, while others serve). The default model's
weights (the run's best, else its newest, as `trickster generate RUN` picks; offered.default_of)
are loaded at start and stay; a run saving checkpoints as it is served moves the default to the
newest by the same rule. The others' are
loaded on first use and kept while there is room: at most `max_loaded` models are in memory at
once, the default among them. A request holds its model from before its prompt is queued until
the engine has finished its last sequence; making room unloads the least recently used model that
no request holds. When every loaded model is held, a request for another one waits for the first to
be released (a server with hundreds of checkpoints stays within the memory of `max_loaded` models,
however many clients ask for different ones), in line: room goes to the waiting requests in the
order they arrived, while a request for a loaded model takes it at once.

A training run served as it trains writes a new `best` (or `final`) into the same name: `current`
notices (three `stat`s a request: the folder's, its weights' and its info.json's) and offers the
new one from then on, its weights loaded in the background when the old ones were in memory and
there is room, else by the next request for it. The requests that hold the old one finish on it
(each decodes with one whole model, never a mix), and it is unloaded when the last lets go. Such a
run also saves new checkpoints and prunes old ones: `rescan`, at every request (one `stat` of
checkpoints/ when nothing changed), offers the folders that appeared there and stops offering those
that left it, whose requests under way finish as those of a replaced one do. A checkpoint left out
as damaged is read again only once its files change (a repair): while they stay as they were, a
rescan costs a `stat` of each, not a reread of its config and tokenizer every second. One found
damaged by a rescan (a checkpoint saved wrong since the start) gets one warning line on stderr, as
one at the start gets serve's line, not one a rescan.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from trickster import run_checkpoints
from trickster.atomic import being_replaced
from trickster.errors import UserError
from trickster.model.transformer import Transformer, untrained_like
from trickster.serve import disk, wanted
from trickster.serve.damaged import Damaged
from trickster.serve.limits import MAX_LOADED_MODELS
from trickster.serve.offered import UNTRAINED, Offered, Replaced, default_of, describe, load_whole
from trickster.serve.room import Room, check_max_loaded
from trickster.train import checkpoint_path
from trickster.train.weights import check_config

REPLACE_WAIT = 2.0  # seconds a load waits for a checkpoint being replaced (a moment between two renames)
# a listing of checkpoints/ made within this many seconds of the folder's last change is made again
# this long after, even if the folder's mtime says nothing changed: a change in the same tick of a
# coarse file-system clock leaves the mtime as it was (git's "racy" index entries)
SETTLE = 1.0


class Catalog:
    def __init__(
        self,
        target: str | Path,
        device: torch.device,
        names: list[str] | None = None,
        chat_template: str | None = None,
        max_loaded: int = MAX_LOADED_MODELS,
    ):
        self.device, self.chat_template = device, chat_template
        self.names = names
        # a run's checkpoints/, listed anew when it changes (None: one checkpoint folder is served)
        whole_run = not disk.one_checkpoint(Path(target))
        self.folder = Path(target) / "checkpoints" if whole_run else None
        self.listed, self.relist_at = disk.stamp(self.folder), 0.0  # taken before listing it
        self.listing = threading.Lock()  # one rescan at a time
        self.departed: set[str] = set()  # offered once, gone from the disk since
        found = disk.checkpoints(Path(target))
        # None: a run that has saved no checkpoint yet
        resolved = checkpoint_path.resolve(target) if found else None
        # names the run has yet to save (it trains): offered once saved, by rescan
        self.awaited = wanted.yet_to_save(names, found, Path(target), whole_run) if names is not None else []
        if names:
            found = {n: p for n, p in found.items() if n in names}
        self.offered: dict[str, Offered] = {}
        self.damaged = Damaged()  # read again only once their files change
        self.serving = False  # until start(): a failure of its load is serve's error, not a warning
        self.left_out = self._describe_each(found, refuse=bool(names))
        if not names or UNTRAINED in names:
            if resolved is None:  # shaped as the run's checkpoints will be, by the files it starts with
                base = describe(UNTRAINED, Path(target), chat_template, run_files=True)
            else:  # a run's checkpoints share their shape: another one's if it is left out
                ready = self.offered.get(resolved.name) or next(iter(self.offered.values()), None)
                base = ready or describe(resolved.name, resolved, chat_template)
            self.offered[UNTRAINED] = Offered(
                UNTRAINED, base.path, base.cfg, base.tokenizer, base.info, base.chat_template, base.created
            )
        # loaded at start and never unloaded; a checkpoint saved since may take its place (_relist)
        self.default = default_of(self.offered)
        models = len(self.offered) + len(self.awaited)
        check_max_loaded(max_loaded, self.default, models, target, resolved is None and not names)
        self.changed = threading.Condition()  # guards room and every Offered's model, loading, holds, used
        self.room = Room(max_loaded, self.changed)
        # replaced on disk but still held by requests decoding with them: in memory until let go
        self.retired: list[Offered] = []

    def _describe_each(self, found: dict[str, Path], refuse: bool) -> list[str]:
        """Offer each checkpoint `found` at start; a line for each left out as damaged (a config.yaml
        edited wrong, a tokenizer.json cut short), which serve says: one such folder among a run's
        checkpoints refused the whole run, whose others serve. Refused still (`refuse`) when
        --checkpoints named it, and when none is left (a checkpoint folder served alone)."""
        left_out, first = [], None
        for name, path in found.items():
            before = disk.contents(path)
            try:
                self.offered[name] = self._describe(name, path)
            except UserError as err:
                if refuse:
                    raise
                first = first or err
                left_out.append(f"{name} is not offered: {err}")
                self.damaged.said(path, before)  # serve says these lines: no warning for them again
        if first is not None and not self.offered:
            raise first
        return left_out

    def _describe(self, name: str, path: Path, weights: bool = False) -> Offered:
        """describe() (and with `weights`, their header checked against the config: weights cut
        short), a checkpoint found damaged remembered by its files as they were before the read."""
        before = disk.contents(path)
        try:
            offered = describe(name, path, self.chat_template)
            if weights:
                check_config(offered.cfg, path / run_checkpoints.WEIGHTS, self.device)
        except UserError as err:
            self.damaged.remember(path, before, str(err), SETTLE)
            raise
        self.damaged.forget(path)
        return offered

    def get(self, name: str) -> Offered | None:
        return self.offered.get(name)

    def every(self) -> list[Offered]:
        """Every model offered, each as its checkpoint is on disk now (`current`)."""
        self.rescan()
        offered = [self.current(name) for name in self.offered]
        return [o for o in offered if o is not None and not self.gone(o.name)]

    def rescan(self) -> None:
        """Offer the checkpoints that appeared in the run's checkpoints/ since it was last listed (a
        later step_N, the first best), and no longer those that left it (pruned or deleted; not one
        between a replace's two renames): requests holding one finish on it. One `stat` when the
        folder has not changed; a new checkpoint's config and tokenizer are read here (a damaged
        one's again only once its files change), and the models in memory are looked at (`current`)."""
        if self.folder is None or (
            disk.stamp(self.folder) == self.listed and time.monotonic() < self.relist_at
        ):
            return
        with self.listing:
            stamp, now = disk.stamp(self.folder), time.monotonic()
            if stamp == self.listed and now < self.relist_at:
                return  # listed by another request meanwhile
            racy = stamp is not None and time.time_ns() - stamp[1] < SETTLE * 1e9
            found = {n: p for n, p in disk.listing(self.folder).items() if not self.names or n in self.names}
            fresh, failed = {}, False
            self.damaged.keep_only(set(found.values()))
            for name, path in [(n, p) for n, p in found.items() if n not in self.offered]:
                if self.damaged.unchanged(path) is not None:
                    failed = True  # damaged as it was: looked at again later, read once it changes
                    continue
                before = disk.contents(path)
                try:
                    fresh[name] = self._describe(name, path)
                except UserError as err:  # damaged, or replaced as it was read: listed again later
                    failed = True
                    line = f"{name} is not offered: {err}; it is read again once its files change"
                    self.damaged.warn(path, before, line)  # once, not at every rescan
            with self.changed:
                self._relist(found, fresh)
            self.listed = stamp
            self.relist_at = now + SETTLE if racy or failed else float("inf")
        # a best or final renamed in changed the folder too: one in memory is read anew now
        # (`current`), its new weights ahead of the next request for it (_preload)
        for name in [n for n, o in self.offered.items() if o.model is not None and n != UNTRAINED]:
            self.current(name)

    def _relist(self, found: dict[str, Path], fresh: dict[str, Offered]) -> None:
        """The offer as `found` on disk, in its order (under `changed`): each one offered before
        stays as it is (`current` reads a replaced one), `fresh` ones join, the others leave but
        `untrained` and a best or final between a replace's two renames. The default follows
        (default_of): a run served as it trains is answered by its newest checkpoint, as one served
        after it."""
        every = {**fresh, **self.offered}
        stay = {n for n, o in self.offered.items() if n == UNTRAINED or being_replaced(o.path)} - set(found)
        order = [*sorted(stay - {UNTRAINED}), *(n for n in found if n in every), *(stay & {UNTRAINED})]
        for name, left in self.offered.items():
            if name not in order:
                self.departed.add(name)
                self._retire(left)
        self.departed -= set(order)
        self.offered = {name: every[name] for name in order}  # a new dict: one being iterated stays whole
        default = default_of(self.offered)
        if default != self.default:  # the run's first checkpoint, a newer one, a best
            self.default = default  # the one before may be unloaded from now on
            threading.Thread(target=self._preload, args=(self.offered[self.default],), daemon=True).start()

    def _retire(self, offered: Offered) -> None:
        """No longer offered (under `changed`): its model goes now, or with its last hold."""
        if offered.holds:
            self.retired.append(offered)
        else:
            offered.model = None  # the engine holds no batch of an unheld model: it is freed
        self.changed.notify_all()

    def current(self, name: str) -> Offered | None:
        """The model offered as `name`, as its checkpoint is on disk now. A folder replaced since it
        was read (a training run's new best or final) is read anew (not its weights, but their
        header: the next hold loads them) and offered from now on; requests holding the old one
        finish on it. A rewritten info.json alone (training updates a val_loss) updates the card.
        Costs three `stat`s when nothing changed; a folder missing (deleted, or between a replace's
        two renames) or unreadable (damaged, or being replaced again) leaves the one read before: a
        damaged one is said in a warning line, and read again only once its files change. A name
        not offered is looked for on disk, and so are those gone from it (`rescan`)."""
        self.rescan()
        offered = self.offered.get(name)
        if offered is None or name == UNTRAINED:
            return offered
        version = disk.version(offered.path)
        if version is None or version == offered.version or self.damaged.unchanged(offered.path):
            return offered  # a damaged replacement is read again once its files change
        before = disk.contents(offered.path)
        try:
            fresh = self._describe(name, offered.path, weights=True)
        except UserError as err:
            kept = "the one in memory answers" if offered.model is not None else "it is read again"
            self.damaged.warn(
                offered.path,
                before,
                f"{name} was replaced by a damaged checkpoint ({err}); {kept} until its files change",
            )
            return offered
        if fresh.version != version or disk.version(offered.path) != version:
            return offered  # replaced again while it was read: the next request reads it
        with self.changed:
            now = self.offered.get(name)
            if now is not offered:  # another request read it first (or it has left the disk)
                return now or offered
            if offered.version is not None and version[:4] == offered.version[:4]:
                # the same checkpoint: only info.json was rewritten
                offered.info, offered.version = fresh.info, version
                return offered
            self.offered = {**self.offered, name: fresh}
            if offered.model is not None:  # in memory: so is the new one, if there is room
                threading.Thread(target=self._preload, args=(fresh,), daemon=True).start()
            self._retire(offered)
        return fresh

    def _preload(self, offered: Offered) -> None:
        """Load a model's weights before a request asks for them (a replaced one's new weights, a new
        default), where that takes no other model's room and no request waits for room (else the
        next request loads them)."""
        with self.changed:
            if offered.model is not None or offered.loading or self.room.full(self._every()):
                return
            if self.offered.get(offered.name) is not offered:
                return  # replaced again (or gone) meanwhile
            offered.loading = True
        model = None
        try:
            model = self._read(offered)
        except Exception:  # replaced or deleted as it was read: a request's load says what is wrong
            pass
        finally:
            with self.changed:
                offered.model, offered.loading = model, False
                self.changed.notify_all()

    def gone(self, name: str) -> bool:
        """Whether a checkpoint once offered has left the disk since (a training run that prunes its
        old checkpoints, served as it trains): a new request for it is refused, even where its
        weights are still in memory for the requests that hold them."""
        offered = self.offered.get(name)
        if offered is None:
            return name in self.departed
        if name == UNTRAINED or (offered.path / run_checkpoints.WEIGHTS).is_file():
            return False
        return not being_replaced(offered.path)  # a run writing a new `best` is not deleting it

    def replacing(self, name: str) -> bool:
        """Whether the checkpoint is missing for a replace under way (atomic.being_replaced)."""
        offered = self.offered.get(name)
        return offered is not None and name != UNTRAINED and being_replaced(offered.path)

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
            now = self.offered.get(offered.name)
            if offered is not now and offered not in self.retired:
                # replaced on disk since the request read it, and unloaded as no one held it: its
                # folder holds the new checkpoint now (loading it there would give the old card the
                # new weights, out of the count of `max_loaded`), so the request holds the new one
                # (whose tokenizer it must then take too: another run may have been put there)
                if now is None:
                    raise LookupError(f"{offered.name} has left the disk")  # gone(): a 404
                offered = now
            if not load and offered.model is None:
                return None
            offered.holds += 1  # from now on it is not unloaded
            offered.used = turn = self.room.tick()
            try:
                while offered.model is None and not self.room.claim(
                    offered, turn, self._every(), self.default
                ):
                    self.changed.wait()  # for its load by another request, or for its turn and room
            finally:
                self.room.leave(turn)
            if offered.model is not None:
                return offered
        try:
            model = self._read(offered)
        except BaseException as err:
            with self.changed:
                offered.loading = False
                self._let_go(offered)
            if isinstance(err, Replaced):  # the request holds what the folder holds now, card and all
                return self.hold(self._replacement(offered), load)
            raise
        with self.changed:
            offered.model, offered.loading = model, False
            self.changed.notify_all()
        return offered

    def _replacement(self, offered: Offered) -> Offered:
        """The model offered in place of `offered`, whose folder held another checkpoint when its
        weights were read (`current` reads it anew; a moment after a replace's second rename)."""
        deadline = time.monotonic() + REPLACE_WAIT
        while True:
            now = self.current(offered.name)
            if now is None:
                raise LookupError(f"{offered.name} has left the disk")  # gone(): a 404
            if now is not offered:
                return now
            if problem := self.damaged.unchanged(offered.path):  # replaced by a damaged one
                raise UserError(problem)
            if time.monotonic() > deadline:
                raise UserError(f"{offered.path} kept changing on disk as it was read; ask again")
            time.sleep(0.01)

    def release(self, name: str | Offered) -> None:
        """One hold fewer. The model stays in memory until another one needs its room (one replaced
        on disk since goes with its last hold)."""
        with self.changed:
            self._let_go(self.offered[name] if isinstance(name, str) else name)

    def start(self) -> Offered:
        """The default in memory as serve starts; from then on a damaged checkpoint is warned of."""
        offered = self.load(self.default)
        self.serving = True
        return offered

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

    def _every(self) -> list[Offered]:
        """Every model that may be in memory: those offered, and the retired ones still held."""
        return [*self.offered.values(), *self.retired]

    def _read(self, offered: Offered) -> Transformer:
        """Its weights; a damaged checkpoint's error again, without a read, until its files change."""
        if offered.name == UNTRAINED:
            return untrained_like(offered.cfg).to(self.device).eval()
        if problem := self.damaged.unchanged(offered.path):
            raise UserError(problem)
        before = disk.contents(offered.path)
        try:
            return load_whole(offered.path, self.device, offered.version, REPLACE_WAIT)
        except UserError as err:
            self.damaged.remember(offered.path, before, str(err), SETTLE)
            if self.serving:
                self.damaged.warn(offered.path, before, f"{offered.name} cannot be loaded ({err})")
            raise

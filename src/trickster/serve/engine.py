"""The decoding scheduler: one worker thread runs every forward pass, so the server's event loop
never waits on one; the sequences that want the same model are decoded together, one batch per step.

Continuous batching: a sequence joins its model's batch as soon as a row is free (its prompt is
run alone, into its row of the shared KV cache) and leaves as soon as it is done, while the others
go on. Each sequence samples from its own logits row with its own `torch.Generator`, through
model/generate.py's `sample`, so its random stream is the one `trickster generate` would use:
the same seed gives the same tokens, alone or in a batch of sixteen (to float rounding of the
batched matrix multiplies, which the tests show does not change the text). It computes as
`generate` does too: under bfloat16 autocast, with a bfloat16 KV cache, on a GPU of Ampere or later.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from trickster.model.generate import mask_unused_rows, sample
from trickster.model.transformer import KVCache, Transformer
from trickster.precision import inference_dtype
from trickster.serve.limits import MAX_BATCH


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    logprobs: int | None = None  # how many of the most likely tokens to report with each token


@dataclass
class Token:
    """One generated token, as the worker hands it to the request."""

    id: int
    logprob: float | None = None  # of this token, under the model's distribution (before sampling)
    top: list[tuple[int, float]] | None = None  # the `logprobs` most likely ids and their logprobs


@dataclass
class Finished:
    reason: str  # "stop" (an end-of-text token) or "length" (max_tokens reached)


@dataclass
class Failed:
    error: BaseException


Event = Token | Finished | Failed


@dataclass
class Sequence:
    """One completion being decoded. `emit` is called from the worker thread with each event."""

    prompt_ids: list[int]
    sampling: Sampling
    emit: Callable[[Event], None]
    stop_ids: Collection[int] = ()  # the ids that end it (Tokenizer.stop_ids)
    cancelled: bool = False  # set by the request (client gone, or a stop string seen)
    generated: int = 0
    last: int = -1  # the newest token, not yet fed to the model
    generator: torch.Generator | None = field(default=None, repr=False)

    @property
    def length(self) -> int:
        """Positions of this sequence in the KV cache, which is where `last` goes next."""
        return len(self.prompt_ids) + self.generated - 1

    def fail(self, error: BaseException) -> None:
        """End it with `error`, which its request raises."""
        self.cancelled = True
        self.emit(Failed(error))


class Batch:
    """The sequences decoding one model, in the first rows of a KV cache of `capacity` rows."""

    def __init__(self, model: Transformer, vocab_limit: int, capacity: int):
        self.model, self.vocab_limit, self.capacity = model, vocab_limit, capacity
        self.waiting: deque[Sequence] = deque()
        self.rows: list[Sequence] = []
        self.cache: KVCache | None = None  # allocated while there is work, dropped when idle
        self.fused = contextlib.ExitStack()  # the model's fused projections, likewise
        weight = model.tok_embeddings.weight  # generate's dtype: bfloat16 on a fast GPU, else the weights'
        self.dtype = torch.bfloat16 if inference_dtype(weight.device) == "bfloat16" else weight.dtype

    def step(self) -> int:
        """Admit waiting sequences, then decode one token for every row. Returns the rows decoded."""
        self._compact()  # rows whose requests went away since the last step
        if self.cache is None:
            param = self.model.tok_embeddings.weight
            cfg = self.model.cfg
            self.cache = KVCache.empty(cfg, self.capacity, cfg.max_seq_len, param.device, self.dtype)
            # the concatenated weights, made once for a busy spell rather than at every step
            self.fused.enter_context(self.model.fused_projections())
        half = self.dtype != self.model.tok_embeddings.weight.dtype
        with torch.autocast(self.cache.keys[0].device.type, dtype=self.dtype, enabled=half):
            while self.waiting and len(self.rows) < self.capacity:
                seq = self.waiting.popleft()
                if not seq.cancelled:
                    self._admit(seq)
            self._compact()  # prompts whose first token already ended them
            if self.rows:
                self._decode()
        decoded = len(self.rows)
        self._compact()
        if not self.rows and not self.waiting:
            self.idle()
        return decoded

    def idle(self) -> None:
        """Free the cache and the fused weights until the next request."""
        self.cache = None
        self.fused.close()

    def _admit(self, seq: Sequence) -> None:
        """Prefill one prompt. If that raises (a prompt the model cannot take, or no memory for a long
        one), this sequence alone fails: it wrote only its own row, the others decode on."""
        try:
            self._prefill(seq)
        except Exception as err:
            if seq in self.rows:
                self.rows.remove(seq)  # the last row: no live row moves
            seq.fail(err)

    def _prefill(self, seq: Sequence) -> None:
        """The prompt alone, as `generate` runs it, into the next free row of the cache."""
        row = len(self.rows)
        view = KVCache(
            [k[row : row + 1] for k in self.cache.keys], [v[row : row + 1] for v in self.cache.values]
        )
        device = self.cache.keys[0].device
        seq.generator = torch.Generator(device=device).manual_seed(seq.sampling.seed)
        self.rows.append(seq)  # its row from now on (_admit takes it back if the forward pass fails)
        logits, _ = self.model(torch.tensor([seq.prompt_ids], device=device), cache=view)
        self._take(seq, logits[:, -1, :])

    def _decode(self) -> None:
        device = self.cache.keys[0].device
        idx = torch.tensor([[s.last] for s in self.rows], device=device)  # (B, 1)
        self.cache.place([s.length for s in self.rows])
        try:
            logits, _ = self.model(idx, cache=self.cache)
        finally:
            self.cache.positions = self.cache.mask = None
        for i, seq in enumerate(self.rows):
            self._take(seq, logits[i : i + 1, -1, :])

    def _take(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Sample the sequence's next token from its logits row (1, vocab) and hand it over."""
        mask_unused_rows(logits, self.vocab_limit)
        s = seq.sampling
        token = int(sample(logits, s.temperature, s.top_k, s.top_p, seq.generator).item())
        if token in seq.stop_ids:
            seq.cancelled = True
            seq.emit(Finished("stop"))
            return
        event = Token(token)
        if s.logprobs is not None:
            logprobs = logits[0].log_softmax(-1)
            event.logprob = float(logprobs[token])
            # no more than the tokenizer has: the padding rows past it are -inf, and decode to nothing
            count = min(s.logprobs, self.vocab_limit or logprobs.numel())
            top = logprobs.topk(count) if count > 0 else None
            event.top = (
                [] if top is None else list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
            )
        seq.last, seq.generated = token, seq.generated + 1
        seq.emit(event)
        if seq.generated >= s.max_tokens:
            seq.cancelled = True
            seq.emit(Finished("length"))

    def _compact(self) -> None:
        """Move the last live rows into the rows of finished ones, so the live ones stay first."""
        live = [s for s in self.rows if not s.cancelled]
        if len(live) == len(self.rows):
            return
        kept = []
        for seq in self.rows:
            if seq.cancelled:
                continue
            old, new = self.rows.index(seq), len(kept)
            if old != new:
                for tensors in (self.cache.keys, self.cache.values):
                    for t in tensors:
                        t[new, :, : seq.length] = t[old, :, : seq.length]
            kept.append(seq)
        self.rows = kept


class Engine:
    """Runs every model's batch in one worker thread; `submit` may be called from any thread."""

    def __init__(self, capacity: int = MAX_BATCH):
        self.capacity = capacity
        # by model, while it has sequences: a checkpoint replaced on disk as it is served has two
        # (requests that began on the old weights finish on them, beside the new ones')
        self.batches: dict[Transformer, Batch] = {}
        self.wake = threading.Condition()
        self.closed = False
        self.stopped: Exception | None = None  # the error of every sequence once the server stops
        self.largest_batch = 0  # the most rows decoded in one step (the tests check batching happened)
        self.thread = threading.Thread(target=self._run, name="trickster-decode", daemon=True)
        self.thread.start()

    def submit(self, model: Transformer, vocab_limit: int, seq: Sequence) -> None:
        with self.wake:
            if self.stopped is not None:
                seq.fail(self.stopped)
                return
            batch = self.batches.get(model)
            if batch is None:
                batch = self.batches[model] = Batch(model, vocab_limit, self.capacity)
            batch.waiting.append(seq)
            self.wake.notify()

    def stop(self, error: Exception) -> None:
        """Fail every sequence, decoding or waiting, and each one submitted from now on, with
        `error`: the server stops, and its clients are told now rather than cut off at the end of
        uvicorn's grace period (which logged the cancelled answers' tracebacks)."""
        with self.wake:
            self.stopped = error
            for batch in self.batches.values():
                for seq in [*batch.rows, *list(batch.waiting)]:  # list(): one copy, under the GIL
                    seq.fail(error)

    def close(self) -> None:
        with self.wake:
            self.closed = True
            self.wake.notify()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while self._round():
            pass

    def _round(self) -> bool:
        """Wait for work, then one step of every busy model's batch; False once closed. (A method of
        its own: its locals, which refer to the models, are gone while the thread waits.)"""
        with self.wake:
            # an idle model's batch goes (its cache went already): the engine keeps no reference to a
            # model it is not decoding, so one the catalog unloads is freed
            # (in a comprehension, whose names go with it: a loop's would keep one model while it waits)
            self.batches = {m: b for m, b in self.batches.items() if b.rows or b.waiting}
            while not self.closed and not self.batches:
                self.wake.wait()
            if self.closed:
                return False
            busy = list(self.batches.values())
        for batch in busy:  # one step for each model in turn
            self._step(batch)
        return True

    def _step(self, batch: Batch) -> None:
        try:
            with torch.inference_mode():
                self.largest_batch = max(self.largest_batch, batch.step())
        except Exception as err:  # a bug or an out-of-memory: fail these requests, keep serving
            failed, batch.rows = batch.rows, []
            batch.idle()
            while batch.waiting:
                failed.append(batch.waiting.popleft())
            for seq in failed:
                seq.fail(err)
        if self.stopped is not None:  # a sequence this step took from `waiting` while stop() ran
            for seq in batch.rows:
                if not seq.cancelled:
                    seq.fail(self.stopped)

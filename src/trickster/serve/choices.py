"""One request's choices: handed to the engine, their tokens turned back into text as they come.

Choice i of a request with `seed` S samples with seed S + i, so choice 0 is what
`trickster generate --seed S` prints; without a seed each choice draws a fresh one.

A generation is handed its model's hold (models.Catalog.hold) and lets it go once: when the engine
has finished every one of its sequences, when its text stops being read (done, stopped, client
gone), or, for a stream that never started, when it is garbage.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from trickster.serve.engine import Engine, Event, Failed, Finished, Sampling, Sequence, Token
from trickster.serve.offered import Offered
from trickster.serve.token_text import TokenTexts


class StopStrings:
    """Cuts the text at the first stop string, holding back the longest tail that could begin one.

    Each feed costs the length of its piece (and of the shorter stop strings), never the length of
    the tail held back: that tail grows for as long as the text goes on matching the start of a stop
    string (a client whose stop string is the text greedy decoding gives, plus a character), and
    looking for it anew at each token cost its square, on the event loop (14 ms a token with 16,384
    characters held back, 4 to 6 s for 1,024 tokens of 16 characters, on a busy 2-core machine)."""

    def __init__(self, stops: list[str]):
        self.stops, self.held = stops, ""
        self.prefixes = [_Prefix(s) for s in stops]

    def feed(self, piece: str) -> tuple[str, bool]:
        """The text that is safe to show, and whether a stop string was reached."""
        text = self.held + piece
        # the held text was searched when it came: a stop string found now ends in the piece
        starts = (text.find(s, max(len(self.held) - len(s) + 1, 0)) for s in self.stops)
        hits = [i for i in starts if i >= 0]
        if hits:
            self.held = ""
            return text[: min(hits)], True
        keep = max((prefix.feed(piece) for prefix in self.prefixes), default=0)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


class _Prefix:
    """How long a start of one stop string the text fed so far ends with: Knuth-Morris-Pratt's
    automaton, a character at a time. Its table of borders (`border[i]`: the longest start of
    stop[: i + 1] that also ends it) is built only as far as the text has matched, so a stop string
    of a megabyte costs nothing until text follows it that far."""

    def __init__(self, stop: str):
        self.stop, self.border, self.matched = stop, [0], 0

    def feed(self, text: str) -> int:
        stop, j = self.stop, self.matched
        for char in text:
            while j and stop[j] != char:
                j = self._border(j - 1)
            j += stop[j] == char
            if j == len(stop):  # the whole stop string (StopStrings found it first): go on matching
                j = self._border(j - 1)
        self.matched = j
        return j

    def _border(self, i: int) -> int:
        border, stop = self.border, self.stop
        while len(border) <= i:
            k, b = len(border), border[-1]
            while b and stop[k] != stop[b]:
                b = border[b - 1]
            border.append(b + (stop[k] == stop[b]))
        return border[i]


@dataclass
class Delta:
    """What one event adds to choice `index`."""

    index: int
    text: str
    logprobs: list[dict] = field(default_factory=list)  # one entry per token, when asked for
    finish_reason: str | None = None


@dataclass
class Choice:
    index: int
    prompt_ids: list[int]
    sequence: Sequence
    decode: object  # the tokenizer's stream decoder for this choice
    stops: StopStrings
    token_texts: TokenTexts  # each token's text in its context, for logprobs
    tokens: int = 0  # generated (and counted in usage), up to the one that completed a stop string
    finished: bool = False
    decoded: int = 0  # characters decoded so far (before any stop string cut them): text_offset


class Generation:
    def __init__(
        self,
        engine: Engine,
        offered: Offered,
        prompts: list[list[int]],
        n: int,
        sampling: dict,
        seed: int | None,
        stops: list[str],
        release: Callable[[], None],
    ):
        self.engine, self.offered = engine, offered
        self.created = int(time.time())  # OpenAI's `created` of every chunk and answer
        self.system_fingerprint = offered.system_fingerprint  # and their system_fingerprint
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        tokenizer = offered.tokenizer
        self.prompt_tokens = sum(len(ids) for ids in prompts)  # each prompt once, whatever n is
        self.choices: list[Choice] = []
        self.ended: set[int] = set()  # choices the engine has finished (or failed)
        for ids in prompts:
            for k in range(n):
                index = len(self.choices)
                choice_seed = seed + k if seed is not None else secrets.randbits(63)

                def emit(event, index=index):  # called from the engine's thread
                    try:
                        loop.call_soon_threadsafe(self._arrive, index, event)
                    except RuntimeError:  # the event loop has closed (the server stopped): no reader
                        self.cancel()

                sequence = Sequence(
                    ids, Sampling(**sampling, seed=choice_seed), emit, stop_ids=tokenizer.stop_ids
                )
                decode = tokenizer.stream_decoder(context=ids)
                texts = TokenTexts(tokenizer, ids)
                self.choices.append(Choice(index, ids, sequence, decode, StopStrings(stops), texts))
        self.release = _once(release)
        weakref.finalize(self, self.release)  # last: a constructor that raised has released nothing

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    def cancel(self) -> None:
        for choice in self.choices:
            choice.sequence.cancelled = True

    async def deltas(self) -> AsyncIterator[Delta]:
        """Each choice's new text as it is generated; a failure in the engine is raised here."""
        offered = self.offered
        for choice in self.choices:  # the model is held: it is in memory
            self.engine.submit(offered.model, offered.tokenizer.vocab_size, choice.sequence)
        unfinished = len(self.choices)
        try:
            while unfinished:
                index, event = await self.queue.get()
                choice = self.choices[index]
                if choice.finished:
                    continue  # tokens decoded after a stop string cut the text
                if isinstance(event, Failed):
                    raise event.error
                delta = self._apply(choice, event)
                if choice.finished:
                    unfinished -= 1
                yield delta
                # a turn of the event loop before the next delta, even when more have come: a stream
                # writes each as a chunk, and a client's hang-up that asyncio has seen reaches uvicorn
                # only at the loop's next turn; the chunks written in a row before then (the tokens
                # that came while the loop was busy) each logged 'socket.send() raised exception.'.
                # Now the stream is cancelled here, or at the next one
                await asyncio.sleep(0)
        finally:
            self.cancel()
            self.release()

    def _arrive(self, index: int, event: Event) -> None:
        """An event from the engine, on the event loop. After each choice's last, the engine needs
        the model no more: it is released then, not when a slow client has read the text."""
        self.queue.put_nowait((index, event))
        if isinstance(event, Finished | Failed):
            self.ended.add(index)
            if len(self.ended) == len(self.choices):
                self.release()

    def _apply(self, choice: Choice, event: Token | Finished) -> Delta:
        if isinstance(event, Finished):
            choice.finished = True
            return Delta(
                choice.index,
                choice.stops.feed(choice.decode(None))[0] + choice.stops.flush(),
                finish_reason=event.reason,
            )
        choice.tokens += 1
        piece = choice.decode(event.id)
        text, stopped = choice.stops.feed(piece)
        delta = Delta(choice.index, text)
        if event.logprob is not None:
            delta.logprobs.append(_logprob_entry(choice, event))
        choice.decoded += len(piece)
        if stopped:
            choice.finished, delta.finish_reason = True, "stop"
            choice.sequence.cancelled = True
        return delta


def _logprob_entry(choice: Choice, event: Token) -> dict:
    """`offset`: the characters of text before this token (those of a character it begins come
    with the token that finishes it). The chosen token is named as it is among the alternatives."""
    texts, top = choice.token_texts, list(event.top or [])
    # the chosen token is always among them, as OpenAI's and vLLM's list it (so up to logprobs + 1):
    # one sampled outside the likeliest comes last, as it is no likelier than any of them
    if all(token != event.id for token, _ in top):
        top.append((event.id, event.logprob))
    names = texts.names(i for i, _ in top)
    chosen = dict(zip((i for i, _ in top), names, strict=True))[event.id]
    entry = {
        "token": chosen,
        "logprob": event.logprob,
        "top": {name: lp for name, (_, lp) in zip(names, top, strict=True)},
        "offset": choice.decoded,
    }
    texts.advance(event.id)
    return entry


def _once(call: Callable[[], None]) -> Callable[[], None]:
    done = []

    def once() -> None:
        if not done:
            done.append(True)
            call()

    return once

"""A prompt written as a prompt/response folder's records write theirs, read back from its
validation split: the prompt of the samples a run on them writes while it trains, and the one to
suggest after it (a base config's sample prompt, ROMEO:, is not in the records' format, and the
model would not answer it).

A record's tokens are [start id] context reply [context reply ...] [end-of-text] with the loss mask
0 over the start id and each context and 1 over each reply and the end-of-text (records.py), so each
run of 0s in the mask is a context. Only a record's first one is a prompt: a conversation's later
contexts ("user: And then?\nassistant:") continue the turns before them, which a sample of them alone
would not show the model; its first, up to and including the first "assistant:", asks as a chat asks.
A record starts after an end-of-text, or at its start id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the loader's PreparedData asks this module, once (its record_prompt)
    from trickster.data.loader import PreparedData

RECORDS_LOOKED_AT = 50  # the validation records whose prompts are compared: a bounded read
TOKENS_LOOKED_AT = 1 << 20


def record_prompt(data: PreparedData) -> str | None:
    """The shortest prompt among the first validation records (held out from training, so it is
    answered fresh; the shortest, so the command stays one short line), or None when the folder
    holds no records (its loss covers every token)."""
    mask = data.val.loss_mask
    if mask is None:
        return None
    # +1 where a run of 0s (a prompt) begins, at 0 too; -1 where the mask rises after it
    edges = np.diff((np.asarray(mask[:TOKENS_LOOKED_AT]) == 0).astype(np.int8), prepend=0)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    start_ids, eot = set(data.tokenizer.start_ids()), data.tokenizer.eot_id
    tokens = np.asarray(data.val[: min(len(data.val), TOKENS_LOOKED_AT)])
    prompts = []
    # the k-th context ends at the k-th rise; the last one read may have none (it runs past the read)
    for start, end in zip(starts, ends, strict=False):
        if not _starts_a_record(tokens, int(start), start_ids, eot):
            continue
        if len(prompts) == RECORDS_LOOKED_AT:
            break
        ids = [int(i) for i in tokens[start:end] if int(i) not in start_ids]
        text = data.tokenizer.decode(ids)
        if text.strip():
            prompts.append(text)
    return min(prompts, key=len, default=None)


def _starts_a_record(tokens: np.ndarray, at: int, start_ids: set[int], eot: int | None) -> bool:
    """Whether the context at `at` is a record's first: at the split's start, after an end-of-text,
    or at a start id. Records with neither id run together: every context is taken, as none can be
    told from a record's first."""
    if at == 0 or (eot is None and not start_ids):
        return True
    return int(tokens[at]) in start_ids or (eot is not None and int(tokens[at - 1]) == eot)

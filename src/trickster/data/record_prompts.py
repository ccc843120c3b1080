"""A prompt written as a prompt/response folder's records write theirs, read back from its
validation split: the prompt of the samples a run on them writes while it trains, and the one to
suggest after it (a base config's sample prompt, ROMEO:, is not in the records' format, and the
model would not answer it).

A record's tokens are [start id] prompt response [end-of-text] with the loss mask 0 over the start
id and the prompt and 1 after them (records.py), so each run of 0s in the mask is one prompt.
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
    start_ids = set(data.tokenizer.start_ids())
    prompts = []
    # the k-th prompt ends at the k-th rise; the last one read may have none (it runs past the read)
    for start, end in zip(starts[:RECORDS_LOOKED_AT], ends, strict=False):
        ids = [int(i) for i in data.val[start:end] if int(i) not in start_ids]
        text = data.tokenizer.decode(ids)
        if text.strip():
            prompts.append(text)
    return min(prompts, key=len, default=None)

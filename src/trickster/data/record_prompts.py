"""A prompt written as a prompt/response folder's records write theirs, read back from its
validation split: the prompt to suggest for a model trained on them (a base config's sample prompt,
ROMEO:, is not in the records' format, and the model would not answer it).

A record's tokens are [start id] prompt response [end-of-text] with the loss mask 0 over the start
id and the prompt and 1 after them (records.py), so each run of 0s in the mask is one prompt.
"""

from __future__ import annotations

import numpy as np

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
    end = min(len(mask), TOKENS_LOOKED_AT)
    covered = np.asarray(mask[:end], dtype=np.int8)
    # where the mask changes: a prompt begins where it falls to 0 (or at 0), ends where it rises
    changes = np.flatnonzero(np.diff(covered)) + 1
    starts = [0] if end and covered[0] == 0 else []
    starts += [int(i) for i in changes if covered[i] == 0]
    ends = [int(i) for i in changes if covered[i] == 1]
    start_ids = set(data.tokenizer.start_ids())
    prompts = []
    for start in starts[:RECORDS_LOOKED_AT]:
        after = np.searchsorted(ends, start, side="right")
        if after == len(ends):  # the last one looked at runs past what was read
            break
        ids = [int(i) for i in data.val[start : ends[after]] if int(i) not in start_ids]
        text = data.tokenizer.decode(ids)
        if text.strip():
            prompts.append(text)
    return min(prompts, key=len, default=None)

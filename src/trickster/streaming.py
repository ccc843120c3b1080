"""A continuation printed token by token as the model writes it: what `trickster generate`,
`compare` and `chat` show."""

from __future__ import annotations

import sys

from trickster.data.tokenizers import Tokenizer
from trickster.model.generate import generate
from trickster.options import Sampling


def stream(
    model,
    tokenizer: Tokenizer,
    ids: list[int],
    sampling: Sampling,
    use_cache: bool = True,
    stoppable: bool = False,
) -> str:
    """Print the continuation of `ids` as it is generated, then a line end; the text written.
    `stoppable`: Ctrl-C ends the continuation (marked " [stopped]" on the screen, not in the text)
    instead of the command."""
    decode_next = tokenizer.stream_decoder(context=ids)
    written = []
    try:
        for token in generate(
            model,
            ids,
            sampling.max_new_tokens,
            sampling.temperature,
            sampling.top_k,
            sampling.top_p,
            sampling.seed,
            vocab_limit=tokenizer.vocab_size,
            stop_ids=tokenizer.stop_ids,
            use_cache=use_cache,
        ):
            written.append(decode_next(token))
            sys.stdout.write(written[-1])
            sys.stdout.flush()
    except KeyboardInterrupt:
        if not stoppable:
            sys.stdout.write("\n")  # "interrupted" on a line of its own, not after the text
            raise
        sys.stdout.write(" [stopped]")
    written.append(decode_next(None))
    sys.stdout.write(written[-1] + "\n")
    return "".join(written)

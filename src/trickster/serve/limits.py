"""What `trickster serve` holds at once unless told. A module that imports nothing, so that cli.py
can show these defaults in --help without loading the server, torch or the commands."""

# The playground's three checkpoints side by side, with the default one besides: a page comparing
# three never waits for a model, and memory holds 4 copies of the weights (2 GB for gpt2-small in fp32).
MAX_LOADED_MODELS = 4
MAX_BATCH = 16  # sequences of one model decoded together (the rows of its KV cache)

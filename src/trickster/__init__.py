"""nano-trickster: train a small Llama-style language model from scratch, watch it learn, use it."""

__version__ = "0.1.0"

"""What every use of a Hugging Face tokenizer needs (data, serve's chat templates, export): the
`tokenizers` package, or one line saying how to install it, and special tokens read as
tokenizer_config.json writes them."""

from __future__ import annotations

from trickster.errors import UserError

HF_EXTRA = "pip install 'nano-trickster[hf]'"


def special_token_text(token) -> str | None:
    """tokenizer_config.json writes a special token as "</s>" or as {"content": "</s>", ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) and token else None


def require_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise UserError(f"Hugging Face tokenizers need the `tokenizers` package: {HF_EXTRA}") from None
    return tokenizers

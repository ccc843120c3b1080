"""What every use of a Hugging Face tokenizer needs (data, chat templates, export): the `tokenizers`
package, or one line saying how to install it, special tokens and the chat template read as
tokenizer_config.json writes them (or as records' layout put one in tokenizer.json)."""

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


def chat_template_of(tokenizer) -> str | None:
    """The chat template a model is asked through unless one is given: that of the records it was
    fine-tuned on (data prepare --format alpaca or messages saved it in tokenizer.json), else an
    imported Hugging Face tokenizer's own (the default one, if it names several)."""
    if tokenizer.chat_template is not None:
        return tokenizer.chat_template
    template = getattr(tokenizer, "config", {}).get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None

"""The chat template an export ships (`export --chat-template FILE`), so that transformers'
apply_chat_template, vLLM's chat endpoint and llama.cpp ask the model the way it was fine-tuned:
read and checked as `chat` and `serve` check theirs, by rendering sample conversations, before
anything is written."""

from __future__ import annotations

from trickster.data.tokenizers import Tokenizer
from trickster.errors import UserError
from trickster.serve.server import read_template  # imports nothing heavy


def read_checked(path: str | None, tokenizer: Tokenizer) -> str | None:
    """The text of the template file at `path` once it gives a prompt (chat.Template.check);
    None for no file or an empty one (an imported tokenizer's own template stays, as `serve
    --chat-template` reads an empty file)."""
    source = read_template(path)
    if not source or not source.strip():
        return None
    try:
        from trickster.serve.chat import Template
    except ImportError:
        raise UserError("a chat template needs jinja2: pip install 'nano-trickster[serve]'") from None
    Template(source, tokenizer).check(f"--chat-template {path}")
    return source

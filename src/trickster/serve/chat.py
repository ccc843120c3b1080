"""Chat messages into one prompt, through a Jinja chat template as Hugging Face models ship them.

A model has one when its tokenizer came with it (`trickster import hf`) or with the records it was
fine-tuned on (data prepare --format alpaca or messages, record_layouts.py), or when the person serving
it passes `--chat-template FILE` (for a model fine-tuned on prompt/response records: the template
writes the conversation the way the records were written). Rendered as transformers renders
templates: a sandboxed environment, `trim_blocks` and `lstrip_blocks`, `raise_exception`.
"""

from __future__ import annotations

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from trickster.data.hf_tokens import special_token_text
from trickster.data.json_records import checked_text
from trickster.data.tokenizers import Tokenizer
from trickster.errors import UserError


class TemplateRefused(Exception):
    """The template itself rejected the conversation (e.g. roles that do not alternate)."""


def _raise(message: str):
    raise TemplateRefused(message)


class Template:
    def __init__(self, source: str, tokenizer: Tokenizer):
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateError as err:
            raise UserError(f"the chat template does not compile ({err}); fix it or pass another") from None
        config = getattr(tokenizer, "config", {})
        self.specials = {key: special_token_text(config.get(key)) or "" for key in ("bos_token", "eos_token")}
        self.tokenizer = tokenizer

    def render(self, messages: list[dict]) -> str:
        try:
            return self._render(messages)
        except TemplateRefused:
            raise
        except jinja2.TemplateError as err:
            raise TemplateRefused(f"the model's chat template failed on these messages ({err})") from None

    def check(self, named: str) -> None:
        """Refuse, at start, a template that fails on the smallest conversation, one user message:
        an error in the template itself, which every chat request would meet. One that declines it
        through raise_exception (a template that wants a system message first) may take others."""
        try:
            self._render([{"role": "user", "content": "Hello"}])
        except TemplateRefused:
            pass
        except jinja2.TemplateError as err:
            raise UserError(
                f"{named} fails on a conversation of one user message ({err}); fix it or pass another"
            ) from None

    def _render(self, messages: list[dict]) -> str:
        return self.template.render(messages=messages, add_generation_prompt=True, **self.specials)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation's token ids: the rendered text as it is, with no start id added (a
        template that wants one writes {{ bos_token }}), as transformers' apply_chat_template does."""
        text = checked_text(self.render(messages), "the conversation", "send whole characters")
        return encode(self.tokenizer, text)


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """A prompt's ids, through encode_batch: a Hugging Face tokenizer's encode holds the GIL
    throughout (2.2 s for 1 MiB of prompt, for a trained bpe), stopping the server's event loop
    with it; its encode_batch lets go."""
    return tokenizer.encode_batch([text])[0]

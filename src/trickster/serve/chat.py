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

# conversations a template is tried on at start: those every template meant for chat takes one of
SAMPLES = (
    ("one user message", [{"role": "user", "content": "Hello"}]),
    (
        "a system message and a user message",
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
    ),
    (
        "user, assistant, user",
        [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "Who are you?"},
        ],
    ),
)


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
        """Refuse, at start, a template that fails on every conversation, which every chat request
        would meet: one that errors on the smallest (one user message: an error in the template
        itself), or that gives no prompt the model can take for any of SAMPLES (it declines each
        through raise_exception, renders them as no text, or writes a character the tokenizer lacks
        into each). One that declines some (a template that wants a system message first) may take
        others."""
        problems, tried = [], "; ".join(described for described, _ in SAMPLES)
        for index, (described, messages) in enumerate(SAMPLES):
            try:
                problem = self._unusable(self._render(messages), messages)
            except TemplateRefused as err:
                problem = f"refuses every conversation tried ({tried}) with {str(err)!r}"
            except jinja2.TemplateError as err:
                problem = f"fails on a conversation of {described} ({err})"
                if index == 0:  # an error in the template itself, which the smallest conversation meets
                    raise UserError(f"{named} {problem}; fix it or pass another") from None
            if problem is None:
                return
            problems.append(problem)
        worst = next((p for p in problems if not p.startswith("refuses")), problems[0])
        raise UserError(f"{named} {worst}; fix it or pass another")

    def _unusable(self, text: str, messages: list[dict]) -> str | None:
        """What keeps the rendered `text` of `messages` from being a prompt, else None: no text, or a
        character the tokenizer lacks in the template's own text (not in the messages' contents)."""
        if not text:
            return "renders every conversation tried as no text (does it write each message's content?)"
        own = text
        for message in messages:
            own = own.replace(message["content"], "")
        for character in dict.fromkeys(own):
            try:
                encode(self.tokenizer, character)
            except UserError:
                return (
                    f"writes {character!r} into every conversation, a character the model's vocabulary lacks"
                )
        return None

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

"""`trickster chat`: talk to a model in the terminal, with the model loaded once for the whole talk.

With a chat template (an imported model's own, the layout of the alpaca or messages records a model
was fine-tuned on, or `--chat-template FILE` for a model fine-tuned on prompt/response records)
every reply is written for the whole conversation so far, rendered as `/v1/chat/completions`
renders it; the oldest turns make way when the conversation outgrows the
model's context. Without one, the model continues text: each line typed is a prompt of its own,
continued as `trickster generate --prompt LINE` continues it.

`/reset` starts a new conversation; `/exit` or Ctrl-D ends. Ctrl-C while the model writes stops
that reply; at the prompt, it ends the chat as it ends every command (`interrupted`, exit status
130). Lines read from a pipe work the same, without prompts.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from trickster.data.hf_tokens import chat_template_of
from trickster.data.tokenizers import Tokenizer
from trickster.data.unknown_character import UnknownCharacter
from trickster.errors import UserError
from trickster.options import Sampling
from trickster.serve.server import read_template
from trickster.streaming import stream
from trickster.text_in import not_utf8, typed_lines
from trickster.text_out import text_written
from trickster.train import checkpoint_load
from trickster.train.device import resolve_device

ENDS = "/exit (or Ctrl-D) ends"
COMMANDS = f"/reset starts a new conversation, {ENDS}"


def chat_command(
    target: str,
    sampling: Sampling,
    device: str = "cpu",
    chat_template: str | None = None,
    system: str | None = None,
) -> int:
    with text_written("chat"):
        return _chat(target, sampling, device, chat_template, system)


def _chat(target: str, sampling: Sampling, device: str, chat_template: str | None, system: str | None) -> int:
    where = resolve_device(device, "--device")
    loaded = checkpoint_load.load_checkpoint(target, where)
    template = _template(loaded.tokenizer, chat_template)
    if template is None and system is not None:
        raise UserError("--system needs a chat template; pass --chat-template FILE, or leave --system out")
    talk = Talk(loaded.model.to(where), loaded.tokenizer, template, sampling, system)
    talk.check_opening()
    context = loaded.cfg.model.max_seq_len
    if loaded.path != Path(target):  # a run folder: which of its checkpoints, in info's words, first
        print(checkpoint_load.checkpoint_line(loaded))
    if template is None:
        print(f"{loaded.path} has no chat template: each line you type is continued on its own.")
    else:
        print(f"chatting with {loaded.path} (context {context} tokens).")
    offered = COMMANDS if template is not None else ENDS  # without a template there is nothing to reset
    print(f"{offered}.")
    for line in typed_lines("you> " if template is not None else "text> "):
        command = line.strip()  # " /exit": a space typed first is still the command, not a message
        if command.startswith("/"):
            if command in ("/exit", "/quit"):
                break
            if command != "/reset":
                print(f"unknown command {command}: {offered}")
            elif template is None:  # what /reset would do is done already: no line is kept
                print("(nothing to reset: without a chat template each line is continued on its own)")
            else:
                talk.reset()
                print("(a new conversation)")
        elif line.strip():
            talk.answer(line)
    return 0


class Talk:
    """One conversation: the messages so far, and how to answer the next one."""

    def __init__(self, model, tokenizer: Tokenizer, template, sampling: Sampling, system: str | None):
        self.model, self.tokenizer, self.template, self.sampling = model, tokenizer, template, sampling
        self.context = model.cfg.max_seq_len
        self.opening = [{"role": "system", "content": system}] if system is not None else []
        self.messages = list(self.opening)
        self.turns = 0  # replies written: the seed of each is --seed + turns, so each differs

    def reset(self) -> None:
        self.messages = list(self.opening)

    @property
    def room(self) -> int:
        """The tokens a reply is given room for: --max-new-tokens, at most half the context."""
        return min(self.sampling.max_new_tokens, self.context // 2)

    def check_opening(self) -> None:
        """Refuse a --system message that leaves a reply no room even after a message of two
        characters: each line typed was refused, however short, as 'your message is 140 tokens'."""
        if not self.opening:
            return
        from trickster.serve.chat import TemplateRefused

        try:
            ids = self.template.prompt_ids([*self.opening, {"role": "user", "content": "hi"}])
        except (TemplateRefused, UserError):  # said of each message typed, as without --system
            return
        if len(ids) + self.room > self.context:
            raise UserError(
                f"--system: with the chat template, it and a two-character message are {len(ids)} "
                f"tokens, and a reply needs {self.room} more of the model's {self.context}; "
                "shorten --system (or lower --max-new-tokens)"
            )

    def answer(self, line: str) -> None:
        """Print the model's reply to `line` as it is written (and keep it, with a template)."""
        if problem := not_utf8(line, "this line"):
            print(f"(not sent: {problem})")
            return
        if self.template is None:
            ids = _continue_ids(self.tokenizer, line)
            if ids is not None:
                sys.stdout.write(line)
                self._write(ids)
            return
        fitted = self._fitting([*self.messages, {"role": "user", "content": line}])
        if fitted is not None:
            asked, ids = fitted
            reply = self._write(ids, prefix="model> ")
            self.messages = [*asked, {"role": "assistant", "content": reply}]

    def _fitting(self, asked: list[dict]) -> tuple[list[dict], list[int]] | None:
        """The conversation kept and its ids: the oldest turns dropped until the reply has room
        (half the context, or max_new_tokens if less). None, said why, when the new message alone
        is too long; the conversation then stays as it was."""
        from trickster.serve.chat import TemplateRefused

        room = self.room
        kept, dropped = len(self.opening), 0
        while True:
            try:
                ids = self.template.prompt_ids(asked)
            except (TemplateRefused, UserError) as err:
                print(f"(not sent: {err})")
                return None
            if len(ids) + room <= self.context:
                break
            if len(asked) - kept <= 1:  # only the new message is left (after --system's, if given)
                counted = "your message and the --system one are" if self.opening else "your message is"
                print(
                    f"(not sent: with the chat template {counted} {len(ids)} tokens, and a "
                    f"reply needs {room} more of the model's {self.context}; write a shorter one)"
                )
                return None
            asked = asked[:kept] + asked[kept + 2 :]  # a message and the reply to it
            dropped += 1
        if dropped:
            oldest = "the oldest turn" if dropped == 1 else f"the oldest {dropped} turns"
            print(f"({oldest} dropped to fit the model's context of {self.context} tokens)")
        return asked, ids

    def _write(self, ids: list[int], prefix: str = "") -> str:
        """Stream the continuation of `ids` to the terminal; the text written (up to a Ctrl-C)."""
        seed = None if self.sampling.seed is None else self.sampling.seed + self.turns
        self.turns += 1
        sys.stdout.write(prefix)
        sampling = dataclasses.replace(self.sampling, seed=seed)
        return stream(self.model, self.tokenizer, ids, sampling, stoppable=True)


def _continue_ids(tokenizer: Tokenizer, line: str) -> list[int] | None:
    """The line's ids after the start ids; None, said why, for a line the model cannot read (one
    line refused ends no conversation, as with a template)."""
    try:
        ids = tokenizer.encode(line)
    except UnknownCharacter as err:  # a character a char model never saw
        print(f"(not sent: {err.in_prompt()})")
        return None
    except UserError as err:
        print(f"(not sent: {err})")
        return None
    if not ids:  # a line of characters the tokenizer drops (an imported one without an unknown token)
        print("(not sent: none of these characters are in the model's vocabulary)")
        return None
    return tokenizer.start_ids() + ids


def _template(tokenizer: Tokenizer, path: str | None):
    """The chat template to talk through: --chat-template's file, else an imported tokenizer's
    own; None when the model has neither (it continues text)."""
    source = read_template(path) if path is not None else chat_template_of(tokenizer)
    if source is None:
        return None
    try:
        from trickster.serve.chat import Template
    except ImportError:
        raise UserError("a chat template needs jinja2: pip install 'nano-trickster[serve]'") from None
    template = Template(source, tokenizer)
    if path is not None:
        template.check(f"--chat-template {path}")
    return template

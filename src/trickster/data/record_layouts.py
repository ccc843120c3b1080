"""A fine-tuning record's fields as text, in the layout of its --format, and the chat template that
lays a conversation out the same way: a run fine-tuned on `alpaca` or `messages` records carries
it (in tokenizer.json), so `trickster chat`, `serve` and an export ask the model as it learned.

A record becomes segments, context and reply in turn: (context, reply, context, reply, ...). The
loss covers each reply and the end-of-text after the last (encode.py), never the context.

prompt-response: {"prompt", "response"} as written: (prompt, response). No template: the layout is
the user's own.

alpaca: Alpaca's {"instruction", "input", "output"} in the layout of alpaca-lora's alpaca_short:
Alpaca's own without its preamble, two sentences that would take about 100 characters of a small
model's context in every record. The output follows the cue as litgpt's alpaca data puts it, then
end-of-text:

    ### Instruction:
    Name the play.

    ### Input:                 (only where "input" is not empty)
    Who is there?

    ### Response:
    Hamlet.

Its template asks with the last user message as the instruction (a chat has no input; system
messages and earlier turns are left out: the model never saw them).

messages: {"messages": [{"role", "content"}, ...]} as OpenAI's and Hugging Face's chat sets
write them, one line per message, its content trimmed (as Llama 3's template trims it, so that a
reply sent back with other spaces around it is laid out as the model learned it):

    system: Answer as Hamlet.
    user: Who is there?
    assistant: Nay, answer me.      the loss covers " Nay, answer me.\n"
    user: Stand and unfold yourself.
    assistant: Long live the king!  and " Long live the king!\n"

One record teaches every assistant turn, each after the whole conversation before it (no copy of
that conversation per reply, as TRL's assistant-only loss does). The space after "assistant:" and
the line break are the reply's: a BPE tokenizer starts a word with its space, and splits a line
break from the word after it, so a conversation tokenized whole, as chat and serve tokenize
theirs, has the ids of its segments tokenized one by one. Messages after the last reply are left
out: nothing after them is learned.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from trickster.data.json_records import checked_text, its_fields, json_type
from trickster.data.unknown_character import UnknownCharacter
from trickster.errors import UserError

if TYPE_CHECKING:  # cli_parser reads FORMATS for --help, before numpy is needed
    from trickster.data.tokenizers import Tokenizer

FORMATS = ("prompt-response", "alpaca", "messages")
ROLES = ("system", "user", "assistant")
NOTHING_TO_LEARN = "the loss would have nothing to learn from"
EXAMPLE = {  # what a record of each format looks like, for a line that is not one
    "prompt-response": '{"prompt": "...", "response": "..."}',
    "alpaca": '{"instruction": "...", "input": "...", "output": "..."}',
    "messages": '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
}
# the fields each layout reads ("input" may be left out): a Parquet file's columns read for it
FIELDS = {
    "prompt-response": ("prompt", "response"),
    "alpaca": ("instruction", "input", "output"),
    "messages": ("messages",),
}
NEEDS = {
    "prompt-response": 'each record needs "prompt" and "response"',
    "alpaca": 'each instruction record needs "instruction" and "output" ("input" may be left out)',
    "messages": 'each chat record needs "messages", a list of {"role", "content"}',
}
# Jinja, rendered as transformers renders chat templates (trim_blocks, lstrip_blocks); the text has
# no line break of its own, so neither setting changes it
ALPACA_TEMPLATE = (
    "{% set found = namespace(instruction=none) %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% set found.instruction = message['content'] %}"
    "{% endif %}{% endfor %}"
    "{% if found.instruction is none %}"
    "{{ raise_exception('this model was fine-tuned on instructions: send a user message') }}"
    "{% endif %}"
    "{{ '### Instruction:\\n' + found.instruction + '\\n\\n### Response:\\n' }}"
)
MESSAGES_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('this model was fine-tuned on system, user and assistant messages, not ' + "
    "message['role']) }}"
    "{% endif %}"
    "{{ message['role'] + ': ' + message['content'] | trim + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)

TEMPLATES = {"alpaca": ALPACA_TEMPLATE, "messages": MESSAGES_TEMPLATE}
MARKUP = {
    "alpaca": "### Instruction:\n\n### Input:\n\n### Response:\n",
    "messages": "system: user: assistant:\n",
}


def segments(record: dict, where: str, layout: str, source: str = "jsonl") -> tuple[str, ...]:
    """A record's context and replies in turn, in `layout`; one line, naming `where` (the file and
    line, or row), for a record that is not one of its kind. `source` reads it (jsonl, parquet, hf):
    what it reads without --format differs."""
    lacks = next((key for key in FIELDS[layout] if key != "input" and key not in record), None)
    if lacks is not None and source != "jsonl" and _format_of(record) == "text":
        raise UserError(  # jsonl's default is prompt/response records (_missing); theirs is text
            f'{where} has no "{lacks}" field ({its_fields(record)}); it is a record of text, which '
            f"{source} reads without --format: drop --format {layout}"
        )
    if layout == "alpaca":
        return _alpaca(record, where)
    if layout == "messages":
        return _messages(record, where)
    prompt, response = _text(record, "prompt", where, layout), _text(record, "response", where, layout)
    if not response:
        raise UserError(
            f'{where}: "response" is empty, so {NOTHING_TO_LEARN}; write the response, or remove that record'
        )
    return prompt, response


def chat_template(layout: str | None, tokenizer: Tokenizer) -> str | None:
    """The template that writes a conversation as `layout` writes records (None for prompt/response
    records, whose layout is the user's, and for text). Where the tokenizer starts every record with
    its start token (Llama's <s>), the template writes it first, as such templates do."""
    template = TEMPLATES.get(layout or "")
    if template is None:
        return None
    return "{{ bos_token }}" + template if tokenizer.start_ids() else template


def with_markup(layout: str | None, texts: Iterable[str]) -> Iterator[str]:
    """The texts a new tokenizer is built from, after the text the layout writes around records:
    a char vocabulary of conversations without a system message had no 'y' for "system:", and was
    refused for its own layout (check_markup)."""
    yield MARKUP.get(layout or "", "")
    yield from texts


def check_markup(layout: str | None, tokenizer: Tokenizer) -> None:
    """Refuse a model's tokenizer (--tokenizer-from) that cannot write a layout's own text, in words
    that say it is the layout's (a char vocabulary of Tiny Shakespeare has no '#'), not the records'."""
    markup = MARKUP.get(layout or "", "")
    try:
        tokenizer.encode(markup)
    except UserError as err:
        why = err.missing() if isinstance(err, UnknownCharacter) else str(err).split(";")[0]
        shown = " ".join(markup.split())
        raise UserError(
            f"--format {layout} writes '{shown}' around each record, which this tokenizer cannot "
            f"encode ({why}); fine-tune a model whose tokenizer can (bpe, gpt2, byte, an imported one), "
            "or write prompt/response records in a layout of your own"
        ) from None


def _alpaca(record: dict, where: str) -> tuple[str, str]:
    instruction = _text(record, "instruction", where, "alpaca")
    output = _text(record, "output", where, "alpaca")
    given = record.get("input")
    if given is not None and not isinstance(given, str):
        raise UserError(
            f'{where}: "input" must be a string (got {json_type(given)}); write "" or leave it out for '
            "none, or remove that record"
        )
    for key, why in (("instruction", "there is nothing to answer"), ("output", NOTHING_TO_LEARN)):
        if not record[key].strip():
            raise UserError(f'{where}: "{key}" is empty, so {why}; write the {key}, or remove that record')
    context = f"### Instruction:\n{instruction}\n\n"
    if given and given.strip():  # one of spaces is none, as an empty instruction is
        checked_text(given, f'{where}: "input"')
        context += f"### Input:\n{given}\n\n"
    return context + "### Response:\n", output


def _messages(record: dict, where: str) -> tuple[str, ...]:
    if "messages" not in record:
        _missing(record, "messages", where, "messages")
    messages = record["messages"]
    if not isinstance(messages, list):
        raise UserError(
            f'{where}: "messages" must be a list of {{"role", "content"}} messages (got '
            f"{json_type(messages)}); fix or remove that record"
        )
    if not messages:
        raise UserError(f'{where}: the conversation is empty ("messages": []); remove that record')
    parts, context = [], ""
    for number, message in enumerate(messages, start=1):
        role, content = _message(message, f"{where}: message {number}")
        # an empty reply would be " \n", which a byte-level BPE reads as one word where the
        # conversation, tokenized whole, splits it from the next line: chat would ask otherwise
        if role == "assistant" and not content:
            raise UserError(
                f'{where}: message {number} is an assistant message whose "content" is empty, so there '
                "is no reply to learn; write the reply, or remove that message"
            )
        if role == "assistant":
            parts += [context + "assistant:", f" {content}\n"]
            context = ""
        else:
            context += f"{role}: {content}\n"
    if not parts:
        raise UserError(
            f"{where}: the conversation has no assistant message, so {NOTHING_TO_LEARN}; add the reply, "
            "or remove that record"
        )
    return tuple(parts)


def _message(message, what: str) -> tuple[str, str]:
    """A message's role and its content trimmed, once it is one."""
    if not isinstance(message, dict):
        raise UserError(
            f'{what} is {json_type(message)}, not an object; write each message as {{"role": "...", '
            '"content": "..."}'
        )
    for key in ("role", "content"):
        if key not in message:
            raise UserError(
                f'{what} has no "{key}" field ({its_fields(message)}); each message needs "role" and '
                '"content"'
            )
        if not isinstance(message[key], str):
            raise UserError(
                f'{what}: "{key}" must be a string (got {json_type(message[key])}); fix or remove that record'
            )
    if message["role"] not in ROLES:
        raise UserError(
            f"{what} has the role {json.dumps(message['role'], ensure_ascii=False)}; chat records take "
            "system, user and assistant messages: remove that message, or the record"
        )
    return message["role"], checked_text(message["content"], f'{what}: "content"').strip()


def _text(record: dict, key: str, where: str, layout: str) -> str:
    if key not in record:
        _missing(record, key, where, layout)
    if not isinstance(record[key], str):
        got = json_type(record[key])
        raise UserError(f'{where}: "{key}" must be a string (got {got}); fix or remove that record')
    return checked_text(record[key], f'{where}: "{key}"')


def _missing(record: dict, key: str, where: str, layout: str):
    """Refuse a record without `key`: one of another format sent to its --format (a chat record,
    as OpenAI's and Hugging Face's sets write them; an instruction record, Alpaca's; a prompt/
    response record), a corpus record ({"text": ...}) to --text-field; else its fields named."""
    shape = _format_of(record)
    if shape == "text" and layout == "prompt-response":
        raise UserError(  # a corpus of {"text": ...} records, such as Hugging Face datasets write
            f'{where} has no "{key}" field ({its_fields(record)}); without --text-field or --template, '
            "jsonl reads prompt/response records (for fine-tuning); pass --text-field text to read each "
            "record's text"
        )
    if shape in FORMATS and shape != layout:
        kind = {"messages": 'a chat record ("messages")', "alpaca": "an instruction record"}.get(
            shape, "a prompt/response record"
        )
        fields = "" if shape == "messages" else f" ({its_fields(record)})"
        raise UserError(f"{where} is {kind}{fields}; read such records with --format {shape}")
    raise UserError(f'{where} has no "{key}" field ({its_fields(record)}); {NEEDS[layout]}')


def _format_of(record: dict) -> str | None:
    """The --format a record looks written for, or "text" for a corpus record, or None."""
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "response" in record:
        return "prompt-response"
    corpus = isinstance(record.get("text"), str) and "prompt" not in record and "response" not in record
    return "text" if corpus else None

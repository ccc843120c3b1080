"""The prompt `generate` and `compare` continue, and the lines that suggest one to paste into a
shell (`next:` after training, the llama.cpp line after an export)."""

from __future__ import annotations

import shlex
from pathlib import Path

from trickster.data.tokenizers import Tokenizer, load_tokenizer
from trickster.data.unknown_character import UnknownCharacter
from trickster.errors import UserError
from trickster.text_in import not_utf8


def hinted_prompt(tokenizer: Tokenizer, prompt: str) -> str:
    """The sample prompt a line to paste continues: the run's own where its tokenizer encodes it,
    else none, so that the line leaves the prompt to the tool, as `trickster generate` without
    --prompt does (a line break, or a new document). A run trained before its sample prompt was fitted
    to the data (train/fitted.py) kept tiny's ROMEO: in a char vocabulary without 'R': generate
    refused the line printed, and llama.cpp aborts on a character outside a char vocabulary."""
    return prompt if encodable_ids(tokenizer, prompt) else ""


def encodable_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """`text`'s ids, or none where the tokenizer cannot encode it (a character a char vocabulary
    lacks): a sample prompt, which the run fitted to its data or not, is then left out, not fatal."""
    try:
        return tokenizer.encode(text)
    except UserError:
        return []


def next_hint(run_dir: Path, prompt: str) -> str:
    """The line to paste next, quoted for a shell. A run fine-tuned on alpaca or messages records
    (its tokenizer.json carries their chat template): `trickster chat RUN`, which asks it as it
    learned; its sample prompt, a record's context, may be a conversation's second turn without
    the first. Else `trickster generate` with the run's sample prompt exactly (a trailing space or
    a quote in it survives), or none when it is only whitespace or one the run's tokenizer cannot
    encode (hinted_prompt): a prompt the user gave is kept as given, and `--prompt ROMEO:` in a
    char vocabulary without 'R' was refused."""
    try:
        tokenizer = load_tokenizer(run_dir / "tokenizer.json")
        if tokenizer.chat_template is not None:
            return f"trickster chat {shlex.quote(str(run_dir))}"
        prompt = hinted_prompt(tokenizer, prompt)
    except UserError:  # not there to read: the prompt as the config gives it
        pass
    line = f"trickster generate {shlex.quote(str(run_dir))}"
    return f"{line} --prompt {shell_word(prompt)}" if prompt.strip() else line


def shell_word(text: str) -> str:
    """`text` as one shell word on one line: quoted as shlex quotes it, or, when it holds a line
    break or another control character, in bash's $'...' with that character escaped."""
    if not any(ord(c) < 32 or ord(c) == 127 for c in text):
        return shlex.quote(text)
    named = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    escaped = (named.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c) for c in text)
    return "$'" + "".join(escaped) + "'"


def new_document(tokenizer: Tokenizer) -> tuple[str, list[int]]:
    """The start of a new document, as text to print and its ids: the end-of-text token that stands
    between the training text's documents, printed as nothing; where the vocabulary has none (one
    text), its first symbol, printed. Generate starts there without --prompt on a vocabulary without
    a line break, and so do a run's samples without a prompt they can encode
    (validate.sample_text): one rule, so the two print the same text."""
    if tokenizer.eot_id is None:
        return tokenizer.decode([0]), [0]
    return "", [tokenizer.eot_id]


def prompt_ids(tokenizer: Tokenizer, prompt: str | None) -> tuple[str, list[int]]:
    """The prompt's text as printed and its ids. Without --prompt: a line break, or where the
    vocabulary has none (a char model of text without one) a new document (new_document)."""
    if prompt is None:
        try:
            return "\n", tokenizer.start_ids() + tokenizer.encode("\n")
        except UserError:
            text, ids = new_document(tokenizer)
            return text, tokenizer.start_ids() + ids
    if problem := not_utf8(prompt, "--prompt"):
        raise UserError(problem)
    try:
        ids = tokenizer.encode(prompt)
    except UnknownCharacter as err:
        raise UserError(err.in_prompt("--prompt: ")) from None
    if not ids:
        raise UserError("--prompt is empty; give some text to continue, e.g. --prompt 'ROMEO:'")
    return prompt, tokenizer.start_ids() + ids  # Llama-style tokenizers start every sequence with <s>


def llama_cpp_hint(path: Path, prompt: str) -> str:
    """The llama.cpp line that continues the model's own sample prompt (as `next:` after training:
    a fine-tune's is one of its records unless the user gave one, never the base's ROMEO:).
    llama-completion: a recent llama.cpp's llama-cli only chats, and waits at its prompt instead of
    continuing the text."""
    line = f"llama-completion -m {shlex.quote(str(path))}"
    return f"{line} -p {shell_word(prompt)} -n 100" if prompt.strip() else f"{line} -n 100"

"""HellaSwag accuracy (`trickster eval RUN --task hellaswag`), scored as llm.c's
dev/data/hellaswag.py and nanoGPT-style evaluations score it: the number small GPT-2-sized models
are compared by (GPT-2 124M: acc_norm about 0.295 on the 10,042 validation examples; chance 0.25).

Each example is a context and 4 endings, one of them right (`label`). Each ending is encoded with
a space before it (" " + ending, as GPT-2's tokenizer joins words) and appended to the context's
tokens (an imported tokenizer encodes the two as one text: `_joined`); the model's loss on the
ending's tokens alone, summed and per token, rates it. The prediction is the ending with the
lowest loss per token (acc_norm) or the lowest summed loss (acc).
The context starts after the tokenizer's start id (Llama's <s>) where it has one; GPT-2's has none
and llm.c puts none. A row longer than the training context (seq_len) keeps its end: the context
is cut from its start. An example that cannot be scored is counted and left out: an ending longer
than the whole context window, a character a char model's vocabulary lacks, an empty context.

The file is rowanz/hellaswag's hellaswag_val.jsonl, downloaded once into the cache folder
($TRICKSTER_CACHE_DIR, else $XDG_CACHE_HOME/trickster, else ~/.cache/trickster) or passed as a
local copy. Its SHA-256 is not pinned here: the file is checked by its shape (10,042 lines, each a
JSON object with ctx, 4 endings and a label 0-3). A copy exported from Hugging Face's
Rowan/hellaswag (its validation split, `.to_json(...)`) has the same columns, but the label as a
text ("0".."3", "" in its test split): a digit 0-3 is read as that number.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trickster.atomic import replace_file
from trickster.data import json_records, sources
from trickster.data.textfile import read_bytes, text_of
from trickster.data.tokenizers import CharTokenizer, Tokenizer
from trickster.errors import UserError, disk_errors, write_fix
from trickster.model.generate import mask_unused_rows
from trickster.model.transformer import IGNORE_INDEX
from trickster.train.device import autocast_for

VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VAL_EXAMPLES = 10_042  # lines of hellaswag_val.jsonl, one example each
FILE_NAME = "hellaswag_val.jsonl"
ENDINGS = 4
LABEL_TEXTS = tuple(str(index) for index in range(ENDINGS))  # "0".."3": a Hugging Face export's labels
SHAPE = "a JSON object with ctx (text), endings (4 texts) and label (0-3)"
# why an example is left out -> how the summary says it
SKIPPED = {
    "unknown_characters": "with characters outside the model's vocabulary",
    "ending_too_long": "with an ending longer than the context window",
    "empty": "with an empty context, or an ending of no tokens",
}


@dataclass(frozen=True)
class Example:
    context: str
    endings: tuple[str, ...]
    label: int  # index of the right ending


@dataclass
class Accuracy:
    examples: int  # examples read (the file's, or its first --max-examples)
    scored: int = 0  # examples scored; the accuracies are over these
    correct: int = 0  # the right ending had the lowest summed loss (acc)
    correct_norm: int = 0  # the right ending had the lowest loss per token (acc_norm)
    cut: int = 0  # examples whose context was cut from its start to fit the window
    skipped: Counter = field(default_factory=Counter)  # examples left out, by reason (SKIPPED)

    @property
    def acc(self) -> float:
        return self.correct / self.scored

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.scored

    def to_dict(self) -> dict:
        return {
            "acc": self.acc,
            "acc_norm": self.acc_norm,
            "correct": self.correct,
            "correct_norm": self.correct_norm,
            "scored": self.scored,
            "examples": self.examples,
            "cut": self.cut,
            "skipped": {reason: self.skipped[reason] for reason in SKIPPED},
        }


# --------------------------------------------------------------------------- the file


def cache_file() -> Path:
    """Where the downloaded validation file is kept."""
    folder = os.environ.get("TRICKSTER_CACHE_DIR")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(base) / "trickster"
    return Path(folder) / "hellaswag" / FILE_NAME


def load_examples(
    path: str | None = None, timeout: float = 30, option: str = "--hellaswag-file"
) -> tuple[list[Example], str]:
    """The validation examples and where they were read: `path`, else the cache, else downloaded
    (checked by shape, then cached). `option`: what passes a local copy, as the lines name it
    (the flag of `trickster eval`, or training_config.hellaswag_file)."""
    local_copy = f"{option} FILE" if option.startswith("--") else f"{option}=FILE"
    if path is not None:
        fix = f"pass HellaSwag's {FILE_NAME} (from {VAL_URL})"
        if not Path(path).exists():  # read_bytes would ask for "an existing text file"
            raise UserError(f"{option} {path} not found; {fix}")
        if Path(path).is_dir():  # read_bytes would say "pass a text file", naming no option
            raise UserError(f"{option} {path} is a folder; {fix}")
        return parse_examples(read_bytes(Path(path)), path, fix), path
    cached = cache_file()
    if cached.exists():
        fix = f"delete it to download it again, or pass a local copy with {local_copy}"
        return parse_examples(read_bytes(cached), str(cached), fix), str(cached)
    raw = sources.download(VAL_URL, timeout, local_copy)
    examples = parse_examples(raw, VAL_URL, f"retry, or download it elsewhere and pass it with {local_copy}")
    fix = write_fix(elsewhere=f"set TRICKSTER_CACHE_DIR to a writable folder, or pass {local_copy}")
    with disk_errors(f"the HellaSwag cache {cached}", fix):
        cached.parent.mkdir(parents=True, exist_ok=True)
        replace_file(cached, raw)
    return examples, str(cached)


def parse_examples(raw: bytes, name: str, fix: str) -> list[Example]:
    """Every line of hellaswag_val.jsonl as an Example; a wrong count or shape is one line naming
    `name` and saying `fix`."""
    lines = text_of(raw, name).split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    if len(lines) != VAL_EXAMPLES:
        counted = f"{len(lines):,} line{'' if len(lines) == 1 else 's'}"
        raise UserError(
            f"{name} has {counted}, but HellaSwag's validation set has {VAL_EXAMPLES:,} "
            f"(one example a line); {fix}"
        )
    return [_example(line, f"{name} line {number:,}", fix) for number, line in enumerate(lines, start=1)]


def _example(line: str, where: str, fix: str) -> Example:
    record = json_records.json_line(line, where, fix)
    problem = _shape_problem(record)
    if problem:
        raise UserError(f"{where}: {problem}, not {SHAPE}; {fix}")
    return Example(record["ctx"], tuple(record["endings"]), _label(record.get("label")))


def _shape_problem(record) -> str | None:
    if not isinstance(record, dict):
        return json_records.json_type(record)
    ctx, endings, label = record.get("ctx"), record.get("endings"), record.get("label")
    if not isinstance(ctx, str):
        return "no ctx text" if ctx is None else f"ctx is {json_records.json_type(ctx)}"
    if endings is None:
        return "no endings"
    if not isinstance(endings, list):
        return f"endings is {json_records.json_type(endings)}"
    if len(endings) != ENDINGS:
        return f"{len(endings)} endings"
    if not all(isinstance(ending, str) for ending in endings):
        return "an ending that is not text"
    if _label(label) is None:
        return "no label" if label is None else f"label {json.dumps(label)}"
    return None


def _label(value) -> int | None:
    """The right ending's index: a number 0-3, or the same as text, as Hugging Face's
    Rowan/hellaswag gives it ("0".."3"); None for anything else."""
    if type(value) is int and 0 <= value < ENDINGS:
        return value
    if isinstance(value, str) and value in LABEL_TEXTS:
        return int(value)
    return None


# --------------------------------------------------------------------------- scoring


@dataclass
class Rows:
    """One example as the model reads it: 4 rows of tokens (context + ending), each ending's length."""

    tokens: list[list[int]]
    ending_lengths: list[int]
    label: int
    cut: bool  # the context lost its start to fit the window


def render(tokenizer: Tokenizer, example: Example, window: int) -> Rows | str:
    """The example's rows, each at most window + 1 tokens (inputs and targets of `window`), or the
    reason (a SKIPPED key) it cannot be scored."""
    endings = [" " + ending for ending in example.endings]
    if isinstance(tokenizer, CharTokenizer):
        known = tokenizer.char_to_id
        if any(c not in known for text in (example.context, *endings) for c in text):
            return "unknown_characters"
    context = tokenizer.encode(example.context)
    pairs = [_joined(tokenizer, example.context, context, ending) for ending in endings]
    start = tokenizer.start_ids()
    if not (start or context) or not all(
        tokens for _, tokens in pairs
    ):  # nothing to predict from or to score
        return "empty"
    if max(len(tokens) for _, tokens in pairs) > window:  # not even one context token fits
        return "ending_too_long"
    rows = [(start + before + tokens)[-(window + 1) :] for before, tokens in pairs]
    cut = any(len(start + before + tokens) > window + 1 for before, tokens in pairs)
    return Rows(rows, [len(tokens) for _, tokens in pairs], example.label, cut)


def _joined(tokenizer: Tokenizer, text: str, ids: list[int], ending: str) -> tuple[list[int], list[int]]:
    """The context's tokens and the ending's after it. Byte-level BPE (bpe, gpt2) and char or byte
    models encode the ending alone, as llm.c does (the same tokens, for GPT-2's split). An imported
    tokenizer encodes context and ending as one text, split where the context's own encoding ends,
    as lm-evaluation-harness splits it: a SentencePiece-style one (Llama's) encodes " is" alone with a
    word-start marker of its own before it, a token the model never reads in running text."""
    if tokenizer.kind != "hf":
        return ids, tokenizer.encode(ending)
    whole = tokenizer.encode(text + ending)
    return whole[: len(ids)], whole[len(ids) :]


@torch.no_grad()
def ending_losses(
    model, batch: list[Rows], vocab_limit: int, device: torch.device, dtype_name: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed and the per-token loss of every ending of `batch`, (examples, 4) each, from one
    forward pass over all their rows (right-padded: causal attention never sees the padding)."""
    rows = [pair for example in batch for pair in zip(example.tokens, example.ending_lengths, strict=True)]
    width = max(len(tokens) for tokens, _ in rows) - 1
    inputs = np.zeros((len(rows), width), dtype=np.int64)
    targets = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    for row, (tokens, length) in enumerate(rows):
        inputs[row, : len(tokens) - 1] = tokens[:-1]
        targets[row, len(tokens) - 1 - length : len(tokens) - 1] = tokens[-length:]  # the ending only
    x, y = torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)
    with autocast_for(device, dtype_name):
        logits, _ = model(x)  # (rows, width, vocab)
    # the endings' positions only: a softmax over the whole vocabulary at every context position
    # took a fifth of the time (gpt2 vocabulary, CPU)
    scored = y != IGNORE_INDEX  # (rows, width)
    ending_logits = logits[scored].float()  # (ending tokens, vocab)
    mask_unused_rows(ending_logits, vocab_limit)  # pad rows are never produced
    losses = torch.zeros(y.shape, device=device)
    losses[scored] = F.cross_entropy(ending_logits, y[scored], reduction="none")
    summed = losses.sum(dim=1).cpu()
    lengths = torch.tensor([length for _, length in rows], dtype=torch.float32)
    return summed.view(len(batch), ENDINGS), (summed / lengths).view(len(batch), ENDINGS)


def render_all(tokenizer: Tokenizer, examples: list[Example], window: int) -> tuple[list[Rows], Accuracy]:
    """The scorable examples rendered, in order, and an Accuracy of `examples` that counts the
    others (skipped, by reason) and nothing scored yet."""
    accuracy, rows = Accuracy(len(examples)), []
    for example in examples:
        rendered = render(tokenizer, example, window)
        if isinstance(rendered, str):
            accuracy.skipped[rendered] += 1
        else:
            rows.append(rendered)
    return rows, accuracy


def add_batch(
    accuracy: Accuracy, model, batch: list[Rows], vocab_limit: int, device: torch.device, dtype_name: str
) -> None:
    """Score `batch` in one forward pass and add it to `accuracy`."""
    summed, per_token = ending_losses(model, batch, vocab_limit, device, dtype_name)
    labels = torch.tensor([example.label for example in batch])
    accuracy.correct += int((summed.argmin(dim=1) == labels).sum())
    accuracy.correct_norm += int((per_token.argmin(dim=1) == labels).sum())
    accuracy.scored += len(batch)
    accuracy.cut += sum(example.cut for example in batch)


def score(
    model,
    tokenizer: Tokenizer,
    examples: list[Example],
    window: int,
    device: torch.device,
    dtype_name: str = "float32",
    batch_size: int = 8,
) -> Accuracy:
    """acc and acc_norm over `examples` (see the module docstring); `batch_size` examples (4 rows
    each) per forward pass, in eval mode (the model's mode is restored)."""
    rows, accuracy = render_all(tokenizer, examples, window)
    if not rows:
        raise nothing_to_score(accuracy)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            add_batch(accuracy, model, batch, tokenizer.vocab_size, device, dtype_name)
    finally:  # also when a pass fails (out of memory): the caller's model is as it was
        model.train(was_training)
    return accuracy


def nothing_to_score(accuracy: Accuracy, fix: str = "") -> UserError:
    """The line for examples of which none can be scored; `fix`: another way out, appended."""
    reasons = skipped_summary(accuracy)
    return UserError(
        f"none of the {accuracy.examples:,} HellaSwag examples can be scored with this model ({reasons}); "
        "HellaSwag needs a tokenizer that reads any text (byte, bpe or gpt2) and a context that "
        f"holds an ending{fix}"
    )


def skipped_summary(accuracy: Accuracy) -> str:
    """'12 with characters outside the model's vocabulary, ...', or '' when none was left out."""
    return ", ".join(f"{n:,} {SKIPPED[reason]}" for reason, n in accuracy.skipped.items() if n)

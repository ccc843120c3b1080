"""What `trickster data ...` does (prepare, overlap, report), printing for a person, and the
reading of a `--text FILE` option as preparation reads a text file. commands.py, which cli.py runs
every command from, takes them from here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from trickster.data import hub, sources, textfile
from trickster.data.character_place import placed
from trickster.data.dedup import DedupSettings
from trickster.data.json_as_text import json_lines_note
from trickster.data.prepare import prepare, prepare_records
from trickster.data.records import Records, check_characters, hf_records, jsonl_records, parquet_records
from trickster.data.tokenizers import load_tokenizer
from trickster.data.unknown_character import UnknownCharacter
from trickster.errors import UserError
from trickster.options import PrepareOptions, SourceSpec
from trickster.out_path import refuse_path_through_a_file
from trickster.train import checkpoint_path, checksums


def prepare_data(spec: SourceSpec, options: PrepareOptions, dedup: DedupSettings) -> Path:
    """`trickster data prepare`: read a corpus, tokenize it and write a prepared data folder (or
    keep the one already there from the same source and settings); prepare() prints what it did."""
    source, text_field = spec.source, spec.text_field
    tokenizer, vocab_size = options.tokenizer, options.vocab_size
    chosen = _tokenizer_from(options.tokenizer_from) if options.tokenizer_from else (tokenizer or "char")
    kind = chosen if isinstance(chosen, str) else chosen.kind
    out_dir = Path(options.out or f"data/{source}-{kind}")
    refuse_path_through_a_file(out_dir)
    if spec.record_format or (source == "jsonl" and text_field is None and spec.template is None):
        records = _records(spec)
        if not isinstance(chosen, str):
            check_characters(records, chosen)
        prepare_records(records, chosen, out_dir, options.val_fraction, vocab_size, dedup)
    else:
        if source == "text" and (note := json_lines_note(spec.paths)):
            print(note, file=sys.stderr, flush=True)
        extra = {} if options.shard_tokens is None else {"shard_tokens": options.shard_tokens}
        try:
            prepare(
                _text_source(spec),
                chosen,
                out_dir,
                options.val_fraction,
                vocab_size=vocab_size,
                workers=options.workers,
                progress=options.progress,
                dedup_settings=dedup,
                **extra,
            )
        except UnknownCharacter as err:  # met by a worker, in a document without its file
            raise placed(err, source, spec.paths or [spec.path or ""], spec.template) from None
    return out_dir


def data_overlap(folder: str, text_file: str) -> None:
    """`trickster data overlap DIR --text FILE`: how much of a text the training split holds."""
    from trickster.data import report

    text = read_text_option(Path(text_file))
    if not text.strip():  # it said "the text is 0 tokens long"
        held = "is empty" if not text else "holds only whitespace"
        raise UserError(f"--text {text_file} {held}; pass the file of the text to look for")
    for line in report.format_overlap(report.overlap(folder, text), folder):
        print(line)


def data_report(folder: str, html: str | None) -> None:
    """`trickster data report DIR [--html [FILE]]`."""
    from trickster.data import report

    page = None if html is None else report.page_path(folder, html or None)
    facts = report.data_report(folder)
    for line in report.format_report(facts):
        print(line)
    if page is not None:
        print(f"wrote {report.write_html(facts, page)}")


def _records(spec: SourceSpec) -> Records:
    """The fine-tuning records of jsonl (one file), parquet or hf, by --format."""
    layout = spec.record_format or "prompt-response"
    if spec.source == "parquet":
        return parquet_records(spec.paths, layout)
    if spec.source == "hf":
        return hf_records(spec.dataset, spec.config, spec.split, layout)
    return jsonl_records(spec.paths[0], layout)


def _text_source(spec: SourceSpec) -> sources.Source | sources.Corpus:
    if spec.source == "shakespeare":
        return sources.shakespeare_source(spec.path)
    if spec.source == "text":
        return sources.text_files(spec.paths)
    if spec.source == "python-stdlib":
        return sources.python_stdlib()
    if spec.source == "jsonl":
        return sources.jsonl_documents(spec.paths, spec.text_field, spec.template)
    if spec.source == "parquet":
        return sources.parquet_documents(spec.paths, spec.text_field or "text")
    if spec.source == "tinystories":
        return hub.tinystories(spec.dataset or hub.TINYSTORIES)
    if spec.source == "hf":
        return hub.hf_dataset(spec.dataset, spec.config, spec.split, spec.text_field or "text")
    raise UserError(f"unknown source '{spec.source}'")


def _tokenizer_from(path: str):
    """The tokenizer of a run, checkpoint or data folder, or a tokenizer.json file."""
    target, fix = Path(path), "pass another --tokenizer-from"
    if not target.exists():  # resolve() below would say 'pass a run folder or a checkpoint folder'
        raise UserError(f"--tokenizer-from {path} not found; {PASS_TOKENIZER_FROM}")
    if target.is_file():
        return load_tokenizer(target, fix)
    saved = target / "tokenizer.json"  # a folder by that name is refused as one, below
    if not (saved.is_file() or saved.is_dir()) or (target / "checkpoints").is_dir():
        target = _run_checkpoint(target)
    tokenizer = load_tokenizer(target / "tokenizer.json", fix)  # a checkpoint's or a data folder's
    checksums.verify(target, ["tokenizer.json"], fix)  # a data folder records none
    return tokenizer


PASS_TOKENIZER_FROM = (
    "pass a run or checkpoint folder, a prepared data folder, or a tokenizer.json that trickster wrote"
)


def _run_checkpoint(folder: Path) -> Path:
    """The checkpoint whose tokenizer --tokenizer-from `folder` (a run folder) means: its best or
    newest. A folder that holds no tokenizer.json and is no run (an empty one) is said to be so
    under the option's name, not as a run without a checkpoint ('train first')."""
    try:
        return checkpoint_path.resolve(folder)
    except UserError as err:
        if (folder / "checkpoints").is_dir() or any((p / "checkpoints").is_dir() for p in folder.iterdir()):
            raise UserError(f"--tokenizer-from: {err}") from None  # a run, or runs: the checkpoint to pass
        raise UserError(
            f"--tokenizer-from {folder} holds no tokenizer (no tokenizer.json, no checkpoints); "
            f"{PASS_TOKENIZER_FROM}"
        ) from None


def read_text_option(path: Path) -> str:
    """--text FILE as data preparation reads a text file (line endings as "\n"), so that it meets
    the training text however either was saved."""
    try:
        return textfile.read_text(path)
    except UserError as err:
        raise UserError(f"--text {err}") from None

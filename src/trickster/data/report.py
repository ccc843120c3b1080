"""What a person should know about a prepared data folder before training on it, and how much of a
text (an evaluation set, a prompt file) the training split already holds.

- `overlap(folder, text)`: the fraction of the text's token 13-grams that occur in the training
  split (13-grams as in the GPT-3 and Llama contamination checks), the share of its tokens inside one,
  and the training documents that share the most.
- `data_report(folder)`: documents and tokens per split, the document length distribution,
  duplicates found and dropped (from meta.json), the tokenizer's bytes per token, the most frequent
  tokens, and the validation/train 13-gram overlap; `format_report` prints it, `write_html` writes it
  as a page with a histogram.

N-grams are compared by 64-bit polynomial hashes; an n-gram holding an end-of-text or start id
(a document boundary) is never counted. The training split is read once, in blocks, so memory holds
the query's n-grams and one block, not the corpus.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trickster.atomic import check_page, write_page
from trickster.data.loader import PreparedData, TokenStream, damaged_shards, load_data
from trickster.data.near_index import distinct
from trickster.data.summary import dedup_lines, skipped
from trickster.data.tokenizers import CharTokenizer
from trickster.errors import UserError
from trickster.out_path import refuse_path_through_a_file
from trickster.plural import counted

N = 13
BLOCK = 1 << 24  # tokens read at a time
SORT_FROM = 300_000  # query hashes from which a block's are sorted before the search (_search)
_P = np.uint64(0x100000001B3)


def ngram_hashes(tokens: np.ndarray, special: list[int], n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """(hash, start) of every n-gram of `tokens` that holds no special id."""
    if len(tokens) < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    values = tokens.astype(np.uint64) + np.uint64(1)
    count = len(tokens) - n + 1
    h = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):  # modulo 2**64
        for j in range(n):
            h = h * _P + values[j : j + count]
    bad = np.concatenate(([0], np.cumsum(np.isin(tokens, special))))
    clean = bad[n:] == bad[:count]
    return h[clean], np.flatnonzero(clean)


def _specials(data: PreparedData) -> list[int]:
    tokenizer = data.tokenizer
    return list(tokenizer.start_ids()) + ([] if tokenizer.eot_id is None else [tokenizer.eot_id])


def _blocks(stream: TokenStream):
    """(offset, tokens, owned) over the stream: each block overlaps the next by N - 1 tokens (so
    that every n-gram is in one block), and owns its first `owned` tokens (counted only there)."""
    starts = range(0, max(1, len(stream) - N + 1), BLOCK)
    for start in starts:
        block = np.asarray(stream[start : start + BLOCK + N - 1])
        yield start, block, BLOCK if start != starts[-1] else len(block)


@dataclass
class Found:
    """Which of `query` (sorted distinct n-gram hashes) occur in a stream, and where."""

    seen: np.ndarray  # bool per query hash
    per_document: dict[int, int] = field(default_factory=dict)  # train document -> n-grams shared
    document_starts: np.ndarray | None = None
    # the longest stretch of n-grams shared one after the other (first token, n-grams): where a
    # passage of the query was copied
    longest: tuple[int, int] = (0, 0)


def _find(data: PreparedData, stream: TokenStream, query: np.ndarray) -> Found:
    """Without an end-of-text id nothing marks where a document ends: all of `stream` counts as
    document 0 (one text, such as Tiny Shakespeare, or a model's tokenizer that has none)."""
    seen = np.zeros(len(query), bool)
    counts = np.zeros(0, np.int64)
    eot, ends, run = data.tokenizer.eot_id, [], (0, 0, 0, 0)
    specials = _specials(data)
    for offset, block, owned in _blocks(stream):
        if eot is not None:
            ends.append(np.flatnonzero(block[:owned] == eot) + offset)
        if not len(query):
            continue
        hashes, starts = ngram_hashes(block, specials)
        at = np.minimum(_search(query, hashes), len(query) - 1)
        hit = query[at] == hashes
        seen[at[hit]] = True
        if hit.any():
            run = _longest_run(starts[hit] + offset, run)
        if eot is None:
            found = np.array([hit.sum()])
        else:  # the document of each hit: how many documents end before it
            found = np.bincount(np.searchsorted(np.concatenate(ends), starts[hit] + offset, side="right"))
        counts = np.pad(counts, (0, max(0, len(found) - len(counts))))
        counts[: len(found)] += found
    per_document = {int(d): int(c) for d, c in enumerate(counts) if c}
    ends_all = np.concatenate(ends) if ends else np.zeros(0, np.int64)
    return Found(seen, per_document, np.concatenate(([0], ends_all + 1)), run[:2])


def _search(query: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """np.searchsorted(query, hashes), the hashes searched in sorted order once the query outgrows
    the cache: a block's 16.7M hashes looked up at random in a million missed it each time (5.6 s
    against 2.6 s with the sort); under about 300,000 the sort costs more than it saves (0.5 s against
    2.0 s on a query of 100). Measured on a 30 MB byte-tokenized folder, docs/PERFORMANCE.md."""
    if len(query) < SORT_FROM:
        return np.searchsorted(query, hashes)
    order = np.argsort(hashes)
    at = np.empty(len(hashes), np.intp)
    at[order] = np.searchsorted(query, hashes[order])
    return at


def _longest_run(positions: np.ndarray, run: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """(start, length) of the longest run of consecutive `positions` so far, then of the run that
    the next block may continue, after these (ascending, after all those seen before)."""
    best_start, best_length, start, length = run
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(positions) != 1) + 1, [len(positions)]))
    lengths, firsts = np.diff(bounds), positions[bounds[:-1]]
    if length and firsts[0] == start + length:  # the run the last block ended with goes on
        lengths[0], firsts[0] = lengths[0] + length, start
    i = int(np.argmax(lengths))
    if lengths[i] > best_length:
        best_start, best_length = int(firsts[i]), int(lengths[i])
    return best_start, best_length, int(firsts[-1]), int(lengths[-1])


def _excerpt(data: PreparedData, stream: TokenStream, start: int, chars: int = 70) -> str:
    text = data.tokenizer.decode(np.asarray(stream[start : start + chars * 2]).tolist())
    text = " ".join(text.split())
    return text[:chars] + ("..." if len(text) > chars else "")


@dataclass
class Overlap:
    ngrams: int  # the text's n-grams (with repeats)
    seen: int  # ... of which occur in train
    tokens: int
    tokens_covered: int  # tokens inside an n-gram that occurs in train
    documents: list[tuple[int, int, str]]  # (train document, n-grams shared, its start)
    # when no end-of-text id divides the training split into documents: why (None when one does),
    # and its longest run of n-grams shared (first token, n-grams); `documents` then holds the
    # whole split, its excerpt taken where that run starts
    undivided: str | None = None
    longest: tuple[int, int] = (0, 0)
    unseen: str = ""  # the text's characters that a char vocabulary lacks, each once

    @property
    def fraction(self) -> float:
        return self.seen / self.ngrams if self.ngrams else 0.0


def overlap(folder: str | Path, text: str, top: int = 5) -> Overlap:
    data = load_data(folder)
    tokens, unseen = _text_ids(data, text)
    hashes, starts = ngram_hashes(tokens, _specials(data))
    if not len(hashes):
        raise UserError(
            f"the text is {len(tokens):,} tokens long, too short for a {N}-token overlap check; "
            f"pass a text of at least {N} tokens"
        )
    query = distinct(hashes)
    found = _find(data, data.train, query)
    hit = found.seen[np.searchsorted(query, hashes)]
    covered = np.zeros(len(tokens) + 1, np.int64)
    np.add.at(covered, starts[hit], 1)
    np.add.at(covered, starts[hit] + N, -1)
    tokens_covered = int((np.cumsum(covered)[:-1] > 0).sum())
    result = Overlap(len(hashes), int(hit.sum()), len(tokens), tokens_covered, [], unseen=unseen)
    if data.tokenizer.eot_id is None:
        one = data.meta.get("documents") == 1
        result.undivided = "one document" if one else UNDIVIDED
        result.longest = found.longest
        count = found.per_document.get(0, 0)
        result.documents = [(0, count, _excerpt(data, data.train, found.longest[0]))] if count else []
        return result
    ranked = sorted(found.per_document.items(), key=lambda item: (-item[1], item[0]))[:top]
    starts_at = found.document_starts
    result.documents = [(d, c, _excerpt(data, data.train, int(starts_at[d]))) for d, c in ranked]
    return result


UNDIVIDED = (
    "one stream: its tokenizer has no end-of-text id, so where one document ends and the next "
    "starts is not marked"
)


def _text_ids(data: PreparedData, text: str) -> tuple[np.ndarray, str]:
    """The ids of `text`, and the characters of it a char vocabulary lacks. Those were in no
    training text, so each takes an id no token has: no n-gram holding one occurs in train (the
    tokenizer's encode refused the whole text)."""
    tokenizer = data.tokenizer
    if not isinstance(tokenizer, CharTokenizer):
        return np.asarray(tokenizer.encode(text), dtype=np.int64), ""
    unseen = "".join(dict.fromkeys(c for c in text if c not in tokenizer.char_to_id))
    absent = tokenizer.vocab_size
    return np.array([tokenizer.char_to_id.get(c, absent) for c in text], dtype=np.int64), unseen


def format_overlap(result: Overlap, folder: str | Path) -> list[str]:
    lines = [
        f"{result.fraction:.1%} of the text's {N}-grams ({result.seen:,} of {result.ngrams:,}) occur in"
        f" the training split of {folder}; {result.tokens_covered:,} of its {result.tokens:,} tokens are"
        " inside one"
    ]
    if result.unseen:
        shown = ", ".join(repr(c) for c in result.unseen[:10]) + (", ..." if len(result.unseen) > 10 else "")
        one = len(result.unseen) == 1
        lines.append(
            f"  {counted(len(result.unseen), 'character')} of the text {'is' if one else 'are'} in no "
            f"training text (not in the char vocabulary): {shown}; no {N}-gram holding "
            f"{'it' if one else 'one'} occurs in train"
        )
    if result.undivided is not None:  # no documents to name: where in the split the text was copied
        start, length = result.longest
        for _, count, excerpt in result.documents:
            lines.append(
                f"  the training split is {result.undivided}: {count:,} matching {N}-grams; the "
                f"longest run of them, {length:,} in a row, starts at its token {start:,}: {excerpt!r}"
            )
        return lines
    for document, count, excerpt in result.documents:
        lines.append(f"  train document {document:,}: {count:,} matching {N}-grams, starts {excerpt!r}")
    return lines


# --------------------------------------------------------------------------- the report


@dataclass
class SplitFacts:
    documents: int  # documents, or fine-tuning records (meta.json's count where no end-of-text id parts them)
    tokens: int
    lengths: np.ndarray  # tokens per document, as end-of-text ids part them (one stream without any)
    noun: str = "document"  # "record" in a folder of fine-tuning records
    undivided: bool = False  # records no end-of-text id parts: their lengths are not known


@dataclass
class DataReport:
    path: Path
    meta: dict
    splits: dict[str, SplitFacts]
    bytes_per_token: float
    top_tokens: list[tuple[str, int]]  # (decoded token, count in train)
    val_ngrams: int
    val_ngrams_in_train: int


def _lengths(data: PreparedData, stream: TokenStream) -> np.ndarray:
    if data.tokenizer.eot_id is None:
        return np.array([len(stream)])
    eot = data.tokenizer.eot_id
    ends = [np.flatnonzero(block[:owned] == eot) + offset for offset, block, owned in _blocks(stream)]
    ends = np.concatenate(ends) + 1 if ends else np.zeros(0, np.int64)
    if not len(ends) or ends[-1] < len(stream):  # the last document runs to the end without an end-of-text
        ends = np.append(ends, len(stream))
    return np.diff(np.concatenate(([0], ends)))


def _split_facts(data: PreparedData, name: str) -> SplitFacts:
    """A split's documents and tokens. Fine-tuning records are counted as records; where the
    tokenizer has no end-of-text id (--tokenizer-from a one-text model) they run into one stream,
    and the count is meta.json's, not "1 document"."""
    stream = getattr(data, name)
    lengths = _lengths(data, stream)
    if not data.meta.get("loss_mask"):
        return SplitFacts(len(lengths), len(stream), lengths)
    undivided = data.tokenizer.eot_id is None
    count = data.meta[f"{name}_records"] if undivided else len(lengths)
    return SplitFacts(count, len(stream), lengths, "record", undivided)


def data_report(folder: str | Path, top: int = 10) -> DataReport:
    data = load_data(folder)
    meta = data.meta
    damaged = damaged_shards(data.path, meta)
    if damaged:  # a flipped byte within the vocabulary changes no size and no id range: only this shows it
        names = ", ".join(str(f) for f in damaged[:3])
        raise UserError(
            f"{names}: not the bytes index.json recorded (sha256), damaged; prepare the data again"
        )
    splits = {name: _split_facts(data, name) for name in ("train", "val")}
    counts = np.zeros(meta["vocab_size"], np.int64)
    for _, block, owned in _blocks(data.train):
        counts += np.bincount(block[:owned], minlength=len(counts))[: len(counts)]
    order = np.argsort(-counts, kind="stable")[:top]
    top_tokens = [(_token_shown(data.tokenizer, int(t)), int(counts[t])) for t in order if counts[t]]
    text_bytes = meta.get("train_bytes", meta.get("train_chars", 0))
    val_hashes, _ = ngram_hashes(np.asarray(data.val), _specials(data))
    query = distinct(val_hashes)
    seen = _find(data, data.train, query).seen
    in_train = int(seen[np.searchsorted(query, val_hashes)].sum()) if len(query) else 0
    return DataReport(
        Path(folder),
        meta,
        splits,
        text_bytes / max(1, len(data.train)),
        top_tokens,
        len(val_hashes),
        in_train,
    )


def _token_shown(tokenizer, token: int) -> str:
    """A token's text; the end-of-text id by the name GPT-2's tokenizer gives it (char, byte and
    bpe decode it to nothing, and '<6>' told a reader of short records nothing)."""
    if token == tokenizer.eot_id:
        return "<|endoftext|>"
    return tokenizer.decode([token]) or f"<{token}>"


def format_report(report: DataReport) -> list[str]:
    meta = report.meta
    split = meta.get("val_split", "not recorded (a folder written before shards, meta.json format 1)")
    lines = [
        f"{report.path}: {meta['source']} prepared with the {meta['tokenizer']} tokenizer "
        f"(vocabulary {meta['vocab_size']:,}); validation: {split}"
    ]
    for name, facts in report.splits.items():
        q = np.percentile(facts.lengths, [0, 50, 90, 100]).astype(int) if len(facts.lengths) else [0] * 4
        line = f"{name}: {counted(facts.documents, facts.noun)}, {counted(facts.tokens, 'token')}"
        if facts.undivided:
            line += " in one stream (no end-of-text id parts them: their lengths are not known)"
        elif facts.documents > 1:  # one document's min, median and max are its length again
            line += f"; tokens per {facts.noun}: "
            line += f"min {q[0]:,}, median {q[1]:,}, 90th percentile {q[2]:,}, max {q[3]:,}"
        lines.append(line)
    lines += skipped(meta) + dedup_lines(meta)
    lines.append(f"bytes per token: {report.bytes_per_token:.2f} (train text / train tokens)")
    total = max(1, report.splits["train"].tokens)
    shown = ", ".join(f"{t!r} {c / total:.1%}" for t, c in report.top_tokens)
    lines.append(f"most frequent train tokens: {shown}")
    if not report.val_ngrams:  # "0.0% (0 of 0)" read as a validation split found clean of train's text
        lines.append(
            f"validation/train overlap: not measured: the validation split holds no {N}-gram ({N} "
            "tokens in a row within one document) to look for in train"
        )
        return lines
    share = report.val_ngrams_in_train / report.val_ngrams
    lines.append(
        f"validation/train overlap: {share:.1%} of the validation split's {N}-grams "
        f"({report.val_ngrams_in_train:,} of {report.val_ngrams:,}) occur in train"
    )
    return lines


def _histogram_png(report: DataReport) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    every = np.concatenate([f.lengths for f in report.splits.values()])
    bins = np.unique(np.geomspace(max(1, every.min()), max(2, every.max()), 40).astype(int))
    for name, facts in report.splits.items():
        held = "one stream" if facts.undivided else counted(facts.documents, facts.noun)
        ax.hist(facts.lengths, bins=bins, alpha=0.6, label=f"{name} ({held})")
    ax.set_xscale("log")
    ax.set_xlabel("tokens per document")
    ax.set_ylabel("documents")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def page_path(folder: str | Path, out: str | None) -> Path:
    """Where --html writes (default DIR/report.html; a folder named gets report.html inside, as
    `trickster report --out` does), checked before the shards are hashed, which takes minutes on a
    large folder: the report printed whole, then refused, told the user late."""
    if not out:  # inside DIR, which reading it checks
        return Path(folder) / "report.html"
    path = Path(out)
    if path.is_dir():
        path = path / "report.html"
    refuse_path_through_a_file(path, "--html FILE")
    if not path.parent.is_dir():
        raise UserError(f"could not write {path} ({path.parent} does not exist); pass another --html FILE")
    check_page(path, "pass another --html FILE")
    return path


def write_html(report: DataReport, path: Path) -> Path:
    """The report as one self-contained page (the histogram inline), at `path` (page_path's)."""
    png = base64.b64encode(_histogram_png(report)).decode()
    items = "".join(f"<li>{html.escape(line)}</li>\n" for line in format_report(report)[1:])
    page = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>data report: {html.escape(report.path.name)}</title>\n"
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "li{margin:.3rem 0}</style>\n</head>\n<body>\n"
        f"<h1>Data report: {html.escape(str(report.path))}</h1>\n"
        f"<p>{html.escape(format_report(report)[0])}</p>\n<ul>\n{items}</ul>\n"
        f'<h2>Document lengths</h2>\n<img alt="histogram of tokens per document, per split" '
        f'src="data:image/png;base64,{png}">\n</body>\n</html>\n'
    )
    write_page(path, page, "pass another --html FILE")
    return path

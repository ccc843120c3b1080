"""`trickster data report` and `trickster data overlap`: every number checked against a count made
here by hand (Python sets and Counters over the texts), never by the product's own code."""

from __future__ import annotations

import collections
import json
import re

import numpy as np
import pytest

from trickster import cli
from trickster.data import report, sources
from trickster.data.prepare import in_validation, prepare

from .conftest import EXCERPT

ALPHABET = "abcdefghij klmnop\n"


def texts(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(ALPHABET), size=int(rng.integers(40, 400)))) for _ in range(count)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """60 distinct documents, 4 exact copies, and 3 passages of train documents planted in others."""
    root = tmp_path_factory.mktemp("report")
    docs = texts(60, seed=0)
    train_docs = [d for d in docs if not in_validation(d, 0.25)]
    planted = 0
    for i, doc in enumerate(docs):  # three validation documents that quote a training one
        quoting = doc + train_docs[planted][:30]
        if planted < 3 and in_validation(doc, 0.25) and in_validation(quoting, 0.25):
            docs[i], planted = quoting, planted + 1
    assert planted == 3
    docs = docs + [docs[1], docs[2], docs[5], docs[1]]
    folder = root / "texts"
    folder.mkdir()
    for i, doc in enumerate(docs):
        (folder / f"{i:03d}.txt").write_text(doc)
    out = root / "out"
    prepare(sources.text_files([str(folder)]), "char", out, 0.25, workers=1)
    return out, docs[:60]


# 0: every block's hashes sorted before the search, as a large query's are (report._search)
@pytest.mark.parametrize("sort_from", [report.SORT_FROM, 0])
def test_the_report_matches_a_hand_count(corpus, monkeypatch, sort_from):
    monkeypatch.setattr(report, "SORT_FROM", sort_from)
    out, distinct = corpus
    facts = report.data_report(out)
    val = [d for d in distinct if in_validation(d, 0.25)]
    train = [d for d in distinct if not in_validation(d, 0.25)]
    assert facts.splits["train"].documents == len(train) and facts.splits["val"].documents == len(val)
    assert facts.splits["train"].tokens == sum(len(d) + 1 for d in train)  # each: chars + end-of-text
    assert sorted(facts.splits["val"].lengths.tolist()) == sorted(len(d) + 1 for d in val)
    assert facts.meta["dedup"]["exact_found"] == facts.meta["dedup"]["exact_dropped"] == 4
    assert facts.bytes_per_token == pytest.approx(sum(len(d) for d in train) / sum(len(d) + 1 for d in train))
    by_hand = collections.Counter("".join(train))
    assert [c for _, c in facts.top_tokens[:5]] == [c for _, c in by_hand.most_common(5)]
    assert all(by_hand[t] == c for t, c in facts.top_tokens[:5])

    def grams(doc: str) -> list[str]:
        return [doc[i : i + 13] for i in range(len(doc) - 12)]

    in_train = {g for d in train for g in grams(d)}
    val_grams = [g for d in val for g in grams(d)]
    assert facts.val_ngrams == len(val_grams)
    assert facts.val_ngrams_in_train == sum(g in in_train for g in val_grams) >= 3 * 18  # the planted ones
    lines = report.format_report(facts)
    assert any("4 exact copies found, 4 dropped" in line for line in lines)


def test_the_html_report_has_the_numbers_and_a_histogram(corpus, tmp_path):
    out, _ = corpus
    page = tmp_path / "data.html"
    assert cli.main(["data", "report", str(out), "--html", str(page)]) == 0
    html = page.read_text()
    assert "data:image/png;base64," in html and "exact copies found" in html


def test_an_html_page_that_cannot_be_written_is_told_before_the_report(corpus, tmp_path, capsys):
    """The whole report was printed (every shard hashed first: minutes on a large folder), then
    the page was refused; a folder named got "Is a directory". A folder now gets report.html
    inside, as `trickster report --out` does."""
    out, _ = corpus
    capsys.readouterr()
    assert cli.main(["data", "report", str(out), "--html", str(tmp_path / "missing" / "r.html")]) == 2
    printed = capsys.readouterr()
    assert printed.out == "", printed.out
    assert printed.err == (
        f"error: could not write {tmp_path / 'missing' / 'r.html'} ({tmp_path / 'missing'} does not "
        "exist); pass another --html FILE\n"
    )
    (tmp_path / "pages").mkdir()
    assert cli.main(["data", "report", str(out), "--html", str(tmp_path / "pages")]) == 0
    assert capsys.readouterr().out.endswith(f"wrote {tmp_path / 'pages' / 'report.html'}\n")
    assert "exact copies found" in (tmp_path / "pages" / "report.html").read_text()


@pytest.mark.parametrize("sort_from", [report.SORT_FROM, 0])
def test_the_overlap_check_finds_a_planted_passage(corpus, tmp_path, monkeypatch, sort_from):
    monkeypatch.setattr(report, "SORT_FROM", sort_from)
    out, distinct = corpus
    train = [d for d in distinct if not in_validation(d, 0.25)]
    passage = train[7][20:120]
    result = report.overlap(out, passage)
    assert result.seen == result.ngrams == len(passage) - 12  # every 13-gram of it comes from train
    assert result.documents[0][0] == 7  # ... from that document
    mixed = "ab" * 40 + passage  # a made-up start (13-grams not in train), then the passage
    result = report.overlap(out, mixed)
    grams = [mixed[i : i + 13] for i in range(len(mixed) - 12)]
    in_train = {d[i : i + 13] for d in train for i in range(len(d) - 12)}
    assert result.seen == sum(g in in_train for g in grams) >= len(passage) - 12
    assert result.tokens_covered >= len(passage)
    text = tmp_path / "eval.txt"
    text.write_text(mixed)
    assert cli.main(["data", "overlap", str(out), "--text", str(text)]) == 0


def test_overlap_counts_characters_the_char_vocabulary_lacks_as_found_nowhere(corpus, tmp_path, capsys):
    """An evaluation text with one character no training text has (a tab, an accent) stopped the
    check: "character '\\t' is not in this model's character vocabulary". The 13-grams holding one
    cannot occur in train; the others are counted as ever."""
    out, distinct = corpus
    train = [d for d in distinct if not in_validation(d, 0.25)]
    text = train[7][20:120] + "\tZ" + train[3][:80] + "Z"
    (tmp_path / "eval.txt").write_text(text)
    assert cli.main(["data", "overlap", str(out), "--text", str(tmp_path / "eval.txt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    grams = [text[i : i + 13] for i in range(len(text) - 12)]
    in_train = {d[i : i + 13] for d in train for i in range(len(d) - 12)}
    seen = sum(g in in_train for g in grams)
    assert 0 < seen < len(grams) and not any(("\t" in g or "Z" in g) and g in in_train for g in grams)
    assert lines[0].startswith(f"{seen / len(grams):.1%} of the text's 13-grams ({seen:,} of {len(grams):,})")
    assert lines[1] == (
        "  2 characters of the text are in no training text (not in the char vocabulary): '\\t', 'Z'; "
        "no 13-gram holding one occurs in train"
    )


def test_overlap_reads_the_text_as_preparation_does_so_line_endings_do_not_matter(tmp_path, capsys):
    """--text was read with Python's newline translation while training text kept its "\\r\\n": a
    CRLF passage copied from CRLF training text lost every 13-gram holding a line end (74%). Both
    read line endings as "\\n" now, so the passage is found whole however either was saved."""
    rng = np.random.default_rng(1)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    lines = [" ".join(rng.choice(words, size=6)) for _ in range(300)]
    (tmp_path / "corpus.txt").write_bytes("\r\n".join(lines).encode() + b"\r\n")
    prepare(sources.text_files([str(tmp_path / "corpus.txt")]), "char", tmp_path / "out", 0.1, workers=1)
    for end in ("\r\n", "\n"):
        passage = end.join(lines[50:60]) + end  # in the first 90%: the training split
        (tmp_path / "eval.txt").write_bytes(passage.encode())
        capsys.readouterr()
        assert cli.main(["data", "overlap", str(tmp_path / "out"), "--text", str(tmp_path / "eval.txt")]) == 0
        assert capsys.readouterr().out.startswith("100.0% of the text's 13-grams")


@pytest.mark.parametrize("block", [report.BLOCK, 100])  # 100: the passage's run crosses blocks
def test_overlap_on_one_document_says_where_the_text_was_copied(tmp_path, monkeypatch, capsys, block):
    """One text (Tiny Shakespeare, a single file) is prepared without an end-of-text id, so nothing
    marks documents: the check gave its first line and no 'train document' line, nor any word on
    where the text was found. It names the one document, and where its longest run of shared
    13-grams starts: where a copied passage sits."""
    monkeypatch.setattr(report, "BLOCK", block)
    text = "".join(np.random.default_rng(2).choice(list(ALPHABET), size=5000))
    (tmp_path / "one.txt").write_text(text)
    out = tmp_path / "out"
    prepare(sources.text_files([str(tmp_path / "one.txt")]), "char", out, 0.1, workers=1, echo=print)
    train, at = text[:4500], 1234
    passage = text[at : at + 200]
    grams = {passage[i : i + 13] for i in range(len(passage) - 12)}
    shared = sum(train[i : i + 13] in grams for i in range(len(train) - 12))  # with repeats, as counted
    excerpt = " ".join(train[at : at + 140].split())[:70] + "..."
    (tmp_path / "eval.txt").write_text(passage)
    capsys.readouterr()
    assert cli.main(["data", "overlap", str(out), "--text", str(tmp_path / "eval.txt")]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        f"  the training split is one document: {shared:,} matching 13-grams; the longest run of "
        f"them, {len(passage) - 12} in a row, starts at its token {at:,}: {excerpt!r}"
    ]


def test_overlap_over_documents_no_end_of_text_marks_says_so(tmp_path):
    """Documents prepared with a one-text model's tokenizer (--tokenizer-from), which has no
    end-of-text id: they run into each other, and the check says why it names none."""
    from trickster.data.loader import load_data

    one = tmp_path / "one.txt"
    one.write_text(ALPHABET * 50)
    prepare(sources.text_files([str(one)]), "char", tmp_path / "one", 0.1, workers=1, echo=lambda line: None)
    tokenizer = load_data(tmp_path / "one").tokenizer
    assert tokenizer.eot_id is None
    folder = tmp_path / "texts"
    folder.mkdir()
    docs = texts(30, seed=3)
    for i, doc in enumerate(docs):
        (folder / f"{i:03d}.txt").write_text(doc)
    out = tmp_path / "out"
    prepare(sources.text_files([str(folder)]), tokenizer, out, 0.25, workers=1, echo=lambda line: None)
    passage = next(d for d in docs if not in_validation(d, 0.25))[:60]
    lines = report.format_overlap(report.overlap(out, passage), out)
    assert lines[1].startswith(
        "  the training split is one stream: its tokenizer has no end-of-text id, so where one "
        f"document ends and the next starts is not marked: {len(passage) - 12} matching 13-grams; "
        f"the longest run of them, {len(passage) - 12} in a row, starts at its token 0: "
    )


def test_a_split_of_one_document_reads_as_one(tmp_path):
    """Tiny Shakespeare's report said 'train: 1 documents, ...; tokens per document: min 1,003,854,
    median 1,003,854, 90th percentile 1,003,854, max 1,003,854'."""
    (tmp_path / "one.txt").write_text("".join(np.random.default_rng(3).choice(list(ALPHABET), size=2000)))
    out = tmp_path / "out"
    prepare(sources.text_files([str(tmp_path / "one.txt")]), "char", out, 0.1, workers=1)
    facts = report.data_report(out)
    lines = report.format_report(facts)
    assert lines[1:3] == [
        f"train: 1 document, {facts.splits['train'].tokens:,} tokens",
        f"val: 1 document, {facts.splits['val'].tokens:,} tokens",
    ]


def test_the_report_says_how_many_records_had_no_text(tmp_path, capsys):
    """Preparation records them in meta.json (documents_without_text); the report left them out,
    so a folder read later hid that a tenth of its records were null."""
    records = [{"text": None if i % 10 == 3 else doc} for i, doc in enumerate(texts(40, 1))]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out"
    args = ["jsonl", str(tmp_path / "rows.jsonl"), "--text-field", "text", "--out", str(out), "--no-progress"]
    assert cli.main(["data", "prepare", *args]) == 0
    capsys.readouterr()
    assert cli.main(["data", "report", str(out)]) == 0
    said = capsys.readouterr().out.splitlines()
    nulls = sum(r["text"] is None for r in records)
    assert f"skipped {nulls} records with no text (null, empty, or without the text field)" in said, said


def test_the_report_says_nothing_of_records_without_text_when_there_were_none(corpus, capsys):
    out, _ = corpus
    assert cli.main(["data", "report", str(out)]) == 0
    assert "skipped" not in capsys.readouterr().out


@pytest.mark.parametrize("end_of_text", [True, False])
def test_a_folder_of_records_is_reported_in_records(tmp_path, end_of_text):
    """Conversations prepared with a one-text model's tokenizer (no end-of-text id) run into one
    stream: the report said 'train: 1 document'. It counts the records read, and says their
    lengths are not known; with an end-of-text id it gives them, per record."""
    rng = np.random.default_rng(5)
    words = ["".join(rng.choice(list("abcdefghij"), size=int(rng.integers(2, 30)))) for _ in range(60)]
    conversations = [
        {"messages": [{"role": "user", "content": words[i]}, {"role": "assistant", "content": words[i + 30]}]}
        for i in range(30)
    ]
    path = tmp_path / "talk.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in conversations), encoding="utf-8")
    flags = []
    if not end_of_text:
        (tmp_path / "one.txt").write_text("abcdefghij system: user: assistant:\n" * 20)
        prepare(sources.text_files([str(tmp_path / "one.txt")]), "char", tmp_path / "one", 0.1, workers=1)
        flags = ["--tokenizer-from", str(tmp_path / "one")]
    out = tmp_path / "talk"
    argv = ["data", "prepare", "jsonl", str(path), "--format", "messages", "--out", str(out), *flags]
    assert cli.main([*argv, "--no-progress", "--val-fraction", "0.1"]) == 0
    facts = report.data_report(out)
    lines = report.format_report(facts)
    train, val = facts.splits["train"].tokens, facts.splits["val"].tokens
    if end_of_text:  # each record: "user: W\n" "assistant:" " V\n" and its end-of-text: 20 + W + V
        per_record = sorted(
            len(c["messages"][0]["content"]) + len(c["messages"][1]["content"]) + 20
            for c in conversations[:27]
        )
        assert lines[1] == (
            f"train: 27 records, {train:,} tokens; tokens per record: min {per_record[0]:,}, "
            f"median {int(np.percentile(per_record, 50)):,}, 90th percentile "
            f"{int(np.percentile(per_record, 90)):,}, max {per_record[-1]:,}"
        )
        assert lines[2].startswith("val: 3 records, ")
    else:
        unknown = "in one stream (no end-of-text id parts them: their lengths are not known)"
        assert lines[1:3] == [
            f"train: 27 records, {train:,} tokens {unknown}",
            f"val: 3 records, {val:,} tokens {unknown}",
        ]


def test_prepare_and_report_write_every_count_with_thousands_separators(tmp_path, capsys):
    """`data prepare` said "vocabulary 1100" where `data report` says "vocabulary 1,100" of the
    same folder: every count either prints has its separators (the folder's path aside)."""
    out = tmp_path / "excerpt-bpe"
    argv = ["data", "prepare", "text", str(EXCERPT), "--tokenizer", "bpe", "--vocab-size", "1100"]
    argv += ["--out", str(out)]
    printed = []
    for command in (argv, argv, ["data", "report", str(out)]):  # prepared, already prepared, reported
        capsys.readouterr()
        assert cli.main(command) == 0
        printed.append(capsys.readouterr().out.replace(str(out), "DIR"))
    vocab = json.loads((out / "meta.json").read_text())["vocab_size"]
    assert vocab >= 1000
    for said in printed:
        assert f"vocabulary {vocab:,}" in said, said
        assert not re.findall(r"(?<![\d,.])\d{4,}", said), said
    assert "auto pads it to 1,152" in printed[0]


def test_a_split_of_one_token_is_said_in_the_singular(tmp_path, capsys):
    """A 6-character text keeps 1 token for validation: `data prepare` and `data report` said
    "val 1 tokens" and "1 document, 1 tokens"."""
    (tmp_path / "a.txt").write_text("hello\n")
    out = tmp_path / "out"
    printed = []
    for command in (
        ["data", "prepare", "text", str(tmp_path / "a.txt"), "--out", str(out)],
        ["data", "report", str(out)],
    ):
        capsys.readouterr()
        assert cli.main(command) == 0
        printed.append(capsys.readouterr().out)
    assert json.loads((out / "meta.json").read_text())["val_tokens"] == 1
    assert "val 1 token in 1 shard" in printed[0], printed[0]
    assert "val: 1 document, 1 token\n" in printed[1], printed[1]
    assert "1 tokens" not in "".join(printed)


def reported_records(texts: list[str], tmp_path, capsys) -> list[str]:
    """The lines `data report` prints for `texts` prepared as JSONL records, 30% held out."""
    (tmp_path / "short.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out"
    argv = ["data", "prepare", "jsonl", str(tmp_path / "short.jsonl"), "--text-field", "text"]
    assert cli.main([*argv, "--out", str(out), "--val-fraction", "0.3", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["data", "report", str(out)]) == 0
    return capsys.readouterr().out.splitlines()


def test_a_validation_split_too_short_for_any_13_gram_is_not_called_clean(tmp_path, capsys):
    """Short records (one line each, fewer than 13 tokens) left validation no 13-gram to look for,
    and the report said 'overlap: 0.0% of the validation split's 13-grams (0 of 0) occur in train',
    which reads as a validation split checked and found to share nothing with train."""
    rng = np.random.default_rng(5)
    lines = ["".join(rng.choice(list("abcdefgh"), size=int(rng.integers(4, 12)))) for _ in range(60)]
    assert max(map(len, lines)) < 13 and len(set(lines)) == len(lines)
    said = reported_records(lines, tmp_path, capsys)
    assert said[-1] == (
        "validation/train overlap: not measured: the validation split holds no 13-gram (13 tokens in "
        "a row within one document) to look for in train"
    )


def test_the_end_of_text_id_is_named_among_the_most_frequent_tokens(tmp_path, capsys):
    """Short records make the end-of-text id a frequent token: char, byte and bpe decode it to
    nothing, and the report listed it as '<6>', an id the reader cannot look up."""
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    docs = [letters[i : i + 3] for i in range(0, 36, 3)]
    line = [x for x in reported_records(docs, tmp_path, capsys) if x.startswith("most frequent")][0]
    # every training document is 3 distinct characters and its end-of-text: a quarter of the tokens
    assert line.startswith("most frequent train tokens: '<|endoftext|>' 25.0%, "), line

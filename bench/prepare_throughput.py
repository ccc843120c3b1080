"""Data preparation throughput and memory: MB/s of input text through the real pipeline
(`trickster data prepare jsonl --text-field text`, worker processes, shards) for each tokenizer,
next to a plain single-process tiktoken `encode_ordinary` loop over the same text; then the peak
memory of the whole process tree for two corpus sizes, to show it stays flat as the corpus grows.

    python bench/prepare_throughput.py                          # 8 MB for MB/s; 4 MB and 16 MB for RSS
    python bench/prepare_throughput.py --throughput-mb 200 --sizes-mb 100 1000 --workers 2
    python bench/prepare_throughput.py --only-dedup --dedup-sizes-mb 100 1000   # MB/s per --dedup mode
    python bench/prepare_throughput.py --only-one-file --one-file-mb 100 1000   # one text file: RSS by size
    python bench/prepare_throughput.py --only-several-files --several-files-mb 100 300  # 3 files of each size

The corpus is generated in a temporary folder from a seed text (the test excerpt of Tiny
Shakespeare, or --seed-text) by repetition with variation: documents of 1-8 kB made of seed lines
with shuffled words, written as JSON lines in 32 MB files. Each measurement runs the CLI in a fresh
process pinned to the first --workers CPUs (Linux), so that "2 workers" means 2 cores. Peak RSS is
the largest sum of the resident sets of the command and all its descendants, sampled every 20 ms
from /proc (Linux); elsewhere, the largest single process (getrusage). gpt2 is skipped with a
message when tiktoken cannot load r50k_base (no cache and no network: see
scripts/seed_tiktoken_cache.py).

The command's start-up (a few seconds: Python, torch, spawning the workers) is part of its time, so
MB/s means something from about 100 MB up; at a few MB the table only shows that everything runs.

The one-file table prepares a single text file (`trickster data prepare text FILE`), the seed text
repeated to each size: one document, read in blocks and tokenized in pieces. The several-files
table prepares --several-files-count text files of each size together (`trickster data prepare text
FOLDER`), each the seed text's lines drawn at random with its own seed (no file is a near-copy of
another), with the default --dedup group: each file one document, read in pieces when over 1 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trickster.data.encode import digest_in_validation

ROOT = Path(__file__).resolve().parents[1]
SEED_TEXT = ROOT / "tests" / "data" / "shakespeare_excerpt.txt"
FILE_BYTES = 32_000_000


def generate_corpus(
    folder: Path, megabytes: float, seed_text: Path, seed: int = 0, copies: float = 0.0
) -> list[Path]:
    """JSON lines {"text": ...} adding up to about `megabytes` MB of UTF-8 text; with `copies`, that
    fraction of the documents are exact copies of recent ones, and as many are near-copies (a recent
    document with one line replaced)."""
    lines = [line for line in seed_text.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files, written, target, recent = [], 0, int(megabytes * 1e6), []
    out, size = None, 0
    while written < target:
        if out is None or size >= FILE_BYTES:
            if out:
                out.close()
            files.append(folder / f"part-{len(files):04d}.jsonl")
            out, size = open(files[-1], "w", encoding="utf-8"), 0  # noqa: SIM115
        draw = rng.random()
        if recent and draw < copies:
            text = rng.choice(recent)
        elif recent and draw < 2 * copies:
            rows = rng.choice(recent).split("\n")
            rows[rng.randrange(len(rows) - 1)] = rng.choice(lines)
            text = "\n".join(rows)
        else:
            doc, length = [], rng.randint(1000, 8000)
            while sum(len(x) + 1 for x in doc) < length:
                words = rng.choice(lines).split()
                rng.shuffle(words)  # variation: no two documents repeat each other exactly
                doc.append(" ".join(words))
            text = "\n".join(doc) + "\n"
            recent = (recent + [text])[-1000:]
        record = json.dumps({"text": text}, ensure_ascii=False) + "\n"
        out.write(record)
        size += len(record)
        written += len(text.encode("utf-8"))
    out.close()
    return files


def _children(pid: int) -> list[int]:
    try:
        found = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
        return found
    except OSError:
        return []


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += _rss_bytes(current)
        todo += _children(current)
    return total


def run_measured(argv: list[str], cores: int) -> tuple[float, int, str]:
    """Wall seconds, peak RSS of the process tree in bytes, and the output of `argv`."""
    pin = None
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))[:cores]

        def pin():
            os.sched_setaffinity(0, allowed)

    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=pin, env=env)
    peak, proc = 0, Path("/proc").is_dir()
    while child.poll() is None:
        if proc:
            peak = max(peak, tree_rss(child.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    output = child.stdout.read().decode(errors="replace")
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({child.returncode}):\n{output}")
    if not proc:  # the largest single descendant (ru_maxrss is in kB on Linux, bytes on macOS)
        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return seconds, peak, output


def prepare_argv(
    files: list[Path], tokenizer: str, out: Path, workers: int, dedup: str = "group"
) -> list[str]:
    argv = [sys.executable, "-m", "trickster", "data", "prepare", "jsonl", *map(str, files)]
    argv += ["--text-field", "text", "--tokenizer", tokenizer, "--workers", str(workers), "--dedup", dedup]
    if tokenizer == "bpe":
        argv += ["--vocab-size", "4096"]
    return [*argv, "--out", str(out), "--no-progress"]


TIKTOKEN_LOOP = """
import json, sys, time, tiktoken
enc = tiktoken.get_encoding("r50k_base")
start, size, tokens = time.perf_counter(), 0, 0
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            size += len(text.encode("utf-8"))
            tokens += len(enc.encode_ordinary(text))
print(size / (time.perf_counter() - start) / 1e6, tokens)
"""


def tiktoken_available() -> str | None:
    """None if r50k_base loads; else why not."""
    try:
        import tiktoken

        tiktoken.get_encoding("r50k_base")
    except Exception as err:  # ImportError, or no cache and no network
        return f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    return None


def input_megabytes(out: Path) -> float:
    return json.loads((out / "meta.json").read_text())["input_bytes"] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--throughput-mb", type=float, default=8, help="corpus size for the MB/s table")
    parser.add_argument(
        "--sizes-mb", type=float, nargs=2, default=[4, 16], help="two corpus sizes for peak RSS"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes, and CPUs pinned (default 2)"
    )
    parser.add_argument("--tokenizers", nargs="+", default=["char", "byte", "bpe", "gpt2"])
    parser.add_argument("--rss-tokenizer", default="byte", help="tokenizer of the peak RSS runs")
    parser.add_argument("--seed-text", type=Path, default=SEED_TEXT)
    parser.add_argument("--tmp", type=Path, help="where to build the corpora (default: a temp folder)")
    parser.add_argument(
        "--dedup-sizes-mb", type=float, nargs="*", default=[], help="corpus sizes for the --dedup table"
    )
    parser.add_argument("--dedup-modes", nargs="+", default=["exact", "group", "near"])
    parser.add_argument(
        "--copies", type=float, default=0.1, help="dedup table: share of exact copies, and of near-copies"
    )
    parser.add_argument("--only-dedup", action="store_true", help="only the --dedup table")
    parser.add_argument(
        "--one-file-mb", type=float, nargs="*", default=[], help="sizes of one text file for its table"
    )
    parser.add_argument("--only-one-file", action="store_true", help="only the one-file table")
    parser.add_argument(
        "--several-files-mb", type=float, nargs="*", default=[], help="size of each of several text files"
    )
    parser.add_argument("--several-files-count", type=int, default=3, help="files of each size together")
    parser.add_argument("--only-several-files", action="store_true", help="only the several-files table")
    args = parser.parse_args()
    if args.only_several_files:
        several_files_table(args)
        return
    if args.only_dedup:
        dedup_table(args)
        return
    if args.only_one_file:
        one_file_table(args)
        return

    why_not_gpt2 = tiktoken_available()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        files = generate_corpus(tmp / "throughput", args.throughput_mb, args.seed_text)
        what = f"{args.throughput_mb:g} MB of generated text in {len(files)} file(s)"
        print(f"corpus: {what}; {args.workers} workers; MB/s of the whole command, start-up included")
        print(f"{'pipeline':<34} {'MB/s':>8} {'seconds':>8} {'peak RSS':>10}")
        for kind in args.tokenizers:
            if kind == "gpt2" and why_not_gpt2:
                print(f"{'gpt2':<34} skipped: tiktoken cannot load r50k_base ({why_not_gpt2})")
                continue
            out = tmp / f"out-{kind}"
            seconds, peak, _ = run_measured(prepare_argv(files, kind, out, args.workers), args.workers)
            mb = input_megabytes(out)
            label = f"trickster prepare --tokenizer {kind}"
            print(f"{label:<34} {mb / seconds:>8.2f} {seconds:>8.1f} {peak / 2**20:>8.0f} MiB")
        if why_not_gpt2:
            print(f"{'tiktoken encode_ordinary loop':<34} skipped ({why_not_gpt2})")
        else:
            seconds, peak, output = run_measured([sys.executable, "-c", TIKTOKEN_LOOP, *map(str, files)], 1)
            rate = float(output.split()[0])
            label = "tiktoken encode_ordinary, 1 proc"
            print(f"{label:<34} {rate:>8.2f} {seconds:>8.1f} {peak / 2**20:>8.0f} MiB  (MB/s: encoding only)")

        print(f"\npeak RSS of the process tree, --tokenizer {args.rss_tokenizer}, {args.workers} workers")
        peaks = []
        for size in args.sizes_mb:
            files = generate_corpus(tmp / f"rss-{size:g}", size, args.seed_text, seed=1)
            out = tmp / f"rss-out-{size:g}"
            seconds, peak, _ = run_measured(
                prepare_argv(files, args.rss_tokenizer, out, args.workers), args.workers
            )
            peaks.append(peak)
            print(f"{size:>10g} MB  {peak / 2**20:>8.0f} MiB  ({seconds:.1f} s)")
            for file in files:
                file.unlink()  # room for the next size
        change = (peaks[1] - peaks[0]) / peaks[0]
        print(f"change in peak RSS: {change:+.1%} for {args.sizes_mb[1] / args.sizes_mb[0]:g}x the text")


def dedup_table(args: argparse.Namespace) -> None:
    """MB/s and peak RSS of `data prepare` for each --dedup mode, on corpora with copies."""
    print(
        f"--tokenizer {args.rss_tokenizer}, {args.workers} workers, {args.copies:.0%} exact and near copies"
    )
    print(f"{'corpus':>8} {'--dedup':<7} {'MB/s':>7} {'seconds':>8} {'peak RSS':>10}  dropped / found")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        for size in args.dedup_sizes_mb:
            files = generate_corpus(tmp / f"dedup-{size:g}", size, args.seed_text, seed=2, copies=args.copies)
            for mode in args.dedup_modes:
                out = tmp / f"dedup-out-{size:g}-{mode}"
                argv = prepare_argv(files, args.rss_tokenizer, out, args.workers, mode)
                seconds, peak, _ = run_measured(argv, args.workers)
                meta = json.loads((out / "meta.json").read_text())
                d = meta["dedup"]
                counts = (
                    f"exact {d['exact_dropped']:,}/{d['exact_found']:,}, near {d['near_dropped']:,}/"
                    f"{d['near_found']:,} (moved {d['near_moved']:,}) of {meta['documents_read']:,}"
                )
                rate = meta["input_bytes"] / 1e6 / seconds
                print(
                    f"{size:>6g}MB {mode:<7} {rate:>7.2f} {seconds:>8.1f} {peak / 2**20:>6.0f} MiB  {counts}"
                )
                shutil.rmtree(out)
            for file in files:
                file.unlink()


def one_file_table(args: argparse.Namespace) -> None:
    """MB/s and peak RSS of `data prepare text FILE` on one file of each size: the seed text repeated."""
    print(f"one text file (the seed text repeated), --tokenizer {args.rss_tokenizer}, {args.workers} workers")
    print(f"{'file':>8} {'MB/s':>7} {'seconds':>8} {'peak RSS':>10}")
    seed = args.seed_text.read_bytes()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for size in args.one_file_mb:
            path, out = Path(tmp) / f"one-{size:g}.txt", Path(tmp) / f"one-out-{size:g}"
            with open(path, "wb") as f:
                for _ in range(max(1, round(size * 1e6 / len(seed)))):
                    f.write(seed)
            rate, seconds, peak = prepare_text_measured(path, out, args)
            print(f"{size:>6g}MB {rate:>7.2f} {seconds:>8.1f} {peak / 2**20:>6.0f} MiB")
            shutil.rmtree(out)
            path.unlink()


def prepare_text_measured(source: Path, out: Path, args: argparse.Namespace) -> tuple[float, float, int]:
    """MB/s, seconds and peak RSS (bytes) of `data prepare text SOURCE` with --rss-tokenizer."""
    argv = [sys.executable, "-m", "trickster", "data", "prepare", "text", str(source)]
    argv += ["--tokenizer", args.rss_tokenizer, "--workers", str(args.workers)]
    seconds, peak, _ = run_measured([*argv, "--out", str(out), "--no-progress"], args.workers)
    return input_megabytes(out) / seconds, seconds, peak


def _last_line(digest, validation: bool) -> str:
    """A line that puts the file on the chosen side of the default 10% validation split (a blake2b
    hash of a document's text, data prepare's rule): the first file in validation, the others in
    training, so that every size prepares (3 files drawn by chance all miss validation 73% of the time)."""
    for n in itertools.count():
        line = f"{n}\n"
        trial = digest.copy()
        trial.update(line.encode("utf-8"))
        if digest_in_validation(trial, 0.1) == validation:
            return line
    raise AssertionError("unreachable")


def several_files_table(args: argparse.Namespace) -> None:
    """MB/s and peak RSS of `data prepare text FOLDER` on --several-files-count files of each size."""
    count = args.several_files_count
    print(f"{count} text files of each size, --tokenizer {args.rss_tokenizer}, {args.workers} workers")
    print(f"{'files':>12} {'MB/s':>7} {'seconds':>8} {'peak RSS':>10}")
    lines = args.seed_text.read_text(encoding="utf-8").splitlines(keepends=True)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for size in args.several_files_mb:
            folder, out = Path(tmp) / f"several-{size:g}", Path(tmp) / f"several-out-{size:g}"
            folder.mkdir()
            for n in range(count):
                rng, written, digest = random.Random(n), 0, hashlib.blake2b(digest_size=8)
                with open(folder / f"{n}.txt", "wb") as f:
                    while written < size * 1e6:
                        batch = "".join(rng.choices(lines, k=10_000)).encode("utf-8")
                        f.write(batch)
                        digest.update(batch)
                        written += len(batch)
                    f.write(_last_line(digest, validation=n == 0).encode("utf-8"))
            rate, seconds, peak = prepare_text_measured(folder, out, args)
            print(f"{count:>3} x {size:>4g}MB {rate:>7.2f} {seconds:>8.1f} {peak / 2**20:>6.0f} MiB")
            shutil.rmtree(out)
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()

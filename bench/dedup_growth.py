"""How the time of `trickster data prepare --dedup group` grows with the number of documents, on
corpora of documents that are alike without being near-copies, and on a control of unrelated ones.

    python bench/dedup_growth.py                                  # 2,000, 8,000 and 32,000 documents
    python bench/dedup_growth.py --counts 2000 8000 --corpora alike
    python bench/dedup_growth.py --sources src /tmp/old/src       # each tree in turn, on PYTHONPATH

Each corpus is JSON lines of stories from bench/dedup_clusters.py's generator: `control` fills four
templates with words drawn at random (few stories share a band, few are near-copies); `alike` fills
each template with the same words and a closing line of two names, a day and 16 more names drawn at
random (dedup_clusters.py's `alike`), so that two stories of a template are about 0.65 similar: they
share a band of MinHash values about 40% of the time and are seldom near-copies (the threshold is
0.8), so each new one has thousands of candidates to rule out. `records` are templated support
tickets: the same reply of about 110 words with five fields filled in at random (a number, two
names, an item, a date, a reference), about 0.72 similar to each other, 74% of pairs sharing a band
and 2% near-copies.

Each row runs the whole command in a fresh process (2 worker processes, byte tokenizer) with
`--dedup group` and with `--dedup exact` (no signatures, no near-copy search): their difference is
what looking for near-copies costs. Each is given in wall seconds and in CPU seconds of the main
process (where the deduplicator works, beside the workers that compute the signatures): on a
machine others share, the CPU seconds move less. `growth` is how many times the main process's
CPU seconds with `group` grew from the row above, for 4 times the documents: 4 is linear, 16
quadratic.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dedup_clusters import NAMES, from_each_source, story
from prepare_throughput import prepare_argv

import trickster

RECORD = (  # a support ticket: the same reply, five fields filled in
    "Ticket {number}. Thank you for writing to us about your order. We are sorry to hear that the "
    "parcel did not arrive in the state you expected. Our team has looked at the case of {name} and "
    "we have decided to send a new {item} at no cost to you. The new parcel will leave our store within "
    "two working days, on {date} at the latest, and you will get an email with the tracking number as "
    "soon as it does. You do not need to send the old one back. The reference of this case is "
    "{reference}; please quote it if you write to us again. We hope that you enjoy your order and "
    "thank you for your patience. Kind regards, the customer care team."
)
ITEMS = "apple bread chair desk lamp pen phone shirt shoe table towel watch".split()


def record(rng: random.Random) -> str:
    fill = {"number": rng.randrange(10**6), "name": " ".join(rng.sample(NAMES, 2)), "item": rng.choice(ITEMS)}
    date = f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    return RECORD.format(**fill, date=date, reference=f"{rng.randrange(10**4)}-{rng.choice(NAMES)}")


def document(rng: random.Random, corpus: str) -> str:
    if corpus == "records":
        return record(rng)
    return story(rng, "alike" if corpus == "alike" else False)


def write_corpus(path: Path, corpus: str, count: int) -> None:
    rng = random.Random(0)  # a larger corpus starts with the smaller one's documents
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(count):
            f.write(json.dumps({"text": document(rng, corpus)}) + "\n")


MAIN_PROCESS_CPU = """
import resource, sys
from trickster import cli
status = cli.main(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_SELF)
print(f"main process CPU {usage.ru_utime + usage.ru_stime}")
sys.exit(status)
"""


def run_timed(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds of the main process (where the deduplicator runs; the workers
    compute the signatures) and the output of the CLI called with `argv`, in a fresh process, from
    the trickster this script imported (--sources puts each tree first on PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(Path(trickster.__file__).resolve().parents[1])}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MAIN_PROCESS_CPU, *argv], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    cpu = float(done.stdout.rsplit("main process CPU ", 1)[1])
    return seconds, cpu, done.stdout


def near_copies_found(output: str) -> str:
    """'166 found, 3 dropped, 30 moved' from the summary's near-copies line."""
    line = next((line for line in output.splitlines() if line.startswith("near-copies")), ":")
    return line.split(":", 1)[1].replace(" to their cluster's split", "").strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--corpora", nargs="+", default=["control", "alike", "records"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sources", nargs="+", type=Path, help="run it from each of these source trees")
    args = parser.parse_args()
    if args.sources:
        own = ["--counts", *map(str, args.counts), "--corpora", *args.corpora, f"--workers={args.workers}"]
        from_each_source(args.sources, __file__, own)
        return
    print(
        "| corpus | documents | MB | `exact`: wall s (main CPU s) | `group`: wall s (main CPU s) | growth |",
        end="",
    )
    print(" near-copies |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for corpus in args.corpora:
        before = None
        for count in args.counts:
            with tempfile.TemporaryDirectory() as folder:
                source = Path(folder) / "corpus.jsonl"
                write_corpus(source, corpus, count)
                megabytes = source.stat().st_size / 1e6
                timed = {}
                for mode in ("exact", "group"):
                    argv = prepare_argv([source], "byte", Path(folder) / mode, args.workers, mode)
                    timed[mode] = run_timed(argv[3:])  # without `python -m trickster`
            (exact, exact_cpu, _), (group, group_cpu, output) = timed["exact"], timed["group"]
            growth = f"{group_cpu / before:.1f}x" if before else ""
            before = group_cpu
            print(
                f"| {corpus} | {count:,} | {megabytes:.1f} | {exact:.1f} ({exact_cpu:.1f}) "
                f"| {group:.1f} ({group_cpu:.1f}) | {growth} | {near_copies_found(output)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

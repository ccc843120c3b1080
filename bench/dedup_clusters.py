"""The near-copy search as a corpus of templated stories grows: CPU seconds of the main process's
deduplicator (`Deduper.decide_chunk`, as `data prepare --dedup group` calls it, chunks of 1,400
stories: about 1 MB) per 10,000 documents, with the candidates it read back and compared.

    python bench/dedup_clusters.py                  # 300,000 stories, 40,000 boilerplate, 20,000 alike
    python bench/dedup_clusters.py --stories 50000 --boilerplate 10000 --alike 0   # 0: not run
    python bench/dedup_clusters.py --sources src /tmp/old/src    # each tree in turn, on PYTHONPATH

Three synthetic corpora, like TinyStories: `stories` fills four story templates with names,
animals, places, objects and feelings drawn at random (about 470 bytes each; few are near-copies),
and `boilerplate` fills each template with the same words and adds a closing line of two names and
a number, so that nearly every story is a near-copy of the first of its template: four clusters
that grow to thousands, the case where every member was compared with every member kept before it.
`alike` adds 16 more names to that closing line: two stories of a template are about 0.65 similar,
share a band often and are seldom near-copies, so each is compared with thousands kept before it
and kept (the search that stays quadratic: near_search.py). The signatures are computed first
(dedup.signatures, as the workers do) and are not timed.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trickster.data import dedup

NAMES = (
    "Lily Tom Mia Ben Sue Max Anna Sam Lucy Tim Zoe Leo Ella Jack Amy Finn Rosa Noah Kate Jake Ivy Owen "
    "Nora Eli Ruby Dan Maya Luke Jill Adam Tess Ryan Cara Hugo Lena Omar Faye Ivan Gwen Paul"
).split()
WORDS = {
    "an": "cat dog bird bunny frog duck fox bear mouse puppy kitten lamb pig horse owl turtle".split(),
    "o": "ball kite box hat toy car book flower shell stone cup spoon drum bell boat train doll key".split(),
    "a": "little big happy sad red blue shiny soft old new tiny funny brave kind pretty small".split(),
    "f": "happy sad scared excited proud surprised curious angry tired glad".split(),
    "p": "park garden forest yard beach farm meadow pond field hill village school river zoo".split(),
}
ALIKE_WORDS = 16  # names after an `alike` story's closing line: about 0.65 similar to each other
TEMPLATES = [
    "Once upon a time, there was a {a1} {an1} named {n1}. {n1} loved to play in the {p1} with a friend "
    "named {n2}. One day, {n1} found a {a2} {o1} under a big tree. {n1} was very {f1}. {n1} showed the "
    '{o1} to {n2}. {n2} said, "Wow, what a {a2} {o1}! Can I play with it too?" {n1} thought for a '
    "moment and said yes. They played with the {o1} all day long. When the sun went down, they went "
    "home. {n1} and {n2} were {f2} because they had a fun day together. The end.",
    "{n1} was a {a1} {an1} who lived near the {p1}. Every morning, {n1} would go to the {p1} to look for "
    'a {o1}. One morning, {n1} met a {a2} {an2} named {n2}. "Hello," said {n2}. "I lost my {o2}. Can you '
    'help me find it?" {n1} felt {f1} and said, "Of course I will help you!" They looked behind the rocks '
    "and under the bushes. At last, {n1} saw the {o2} in the grass. {n2} was so {f2}. From that day on, "
    "{n1} and {n2} were best friends.",
    'One sunny day, {n1} and Mom went to the {p1}. {n1} wanted to bring the {a1} {o1}. Mom said, "Be '
    'careful with your {o1}, {n1}." At the {p1}, {n1} saw a {a2} {an1} playing near the water. The '
    "{an1} looked {f1}. {n1} wanted to be friends with the {an1} and gave it a piece of {o2}. The {an1} "
    "was {f2} and jumped up and down. {n1} learned that being kind to others makes everyone happy.",
    "There was a {a1} girl named {n1}. She had a {a2} {o1} that she loved very much. One day, a {an1} "
    'came to the {p1} and took the {o1}! {n1} was {f1}. She ran after the {an1} and shouted, "Stop! That '
    'is my {o1}!" The {an1} stopped. "I am sorry," said the {an1}. "I just wanted to play." {n1} smiled '
    "and said they could play together. They played in the {p1} until dinner. {n1} felt {f2}.",
]


def story(rng: random.Random, boilerplate: bool | str) -> str:
    if boilerplate:  # the same words, and a closing line that differs
        fill = {f"{k}{i}": WORDS[k][i] for k in WORDS for i in (1, 2)} | {"n1": "Lily", "n2": "Tom"}
        readers = " and ".join(rng.choice(NAMES) for _ in range(2))
        closing = f" This story was read by {readers} on day {rng.randrange(1000)}."
        if boilerplate == "alike":  # and a longer one: alike, and not near-copies
            closing += " " + " ".join(rng.choice(NAMES) for _ in range(ALIKE_WORDS)) + "."
        return rng.choice(TEMPLATES).format(**fill) + closing
    fill = {f"{k}{i}": w for k in WORDS for i, w in enumerate(rng.sample(WORDS[k], 2), 1)}
    return rng.choice(TEMPLATES).format(**fill | dict(zip(("n1", "n2"), rng.sample(NAMES, 2), strict=True)))


def timed(name: str, count: int, boilerplate: bool | str, chunk: int = 1400) -> None:
    rng = random.Random(0)
    texts = [story(rng, boilerplate) for _ in range(count)]
    sigs = np.concatenate([dedup.signatures(texts[i : i + chunk]) for i in range(0, count, chunk)])
    fps = [dedup.fingerprint(text) for text in texts]
    sides = random.Random(1)  # apart: a run of fewer stories draws the same first ones, and sides
    splits = ["val" if sides.random() < 0.1 else "train" for _ in texts]
    read = [0]
    real_read = dedup.KeptRows.read

    def counted(self, rows):
        read[0] += len(rows)
        return real_read(self, rows)

    dedup.KeptRows.read = counted
    print(f"\n{name}: {count:,} stories, {sum(len(t) for t in texts) / 1e6:.1f} MB")
    print("| documents | CPU seconds for the last 10,000 | candidates read | kept | near-copies found |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        deduper = dedup.Deduper(dedup.DedupSettings(), Path(folder), {})
        mark, last, done = 10_000, time.process_time(), 0
        for start in range(0, count, chunk):
            end = min(start + chunk, count)
            deduper.decide_chunk(list(range(start, end)), fps[start:end], sigs[start:end], splits[start:end])
            deduper.flush()
            if end >= mark or end == count:
                now, c = time.process_time(), deduper.counts
                per = (now - last) * 10_000 / (end - done)
                print(f"| {end:,} | {per:.2f} | {read[0]:,} | {c.kept:,} | {c.near_found:,} |", flush=True)
                last, done, read[0], mark = now, end, 0, mark + 10_000
    dedup.KeptRows.read = real_read


def from_each_source(sources: list[Path], script: str, argv: list[str]) -> None:
    """`script` with `argv` (the same corpora) from each source tree in turn, one process each, the
    tree first on PYTHONPATH (--sources)."""
    for source in sources:
        print(f"\n## {source}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(source.resolve())}
        subprocess.run([sys.executable, script, *argv], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=300_000)
    parser.add_argument("--boilerplate", type=int, default=40_000)
    parser.add_argument("--alike", type=int, default=20_000)
    parser.add_argument("--sources", nargs="+", type=Path, help="run it from each of these source trees")
    args = parser.parse_args()
    if args.sources:
        own = [f"--stories={args.stories}", f"--boilerplate={args.boilerplate}", f"--alike={args.alike}"]
        from_each_source(args.sources, __file__, own)
        return
    for name, count, kind in (
        ("stories", args.stories, False),
        ("boilerplate", args.boilerplate, True),
        ("alike", args.alike, "alike"),
    ):
        if count:  # 0: not run
            timed(name, count, kind)


if __name__ == "__main__":
    main()

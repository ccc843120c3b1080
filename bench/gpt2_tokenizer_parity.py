"""The exported gpt2 tokenizer (GPT-2's vocabulary and merges recovered from tiktoken's ranks, as
`trickster export` writes them) next to tiktoken itself, on much more text than the tests use: the
standard library's Python files, the Shakespeare excerpt of the tests, and seeded random strings of
mixed scripts, emoji, blanks, contractions and invalid bytes. Prints how many texts gave other ids.

    python bench/gpt2_tokenizer_parity.py [--files 3000]
"""

from __future__ import annotations

import argparse
import random
import sysconfig
import time
from pathlib import Path

from trickster.data.tokenizers import GPT2Tokenizer
from trickster.export.byte_level import gpt2_bpe, hf_backend

EXCERPT = Path(__file__).resolve().parent.parent / "tests" / "data" / "shakespeare_excerpt.txt"
SOUP = "aé日本語🎭 \n\t  '’s'S'll0123456789.,!?-—<|endoftext|>ΩЖحب\u200b\r"


def texts(files: int) -> list[tuple[str, str]]:
    """(kind, text) pairs: source files, the excerpt, random strings."""
    out = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))[:files]:
        try:
            out.append(("stdlib", path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            pass
    out.append(("excerpt", EXCERPT.read_text(encoding="utf-8")))
    rng = random.Random(0)
    out += [("soup", "".join(rng.choice(SOUP) for _ in range(2000))) for _ in range(200)]
    noise = (bytes(rng.randrange(256) for _ in range(3000)) for _ in range(100))
    out += [("bytes", raw.decode("utf-8", "replace")) for raw in noise]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000, help="stdlib .py files to read")
    args = parser.parse_args()
    ours, exported = GPT2Tokenizer(), hf_backend(gpt2_bpe())
    rows: dict[str, list[int]] = {}
    start = time.perf_counter()
    for kind, text in texts(args.files):
        expected = ours.encode(text)
        got = exported.encode(text, add_special_tokens=False).ids
        row = rows.setdefault(kind, [0, 0, 0, 0])
        row[0] += 1
        row[1] += len(text)
        row[2] += len(expected)
        row[3] += got != expected
    print("| texts | count | characters | tiktoken ids | texts with other ids |")
    print("|---|---:|---:|---:|---:|")
    for kind, (count, chars, ids, differ) in rows.items():
        print(f"| {kind} | {count:,} | {chars:,} | {ids:,} | {differ} |")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()

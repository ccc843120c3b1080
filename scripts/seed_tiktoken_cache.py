"""Put GPT-2's BPE ranks into tiktoken's cache without reaching openaipublic.blob.core.windows.net.

tiktoken downloads the ranks on first use. Where only PyPI can be reached, take them from the
openai-whisper source package, which ships the same file as whisper/assets/gpt2.tiktoken:

    pip download --no-deps openai-whisper -d /tmp/whisper
    python scripts/seed_tiktoken_cache.py /tmp/whisper/openai_whisper-*.tar.gz

The argument is that .tar.gz or an extracted gpt2.tiktoken. The file is accepted only if its
SHA-256 is the one tiktoken expects for r50k_base (GPT-2's ranks), and is written where tiktoken
looks: $TIKTOKEN_CACHE_DIR (or its default, <tmp>/data-gym-cache) under the SHA-1 of the URL.
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
from pathlib import Path

from trickster.data.tokenizers import GPT2_RANKS_SHA256, tiktoken_cache_file

MEMBER_SUFFIX = "whisper/assets/gpt2.tiktoken"


def read_ranks(source: Path) -> bytes:
    if source.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(source) as archive:
            member = next((m for m in archive.getmembers() if m.name.endswith(MEMBER_SUFFIX)), None)
            if member is None:
                raise SystemExit(f"{source} holds no {MEMBER_SUFFIX}")
            return archive.extractfile(member).read()
    return source.read_bytes()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    data = read_ranks(Path(argv[0]))
    digest = hashlib.sha256(data).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        print(f"error: SHA-256 {digest} is not GPT-2's ranks ({GPT2_RANKS_SHA256})", file=sys.stderr)
        return 2
    target = tiktoken_cache_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)
    print(f"wrote {target} ({len(data):,} bytes); tiktoken's r50k_base (GPT-2) now loads offline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

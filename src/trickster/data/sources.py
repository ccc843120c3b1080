"""Where text comes from: Tiny Shakespeare (downloaded and checked), local files, Python's stdlib,
and JSONL prompt/response records for fine-tuning.

Each text source returns a list of documents (strings) plus a description for meta.json; the JSONL
source returns (prompt, response) pairs.
"""

from __future__ import annotations

import glob
import hashlib
import json
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from trickster.errors import UserError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


@dataclass
class Corpus:
    name: str
    documents: list[str]
    files: list[str] = field(default_factory=list)
    sha256: str = ""  # of the source bytes, concatenated in order

    @property
    def num_chars(self) -> int:
        return sum(len(d) for d in self.documents)


@dataclass
class Records:
    """Prompt/response pairs: the loss will cover each response, never its prompt."""

    name: str
    pairs: list[tuple[str, str]]
    files: list[str] = field(default_factory=list)
    sha256: str = ""


def jsonl_prompt_response(path: str | Path) -> Records:
    """One JSON object per line with "prompt" and "response" strings (blank lines are skipped)."""
    path = Path(path)
    raw = _read_bytes(path)
    pairs = []
    for number, line in enumerate(_decode(raw, str(path)).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where} is not JSON ({err.msg}); write one JSON object per line") from None
        if not isinstance(record, dict):
            raise UserError(f'{where} is not a JSON object; write {{"prompt": "...", "response": "..."}}')
        for key in ("prompt", "response"):
            if key not in record:
                raise UserError(f'{where} has no "{key}" field; each record needs "prompt" and "response"')
            if not isinstance(record[key], str):
                raise UserError(f'{where}: "{key}" must be a string (got {type(record[key]).__name__})')
        if not record["response"]:
            raise UserError(f'{where}: "response" is empty; the loss would have nothing to learn from')
        pairs.append((record["prompt"], record["response"]))
    if len(pairs) < 2:
        raise UserError(
            f"{path} holds {len(pairs)} record(s); at least 2 are needed (one for training, one to validate)"
        )
    return Records("jsonl", pairs, [str(path)], hashlib.sha256(raw).hexdigest())


def shakespeare(path: str | Path | None = None, url: str = SHAKESPEARE_URL, timeout: float = 30) -> Corpus:
    """Tiny Shakespeare from a local copy, or downloaded from its canonical URL and checked."""
    if path is not None:
        raw = _read_bytes(Path(path))
        source = str(path)
    else:
        raw = download(url, timeout)
        digest = hashlib.sha256(raw).hexdigest()
        if digest != SHAKESPEARE_SHA256:
            raise UserError(
                f"downloaded file from {url} has SHA-256 {digest[:12]}..., expected "
                f"{SHAKESPEARE_SHA256[:12]}...; retry, or pass a local copy with --path FILE"
            )
        source = url
    text = _decode(raw, source)
    return Corpus("shakespeare", [text], [source], hashlib.sha256(raw).hexdigest())


def download(url: str, timeout: float = 30) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(
            f"could not download {url} ({reason}); if you are offline, download it elsewhere and "
            "pass the local copy with --path FILE"
        ) from None


def local_text(patterns: list[str]) -> Corpus:
    """UTF-8 text files, folders (every file inside, recursively) and glob patterns."""
    files = expand_paths(patterns)
    return _corpus_from_files("text", files)


def python_stdlib() -> Corpus:
    """The running Python's standard library sources: a corpus every machine has offline."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idlelib", "__pycache__", "dist-packages")
    files = sorted(
        p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts)
    )
    return _corpus_from_files("python-stdlib", files, skip_undecodable=True)


def expand_paths(patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"no files match '{pattern}'; check the path or quote the glob pattern")
        for match in map(Path, matches):
            if match.is_dir():
                files.extend(sorted(p for p in match.rglob("*") if p.is_file()))
            elif match.is_file():
                files.append(match)
            else:
                raise UserError(f"{match} not found; pass existing text files or folders")
    if not files:
        raise UserError(f"no files found in {', '.join(patterns)}; pass folders that contain text files")
    return files


def _corpus_from_files(name: str, files: list[Path], skip_undecodable: bool = False) -> Corpus:
    digest = hashlib.sha256()
    documents, used = [], []
    for path in files:
        raw = _read_bytes(path)
        try:
            text = _decode(raw, str(path))
        except UserError:
            if skip_undecodable:
                continue
            raise
        digest.update(raw)
        if text:
            documents.append(text)
            used.append(str(path))
    return Corpus(name, documents, used, digest.hexdigest())


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} not found; pass the path of an existing text file") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder; pass a text file") from None
    except PermissionError:
        raise UserError(f"{path} is not readable; check its permissions") from None


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{source} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8 "
            "(for example: iconv -f latin1 -t utf-8)"
        ) from None

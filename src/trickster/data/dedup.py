"""Duplicates in a corpus: exact copies and near-copies, decided document by document in order.

- An exact copy is a document whose normalised text (whitespace runs made one space, ends
  stripped; for a prompt/response record, both parts) has the same 64-bit blake2b fingerprint as an
  earlier one. It is dropped (kept with `keep_duplicates`, on its first copy's side of the split).
- A near-copy is a document whose estimated Jaccard similarity with an earlier one is at least
  `threshold`, over the sets of 5-word shingles of their lower-cased texts. Each document gets a
  MinHash signature of 128 values (datasketch's `MinHash`, scheme affine32) computed in the worker
  processes, which draw its permutations themselves and never import datasketch (nor scipy); the
  main process looks for candidates sharing a band of values with it (near_index.py:
  datasketch's `MinHashLSH` bands, tuned to the threshold as it tunes them, in numpy tables; it
  imports neither datasketch nor scipy either) and keeps those whose
  signatures agree on at least `threshold` of their values, as `MinHashLSH` would. Only which sides
  of the split hold such a near-copy decides, so a side's search ends at its first one
  (near_search.py): a large cluster of near-copies costs each new member a few rows, not all.
  In mode "group" (the default) a near-copy is kept, in the split of the earliest document it copies:
  a cluster of near-copies lands on one side of the split, so validation never holds a near-copy
  of a training document (one that copies documents on both sides is dropped). In mode "near" it is
  dropped. Mode "exact" skips near-copies (no signatures: the fastest).

State, so that an interrupted preparation continues to the same result: one fixed-size row per
kept document (fingerprint, split, signature) appended to `dedup.bin` (dedup_rows.py), and counts
in progress.json; a continued run reads the rows back and rebuilds the index. The rows stay on disk
(a copy's own are read back when it is found): memory holds the index, 12 bytes per band and per
fingerprint (204 bytes per kept document at the default 16 bands), and the low 4 bits of each
signature value (64 bytes: near_sketch.py, which rules out most candidates that are not
near-copies without reading their rows), never the text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trickster.data.dedup_rows import KeptRows
from trickster.data.near_index import NearIndex, RowIndex, distinct
from trickster.data.near_search import ChunkSearch
from trickster.data.near_sketch import Sketches, low_bits
from trickster.errors import UserError

MODES = ("group", "near", "exact")
NUM_PERM = 128
SHINGLE_WORDS = 5
BLOCK = 16_384  # shingles per MinHash update: bounds the (shingles x NUM_PERM) temporary to 8 MB
_P = np.uint64(0x100000001B3)  # FNV prime: odd, so invertible modulo 2**64
_P_INV = np.uint64(pow(0x100000001B3, -1, 2**64))
FIRST_READ = 16  # rows read back at once, at first, to find a near-copy among the likely (_any_near)
PIECE_CHARS = 4_000_000  # text hashed at once: bounds the temporaries (about 50 bytes per character)


@dataclass(frozen=True)
class DedupSettings:
    mode: str = (
        "group"  # group: near-copies kept on one side of the split; near: dropped; exact: not looked for
    )
    threshold: float = 0.8  # Jaccard similarity from which two documents are near-copies
    keep_duplicates: bool = False  # keep exact copies (on their first copy's side of the split)

    def check(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"--dedup must be one of {', '.join(MODES)} (got {self.mode!r})")
        if not 0 < self.threshold <= 1:
            raise UserError(f"--near-dup-threshold must be in (0, 1] (got {self.threshold:g})")
        if self.keep_duplicates and self.mode == "near":
            raise UserError("--keep-duplicates keeps copies and --dedup near drops them; choose one")

    @property
    def near(self) -> bool:
        return self.mode != "exact"


def normalise(text: str) -> str:
    return " ".join(text.split())


def fingerprint(document: str | tuple[str, ...]) -> int:
    if isinstance(document, tuple):
        text = "\x00".join(normalise(part) for part in document)
    else:
        text = normalise(document)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


BLANK = fingerprint("")


def _pieces(texts: list[str]) -> Iterator[tuple[list[int], list[str]]]:
    """Batches of (document number, lower-cased words joined by spaces), about PIECE_CHARS each; a
    longer document is cut into several, each overlapping the next by 4 words, so that every 5-word
    shingle lies whole in one piece."""
    owners, pieces, size = [], [], 0
    for number, text in enumerate(texts):
        words = text.lower().split()
        step = max(PIECE_CHARS // 8, SHINGLE_WORDS)  # words per piece of a long document
        starts = range(0, max(1, len(words) - SHINGLE_WORDS + 1), step) if len(words) > step else [0]
        for start in starts:
            piece = " ".join(words[start : start + step + SHINGLE_WORDS - 1] if len(words) > step else words)
            owners.append(number)
            pieces.append(piece)
            size += len(piece)
            if size >= PIECE_CHARS:
                yield owners, pieces
                owners, pieces, size = [], [], 0
    if pieces:
        yield owners, pieces


def _shingles(owners: list[int], pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(document, 32-bit hash) of each distinct 5-word shingle of the pieces (a piece of fewer words:
    one shingle, the whole piece), sorted. Polynomial hashes of the UTF-8 bytes from prefix sums:
    every shingle of every piece in a few numpy passes."""
    data = np.frombuffer("\n".join(pieces).encode("utf-8"), np.uint8).astype(np.uint64) + np.uint64(1)
    n = len(data)
    if not n:
        return np.zeros(0, np.int64), np.zeros(0, np.uint32)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        powers, inverse = np.full(n, _P), np.full(n, _P_INV)
        powers[0] = inverse[0] = 1
        np.cumprod(powers, out=powers)
        np.cumprod(inverse, out=inverse)
        prefix = np.zeros(n + 1, np.uint64)
        np.cumsum(data * powers, out=prefix[1:])
        breaks = np.flatnonzero((data == ord(" ") + 1) | (data == ord("\n") + 1))
        starts, ends = np.concatenate(([0], breaks + 1)), np.concatenate((breaks, [n]))  # of each word
        piece = np.concatenate(([0], np.cumsum(data[breaks] == ord("\n") + 1)))  # of each word
        k = SHINGLE_WORDS - 1
        whole = np.flatnonzero(piece[k:] == piece[: max(0, len(piece) - k)])  # 5 words of one piece
        first = np.flatnonzero(np.diff(piece, prepend=-1))  # each piece's first word ...
        last = np.append(first[1:] - 1, len(piece) - 1)  # ... and last
        short = last - first < k
        lo = np.concatenate((starts[whole], starts[first[short]]))
        hi = np.concatenate((ends[whole + k], ends[last[short]]))
        owner = np.asarray(owners, np.uint64)[np.concatenate((piece[whole], piece[first[short]]))]
        lo, hi, owner = lo[hi > lo], hi[hi > lo], owner[hi > lo]  # an empty text has no shingle
        h = (prefix[hi] - prefix[lo]) * inverse[lo]  # hash of bytes [lo, hi)
        h ^= h >> np.uint64(33)  # murmur's finaliser: every input bit reaches the top bits
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
    keys = distinct((owner << np.uint64(32)) | (h >> np.uint64(32)))
    return (keys >> np.uint64(32)).astype(np.int64), (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def shingle_hashes(text: str) -> np.ndarray:
    """The distinct shingle hashes of one text (see _shingles). The product hashes whole chunks
    (signatures); the tests take one text's set to measure its Jaccard similarity and to feed
    datasketch's own MinHash, which signatures must equal."""
    return distinct(np.concatenate([_shingles(*batch)[1] for batch in _pieces([text])]))


def permutations(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each (NUM_PERM, 1) uint32: the affine32 permutations h -> a * h + b (modulo 2**32)
    drawn as datasketch's MinHash(NUM_PERM, seed, scheme="affine32") draws them (a test checks they
    are its values). Drawn here so that the worker processes never import datasketch, which imports
    scipy: about 80 MiB in each of them."""
    generator = np.random.RandomState(seed)
    a = generator.randint(0, 1 << 31, NUM_PERM, dtype=np.uint32) * np.uint32(2) + np.uint32(1)  # odd
    b = generator.randint(0, 1 << 32, NUM_PERM, dtype=np.uint32)
    return a.reshape(-1, 1), b.reshape(-1, 1)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, which datasketch's affine32 applies to each hash first."""
    with np.errstate(over="ignore"):  # arithmetic modulo 2**32 is the point
        h = (h ^ (h >> np.uint32(16))) * np.uint32(0x85EBCA6B)
        h = (h ^ (h >> np.uint32(13))) * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))


_PERMUTATIONS = None  # permutations(), drawn once per process


def signatures(documents: list[str | tuple[str, ...]]) -> np.ndarray:
    """The documents' MinHash signatures, (documents, NUM_PERM) uint32: datasketch's MinHash (scheme
    affine32, seed 1) over each one's shingles, computed for a whole chunk at once (a MinHash object
    per document costs more than its arithmetic) and checked against datasketch's in the tests."""
    global _PERMUTATIONS
    if _PERMUTATIONS is None:
        _PERMUTATIONS = permutations()
    a, b = _PERMUTATIONS
    texts = ["\n".join(d) if isinstance(d, tuple) else d for d in documents]
    sig = np.full((len(texts), NUM_PERM), np.iinfo(np.uint32).max, np.uint32)
    for batch in _pieces(texts):
        owner, hashes = _shingles(*batch)
        for start in range(0, len(hashes), BLOCK):
            block, docs = hashes[start : start + BLOCK], owner[start : start + BLOCK]
            with np.errstate(over="ignore"):
                permuted = a * _fmix32(block) + b  # (NUM_PERM, shingles), modulo 2**32
            cuts = np.flatnonzero(np.diff(docs, prepend=-1))
            rows = docs[cuts]
            sig[rows] = np.minimum(sig[rows], np.minimum.reduceat(permuted, cuts, axis=1).T)
    return sig


def signature(document: str | tuple[str, ...]) -> np.ndarray:
    return signatures([document])[0]


@dataclass
class DedupCounts:
    kept: int = 0  # rows in dedup.bin: documents kept and indexed
    blank_dropped: int = 0  # documents of whitespace only
    exact_found: int = 0
    exact_dropped: int = 0
    near_found: int = 0
    near_dropped: int = 0  # with --dedup near, or a near-copy of documents on both sides
    near_moved: int = 0  # kept on their cluster's side, not the one their hash chose
    examples: list = field(default_factory=list)  # a few (document number, document number it copies)


def row_dtype(near: bool) -> np.dtype:
    """One kept document in dedup.bin (the signature only when near-copies are looked for)."""
    fields = [("document", "<u8"), ("fingerprint", "<u8"), ("split", "u1")]
    return np.dtype(fields + ([("signature", "<u4", (NUM_PERM,))] if near else []))


EXAMPLES = 5  # in meta.json: (document number, document number it copies) of the first copies found
SPLIT_CODES = {"train": 0, "val": 1}
SPLIT_NAMES = {v: k for k, v in SPLIT_CODES.items()}


class Deduper:
    """Decides the fate of each document, in order; see the module's docstring."""

    def __init__(self, settings: DedupSettings, folder: Path, state: dict):
        self.settings = settings
        self.counts = DedupCounts(**state) if state else DedupCounts()
        self.copies = RowIndex()  # fingerprint -> row of its first copy
        # bands tuned to miss few near-copies (at 0.8: 95% of pairs at 0.8 found, 99.4% at 0.85,
        # against 40% and 69% with equal weights); the candidates are checked on their signatures
        self.index = NearIndex(min(settings.threshold, 0.99), NUM_PERM) if settings.near else None
        self.sketches = Sketches(NUM_PERM) if settings.near else None  # rules most candidates out
        self.rows = KeptRows(folder / "dedup.bin", row_dtype(settings.near), self.counts.kept)
        # of the last decide_chunk's documents: whether each went where its own split sent it (no
        # copy of another, which follows its first copy's side); nearest.py moves only such a one
        self.own_side: list[bool] = []
        start = 0
        for block in self.rows.blocks():  # a continued preparation: what it kept before
            self._add(block, np.arange(start, start + len(block)))
            start += len(block)

    @property
    def nbytes(self) -> int:
        """Memory held for the documents kept (their rows wait on disk)."""
        near = self.index.nbytes + self.sketches.nbytes if self.index is not None else 0
        return self.copies.nbytes + near

    def decide(self, number: int, fp: int, sig: np.ndarray | None, split: str) -> str | None:
        """The split document `number` goes to (its own `split`, or its first copy's), or None: dropped."""
        return self.decide_chunk([number], [fp], None if sig is None else sig[None], [split])[0]

    def decide_chunk(
        self, numbers: list[int], fps: list[int], sigs: np.ndarray | None, splits: list[str]
    ) -> list[str | None]:
        """decide for each of a chunk's documents, in order: the index is searched for the whole
        chunk at once, and the documents kept in it are looked for one by one in a dict (`_Chunk`)."""
        which, rows = self.copies.find(np.asarray(fps, np.uint64))
        chunk = _Chunk(len(self.rows), dict(zip(which.tolist(), rows.tolist(), strict=True)))
        if self.index is not None:
            chunk.near = ChunkSearch(self.index, sigs)
            chunk.low_bits = low_bits(sigs)
        fates, chunk.own = [], [True] * len(fps)
        for i, (fp, split) in enumerate(zip(fps, splits, strict=True)):
            fates.append(self._decide(numbers[i], i, fp, None if sigs is None else sigs[i], split, chunk))
        self.own_side = chunk.own
        kept = np.asarray(chunk.kept, np.int64)
        self.copies.add(np.asarray(fps, np.uint64)[kept], np.arange(len(kept)) + chunk.start)
        if self.index is not None:
            self.index.add(chunk.near.keys[kept], np.arange(len(kept)) + chunk.start, chunk.sides)
        return fates

    def _decide(self, number: int, i: int, fp: int, sig, split: str, chunk: _Chunk) -> str | None:
        c = self.counts
        if fp == BLANK:
            c.blank_dropped += 1  # only whitespace: nothing to learn, and all of them are copies
            return None
        row = chunk.copies.get(i, chunk.first_copy.get(fp))
        if row is not None:
            c.exact_found += 1
            if len(c.examples) < EXAMPLES:  # its row read only then: a corpus of copies reads none
                c.examples.append([number, int(self.rows.read([row])["document"][0])])
            if not self.settings.keep_duplicates:
                c.exact_dropped += 1
                return None
            chunk.own[i] = False
            return SPLIT_NAMES[int(self.rows.read([row])["split"][0])]
        code = SPLIT_CODES[split]
        if self.index is not None:
            low, either = chunk.low_bits[i], self.settings.mode == "near"
            sides = chunk.near.sides(i, lambda rows: self._any_near(sig, low, rows), either)
            if sides:
                c.near_found += 1
                if len(c.examples) < EXAMPLES:  # the earliest near-copy: all candidates read, a few times
                    earliest = self._near(sig, low, chunk.near.every_candidate(i))["document"][0]
                    c.examples.append([number, int(earliest)])
                if self.settings.mode == "near" or len(sides) > 1:
                    c.near_dropped += 1
                    return None
                if sides != {code}:
                    c.near_moved += 1
                code, chunk.own[i] = sides.pop(), False
        chunk.keep(i, fp, len(self.rows), code)
        self.rows.append((number, fp, code) + (() if sig is None else (sig,)))
        if self.sketches is not None:
            self.sketches.add(chunk.low_bits[i : i + 1])
        c.kept += 1
        return SPLIT_NAMES[code]

    def _near(self, sig: np.ndarray, low: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The rows of the candidates that share a whole band with `sig` (the index's hashes may
        meet by chance) and agree with it on at least `threshold` of their values, in their order
        (`low`: low_bits of sig)."""
        return self._read_near(sig, self._likely(low, candidates))

    def _any_near(self, sig: np.ndarray, low: np.ndarray, candidates: np.ndarray) -> bool:
        """Whether one of the candidates is a near-copy (_near's test). Those that can be are read
        in blocks that double: in a cluster of near-copies the first block holds one."""
        likely = self._likely(low, candidates)
        start, size = 0, FIRST_READ
        while start < len(likely):
            if len(self._read_near(sig, likely[start : start + size])):
                return True
            start, size = start + size, 2 * size
        return False

    def _likely(self, low: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The candidates whose low bits agree with `low` on at least `threshold` of their values:
        only they can agree that often whole (near_sketch), and only they are read back."""
        if not len(candidates):
            return candidates
        agreeing = self.sketches.agreeing(low, candidates)
        return candidates[agreeing / NUM_PERM >= self.settings.threshold]

    def _read_near(self, sig: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        if not len(candidates):
            return np.zeros(0, self.rows.dtype)
        found = self.rows.read(candidates)
        agree = np.mean(found["signature"] == sig, axis=1) >= self.settings.threshold
        found = found[agree]  # the low bits rule out most of the others: the bands of the few left
        return found[self.index.shares_a_band(sig, found["signature"])]

    def _add(self, rows: np.ndarray, numbers: np.ndarray) -> None:
        self.copies.add(rows["fingerprint"], numbers)
        if self.index is not None:
            self.index.add(self.index.band_keys(rows["signature"]), numbers, rows["split"])
            self.sketches.add(low_bits(rows["signature"]))

    def flush(self) -> None:
        """Append the rows kept since the last flush (before progress.json counts them)."""
        self.rows.flush()

    def state_dict(self) -> dict:
        return asdict(self.counts)


class _Chunk:
    """What decide_chunk knows of a chunk: its documents' earlier copies, its search for near-copies,
    and the documents it kept so far (not yet in the indexes)."""

    def __init__(self, start: int, copies: dict[int, int]):
        self.start, self.copies = start, copies  # first row it keeps; position -> earlier first copy
        self.near: ChunkSearch | None = None
        self.low_bits: np.ndarray | None = None  # of each document's signature (near_sketch)
        self.first_copy: dict[int, int] = {}  # fingerprint -> row, of the documents kept in the chunk
        self.kept: list[int] = []  # positions
        self.sides: list[int] = []  # and their split codes
        self.own: list[bool] = []  # of each document: Deduper.own_side

    def keep(self, i: int, fp: int, row: int, side: int) -> None:
        self.first_copy[fp] = row
        if self.near is not None:
            self.near.keep(i, row, side)
        self.kept.append(i)
        self.sides.append(side)


def emptied_by_grouping(name: str, missing: str, counts: dict, kept: int, mode: str) -> str | None:
    """Why the `missing` side of corpus `name`'s split is empty, when grouping near-copies is why
    (`counts`: its preparation's, of `kept` documents): one of them had its hash put it there, or
    all but one document are near-copies (--dedup near keeps one, cut like a single text). None
    otherwise: near-copies that stayed on the side their hash chose are not why none fell on the
    other, and --dedup near would not help."""
    near = counts.get("near_found", 0)
    if not (near and mode == "group" and (counts.get("near_moved") or kept - near == 1)):
        return None
    follow = "near-copy follows its" if near == 1 else "near-copies follow their"
    return (
        f"corpus '{name}': no document fell into {missing}, because {near:,} {follow} first copy's "
        "side of the split; pass --dedup near to keep one of each, or add documents"
    )

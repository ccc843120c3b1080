"""The deduplicator's own index (data/near_index.py) decides as datasketch's MinHashLSH did, in a
fraction of the memory; its RowIndex finds every row stored under a key."""

from __future__ import annotations

import itertools
from dataclasses import asdict

import numpy as np
import pytest

from trickster.data import dedup, near_index, near_sketch
from trickster.data.dedup import DedupSettings

SPLITS = ("train", "val")


class DatasketchDeduper:
    """The decisions as they were made before near_index: datasketch's MinHashLSH queried and
    filled document by document, candidates kept where their signatures agree on `threshold`."""

    def __init__(self, settings: DedupSettings):
        from datasketch import LeanMinHash, MinHashLSH

        self.settings, self.lean = settings, LeanMinHash
        self.lsh = MinHashLSH(min(settings.threshold, 0.99), dedup.NUM_PERM, weights=(0.05, 0.95))
        self.first, self.sigs, self.splits, self.numbers = {}, [], [], []
        self.counts = dedup.DedupCounts()

    def decide(self, number, fp, sig, split):
        c = self.counts
        if fp == dedup.BLANK:
            c.blank_dropped += 1
            return None
        if fp in self.first:
            row = self.first[fp]
            c.exact_found += 1
            self._example(number, row)
            if not self.settings.keep_duplicates:
                c.exact_dropped += 1
                return None
            return self.splits[row]
        hits = sorted(
            row
            for row in self.lsh.query(self.lean(seed=1, hashvalues=sig, scheme="affine32"))
            if np.mean(self.sigs[row] == sig) >= self.settings.threshold
        )
        if hits:
            c.near_found += 1
            self._example(number, hits[0])
            sides = {self.splits[r] for r in hits}
            if self.settings.mode == "near" or len(sides) > 1:
                c.near_dropped += 1
                return None
            c.near_moved += sides != {split}
            split = sides.pop()
        row = len(self.sigs)
        self.first[fp] = row
        self.sigs.append(sig)
        self.splits.append(split)
        self.numbers.append(number)
        self.lsh.insert(row, self.lean(seed=1, hashvalues=sig, scheme="affine32"), check_duplication=False)
        c.kept += 1
        return split

    def _example(self, number, row):
        if len(self.counts.examples) < 5:
            self.counts.examples.append([number, self.numbers[row]])


def corpus(rng: np.random.Generator, documents: int):
    """Fingerprints, signatures and splits: families of near-copies (each member the family's
    signature, or an earlier member's, with 0 to 50 of its 128 values changed, or one in every 8),
    exact copies and blank documents among them."""
    fps, sigs = [], []
    for _ in range(documents):
        draw = rng.random()
        if fps and draw < 0.1:  # an exact copy of an earlier document
            j = int(rng.integers(len(fps)))
            fps.append(fps[j])
            sigs.append(sigs[j])
            continue
        if draw < 0.13:
            fps.append(dedup.BLANK)
            sigs.append(np.full(dedup.NUM_PERM, np.iinfo(np.uint32).max, np.uint32))
            continue
        if sigs and draw < 0.7:  # a near-copy, of a recent document mostly
            sig = sigs[-int(rng.integers(1, min(len(sigs), 30) + 1))].copy()
            if draw < 0.25:  # one value changed in every 8: agree on 7/8, share no band of 8 values
                changed = np.arange(0, dedup.NUM_PERM, 8) + rng.integers(0, 8, size=dedup.NUM_PERM // 8)
            else:
                changed = rng.choice(dedup.NUM_PERM, size=int(rng.integers(0, 51)), replace=False)
            sig[changed] = rng.integers(0, 2**32, size=len(changed), dtype=np.uint32)
        else:
            sig = rng.integers(0, 2**32, size=dedup.NUM_PERM, dtype=np.uint32)
        fps.append(int(rng.integers(0, 2**63)))
        sigs.append(sig)
    splits = [SPLITS[int(s)] for s in rng.random(documents) < 0.3]
    return fps, np.stack(sigs), splits


def decided_in_chunks(settings, folder, rng, fps, sigs, splits):
    """Fates from Deduper.decide_chunk over chunks of random sizes, flushed after most of them, the
    deduplicator rebuilt from dedup.bin twice along the way (a continued preparation)."""
    deduper, fates, start = dedup.Deduper(settings, folder, {}), [], 0
    restarts = set(rng.choice(np.arange(1, 40), size=2, replace=False).tolist())
    for chunk in range(10**9):
        if start >= len(fps):
            break
        end = start + int(rng.integers(1, 60))
        numbers = list(range(start, min(end, len(fps))))
        fates += deduper.decide_chunk(numbers, fps[start:end], sigs[start:end], splits[start:end])
        start = end
        if chunk in restarts:
            deduper.flush()
            deduper = dedup.Deduper(settings, folder, deduper.state_dict())
        elif rng.random() < 0.8:
            deduper.flush()
    return fates, deduper.counts


@pytest.mark.parametrize(
    "settings",
    [
        DedupSettings(),
        DedupSettings(mode="near", threshold=0.5),
        DedupSettings(threshold=0.9, keep_duplicates=True),
        DedupSettings(threshold=0.7),
    ],
)
def test_decisions_equal_datasketchs_minhashlsh(tmp_path, settings):
    rng = np.random.default_rng(7)
    fps, sigs, splits = corpus(rng, 3000)
    reference = DatasketchDeduper(settings)
    expected = [reference.decide(i, *doc) for i, doc in enumerate(zip(fps, sigs, splits, strict=True))]
    c = reference.counts
    assert c.near_found > 200 and c.exact_found > 100 and c.blank_dropped > 50  # every case is met
    assert settings.mode == "near" or c.near_moved > 20
    fates, counts = decided_in_chunks(settings, tmp_path, rng, fps, sigs, splits)
    assert fates == expected
    assert asdict(counts) == asdict(reference.counts)


def clusters(rng: np.random.Generator, documents: int):
    """Two large clusters of near-copies (each member its cluster's first signature with up to 15
    of 128 values changed), interleaved with distinct documents."""
    bases = rng.integers(0, 2**32, size=(2, dedup.NUM_PERM), dtype=np.uint32)
    sigs = []
    for _ in range(documents):
        if rng.random() < 0.1:
            sigs.append(rng.integers(0, 2**32, size=dedup.NUM_PERM, dtype=np.uint32))
            continue
        sig = bases[int(rng.integers(2))].copy()
        changed = rng.choice(dedup.NUM_PERM, size=int(rng.integers(0, 16)), replace=False)
        sig[changed] = rng.integers(0, 2**32, size=len(changed), dtype=np.uint32)
        sigs.append(sig)
    fps = rng.integers(0, 2**63, size=documents).tolist()
    return fps, np.stack(sigs), [SPLITS[int(s)] for s in rng.random(documents) < 0.3]


@pytest.mark.parametrize("mode", ["group", "near"])
def test_a_large_cluster_of_near_copies_costs_each_document_a_few_rows(tmp_path, monkeypatch, mode):
    """Each member of a cluster shares bands with the members kept before it (group keeps them all),
    and every one of those was read back from dedup.bin and compared: 282,223 rows for these 1,200
    documents. A fate needs only which sides hold a near-copy, and the first found on a side
    settles that side: 16,777 rows. (near drops the members, so its clusters never grew.)"""
    rng = np.random.default_rng(13)
    fps, sigs, splits = clusters(rng, 1200)
    settings = DedupSettings(mode=mode)
    reference = DatasketchDeduper(settings)
    expected = [reference.decide(i, *doc) for i, doc in enumerate(zip(fps, sigs, splits, strict=True))]
    assert reference.counts.near_found > 1000  # nearly every document is a member
    read = []
    real_read = dedup.KeptRows.read
    monkeypatch.setattr(
        dedup.KeptRows, "read", lambda self, rows: read.append(len(rows)) or real_read(self, rows)
    )
    fates, counts = decided_in_chunks(settings, tmp_path, rng, fps, sigs, splits)
    assert fates == expected and asdict(counts) == asdict(reference.counts)
    assert sum(read) < 20 * len(fps)


def test_candidates_that_are_not_near_copies_are_ruled_out_without_reading_them_back(tmp_path, monkeypatch):
    """With 4 distinct hashes per band, every kept document is a candidate of every new one, and
    nearly none is its near-copy: each must be ruled out on its signature, as MinHashLSH's query
    and the comparison did (band hashes met by chance find no extra near-copies: the signatures
    decide, as datasketch's exact band keys do). Every one was read back from dedup.bin (600
    documents: 128,954 rows, in 4,158 reads); now the low bits of each value, held in memory, rule
    out nearly all of them, and 1,429 rows are read (the same decisions)."""
    rng = np.random.default_rng(8)
    fps, sigs, splits = corpus(rng, 600)
    settings = DedupSettings()
    reference = DatasketchDeduper(settings)
    expected = [reference.decide(i, *doc) for i, doc in enumerate(zip(fps, sigs, splits, strict=True))]
    real = near_index.NearIndex.band_keys
    few = np.uint64(0xFFFFFFFF_00000003)  # the band's number, and 2 bits of the hash
    monkeypatch.setattr(near_index.NearIndex, "band_keys", lambda self, s: real(self, s) & few)
    reads, real_read = [], dedup.KeptRows.read
    monkeypatch.setattr(
        dedup.KeptRows, "read", lambda self, rows: reads.append(len(rows)) or real_read(self, rows)
    )
    compared, real_agreeing = [], near_sketch.Sketches.agreeing
    monkeypatch.setattr(
        near_sketch.Sketches,
        "agreeing",
        lambda self, words, rows: compared.append(len(rows)) or real_agreeing(self, words, rows),
    )
    fates, counts = decided_in_chunks(settings, tmp_path, rng, fps, sigs, splits)
    assert fates == expected and asdict(counts) == asdict(reference.counts)
    assert sum(compared) > 100 * len(fps)  # the candidates: most of the documents kept before
    assert sum(reads) < 5 * len(fps), (len(reads), sum(reads))


def test_a_chain_of_near_copies_among_alike_documents(tmp_path):
    """A chain: each link is the one before with 20 of its 128 values changed (one in each band but
    the first, and 5 more; none the one before changed), so it agrees with the link before on 108
    values (0.84: a near-copy) and with the one before that on 88 (0.69: not one). Before each
    link, 60 alike documents: the first link with 40 values changed outside the first band, so that
    all of them and every link share that band and none is a near-copy of another; half of them
    keep the low 4 bits of the values they change, so that only the whole values rule them out. A
    link shares no other band with the link before: the band it shares holds hundreds of rows,
    and the link before lies past the first ones.

    Counted from that alone: with group, every link after the first is found and follows the first
    link's side of the split; with near, link 1 is dropped, so link 2 copies no kept document and
    is kept, link 3 is dropped, and so on. (Union-find over shared bands, as datatrove and
    text-dedup join documents, would make the whole bucket one cluster; a search that stopped at a
    bucket's first rows would miss every link after the second.)"""
    rng = np.random.default_rng(14)
    links, alike_per_link = 10, 60
    bands = near_index.NearIndex(0.8, dedup.NUM_PERM).bands
    chain, changed_before = [rng.integers(0, 2**32, size=dedup.NUM_PERM, dtype=np.uint32)], set()
    for _ in range(links - 1):
        changed = [int(rng.choice(sorted(set(range(b.start, b.stop)) - changed_before))) for b in bands[1:]]
        free = sorted(set(range(bands[1].start, dedup.NUM_PERM)) - changed_before - set(changed))
        changed += rng.choice(free, size=20 - len(changed), replace=False).tolist()
        link = chain[-1].copy()
        link[changed] += rng.integers(1, 2**31, size=len(changed), dtype=np.uint32)
        chain.append(link)
        changed_before = set(changed)
    sigs, is_link = [], []
    for link in chain:
        for k in range(alike_per_link):
            alike = chain[0].copy()
            at = rng.choice(np.arange(bands[1].start, dedup.NUM_PERM), size=40, replace=False)
            step = 16 if k % 2 else 1  # a multiple of 16 keeps the low 4 bits
            alike[at] += step * rng.integers(1, 2**27, size=40, dtype=np.uint32)
            sigs.append(alike)
            is_link.append(False)
        sigs.append(link)
        is_link.append(True)
    sigs = np.stack(sigs)
    for a, b in itertools.pairwise(chain):
        assert np.sum(a == b) == 108 and np.sum(a[: bands[0].stop] == b[: bands[0].stop]) == 8
        assert not any(np.array_equal(a[band], b[band]) for band in bands[1:])
    for a, b in zip(chain, chain[2:], strict=False):
        assert np.sum(a == b) == 88
    others = sigs[~np.asarray(is_link)]
    assert (np.mean(others[:, None] == sigs[None], axis=2) >= 0.8).sum() == len(others)  # only itself
    fps = rng.integers(0, 2**63, size=len(sigs)).tolist()
    splits = [SPLITS[int(s)] for s in rng.random(len(sigs)) < 0.3]
    link_splits = [split for split, link in zip(splits, is_link, strict=True) if link]

    (tmp_path / "group").mkdir()
    fates, counts = decided_in_chunks(DedupSettings(), tmp_path / "group", rng, fps, sigs, splits)
    assert [f for f, link in zip(fates, is_link, strict=True) if link] == [link_splits[0]] * links
    assert [f for f, link in zip(fates, is_link, strict=True) if not link] == [
        s for s, link in zip(splits, is_link, strict=True) if not link
    ]
    moved = sum(split != link_splits[0] for split in link_splits[1:])
    assert (counts.near_found, counts.near_dropped, counts.near_moved) == (links - 1, 0, moved) and moved

    (tmp_path / "near").mkdir()
    fates, counts = decided_in_chunks(DedupSettings(mode="near"), tmp_path / "near", rng, fps, sigs, splits)
    kept_links = [f for f, link in zip(fates, is_link, strict=True) if link]
    assert kept_links == [None if i % 2 else split for i, split in enumerate(link_splits)]
    assert counts.near_found == counts.near_dropped == links // 2 and counts.kept == len(sigs) - links // 2


def test_the_index_holds_well_under_a_kilobyte_per_kept_document(tmp_path):
    """datasketch's index held about 6 KB per document (docs/PERFORMANCE.md)."""
    rng = np.random.default_rng(9)
    deduper = dedup.Deduper(DedupSettings(), tmp_path, {})
    for start in range(0, 40_000, 500):
        sigs = rng.integers(0, 2**32, size=(500, dedup.NUM_PERM), dtype=np.uint32)
        fps = rng.integers(0, 2**63, size=500).tolist()
        deduper.decide_chunk(list(range(start, start + 500)), fps, sigs, ["train"] * 500)
        deduper.flush()
    assert deduper.counts.kept == 40_000
    assert deduper.nbytes / deduper.counts.kept < 1024


def test_the_row_index_finds_every_row_stored_under_a_key():
    rng = np.random.default_rng(10)
    index, stored = near_index.RowIndex(), {}
    for start in range(0, 20_000, 500):  # runs merged many times over
        keys = rng.integers(0, 3000, size=500).astype(np.uint64) << np.uint64(40)  # many rows per key
        index.add(keys, np.arange(start, start + 500))
        for row, key in enumerate(keys.tolist(), start):
            stored.setdefault(key, []).append(row)
    queries = np.arange(0, 3100, dtype=np.uint64)[::-1] << np.uint64(40)
    which, rows = index.find(queries)
    found = {}
    for w, r in zip(which.tolist(), rows.tolist(), strict=True):
        found.setdefault(int(queries[w]), []).append(r)
    assert {k: sorted(v) for k, v in found.items()} == stored
    assert len(index) == 20_000 and len(index.runs) <= 10  # few runs to search


# pairs of (false positive, false negative) weights; not 0 and 1, where the sums datasketch compares
# differ by less than its integrator's tolerance (at threshold 0.525 with (1.0, 0.0): bands (1, 58)
# against (1, 59), 1e-18 apart), so that which of them it picks is its rounding
WEIGHT_GRID = [(0.05, 0.95), (0.5, 0.5), (0.95, 0.05), (0.3, 0.7), (0.7, 0.3), (0.01, 0.99), (0.99, 0.01)]


def test_the_bands_are_the_ones_datasketch_tunes():
    """near_index.tuned_bands chooses MinHashLSH's (bands, values per band) without its import of
    scipy: for preparation's own weights and num_perm at every threshold a preparation can use
    (--near-dup-threshold in (0, 1], at most 0.99 for the bands), and over a wide grid of others."""
    from datasketch import MinHashLSH
    from datasketch.lsh import _optimal_param

    for threshold in [0.001, 0.005, *np.round(np.arange(0.01, 1.0, 0.02), 2), 0.8, 0.99, 0.995]:
        theirs = _optimal_param(float(threshold), dedup.NUM_PERM, *near_index.WEIGHTS)
        assert near_index.tuned_bands(float(threshold), dedup.NUM_PERM) == theirs, threshold
    rng = np.random.default_rng(12)
    for num_perm, weights in itertools.product([2, 3, 5, 8, 17, 32, 64, 100, 200], WEIGHT_GRID):
        for threshold in rng.uniform(0.0, 1.0, size=1 if num_perm > 100 else 3).tolist():
            theirs = _optimal_param(threshold, num_perm, *weights)
            ours = near_index.tuned_bands(threshold, num_perm, weights)
            assert ours == theirs, (threshold, num_perm, weights)
    lsh = MinHashLSH(0.8, dedup.NUM_PERM, weights=near_index.WEIGHTS)  # the default settings' index
    bands = near_index.NearIndex(0.8, dedup.NUM_PERM).bands
    assert [(band.start, band.stop) for band in bands] == lsh.hashranges and len(bands) == 16

"""The units of independence: images that are one picture or one patient count as one.

A patient's several radiographs, the same picture saved twice (identical decoded pixels) and a
copy re-encoded, resized or re-exposed (a near-duplicate: perceptual hashes within
`near_duplicate_bits`) are not independent evidence. Wherever independence matters they are one
unit: the validation split keeps a unit on one side, an image is "seen" when its unit holds a
train image, and every interval resamples units, not images. `unit_groups` is that one rule.

The near-duplicate check hashes each image's lowest DCT frequencies (a perceptual hash), so
re-encoded or re-exposed copies are found, not only identical pixels. Pairs are found by
multi-index hashing: split the bits into `max_bits + 1` blocks, and two hashes within `max_bits`
must agree exactly on at least one block (pigeonhole), so only images sharing a block value are
compared: a few candidates each instead of all N^2 pairs.
"""

from __future__ import annotations

import functools
import re

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Images are reduced to 64 x 64 and hashed by their 16 x 16 lowest DCT frequencies (255 bits).
# The usual 8 x 8 pHash is too coarse for chest radiographs, which all look alike at that
# scale: on kermany-2400 it puts different children within 4 of 63 bits. At 16 x 16, distinct
# images stay 40 or more bits apart while re-encoded, resized or re-exposed copies move by 8 at
# most, so 16 bits separates the two with room on both sides.
HASH_SIZE = 64
HASH_BLOCK = 16
HASH_BITS = HASH_BLOCK**2 - 1
NEAR_DUPLICATE_BITS = 16


def _dct_matrix(n: int) -> np.ndarray:
    k, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.cos(np.pi / n * (x + 0.5) * k)


_DCT_LOW = _dct_matrix(HASH_SIZE)[:HASH_BLOCK]  # only the frequencies kept


@functools.lru_cache(maxsize=32)
def _hash_basis(n: int) -> np.ndarray:
    """HASH_BLOCK x n: a side of n pixels resized to HASH_SIZE (bilinear, widened when
    shrinking, as PIL resizes) and taken to its lowest DCT frequencies, in one matrix, so the
    hash is two small products instead of a resize (a third of a 224 px image's decode) and a
    transform."""
    scale = n / HASH_SIZE
    support = max(scale, 1.0)
    centres = (np.arange(HASH_SIZE) + 0.5) * scale
    weights = np.clip(1 - np.abs(np.arange(n)[None, :] + 0.5 - centres[:, None]) / support, 0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    return (_DCT_LOW @ weights).astype(np.float32)


def perceptual_hash(grey: np.ndarray) -> str:
    """pHash of one grey image as 64 hex digits: signs of the lowest DCT frequencies of the
    image at 64 x 64 (DC left out) against their median. Robust to re-encoding, resizing and
    small exposure changes."""
    height, width = grey.shape
    low = (_hash_basis(height) @ np.asarray(grey, dtype=np.float32) @ _hash_basis(width).T).reshape(-1)[1:]
    median = np.partition(low, len(low) // 2)[len(low) // 2]  # 255 values: the middle one, as np.median
    return np.packbits(low > median).tobytes().hex()


def hash_bits(hashes: list[str]) -> np.ndarray:
    """Hex hashes as (N, 255) booleans."""
    packed = np.frombuffer(bytes.fromhex("".join(hashes)), np.uint8).reshape(len(hashes), -1) if hashes else np.zeros((0, 32), np.uint8)
    return np.unpackbits(packed, axis=1)[:, :HASH_BITS].astype(bool)


# Candidates are compared this many pairs at a time, so memory stays bounded however alike the
# hashes are (benchmarks/large.py's set, 256 pictures each copied some 400 times with noise, puts
# hundreds of copies of a picture in one bucket); a bucket larger than LARGE_BUCKET is walked row by row.
PAIRS_AT_ONCE = 2**20
LARGE_BUCKET = 256


def near_duplicate_index_pairs(bits: np.ndarray, max_bits: int = NEAR_DUPLICATE_BITS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j of hashes at most `max_bits` apart: (i, j, distance), sorted by i, j.
    Each pair is kept only in the first block its two hashes agree on, so it is found once and
    nothing but the pairs found is held: memory grows with them, not with the candidates."""
    n = len(bits)
    blocks = np.array_split(np.arange(bits.shape[1]), min(max_bits + 1, bits.shape[1]))
    # Column arrays, gathered one at a time (a gather and a sum along a short row cost more):
    # each block's value as a number, and the hash as 64-bit words.
    values = [_as_number(np.packbits(bits[:, block], axis=1)) for block in blocks]
    packed = np.packbits(np.pad(bits, ((0, 0), (0, -bits.shape[1] % 64))), axis=1).view(np.uint64)
    words = [np.ascontiguousarray(packed[:, k]) for k in range(packed.shape[1])]
    budget = n * (n - 1) // 2
    found = []
    for b, value in enumerate(values):
        # Images sharing this block's value: sort by it, runs of equal values are the buckets.
        order = np.argsort(value, kind="stable")
        sorted_values = value[order]
        starts = np.r_[0, np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1, n]
        sizes = np.diff(starts)
        if int((sizes * (sizes - 1) // 2).sum()) > budget // 4:  # hashes too alike to index: compare all
            return _all_pairs(bits, max_bits)
        for a, c in _bucket_pairs(order, starts, sizes):
            distance = sum(np.bitwise_count(word[a] ^ word[c]).astype(np.int16) for word in words)
            close = distance <= max_bits
            a, c, distance = a[close], c[close], distance[close]
            found_before = np.zeros(len(a), bool)
            for value in values[:b]:
                found_before |= value[a] == value[c]
            keep = ~found_before
            found.append((np.minimum(a, c)[keep], np.maximum(a, c)[keep], distance[keep].astype(int)))
    if not found:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    i, j, distance = (np.concatenate(parts) for parts in zip(*found))
    order = np.lexsort((j, i))
    return i[order], j[order], distance[order]


def _as_number(key: np.ndarray) -> np.ndarray:
    """Rows of packed bits as one number each (equal rows, equal numbers)."""
    if key.shape[1] <= 8:
        return np.ascontiguousarray(np.pad(key, ((0, 0), (0, 8 - key.shape[1])))).view(np.uint64).reshape(-1)
    return np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)  # blocks wider than 64 bits (max_bits below 3)


def _bucket_pairs(order: np.ndarray, starts: np.ndarray, sizes: np.ndarray):
    """The pairs of positions sharing a bucket, at most `PAIRS_AT_ONCE` (or one offset's worth) at a time."""
    if not len(sizes):
        return
    # Small buckets by offset: position k pairs with k + d while both lie in one bucket, one
    # array operation per offset, not one per bucket (kermany-2400 has thousands of small ones).
    bucket = np.repeat(np.arange(len(sizes)), sizes)
    small = np.where(sizes[bucket] <= LARGE_BUCKET, bucket, -1 - np.arange(len(bucket)))  # a large bucket's never match
    for d in range(1, int(min(sizes.max(), LARGE_BUCKET))):
        k = np.flatnonzero(small[:-d] == small[d:])
        if len(k):
            yield order[k], order[k + d]
    # Large buckets row by row: member r with every member after it.
    for start, size in zip(starts[:-1][sizes > LARGE_BUCKET], sizes[sizes > LARGE_BUCKET]):
        members = order[start : start + size]
        rows = max(1, PAIRS_AT_ONCE // size)
        for first in range(0, size - 1, rows):
            r = np.arange(first, min(first + rows, size - 1))
            counts = size - 1 - r
            a = np.repeat(r, counts)
            c = np.arange(len(a)) - np.repeat(np.cumsum(counts) - counts, counts) + a + 1
            yield members[a], members[c]


def _all_pairs(bits: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    as_int = bits.astype(np.int32)
    found = []
    for start in range(0, len(bits), 512):  # chunks keep the distance matrix small
        block = as_int[start : start + 512]
        distance = block @ (1 - as_int).T + (1 - block) @ as_int.T
        i, j = np.nonzero(distance <= max_bits)
        i = i + start
        upper = i < j
        found.append((i[upper], j[upper], distance[i[upper] - start, j[upper]]))
    if not found:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    return tuple(np.concatenate(parts) for parts in zip(*found))


def unit_groups(
    patients: list[str | None],
    content_hashes: list[str | None],
    phashes: list[str] | None = None,
    max_bits: int = NEAR_DUPLICATE_BITS,
) -> np.ndarray:
    """A unit number per image: images linked by a patient id, identical decoded pixels or
    perceptual hashes within `max_bits` (directly or through a chain of such links) share one;
    an image with none is a unit alone. `phashes` None (or empty strings) links no near-duplicates."""
    n = len(patients)
    keys: dict[str, int] = {}
    rows, cols = [], []
    for k, (patient, content) in enumerate(zip(patients, content_hashes)):
        for key in (f"patient:{patient}" if patient else None, f"pixels:{content}" if content else None):
            if key is not None:
                rows.append(k)
                cols.append(n + keys.setdefault(key, len(keys)))
    if phashes is not None:
        hashed = np.array([bool(h) for h in phashes], bool)
        where = np.flatnonzero(hashed)
        if len(where) > 1:
            i, j, _ = near_duplicate_index_pairs(hash_bits([phashes[k] for k in where]), max_bits)
            rows += where[i].tolist()
            cols += where[j].tolist()
    # A graph of images and keys: its connected components are the units.
    size = n + len(keys)
    edges = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
    _, component = connected_components(edges, directed=False)
    _, units = np.unique(component[:n], return_inverse=True)
    return units


def patient_of(path: str, given: str, compiled: re.Pattern | None) -> str | None:
    """An image's patient: as the source gave it, else found in its file name by the pattern.

    On the Kaggle names the key keeps the infection type (`person12_virus`), because the number
    restarts per type: `person12_virus` and `person12_bacteria` are two different children.
    """
    if given:
        return given
    if compiled is None:
        return None
    match = compiled.search(path.rsplit("/", 1)[-1])
    if not match:
        return None
    return match.group("patient") if "patient" in compiled.groupindex else match.group(0)

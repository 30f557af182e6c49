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


def _distances(bits: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    packed = np.packbits(bits, axis=1)
    return np.bitwise_count(packed[i] ^ packed[j]).sum(axis=1)


def near_duplicate_index_pairs(bits: np.ndarray, max_bits: int = NEAR_DUPLICATE_BITS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j of hashes at most `max_bits` apart: (i, j, distance), sorted by i, j."""
    n = len(bits)
    blocks = np.array_split(np.arange(bits.shape[1]), min(max_bits + 1, bits.shape[1]))
    candidates = []
    budget = n * (n - 1) // 2
    for block in blocks:
        # Images sharing this block's value: sort by it, runs of equal keys are the buckets.
        keys = np.packbits(bits[:, block], axis=1)
        order = np.lexsort(keys.T[::-1])
        sorted_keys = keys[order]
        starts = np.r_[0, np.flatnonzero((sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)) + 1, n]
        sizes = np.diff(starts)
        if int((sizes * (sizes - 1) // 2).sum()) > budget // 4:  # hashes too alike to index: compare all
            return _all_pairs(bits, max_bits)
        # Every pair within a bucket, by offset: position k pairs with k + d while both lie in one
        # bucket: one array operation per offset, not one per bucket (kermany-2400 has thousands of small ones).
        bucket = np.repeat(np.arange(len(sizes)), sizes)
        for d in range(1, int(sizes.max())):
            k = np.flatnonzero(bucket[:-d] == bucket[d:])
            a, b = order[k], order[k + d]
            candidates.append(np.minimum(a, b) * n + np.maximum(a, b))
    if not candidates:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    # Sorted and deduplicated by hand: np.unique's hash table (numpy 2) takes several times as long on these codes.
    pairs = np.sort(np.concatenate(candidates))
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
    i, j = pairs // n, pairs % n
    distance = _distances(bits, i, j)
    keep = distance <= max_bits
    return i[keep], j[keep], distance[keep]


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

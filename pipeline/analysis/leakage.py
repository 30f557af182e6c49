"""Leakage: images or patients that cross split boundaries, exact and near-identical copies.

The near-duplicate check hashes each image's lowest DCT frequencies (a perceptual hash), so
re-encoded, resized or re-exposed copies are found, not only identical pixels.
"""

from __future__ import annotations

import re
from collections import defaultdict
from itertools import combinations

import numpy as np

from pipeline.data.cache import resize_square
from pipeline.data.checks import SPLIT_ORDER, ManifestRow, describe_duplicates, describe_patients

# Images are reduced to 64 x 64 and hashed by their 16 x 16 lowest DCT frequencies (255 bits).
# The usual 8 x 8 pHash is too coarse for chest radiographs, which all look alike at that
# scale: on kermany-2400 it puts different children within 4 of 63 bits. At 16 x 16, distinct
# images stay 40 or more bits apart while re-encoded, resized or re-exposed copies move by 8 at
# most, so 16 bits separates the two with room on both sides.
HASH_SIZE = 64
HASH_BLOCK = 16
NEAR_DUPLICATE_BITS = 16


def _dct_matrix(n: int) -> np.ndarray:
    k, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.cos(np.pi / n * (x + 0.5) * k)


_DCT = _dct_matrix(HASH_SIZE)


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """pHash of each image: signs of the lowest DCT frequencies (DC left out) against their
    median, as booleans. Robust to re-encoding, resizing and small exposure changes."""
    small = np.stack([resize_square(np.asarray(img), HASH_SIZE) for img in images]).astype(np.float64)
    coefficients = _DCT @ small @ _DCT.T
    low = coefficients[:, :HASH_BLOCK, :HASH_BLOCK].reshape(len(images), HASH_BLOCK**2)[:, 1:]
    return low > np.median(low, axis=1, keepdims=True)


def near_duplicate_pairs(hashes: dict[str, np.ndarray], files: dict[str, list[str]], max_bits: int = NEAR_DUPLICATE_BITS) -> list[dict]:
    """Pairs of images in different splits whose hashes differ in at most `max_bits` bits."""
    pairs = []
    for a, b in combinations([s for s in SPLIT_ORDER if s in hashes], 2):
        ha, hb = hashes[a].astype(np.int32), hashes[b].astype(np.int32)
        for start in range(0, len(ha), 512):  # chunks keep the distance matrix small
            block = ha[start : start + 512]
            distance = block @ (1 - hb).T + (1 - block) @ hb.T
            for i, j in zip(*np.nonzero(distance <= max_bits)):
                pairs.append({"split_a": a, "file_a": files[a][start + i], "split_b": b, "file_b": files[b][j], "bits": int(distance[i, j])})
    return sorted(pairs, key=lambda p: (p["bits"], p["file_a"]))


def naive_patient_pattern(pattern: str) -> str | None:
    """The Kaggle key without the infection type (`person12`), to show what it would claim."""
    if "bacteria|virus" not in pattern:
        return None
    return r"^(?P<patient>person\d+)_(?:bacteria|virus)|^(?P<other>(?:NORMAL2-)?IM-\d+)"


def leakage(rows: list[ManifestRow], images: dict[str, np.ndarray], pattern: str) -> dict:
    files = {s: [r.path for r in rows if r.split == s] for s in images}
    hashes = {s: perceptual_hashes(images[s]) for s in images}
    exact = describe_duplicates(rows)
    near = near_duplicate_pairs(hashes, files)
    exact_pairs = {frozenset((f["path"] for f in g["files"])) for g in exact["across_splits"]}
    result = {
        "exact_duplicates_across_splits": exact["across_splits"],
        "n_exact_groups_across_splits": exact["n_groups_across_splits"],
        "near_duplicates_across_splits": near,
        "n_near_duplicate_pairs": len(near),
        "n_near_duplicate_pairs_not_exact": sum(frozenset((p["file_a"], p["file_b"])) not in exact_pairs for p in near),
        "near_duplicate_max_bits": NEAR_DUPLICATE_BITS,
        "patients": describe_patients(rows, pattern),
    }
    naive = naive_patient_pattern(pattern)
    if naive:
        # The naive key ignores the infection type: count what it would (wrongly) call shared.
        compiled = re.compile(naive)
        keys = defaultdict(set)
        for r in rows:
            m = compiled.search(r.path.rsplit("/", 1)[-1])
            if m and m.group("patient"):
                keys[r.split].add(m.group("patient"))
        result["naive_key_shared_patients"] = {f"{a}-{b}": len(keys[a] & keys[b]) for a, b in combinations([s for s in SPLIT_ORDER if s in keys], 2)}
    return result

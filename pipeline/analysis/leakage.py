"""Leakage: images or patients that cross split boundaries, exact and near-identical copies
(the perceptual hashes `prepare` stored in the manifest; `data/units.py` says how they are made)."""

from __future__ import annotations

import re
from collections import defaultdict
from itertools import combinations

from pipeline.data.checks import SPLIT_ORDER, ManifestRow, describe_duplicates, describe_patients, near_duplicates_across_splits
from pipeline.data.units import NEAR_DUPLICATE_BITS


def naive_patient_pattern(pattern: str) -> str | None:
    """The Kaggle key without the infection type (`person12`), to show what it would claim."""
    if "bacteria|virus" not in pattern:
        return None
    return r"^(?P<patient>person\d+)_(?:bacteria|virus)|^(?P<other>(?:NORMAL2-)?IM-\d+)"


def leakage(rows: list[ManifestRow], pattern: str, near_duplicate_bits: int = NEAR_DUPLICATE_BITS) -> dict:
    exact = describe_duplicates(rows)
    near = near_duplicates_across_splits(rows, near_duplicate_bits)
    result = {
        "exact_duplicates_across_splits": exact["across_splits"],
        "n_exact_groups_across_splits": exact["n_groups_across_splits"],
        "near_duplicates_across_splits": near["pairs"],  # the closest, named
        "n_near_duplicate_pairs": near["n_pairs"],
        "near_duplicate_pairs_by_splits": near["n_by_splits"],
        "n_near_duplicate_pairs_not_exact": near["n_not_exact"],
        "near_duplicate_max_bits": near_duplicate_bits,
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

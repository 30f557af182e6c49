"""Where validation comes from, and a validation split that shares no patient with train.

Every choice the pipeline makes (the epoch kept, the learning rate, the threshold, the champion)
is made on validation, so validation must be as new to the model as test is. Cut image by image
from train/, it is not: on the Kaggle data a child's three radiographs, or the same picture saved
twice, land on both sides and validation measures memory. Here the images are grouped into units
(`units.unit_groups`: every image of a patient, every exact duplicate and every near-duplicate in
one unit; an image with none stands alone) and scikit-learn's `StratifiedGroupKFold` holds out
whole units, keeping the class balance.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.data.sources import SourceImage
from pipeline.data.units import NEAR_DUPLICATE_BITS, patient_of, unit_groups
from pipeline.errors import UserError

# Fewer validation images of a class than this cannot choose an epoch, a learning rate or a
# threshold: one image is 2 points of that class's accuracy. The Kaggle download's val/ has 8.
MIN_VAL_PER_CLASS = 50


@dataclass(frozen=True)
class ValidationPlan:
    """How validation is obtained: the source's own val split ("folder") or a patient-grouped
    split of train/ ("split", val/ images added to train first), and why."""

    source: str
    reason: str


def choose_validation(images: list[SourceImage], classes: list[str], val_source: str) -> ValidationPlan:
    counts = Counter(i.label for i in images if i.split == "val")
    described = ", ".join(f"{c} {counts[c]}" for c in classes)
    has_val = bool(counts)
    if val_source == "folder":
        if not has_val:
            raise UserError("val_source=folder but the data set has no val/ split; use val_source=auto or split")
        few = min(counts[c] for c in classes) < MIN_VAL_PER_CLASS
        warning = f"; fewer than {MIN_VAL_PER_CLASS} images of a class: choices made on it are noisy" if few else ""
        return ValidationPlan("folder", f"val_source=folder: the val/ split as given ({described}){warning}")
    if val_source == "split":
        joined = f"its val/ images ({described}) joined train/ first" if has_val else "there is no val/ split"
        return ValidationPlan("split", f"val_source=split: validation re-split from train/ by patient; {joined}")
    if not has_val:
        return ValidationPlan("split", "val_source=auto: there is no val/ split, so validation is cut from train/ by patient")
    if min(counts[c] for c in classes) >= MIN_VAL_PER_CLASS:
        return ValidationPlan("folder", f"val_source=auto: val/ holds at least {MIN_VAL_PER_CLASS} images of every class ({described})")
    return ValidationPlan(
        "split",
        f"val_source=auto: val/ holds too few images ({described}; fewer than {MIN_VAL_PER_CLASS} of a class) to choose an epoch, "
        "a learning rate or a threshold, so its images joined train/ and validation was re-split from train/ by patient",
    )


def split_by_patient(
    images: list[SourceImage],
    content_hashes: list[str | None],
    classes: list[str],
    fraction: float,
    seed: int,
    pattern: str,
    held_out: str = "val",
    perceptual_hashes: list[str] | None = None,
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS,
) -> tuple[list[SourceImage], str]:
    """train/ (with any val/ images folded in) split into train and `held_out` (val, or test for a
    source without one) by unit (patient, identical pixels, near-duplicates), stratified by class
    and seeded; returns the images with their new splits and a sentence saying how."""
    # Unreadable files (no content hash) stay out: they are rejected later and must not be counted.
    pool = [k for k, i in enumerate(images) if i.split in (("train", "val") if held_out == "val" else ("train",)) and content_hashes[k] is not None]
    compiled = re.compile(pattern) if pattern else None
    groups = unit_groups(
        [patient_of(images[k].relpath, images[k].patient, compiled) for k in pool],
        [content_hashes[k] for k in pool],
        [perceptual_hashes[k] for k in pool] if perceptual_hashes is not None else None,
        near_duplicate_bits,
    )
    labels = np.array([classes.index(images[k].label) for k in pool])
    n_folds = max(2, round(1 / fraction))
    n_groups = len(set(groups.tolist()))
    setting = "val_fraction" if held_out == "val" else "test_fraction"
    if n_groups < n_folds:
        raise UserError(
            f"train/ holds {n_groups} patients (or duplicate groups): too few to hold out {setting}={fraction:g} "
            f"by patient; add images, raise {setting}, or provide a {held_out} split"
        )
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    _, held_rows = next(folds.split(np.zeros(len(pool)), labels, groups))
    to_held = {pool[k] for k in held_rows}
    in_pool = set(pool)
    result = [replace(i, split=held_out if k in to_held else "train") if k in in_pool else i for k, i in enumerate(images)]
    for label in classes:
        sides = Counter(result[k].split for k in pool if result[k].label == label)
        if not sides["train"] or not sides[held_out]:
            raise UserError(
                f"class {label} has too few patients in train/ to appear in both train and {held_out} "
                f"({sides['train']} train, {sides[held_out]} {held_out} images); add images or provide a {held_out} split"
            )
    share = len(to_held) / len(pool)
    key = "patient id (the source's patient column)" if any(i.patient for i in images) else "patient id (patient_pattern)" if pattern else ""
    copies = "exact duplicates" + (
        f" and near-duplicates (perceptual hashes within {near_duplicate_bits} bits)" if perceptual_hashes is not None else ""
    )
    how = (
        f"{held_out} grouped by {key + ', ' + copies if key else copies + ' only (patient_pattern is empty)'}: "
        f"{n_groups} groups, first of {n_folds} StratifiedGroupKFold folds ({setting} {fraction:g}, seed {seed}), "
        f"{len(to_held)} of {len(pool)} images ({100 * share:.1f} %) to {held_out}"
    )
    return result, how

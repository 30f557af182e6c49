"""Distribution shift between splits: class balance, image statistics, and how well a simple
classifier tells train images from test images by their backbone features."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.analysis.resampling import BOOTSTRAP_RESAMPLES, Resampling
from pipeline.analysis.uncertainty import Interval, auc_interval
from pipeline.data.checks import SPLIT_ORDER, ManifestRow


def image_statistics(rows: list[ManifestRow], images: dict[str, np.ndarray]) -> dict:
    """Per split: original size, mean intensity and contrast (pixel standard deviation)."""
    stats = {}
    for split, array in images.items():
        split_rows = [r for r in rows if r.split == split]
        pixels = np.asarray(array, dtype=np.float32)
        per_image_mean, per_image_std = pixels.mean(axis=(1, 2)), pixels.std(axis=(1, 2))
        stats[split] = {
            "n": len(split_rows),
            "width_mean": float(np.mean([r.width for r in split_rows])),
            "height_mean": float(np.mean([r.height for r in split_rows])),
            "intensity_mean": float(per_image_mean.mean()),
            "intensity_sd_between_images": float(per_image_mean.std()),
            "contrast_mean": float(per_image_std.mean()),
        }
    return stats


def class_balance(rows: list[ManifestRow], positive: str) -> dict[str, float]:
    return {s: round(float(np.mean([r.label == positive for r in rows if r.split == s])), 4) for s in SPLIT_ORDER if any(r.split == s for r in rows)}


def domain_shift(first: np.ndarray, second: np.ndarray, seed: int, units: np.ndarray | None = None, resamples: int = BOOTSTRAP_RESAMPLES) -> Interval:
    """How well a logistic regression tells the `first` set's images from the `second`'s by their
    features: the AUC (0.5: the sets look alike to it) with its 95 % interval.

    It is fitted on half of each set's units and scored on the other half. A classifier that never
    saw the scored images has an AUC of exactly 0.5 there when the sets do not differ, whatever it
    learned, so the plain interval over the held-out units is valid. Cross-validated scores pooled
    over folds are not: each fold's classifier is another and the folds are correlated, so their
    bootstrap interval is too narrow (benchmarks/verdicts.py measures this one's false-shift rate). `units`: the unit of each image of both sets in order (patients,
    copies; None: each image its own), kept on one side of the split and resampled whole."""
    x = np.concatenate([first, second])
    y = np.r_[np.zeros(len(first), int), np.ones(len(second), int)]
    units = np.arange(len(y)) if units is None else np.asarray(units)
    if min(len(np.unique(units[y == d])) for d in (0, 1)) < 4:
        return Interval(float("nan"), float("nan"), float("nan"), len(y), "too few images in a set")
    fit, held_out = next(StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed).split(x, y, units))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced")).fit(x[fit], y[fit])
    resampling = Resampling.of(units[held_out], y[held_out], seed, resamples)
    found = auc_interval(y[held_out], model.decision_function(x[held_out]), resampling)
    return replace(found, method=f"fitted on half of the units, scored on the other {len(held_out)} images; {found.method}")

"""Distribution shift between splits: class balance, image statistics, and how well a simple
classifier tells train images from test images by their backbone features."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

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


def domain_scores(train_features: np.ndarray, test_features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Which set each image is from (0 train, 1 test) and a logistic regression's cross-validated
    (out-of-fold) score that it is from the second, by its backbone features."""
    x = np.concatenate([train_features, test_features])
    y = np.r_[np.zeros(len(train_features)), np.ones(len(test_features))]
    folds = StratifiedKFold(n_splits=min(5, int(min(len(train_features), len(test_features)))), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced"))
    return y, cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]


def domain_auc(train_features: np.ndarray, test_features: np.ndarray, seed: int = 0) -> float:
    """Cross-validated AUC of a logistic regression telling train images from test images by
    their backbone features: 0.5 means the two are indistinguishable (no shift)."""
    return float(roc_auc_score(*domain_scores(train_features, test_features, seed)))

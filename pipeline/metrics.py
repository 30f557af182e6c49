"""Scores of a binary classifier on a split, computed with scikit-learn.

The positive class is PNEUMONIA (or, on other data, the last class in sorted order), so
sensitivity is the share of sick children found and specificity the share of healthy ones
cleared.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

POSITIVE_CLASS = "PNEUMONIA"


def positive_index(classes: list[str]) -> int:
    return classes.index(POSITIVE_CLASS) if POSITIVE_CLASS in classes else len(classes) - 1


def binary_scores(y_true: np.ndarray, p_positive: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """`y_true` is 1 for the positive class; predictions are `p_positive >= threshold`."""
    y_pred = (p_positive >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    return {
        "acc": skm.accuracy_score(y_true, y_pred),
        "f1": skm.f1_score(y_true, y_pred, zero_division=0),
        "precision": skm.precision_score(y_true, y_pred, zero_division=0),
        "sensitivity": skm.recall_score(y_true, y_pred, zero_division=0),
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "auc": skm.roc_auc_score(y_true, p_positive) if len(np.unique(y_true)) == 2 else float("nan"),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
    }


def youden_threshold(y_true: np.ndarray, p_positive: np.ndarray) -> float:
    """The threshold that maximises sensitivity + specificity - 1 (Youden's J) on the given split.

    Chosen on validation, applied to test: the test set never tunes anything."""
    fpr, tpr, thresholds = skm.roc_curve(y_true, p_positive)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def sensitivity_threshold(y_true: np.ndarray, p_positive: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity on the given split reaches `target` (a screening
    operating point: miss at most 1 - target of the sick), chosen on validation."""
    positives = np.sort(np.asarray(p_positive)[np.asarray(y_true) == 1])
    if not len(positives):
        return 0.5
    # Calling p >= t positive finds the positives at or above t: keep ceil(target * n) of them.
    keep = int(np.ceil(target * len(positives) - 1e-9))
    return float(positives[len(positives) - max(keep, 1)])


def operating_threshold(y_true: np.ndarray, p_positive: np.ndarray, target_sensitivity: float | None) -> tuple[float, str]:
    """The threshold a model is used at, chosen on validation, and the rule that chose it."""
    if target_sensitivity is not None:
        return sensitivity_threshold(y_true, p_positive, target_sensitivity), f"sensitivity >= {target_sensitivity:g} on validation"
    return youden_threshold(y_true, p_positive), "Youden's J (sensitivity + specificity) on validation"


def log_loss(y_true_index: np.ndarray, probs: np.ndarray) -> float:
    return skm.log_loss(y_true_index, probs, labels=list(range(probs.shape[1])))

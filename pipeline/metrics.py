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
        "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
    }


def youden_threshold(y_true: np.ndarray, p_positive: np.ndarray) -> float:
    """The threshold that maximises sensitivity + specificity - 1 (Youden's J) on the given split.

    Chosen on validation, applied to test: the test set never tunes anything."""
    fpr, tpr, thresholds = skm.roc_curve(y_true, p_positive)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def log_loss(y_true_index: np.ndarray, probs: np.ndarray) -> float:
    return skm.log_loss(y_true_index, probs, labels=list(range(probs.shape[1])))

"""Why validation accuracy and test accuracy differ, each candidate cause measured with its interval.

For one model, the validation - test accuracy gap splits exactly into three parts:

- **leakage**: validation accuracy minus validation accuracy on patients never seen in training
  (images of a seen patient test memory, not diagnosis);
- **prevalence**: validation accuracy on unseen patients minus what the same sensitivity and
  specificity give at the test set's class balance (a fixed threshold trades the two classes, so
  a different balance alone moves accuracy);
- **residual**: that expected accuracy minus test accuracy: what balance and leakage do not
  explain (distribution shift, label noise, chance).

Beside them: the threshold (test accuracy at 0.5, at the threshold chosen on validation, and at
the best threshold on test, an oracle shown to explain, never used to choose) and calibration
(expected calibration error, Brier score, mean confidence against accuracy). Intervals come from
one seeded bootstrap that resamples validation and test images together.
"""

from __future__ import annotations

import numpy as np

from pipeline.analysis.uncertainty import BOOTSTRAP_RESAMPLES, proportion_interval

CALIBRATION_BINS = 15
# A cause moving accuracy by less than this (the whole interval inside +-RULED_OUT_POINTS) is ruled out.
RULED_OUT_POINTS = 2.0
# Mean confidence this far above accuracy (and its interval clear of 0) is called overconfidence.
OVERCONFIDENCE_POINTS = 5.0


def accuracy(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean((p >= threshold) == (y == 1))) if len(y) else float("nan")


def sensitivity_specificity(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    called = p >= threshold
    pos, neg = y == 1, y == 0
    sens = float(np.mean(called[pos])) if pos.any() else float("nan")
    spec = float(np.mean(~called[neg])) if neg.any() else float("nan")
    return sens, spec


def best_accuracy(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """The highest accuracy any threshold reaches on these images, and that threshold."""
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order], p[order]
    # Calling the top k positive: right on the positives among them and the negatives below.
    right = np.concatenate([[0], np.cumsum(ys == 1)]) + np.concatenate([np.cumsum((ys == 0)[::-1])[::-1], [0]])
    valid = np.r_[True, ps[1:] != ps[:-1], True]  # a threshold cannot split tied scores
    k = int(np.argmax(np.where(valid, right, -1)))
    threshold = float(ps[k - 1]) if k > 0 else float(np.nextafter(ps[0], np.inf))
    return float(right[k] / len(y)), threshold


def calibration(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Of the predicted class: expected calibration error (equal-width bins of confidence),
    Brier score of the positive probability, mean confidence and accuracy, and the reliability
    curve (per bin: mean confidence, accuracy, count)."""
    predicted = (p >= 0.5).astype(int)
    confidence = np.where(predicted == 1, p, 1 - p)
    right = (predicted == y).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    curve, ece = [], 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap = abs(confidence[members].mean() - right[members].mean())
            ece += members.mean() * gap
            curve.append({"confidence": float(confidence[members].mean()), "accuracy": float(right[members].mean()), "n": int(members.sum())})
    return {
        "ece": float(ece),
        "brier": float(np.mean((p - y) ** 2)),
        "mean_confidence": float(confidence.mean()),
        "accuracy": float(right.mean()),
        "overconfidence_points": float(100 * (confidence.mean() - right.mean())),
        "reliability": curve,
    }


def _decompose(y_val, p_val, seen_val, y_test, p_test) -> dict[str, float]:
    val_acc = accuracy(y_val, p_val)
    unseen = ~seen_val
    val_unseen = accuracy(y_val[unseen], p_val[unseen])
    sens, spec = sensitivity_specificity(y_val[unseen], p_val[unseen])
    prevalence = float(np.mean(y_test == 1))
    expected = sens * prevalence + spec * (1 - prevalence)
    test_acc = accuracy(y_test, p_test)
    calibrated_val, calibrated_test = calibration(y_val, p_val), calibration(y_test, p_test)
    return {
        "gap": 100 * (val_acc - test_acc),
        "leakage": 100 * (val_acc - val_unseen),
        "prevalence": 100 * (val_unseen - expected),
        "residual": 100 * (expected - test_acc),
        "threshold_oracle": 100 * (best_accuracy(y_test, p_test)[0] - test_acc),
        "overconfidence_val": calibrated_val["overconfidence_points"],
        "overconfidence_test": calibrated_test["overconfidence_points"],
        "ece_val": calibrated_val["ece"],
        "ece_test": calibrated_test["ece"],
    }


def verdict(low: float, high: float, *, harmful_is_positive: bool = True) -> str:
    """supported (the interval excludes 0 on the side that widens the gap), against (it excludes
    0 on the other side), ruled out (the whole interval within +-RULED_OUT_POINTS), or undecided."""
    if low > 0:
        return "supported" if harmful_is_positive else "against"
    if high < 0:
        return "against" if harmful_is_positive else "supported"
    if -RULED_OUT_POINTS <= low and high <= RULED_OUT_POINTS:
        return "ruled out"
    return "undecided"


def gap_causes(
    y_val: np.ndarray, p_val: np.ndarray, seen_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray,
    val_threshold: float, seed: int, seen_test: np.ndarray | None = None,
) -> dict:
    """Every cause of one model's validation - test gap, in accuracy points, with 95 % intervals.
    `y_*` is 1 for the positive class, `p_*` the positive probability, `seen_*` marks images whose
    patient (or exact pixels) train also holds. Test images of seen patients flatter test accuracy
    as they flatter validation's; they are scored apart, beside the decomposition."""
    y_val, p_val, seen_val = np.asarray(y_val).astype(int), np.asarray(p_val, float), np.asarray(seen_val, bool)
    y_test, p_test = np.asarray(y_test).astype(int), np.asarray(p_test, float)
    point = _decompose(y_val, p_val, seen_val, y_test, p_test)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        v = rng.integers(0, len(y_val), len(y_val))
        t = rng.integers(0, len(y_test), len(y_test))
        samples.append(_decompose(y_val[v], p_val[v], seen_val[v], y_test[t], p_test[t]))
    causes = {}
    for name, value in point.items():
        values = np.array([s[name] for s in samples], dtype=float)
        low, high = np.nanpercentile(values, [2.5, 97.5]) if np.isfinite(values).any() else (np.nan, np.nan)
        causes[name] = {"value": value, "ci_low": float(low), "ci_high": float(high)}
    for name in ("leakage", "prevalence", "residual"):
        causes[name]["verdict"] = verdict(causes[name]["ci_low"], causes[name]["ci_high"])
    for split in ("val", "test"):
        c = causes[f"overconfidence_{split}"]
        c["overconfident"] = c["value"] > OVERCONFIDENCE_POINTS and c["ci_low"] > 0
    oracle_acc, oracle_threshold = best_accuracy(y_test, p_test)
    seen_test = np.zeros(len(y_test), bool) if seen_test is None else np.asarray(seen_test, bool)
    seen = {}
    for split, y, p, mask in (("val", y_val, p_val, seen_val), ("test", y_test, p_test, seen_test)):
        right = (p >= 0.5) == (y == 1)
        for name, members in (("seen", mask), ("unseen", ~mask)):
            seen[f"{split}_acc_{name}_patients"] = proportion_interval(int(right[members].sum()), int(members.sum())).as_dict()
    return {
        "causes": causes,
        "patients": seen,
        "prevalence": {"val": float(np.mean(y_val == 1)), "test": float(np.mean(y_test == 1))},
        "threshold": {
            "test_acc_at_0.5": accuracy(y_test, p_test),
            "val_threshold": float(val_threshold),
            "test_acc_at_val_threshold": accuracy(y_test, p_test, val_threshold),
            "oracle_threshold": oracle_threshold,
            "oracle_test_acc": oracle_acc,
        },
        "calibration": {"val": calibration(y_val, p_val), "test": calibration(y_test, p_test)},
    }

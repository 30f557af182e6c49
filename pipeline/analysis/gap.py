"""Why validation accuracy and test accuracy differ, each candidate cause measured with its interval.

All at the model's operating threshold. Write A(rates, pi) = sensitivity x pi + specificity x
(1 - pi): the accuracy those rates give at a class balance pi. With the rates of the *unseen*
images of each split (patients, pictures and near-copies train does not hold), the gap splits
exactly into four parts:

- **leakage**: validation accuracy minus A(validation's unseen rates, validation's balance):
  what seen images add beyond unseen images of the same class. Seen and unseen images are
  compared class by class, so a different class mix among the seen is not taken for memory.
- **prevalence**: what the change of class balance alone does at fixed rates, averaged over the
  two orders (validation's rates, then test's): A(r, pi_val) - A(r, pi_test) for r = each split's
  unseen rates. The average does not depend on which split's rates are held fixed; both orders
  are reported, and where they disagree in sign the cause is undecided.
- **residual**: the change of the unseen rates themselves, at either balance (the same average).
  It holds distribution shift, label noise and chance, and also the optimism of every choice
  made on this validation set (the epoch, the learning rate, the threshold); the threshold's
  share is measured apart (`threshold_optimism`), the others cannot be from predictions alone.
- **seen in test**: A(test's unseen rates, test's balance) minus test accuracy: the lift test
  gets from images of patients train holds (negative: it narrows the gap).

Beside them: the threshold (test accuracy at 0.5, at the threshold chosen on validation, and at
the best threshold on test, an oracle shown to explain, never used to choose) and calibration
(expected calibration error, Brier score, mean confidence against accuracy). Intervals come from
one patient bootstrap of validation and test together (`resampling.py`): a unit that spans both
is drawn once for both.
"""

from __future__ import annotations

import numpy as np

from pipeline.analysis.resampling import BOOTSTRAP_RESAMPLES, Resampling, percentile_interval
from pipeline.analysis.uncertainty import share_interval
from pipeline.metrics import operating_threshold

CALIBRATION_BINS = 15
# A cause moving accuracy by less than this (the whole interval inside +-RULED_OUT_POINTS) is ruled out.
RULED_OUT_POINTS = 2.0
# Mean confidence this far above accuracy (and its interval clear of 0) is called overconfidence.
OVERCONFIDENCE_POINTS = 5.0
CAUSES = ("leakage", "prevalence", "residual", "seen_in_test")
# Folds of validation for the out-of-fold threshold (threshold optimism).
THRESHOLD_FOLDS = 5


def accuracy(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean((p >= threshold) == (y == 1))) if len(y) else float("nan")


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


def _bins(confidence: np.ndarray, bins: int) -> np.ndarray:
    edges = np.linspace(0.5, 1.0, bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)


def calibration(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Of the predicted class: expected calibration error (equal-width bins of confidence),
    Brier score of the positive probability, mean confidence and accuracy, and the reliability
    curve (per bin: mean confidence, accuracy, count)."""
    predicted = (p >= 0.5).astype(int)
    confidence = np.where(predicted == 1, p, 1 - p)
    right = (predicted == y).astype(float)
    which = _bins(confidence, bins)
    curve, ece = [], 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(confidence[members].mean() - right[members].mean())
            curve.append({"confidence": float(confidence[members].mean()), "accuracy": float(right[members].mean()), "n": int(members.sum())})
    return {
        "ece": float(ece),
        "brier": float(np.mean((p - y) ** 2)),
        "mean_confidence": float(confidence.mean()),
        "accuracy": float(right.mean()),
        "overconfidence_points": float(100 * (confidence.mean() - right.mean())),
        "reliability": curve,
    }


# -- the decomposition, on sums any resample can recompute -----------------------------------


def _columns(y: np.ndarray, p: np.ndarray, seen: np.ndarray, threshold: float, bins: int) -> np.ndarray:
    """Per image of one split, the columns whose sums decide every figure: for each class and
    seen/unseen, (member, right); then the calibration sums (per confidence bin: member,
    confidence, right at 0.5)."""
    right = (p >= threshold) == (y == 1)
    cells = [(y == c) & (seen == s) for c in (0, 1) for s in (True, False)]
    columns = [col for cell in cells for col in (cell, cell & right)]
    predicted = p >= 0.5
    confidence = np.where(predicted, p, 1 - p)
    right_half = predicted == (y == 1)
    which = _bins(confidence, bins)
    for b in range(bins):
        member = which == b
        columns += [member, member * confidence, member & right_half]
    return np.stack([np.asarray(c, float) for c in columns], axis=1)


def _figures(sums: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """The decomposition from the column sums of validation and test side by side ((R, 2C): val
    columns, then test's), one value per row. Undefined ratios are NaN."""
    width = sums.shape[1] // 2
    out = {}
    rates, accs, prevalence, calibrated = {}, {}, {}, {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for k, split in enumerate(("val", "test")):
            s = sums[:, k * width : (k + 1) * width]
            n = {(c, seen): s[:, 2 * (2 * c + (0 if seen else 1))] for c in (0, 1) for seen in (True, False)}
            r = {(c, seen): s[:, 2 * (2 * c + (0 if seen else 1)) + 1] for c in (0, 1) for seen in (True, False)}
            total = sum(n.values())
            accs[split] = sum(r.values()) / total
            prevalence[split] = (n[1, True] + n[1, False]) / total
            rates[split] = (r[1, False] / n[1, False], r[0, False] / n[0, False])  # unseen sensitivity, specificity
            cal = s[:, 8 : 8 + 3 * bins].reshape(len(s), bins, 3)
            ece = np.abs(cal[:, :, 1] - cal[:, :, 2]).sum(axis=1) / total
            calibrated[split] = (ece, 100 * (cal[:, :, 1].sum(axis=1) - cal[:, :, 2].sum(axis=1)) / total)

    def at(split_rates, balance):
        sens, spec = split_rates
        return sens * balance + spec * (1 - balance)

    a_vv, a_vt = at(rates["val"], prevalence["val"]), at(rates["val"], prevalence["test"])
    a_tv, a_tt = at(rates["test"], prevalence["val"]), at(rates["test"], prevalence["test"])
    out["gap"] = 100 * (accs["val"] - accs["test"])
    out["leakage"] = 100 * (accs["val"] - a_vv)
    out["prevalence_at_val_rates"] = 100 * (a_vv - a_vt)
    out["prevalence_at_test_rates"] = 100 * (a_tv - a_tt)
    out["prevalence"] = (out["prevalence_at_val_rates"] + out["prevalence_at_test_rates"]) / 2
    out["residual"] = 100 * ((a_vv - a_tv) + (a_vt - a_tt)) / 2
    out["seen_in_test"] = 100 * (a_tt - accs["test"])
    for split in ("val", "test"):
        out[f"ece_{split}"], out[f"overconfidence_{split}"] = calibrated[split]
    return out


def verdict(low: float, high: float) -> str:
    """ruled out (the whole interval within +-RULED_OUT_POINTS: not a cause of more than that,
    however sure its sign), supported (the interval above 0: it widens the gap), against (below
    0: it narrows it), undecided, or cannot tell (no interval: a class has no unseen image).
    Ruled out comes first: a cause of 0.01 points measured to +-0.001 is no cause to name."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "cannot tell"
    if low >= -RULED_OUT_POINTS and high <= RULED_OUT_POINTS:
        return "ruled out"
    if low > 0:
        return "supported"
    if high < 0:
        return "against"
    return "undecided"


def threshold_optimism(y: np.ndarray, p: np.ndarray, units: np.ndarray, threshold: float, target_sensitivity: float | None, seed: int) -> float:
    """Points of validation accuracy that choosing the threshold on validation itself adds:
    accuracy at the chosen threshold minus accuracy when each fold's threshold is chosen on the
    other folds (whole units per fold). NaN where validation has too few units to fold."""
    distinct, unit = np.unique(units, return_inverse=True)
    folds = min(THRESHOLD_FOLDS, len(distinct))
    if folds < 2 or len(np.unique(y)) < 2:
        return float("nan")
    fold = np.random.default_rng(seed).permutation(len(distinct))[unit] % folds  # whole units, shuffled
    out_of_fold = np.empty(len(y), bool)
    for k in range(folds):
        held, fit = fold == k, fold != k
        t = operating_threshold(y[fit], p[fit], target_sensitivity)[0] if len(np.unique(y[fit])) == 2 else threshold
        out_of_fold[held] = (p[held] >= t) == (y[held] == 1)
    return 100 * (accuracy(y, p, threshold) - float(out_of_fold.mean()))


def gap_causes(
    y_val: np.ndarray,
    p_val: np.ndarray,
    seen_val: np.ndarray,
    y_test: np.ndarray,
    p_test: np.ndarray,
    threshold: float,
    seed: int,
    seen_test: np.ndarray | None = None,
    units_val: np.ndarray | None = None,
    units_test: np.ndarray | None = None,
    target_sensitivity: float | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    patients_known: bool = True,
) -> dict:
    """Every cause of one model's validation - test gap at its operating `threshold`, in accuracy
    points, with 95 % intervals. `y_*` is 1 for the positive class, `p_*` the positive
    probability, `seen_*` marks images whose unit train also holds, `units_*` the units of
    independence (one namespace for both splits; None: images independent; `patients_known`
    False: the units link copies of a picture only).
    `target_sensitivity`: the rule that chose the threshold (None: Youden's J), for the
    threshold's optimism."""
    y_val, p_val, seen_val = np.asarray(y_val).astype(int), np.asarray(p_val, float), np.asarray(seen_val, bool)
    y_test, p_test = np.asarray(y_test).astype(int), np.asarray(p_test, float)
    seen_test = np.zeros(len(y_test), bool) if seen_test is None else np.asarray(seen_test, bool)
    known = units_val is not None and units_test is not None
    units = np.r_[units_val, units_test] if known else None
    splits = np.r_[np.zeros(len(y_val), int), np.ones(len(y_test), int)]
    resampling = Resampling.of(units, np.r_[y_val, y_test], seed, resamples, splits=splits, patients_known=patients_known)
    # Columns of both splits side by side (an image's other split's columns are 0): one resample,
    # one row of sums for the whole decomposition.
    val_columns = _columns(y_val, p_val, seen_val, threshold, CALIBRATION_BINS)
    test_columns = _columns(y_test, p_test, seen_test, threshold, CALIBRATION_BINS)
    width = val_columns.shape[1]
    columns = np.block([[val_columns, np.zeros((len(y_val), width))], [np.zeros((len(y_test), width)), test_columns]])
    point = {k: float(v[0]) for k, v in _figures(columns.sum(axis=0, keepdims=True), CALIBRATION_BINS).items()}
    samples = _figures(resampling.resampled_sums(columns), CALIBRATION_BINS)
    causes = {}
    for name, value in point.items():
        low, high = percentile_interval(samples[name])
        causes[name] = {"value": value, "ci_low": low, "ci_high": high}
    for name in CAUSES:
        causes[name]["verdict"] = verdict(causes[name]["ci_low"], causes[name]["ci_high"])
    orders = [causes[f"prevalence_at_{o}_rates"] for o in ("val", "test")]
    above, below = ([o["ci_low"] > 0 for o in orders], [o["ci_high"] < 0 for o in orders])
    if (above[0] and below[1]) or (below[0] and above[1]):
        # Each order sure of its sign, and the signs disagree: whose rates hold decides the cause.
        causes["prevalence"]["verdict"] = "undecided"
    for split in ("val", "test"):
        c = causes[f"overconfidence_{split}"]
        c["overconfident"] = bool(c["value"] > OVERCONFIDENCE_POINTS and c["ci_low"] > 0)
    val_units = units_val if known else np.arange(len(y_val))
    causes["threshold_optimism"] = {"value": threshold_optimism(y_val, p_val, np.asarray(val_units), threshold, target_sensitivity, seed)}
    causes["threshold_oracle"] = {"value": 100 * (best_accuracy(y_test, p_test)[0] - accuracy(y_test, p_test, threshold))}
    oracle_acc, oracle_threshold = best_accuracy(y_test, p_test)
    seen = {}
    for split, y, p, mask, offset in (("val", y_val, p_val, seen_val, 0), ("test", y_test, p_test, seen_test, len(y_val))):
        right = (p >= threshold) == (y == 1)
        members = np.zeros(len(splits), bool)
        for name, part in (("seen", mask), ("unseen", ~mask)):
            members[:] = False
            members[offset : offset + len(y)] = part
            hits = np.zeros(len(splits), bool)
            hits[offset : offset + len(y)] = right & part
            seen[f"{split}_acc_{name}_patients"] = share_interval(hits, members, resampling).as_dict()
    return {
        "causes": causes,
        "patients": seen,
        "interval_method": resampling.describe(),
        "prevalence": {"val": float(np.mean(y_val == 1)), "test": float(np.mean(y_test == 1))},
        "threshold": {
            "operating_threshold": float(threshold),
            "test_acc_at_0.5": accuracy(y_test, p_test),
            "val_acc_at_threshold": accuracy(y_val, p_val, threshold),
            "test_acc_at_threshold": accuracy(y_test, p_test, threshold),
            "oracle_threshold": oracle_threshold,
            "oracle_test_acc": oracle_acc,
        },
        "calibration": {"val": calibration(y_val, p_val), "test": calibration(y_test, p_test)},
    }

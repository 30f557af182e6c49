"""The validation - test gap split into its causes, on predictions built to hold known causes."""

import numpy as np
import pytest

from pipeline.analysis import findings
from pipeline.analysis.gap import best_accuracy, calibration, gap_causes, verdict


def test_best_accuracy_is_the_best_any_threshold_reaches():
    rng = np.random.default_rng(0)
    for _ in range(200):
        y, p = rng.integers(0, 2, 25), np.round(rng.random(25), 1)
        best, threshold = best_accuracy(y, p)
        brute = max(np.mean((p >= t) == (y == 1)) for t in list(p) + [2.0])
        assert best == pytest.approx(brute) and np.mean((p >= threshold) == (y == 1)) == pytest.approx(best)


def test_calibration_of_calibrated_and_of_overconfident_predictions():
    rng = np.random.default_rng(1)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert calibration(y, p)["ece"] < 0.02
    # Always 99 % sure, right 90 % of the time: 9 points of overconfidence.
    y = np.r_[np.ones(900, int), np.zeros(100, int)]
    over = calibration(y, np.full(1000, 0.99))
    assert over["overconfidence_points"] == pytest.approx(9.0) and over["ece"] == pytest.approx(0.09)
    assert over["brier"] == pytest.approx(np.mean((0.99 - y) ** 2))


def predictions(rng, n: int, prevalence: float, sens: float, spec: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels at a prevalence, and probabilities right with the given sensitivity and specificity."""
    y = (rng.random(n) < prevalence).astype(int)
    right = np.where(y == 1, rng.random(n) < sens, rng.random(n) < spec)
    called = np.where(right, y, 1 - y)
    return y, np.where(called == 1, 0.5 + 0.4 * rng.random(n), 0.4 * rng.random(n))


def test_a_planted_leak_and_a_planted_prevalence_shift_are_found_and_add_up():
    rng = np.random.default_rng(2)
    y_unseen, p_unseen = predictions(rng, 600, 0.5, 0.95, 0.75)
    y_seen = rng.integers(0, 2, 300)  # seen patients: remembered, always right
    p_seen = np.where(y_seen == 1, 0.95, 0.05)
    y_val, p_val = np.r_[y_unseen, y_seen], np.r_[p_unseen, p_seen]
    seen = np.r_[np.zeros(600, bool), np.ones(300, bool)]
    y_test, p_test = predictions(rng, 600, 0.15, 0.95, 0.75)  # same model, far fewer positives
    g = gap_causes(y_val, p_val, seen, y_test, p_test, 0.5, seed=0)
    c = g["causes"]
    assert c["gap"]["value"] == pytest.approx(c["leakage"]["value"] + c["prevalence"]["value"] + c["residual"]["value"])
    assert c["leakage"]["verdict"] == "supported" and c["leakage"]["value"] == pytest.approx(100 * (1 / 3) * (1 - 0.85), abs=2.5)
    # At a 15 % prevalence specificity (0.75) dominates: expected accuracy falls by ~7 points.
    assert c["prevalence"]["verdict"] == "supported" and c["prevalence"]["value"] == pytest.approx(100 * 0.2 * 0.35, abs=3)
    assert c["residual"]["verdict"] in ("ruled out", "undecided") and abs(c["residual"]["value"]) < 3
    assert g["patients"]["val_acc_seen_patients"]["value"] == 1.0 and g["patients"]["val_acc_seen_patients"]["n"] == 300
    assert g["threshold"]["oracle_test_acc"] >= g["threshold"]["test_acc_at_0.5"]
    words = findings({"gap": {"m": g}, "leakage": {"patients": {}, "n_exact_groups_across_splits": 0, "n_near_duplicate_pairs": 0},
                      "shift": {"class_balance": {}, "image_statistics": {}}})
    assert any("Supported as a cause of the gap: patients" in w and "m" in w for w in words)
    assert any(w.startswith("m: validation - test gap") for w in words)


def test_no_leak_and_no_shift_are_ruled_out_and_overconfidence_is_named():
    rng = np.random.default_rng(3)
    y_val, _ = predictions(rng, 3000, 0.5, 0.9, 0.9)
    y_test, _ = predictions(rng, 3000, 0.5, 0.9, 0.9)
    # Always 0.999 sure, right 90 % of the time.
    sure = lambda y: np.where(rng.random(len(y)) < 0.9, np.where(y == 1, 0.999, 0.001), np.where(y == 1, 0.001, 0.999))
    g = gap_causes(y_val, sure(y_val), np.zeros(3000, bool), y_test, sure(y_test), 0.5, seed=1)
    assert g["causes"]["leakage"]["verdict"] == "ruled out" and g["causes"]["prevalence"]["verdict"] == "ruled out"
    assert g["causes"]["overconfidence_val"]["overconfident"]
    words = findings({"gap": {"m": g}, "leakage": {"patients": {}, "n_exact_groups_across_splits": 0, "n_near_duplicate_pairs": 0},
                      "shift": {"class_balance": {}, "image_statistics": {}}})
    assert any("Ruled out as a cause of more than 2 points: patients" in w for w in words)
    assert any("m is overconfident on validation" in w for w in words)


@pytest.mark.parametrize("low, high, expected", [(0.5, 3, "supported"), (-3, -0.5, "against"), (-1, 1.5, "ruled out"), (-1, 5, "undecided")])
def test_verdicts(low, high, expected):
    assert verdict(low, high) == expected


def test_test_images_of_seen_patients_are_scored_apart():
    rng = np.random.default_rng(4)
    y_val, p_val = predictions(rng, 400, 0.5, 0.8, 0.8)
    y_test, p_test = predictions(rng, 400, 0.5, 0.8, 0.8)
    seen_test = np.arange(400) < 100
    p_test[seen_test] = np.where(y_test[seen_test] == 1, 0.9, 0.1)  # remembered
    g = gap_causes(y_val, p_val, np.zeros(400, bool), y_test, p_test, 0.5, seed=0, seen_test=seen_test)
    seen, unseen = g["patients"]["test_acc_seen_patients"], g["patients"]["test_acc_unseen_patients"]
    assert (seen["value"], seen["n"], unseen["n"]) == (1.0, 100, 300)
    assert unseen["value"] == pytest.approx(np.mean((p_test[100:] >= 0.5) == (y_test[100:] == 1)))
    words = findings({"gap": {"m": g}, "leakage": {"patients": {}, "n_exact_groups_across_splits": 0, "n_near_duplicate_pairs": 0},
                      "shift": {"class_balance": {}, "image_statistics": {}}})
    assert any("m: 100 test images belong to patients" in w and "the unseen figure" in w for w in words)


def test_temperature_scaling_undoes_planted_overconfidence():
    from pipeline.calibration import fit_temperature

    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4000, 2)) * 2
    y = np.array([rng.random() < p for p in np.exp(logits[:, 1]) / np.exp(logits).sum(1)], dtype=int)
    log_probs = (logits * 3) - np.log(np.exp(logits * 3).sum(1, keepdims=True))  # three times too sure
    assert fit_temperature(log_probs, y) == pytest.approx(3.0, rel=0.1)

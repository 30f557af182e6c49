"""The validation - test gap split into its causes, on predictions built to hold known causes
(the cases of issue 19 among them: each once gave a cause that was not there)."""

import numpy as np
import pytest

from pipeline.analysis import findings
from pipeline.analysis.gap import best_accuracy, calibration, gap_causes, threshold_optimism, verdict

NO_LEAKS = {"patients": {}, "n_exact_groups_across_splits": 0, "n_near_duplicate_pairs": 0}
NO_SHIFT = {"class_balance": {}, "image_statistics": {}}


def words_of(g) -> list[str]:
    return findings({"gap": {"m": g}, "leakage": NO_LEAKS, "shift": NO_SHIFT})


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


def exact(n: int, prevalence: float, sens: float, spec: float) -> tuple[np.ndarray, np.ndarray]:
    """n images at exactly this prevalence, sensitivity and specificity (probabilities 0.8 / 0.2)."""
    positives = round(n * prevalence)
    y = np.r_[np.ones(positives, int), np.zeros(n - positives, int)]
    right = np.r_[np.arange(positives) < round(sens * positives), np.arange(n - positives) < round(spec * (n - positives))]
    return y, np.where(np.where(right, y, 1 - y) == 1, 0.8, 0.2)


def predictions(rng, n: int, prevalence: float, sens: float, spec: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels at a prevalence, and probabilities right with the given sensitivity and specificity."""
    y = (rng.random(n) < prevalence).astype(int)
    right = np.where(y == 1, rng.random(n) < sens, rng.random(n) < spec)
    called = np.where(right, y, 1 - y)
    return y, np.where(called == 1, 0.5 + 0.4 * rng.random(n), 0.4 * rng.random(n))


def test_the_parts_add_up_to_the_gap_and_a_planted_leak_is_found():
    rng = np.random.default_rng(2)
    y_unseen, p_unseen = predictions(rng, 600, 0.5, 0.95, 0.75)
    y_seen = rng.integers(0, 2, 300)  # seen patients: remembered, always right
    p_seen = np.where(y_seen == 1, 0.95, 0.05)
    y_val, p_val = np.r_[y_unseen, y_seen], np.r_[p_unseen, p_seen]
    seen = np.r_[np.zeros(600, bool), np.ones(300, bool)]
    y_test, p_test = predictions(rng, 600, 0.15, 0.95, 0.75)  # same model, far fewer positives
    g = gap_causes(y_val, p_val, seen, y_test, p_test, 0.5, seed=0)
    c = g["causes"]
    parts = sum(c[k]["value"] for k in ("leakage", "prevalence", "residual", "seen_in_test"))
    assert c["gap"]["value"] == pytest.approx(parts)
    assert c["leakage"]["verdict"] == "supported" and c["leakage"]["value"] == pytest.approx(100 * (1 / 3) * (1 - 0.85), abs=2.5)
    # Sensitivity 0.95 against specificity 0.75, and 35 points less prevalence: ~7 points.
    assert c["prevalence"]["verdict"] == "supported" and c["prevalence"]["value"] == pytest.approx(100 * 0.2 * 0.35, abs=3)
    assert c["residual"]["verdict"] in ("ruled out", "undecided") and abs(c["residual"]["value"]) < 3
    assert g["patients"]["val_acc_seen_patients"]["value"] == 1.0 and g["patients"]["val_acc_seen_patients"]["n"] == 300
    assert g["threshold"]["oracle_test_acc"] >= g["threshold"]["test_acc_at_0.5"]
    words = words_of(g)
    assert any(
        w.startswith("Supported as a cause of the gap: validation images of patients") and w.endswith("for m (interval above 0).") for w in words
    )
    assert any(w.startswith("m: at its threshold 0.5, validation - test gap") for w in words)


def test_a_different_class_mix_of_seen_images_is_not_leakage():
    # Issue 19, case 1: 400 seen images 90 % PNEUMONIA, 600 unseen 50 %, the same rates on both.
    y_seen, p_seen = exact(400, 0.9, 0.98, 0.80)
    y_unseen, p_unseen = exact(600, 0.5, 0.98, 0.80)
    y_val, p_val = np.r_[y_seen, y_unseen], np.r_[p_seen, p_unseen]
    seen = np.r_[np.ones(400, bool), np.zeros(600, bool)]
    y_test, p_test = exact(624, float(np.mean(y_val)), 0.98, 0.80)
    c = gap_causes(y_val, p_val, seen, y_test, p_test, 0.5, seed=0)["causes"]
    assert c["leakage"]["value"] == pytest.approx(0, abs=0.2) and c["leakage"]["verdict"] == "ruled out"
    assert c["prevalence"]["verdict"] == "ruled out"


def test_the_class_balance_effect_does_not_depend_on_whose_rates_are_held():
    # Issue 19, case 2: validation 0.74 at 0.97 / 0.95, test 0.625 at 0.99 / 0.60.
    y_val, p_val = exact(1000, 0.74, 0.97, 0.95)
    y_test, p_test = exact(624, 0.625, 0.99, 0.60)
    c = gap_causes(y_val, p_val, np.zeros(1000, bool), y_test, p_test, 0.5, seed=0)["causes"]
    assert c["prevalence_at_val_rates"]["value"] == pytest.approx(100 * 0.02 * 0.115, abs=0.05)
    assert c["prevalence_at_test_rates"]["value"] == pytest.approx(100 * (0.888 - 0.843), abs=0.2)
    # The average of both orders, which no longer calls the balance "ruled out".
    assert c["prevalence"]["value"] == pytest.approx((c["prevalence_at_val_rates"]["value"] + c["prevalence_at_test_rates"]["value"]) / 2)
    assert c["prevalence"]["verdict"] == "supported"


def test_the_orders_disagreeing_in_sign_leave_the_balance_undecided():
    # Validation's rates favour the sick, test's the healthy: the balance cuts both ways.
    y_val, p_val = exact(3000, 0.8, 0.99, 0.70)
    y_test, p_test = exact(3000, 0.3, 0.70, 0.99)
    c = gap_causes(y_val, p_val, np.zeros(3000, bool), y_test, p_test, 0.5, seed=0)["causes"]
    assert c["prevalence_at_val_rates"]["ci_low"] > 2 and c["prevalence_at_test_rates"]["ci_high"] < -2
    assert c["prevalence"]["verdict"] == "undecided"
    # A noise-level opposite sign in one order does not overturn a clear verdict (review of issue 19).
    y_test, p_test = exact(3000, 0.3, 0.745, 0.755)
    y_val, p_val = exact(3000, 0.5, 0.9, 0.6)
    c = gap_causes(y_val, p_val, np.zeros(3000, bool), y_test, p_test, 0.5, seed=0)["causes"]
    assert c["prevalence_at_test_rates"]["ci_low"] < 0 < c["prevalence_at_test_rates"]["ci_high"] and c["prevalence"]["verdict"] == "supported"


def correlated_patients(rng, n, right_rate):
    """Patients of 1-5 images, all right or all wrong together."""
    sizes = rng.integers(1, 6, n)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    sizes[-1] -= sizes.sum() - n
    patient = np.repeat(np.arange(len(sizes)), sizes)
    y = (rng.random(len(sizes)) < 0.6)[patient].astype(int)
    right = (rng.random(len(sizes)) < right_rate)[patient]
    return y, np.where(np.where(right, y, 1 - y) == 1, 0.8, 0.2), patient


def test_intervals_resample_patients_where_images_are_correlated():
    # Issue 19, case 3: patients of 1-5 images right or wrong together, no shift at all: images
    # taken as independent make the residual's interval too narrow; patients resampled do not.
    rng = np.random.default_rng(7)
    y_val, p_val, pv = correlated_patients(rng, 1000, 0.85)
    y_test, p_test, pt = correlated_patients(rng, 624, 0.85)
    by_image = gap_causes(y_val, p_val, np.zeros(1000, bool), y_test, p_test, 0.5, seed=0)
    by_patient = gap_causes(y_val, p_val, np.zeros(1000, bool), y_test, p_test, 0.5, seed=0, units_val=pv, units_test=pt + pv.max() + 1)
    width = lambda g: g["causes"]["residual"]["ci_high"] - g["causes"]["residual"]["ci_low"]  # noqa: E731
    assert width(by_patient) > 1.4 * width(by_image)
    assert by_patient["interval_method"].startswith("patient bootstrap (")
    assert by_image["interval_method"].startswith("exact (patients unknown")


def test_test_images_of_seen_patients_are_scored_apart_and_their_lift_measured():
    rng = np.random.default_rng(4)
    y_val, p_val = predictions(rng, 400, 0.5, 0.8, 0.8)
    y_test, p_test = predictions(rng, 400, 0.5, 0.8, 0.8)
    seen_test = np.arange(400) < 100
    p_test[seen_test] = np.where(y_test[seen_test] == 1, 0.9, 0.1)  # remembered
    g = gap_causes(y_val, p_val, np.zeros(400, bool), y_test, p_test, 0.5, seed=0, seen_test=seen_test)
    seen, unseen = g["patients"]["test_acc_seen_patients"], g["patients"]["test_acc_unseen_patients"]
    assert (seen["value"], seen["n"], unseen["n"]) == (1.0, 100, 300)
    assert unseen["value"] == pytest.approx(np.mean((p_test[100:] >= 0.5) == (y_test[100:] == 1)))
    # Test accuracy is lifted by the remembered quarter: that narrows the gap (against).
    lift = g["causes"]["seen_in_test"]
    assert lift["value"] < -2 and lift["verdict"] == "against"
    assert any("m: 100 test images belong to patients" in w and "the unseen figure" in w for w in words_of(g))


def test_the_residual_is_named_with_the_choices_made_on_validation():
    rng = np.random.default_rng(3)
    y_val, p_val = predictions(rng, 500, 0.5, 0.9, 0.9)
    y_test, p_test = predictions(rng, 500, 0.5, 0.9, 0.9)
    g = gap_causes(y_val, p_val, np.zeros(500, bool), y_test, p_test, 0.5, seed=1)
    sentence = next(w for w in words_of(g) if w.startswith("m: at its threshold"))
    assert "optimism of choices made on validation" in sentence and "the epoch's and the learning rate's shares are not measured" in sentence
    assert "distribution shift, label noise, chance" not in " ".join(words_of(g))


def test_threshold_optimism_is_measured_out_of_fold():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    p = rng.random(300)  # no signal: any threshold chosen in-sample flatters itself
    t = best_accuracy(y, p)[1]
    optimism = threshold_optimism(y, p, np.arange(300), t, None, seed=0)
    assert optimism > 0
    assert np.isnan(threshold_optimism(y[:1], p[:1], np.arange(1), 0.5, None, 0))


def test_no_leak_and_no_shift_are_ruled_out_and_overconfidence_is_named():
    rng = np.random.default_rng(3)
    y_val, _ = predictions(rng, 3000, 0.5, 0.9, 0.9)
    y_test, _ = predictions(rng, 3000, 0.5, 0.9, 0.9)
    # Always 0.999 sure, right 90 % of the time.
    sure = lambda y: np.where(rng.random(len(y)) < 0.9, np.where(y == 1, 0.999, 0.001), np.where(y == 1, 0.001, 0.999))  # noqa: E731
    g = gap_causes(y_val, sure(y_val), np.zeros(3000, bool), y_test, sure(y_test), 0.5, seed=1)
    assert g["causes"]["leakage"]["verdict"] == "ruled out" and g["causes"]["prevalence"]["verdict"] == "ruled out"
    assert g["causes"]["overconfidence_val"]["overconfident"]
    words = words_of(g)
    assert any(w.startswith("Ruled out as a cause of more than 2 points: validation images of patients") for w in words)
    assert any("m is overconfident on validation" in w for w in words)


@pytest.mark.parametrize(
    "low, high, expected",
    [
        (0.5, 3, "supported"),
        (-3, -0.5, "against"),
        (-1, 1.5, "ruled out"),
        (-1, 5, "undecided"),
        # A cause of a fraction of a point, however sure its sign, is ruled out, not named.
        (0.01, 0.02, "ruled out"),
        (float("nan"), float("nan"), "cannot tell"),
    ],
)
def test_verdicts(low, high, expected):
    assert verdict(low, high) == expected

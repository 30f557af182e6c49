"""Intervals and paired tests, checked against their textbook definitions and by simulation."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from pipeline.analysis.resampling import Resampling, bootstrap_p_value, weighted_auc
from pipeline.analysis.uncertainty import (
    auc_interval,
    delong_test,
    holm,
    images_as_units,
    mcnemar_exact,
    metric_intervals,
    pairwise_tests,
    proportion_interval,
)


def test_proportion_interval_is_clopper_pearson():
    interval = proportion_interval(37, 50)
    assert interval.value == 37 / 50 and interval.n == 50
    assert interval.low == pytest.approx(stats.beta.ppf(0.025, 37, 14))
    assert interval.high == pytest.approx(stats.beta.ppf(0.975, 38, 13))
    assert proportion_interval(0, 10).low == 0 and proportion_interval(10, 10).high == 1
    assert np.isnan(proportion_interval(0, 0).value)


def scores_with_auc(n: int, d: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Binormal scores: positives shifted by d, so the true AUC is Phi(d / sqrt 2)."""
    y = np.r_[np.ones(n // 2, int), np.zeros(n - n // 2, int)]
    return y, rng.normal(size=n) + d * y


def test_auc_interval_is_seeded_holds_the_estimate_and_covers_the_truth():
    rng = np.random.default_rng(0)
    y, s = scores_with_auc(200, 1.0, rng)
    a, b = auc_interval(y, s, images_as_units(y, 5)), auc_interval(y, s, images_as_units(y, 5))
    assert a == b and a.low < a.value < a.high and a.value == pytest.approx(roc_auc_score(y, s))
    quarter = auc_interval(y[::4], s[::4], images_as_units(y[::4], 5))
    assert quarter.high - quarter.low > a.high - a.low
    truth = stats.norm.cdf(1.0 / np.sqrt(2))
    covered = []
    for k in range(100):
        y, s = scores_with_auc(120, 1.0, rng)
        i = auc_interval(y, s, images_as_units(y, k, 500))
        covered.append(i.low <= truth <= i.high)
    assert 0.88 <= np.mean(covered) <= 1.0


def test_metric_intervals_count_the_right_images():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.4, 0.7, 0.1, 0.6, 0.2, 0.3, 0.1, 0.2])
    got = metric_intervals(y, p, 0.5, images_as_units(y, 0))
    assert (got["acc"].value, got["acc"].n) == (0.8, 10)
    assert (got["sensitivity"].value, got["sensitivity"].n) == (0.75, 4)
    assert (got["specificity"].value, got["specificity"].n) == (5 / 6, 6)
    assert got["auc"].value == pytest.approx(roc_auc_score(y, p))


def test_mcnemar_exact_is_the_binomial_test_on_discordant_images():
    a = np.array([True] * 10 + [False] * 2 + [True] * 30)
    b = np.array([False] * 10 + [True] * 2 + [True] * 30)
    result = mcnemar_exact(a, b)
    assert (result["only_a_right"], result["only_b_right"]) == (10, 2)
    assert result["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact(a, a)["p_value"] == 1.0


def test_delong_agrees_with_a_paired_bootstrap():
    rng = np.random.default_rng(1)
    y, s = scores_with_auc(400, 1.2, rng)
    other = s + rng.normal(scale=0.8, size=len(s))
    result = delong_test(y, s, other)
    assert result["auc_a"] == pytest.approx(roc_auc_score(y, s)) and result["auc_b"] == pytest.approx(roc_auc_score(y, other))
    differences = []
    for _ in range(600):
        idx = rng.integers(0, len(y), len(y))
        differences.append(roc_auc_score(y[idx], s[idx]) - roc_auc_score(y[idx], other[idx]))
    se_delong = (result["ci_high"] - result["ci_low"]) / (2 * 1.96)
    assert se_delong == pytest.approx(np.std(differences), rel=0.2)
    assert delong_test(y, s, s)["p_value"] == 1.0


def test_a_zero_variance_with_a_difference_is_not_a_p_of_zero():
    # Issue 19, case 11: AUC 1 against AUC 0 leaves DeLong no variance; p = 0 there would be a verdict without evidence.
    y = np.array([0, 0, 1, 1])
    perfect, reversed_ = np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.9, 0.8, 0.2, 0.1])
    result = delong_test(y, perfect, reversed_)
    assert result["difference"] == 1.0 and np.isnan(result["p_value"]) and "untestable" in result
    (pair,) = pairwise_tests(y, {"a": perfect, "b": reversed_}, {"a": 0.5, "b": 0.5}, images_as_units(y, 0))
    assert not pair["auc"]["distinguishable"] and np.isnan(pair["auc"]["p_holm"])


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.01, float("nan"), 0.04]) == pytest.approx([0.02, float("nan"), 0.04], nan_ok=True)


def test_pairwise_tells_a_real_difference_from_none():
    rng = np.random.default_rng(2)
    y, s = scores_with_auc(400, 2.0, rng)
    good = 1 / (1 + np.exp(-(s - 1)))
    twin = np.clip(good + rng.normal(scale=0.01, size=len(y)), 0, 1)
    noise = rng.random(len(y))
    thresholds = {"good": 0.5, "twin": 0.5, "noise": 0.5}
    pairs = {(p["a"], p["b"]): p for p in pairwise_tests(y, {"good": good, "twin": twin, "noise": noise}, thresholds, images_as_units(y, 0))}
    assert pairs[("good", "noise")]["acc"]["distinguishable"] and pairs[("good", "noise")]["auc"]["distinguishable"]
    assert not pairs[("good", "twin")]["acc"]["distinguishable"] and not pairs[("good", "twin")]["auc"]["distinguishable"]
    assert all(p["acc"]["p_holm"] >= p["acc"]["p_value"] for p in pairs.values())


def test_the_weighted_auc_is_the_auc_of_the_repeated_images():
    rng = np.random.default_rng(3)
    y, s = rng.integers(0, 2, 40), np.round(rng.random(40), 1)  # ties
    weights = rng.integers(0, 4, (5, 40)).astype(float)
    for w, auc in zip(weights, weighted_auc(y, s, weights)):
        repeated = np.repeat(np.arange(40), w.astype(int))
        assert auc == pytest.approx(roc_auc_score(y[repeated], s[repeated]))


def patients(rng, n_patients: int, sizes=(1, 6)):
    counts = rng.integers(*sizes, n_patients)
    return np.repeat(np.arange(n_patients), counts)


def test_units_are_drawn_whole_within_their_strata():
    rng = np.random.default_rng(4)
    units = patients(rng, 50)
    y = (units % 2).astype(int)
    resampling = Resampling.of(units, y, seed=0, resamples=100)
    counts = resampling.counts
    assert counts.shape == (100, 50) and (counts.sum(1) == 50).all()
    # Each stratum (here: the class) keeps its number of units in every resample.
    assert (counts[:, resampling.strata == resampling.strata[0]].sum(1) == np.sum(resampling.strata == resampling.strata[0])).all()
    assert resampling.clustered and resampling.describe().startswith("patient bootstrap (50 patients")
    assert not Resampling.of(np.arange(10), np.arange(10) % 2, 0).clustered


def test_patient_intervals_cover_where_image_intervals_do_not():
    # Patients of 1-5 images, right or wrong together: 95 % intervals of accuracy that treat the
    # images as independent miss the truth far more often than 5 %; patient intervals do not.
    rng = np.random.default_rng(5)
    truth, missed = 0.8, {"images": 0, "patients": 0}
    trials = 150
    for k in range(trials):
        units = patients(rng, 120)
        right = (rng.random(units.max() + 1) < truth)[units]
        y = np.ones(len(units), int)
        score = np.where(right, 0.9, 0.1)
        for name, resampling in (("images", images_as_units(y, k, 400)), ("patients", Resampling.of(units, y, k, 400))):
            acc = metric_intervals(y, score, 0.5, resampling)["acc"]
            missed[name] += not (acc.low <= truth <= acc.high)
    assert missed["images"] / trials > 0.15
    assert missed["patients"] / trials < 0.09


def test_clustered_pairs_are_tested_on_patient_resamples():
    rng = np.random.default_rng(6)
    units = patients(rng, 150)
    y = (rng.random(units.max() + 1) < 0.5)[units].astype(int)
    good = np.clip(y * 0.6 + 0.2 + rng.normal(0, 0.15, len(y)), 0, 1)
    noise = rng.random(len(y))
    (pair,) = pairwise_tests(y, {"good": good, "noise": noise}, {"good": 0.5, "noise": 0.5}, Resampling.of(units, y, 0, 500))
    assert pair["acc"]["method"].startswith("paired patient bootstrap") and pair["auc"]["distinguishable"]
    assert pair["auc"]["ci_low"] > 0 and pair["acc"]["only_a_right"] > pair["acc"]["only_b_right"]
    assert bootstrap_p_value(np.r_[np.ones(99), -1.0]) == pytest.approx(2 * 2 / 101)

"""Intervals and paired tests, checked against their textbook definitions and by simulation."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from pipeline.analysis.uncertainty import (
    auc_interval, delong_test, holm, mcnemar_exact, pairwise_tests, proportion_interval, metric_intervals,
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
    a, b = auc_interval(y, s, seed=5), auc_interval(y, s, seed=5)
    assert a == b and a.low < a.value < a.high and a.value == pytest.approx(roc_auc_score(y, s))
    assert auc_interval(y[::4], s[::4], seed=5).high - auc_interval(y[::4], s[::4], seed=5).low > a.high - a.low
    truth = stats.norm.cdf(1.0 / np.sqrt(2))
    covered = []
    for k in range(100):
        y, s = scores_with_auc(120, 1.0, rng)
        i = auc_interval(y, s, seed=k)
        covered.append(i.low <= truth <= i.high)
    assert 0.88 <= np.mean(covered) <= 1.0


def test_metric_intervals_count_the_right_images():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.4, 0.7, 0.1, 0.6, 0.2, 0.3, 0.1, 0.2])
    got = metric_intervals(y, p, 0.5, seed=0)
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


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def test_pairwise_tells_a_real_difference_from_none():
    rng = np.random.default_rng(2)
    y, s = scores_with_auc(400, 2.0, rng)
    good = 1 / (1 + np.exp(-(s - 1)))
    twin = np.clip(good + rng.normal(scale=0.01, size=len(y)), 0, 1)
    noise = rng.random(len(y))
    pairs = {(p["a"], p["b"]): p for p in pairwise_tests(y, {"good": good, "twin": twin, "noise": noise})}
    assert pairs[("good", "noise")]["acc"]["distinguishable"] and pairs[("good", "noise")]["auc"]["distinguishable"]
    assert not pairs[("good", "twin")]["acc"]["distinguishable"] and not pairs[("good", "twin")]["auc"]["distinguishable"]
    assert all(p["acc"]["p_holm"] >= p["acc"]["p_value"] for p in pairs.values())

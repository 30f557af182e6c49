"""How sure a figure is, and whether two models differ: intervals and paired tests on one test set.

Every interval comes from one `Resampling` of the images' units of independence (patients,
identical and near-identical copies: `data/units.py`):

- Where every unit is one image, a proportion (accuracy, sensitivity, specificity) gets its
  exact Clopper-Pearson interval and two models are compared by McNemar's exact test
  (accuracy) and DeLong's test (AUC), which assume independent images.
- Where some unit holds several images, those tests would be too sure: every interval is the
  percentile interval of a patient (cluster) bootstrap, and a paired difference is tested by
  the same resamples (its p-value the interval inversion).
- AUC has no exact interval: always the bootstrap (2,000 resamples, stratified, seeded).
- Several pairs are tested at once, so p-values are also Holm-adjusted; a difference is called
  distinguishable when its adjusted p-value is below `ALPHA`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from pipeline.analysis.resampling import BOOTSTRAP_RESAMPLES, Resampling, bootstrap_p_value, percentile_interval, resampled_auc

ALPHA = 0.05


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    n: int
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def proportion_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Clopper-Pearson: exact for a binomial proportion, never narrower than it should be."""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "clopper-pearson")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence, method="exact")
    return Interval(successes / n, float(ci.low), float(ci.high), int(n), "clopper-pearson")


def images_as_units(y: np.ndarray, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> Resampling:
    """The resampling of images whose patients are unknown: each image its own unit."""
    return Resampling.of(None, np.asarray(y).astype(int), seed, resamples)


def auc_interval(y: np.ndarray, score: np.ndarray, resampling: Resampling) -> Interval:
    """The AUC and the percentile interval of its resampled values."""
    y, score = np.asarray(y).astype(int), np.asarray(score, dtype=float)
    method = resampling.describe()
    if len(np.unique(y)) < 2:
        return Interval(float("nan"), float("nan"), float("nan"), len(y), method)
    (samples,) = resampled_auc(resampling, y, score)
    low, high = percentile_interval(samples)
    return Interval(float(roc_auc_score(y, score)), low, high, len(y), method)


def share_interval(hits: np.ndarray, members: np.ndarray, resampling: Resampling) -> Interval:
    """The share of `members` that are `hits`: exact where images are independent units, else
    the patient bootstrap's percentile interval."""
    hits, members = np.asarray(hits, bool), np.asarray(members, bool)
    n, k = int(members.sum()), int((hits & members).sum())
    if not resampling.clustered or n == 0:
        exact = proportion_interval(k, n)
        return Interval(exact.value, exact.low, exact.high, n, resampling.describe())
    sums = resampling.resampled_sums(np.c_[hits & members, members])
    with np.errstate(invalid="ignore", divide="ignore"):
        low, high = percentile_interval(sums[:, 0] / sums[:, 1])
    return Interval(k / n, low, high, n, resampling.describe())


def metric_intervals(y: np.ndarray, score: np.ndarray, threshold: float, resampling: Resampling) -> dict[str, Interval]:
    """Accuracy, AUC, sensitivity and specificity of `score >= threshold` with 95 % intervals.
    `y` is 1 for the positive class."""
    y = np.asarray(y).astype(int)
    called = np.asarray(score) >= threshold
    right, positives = called == (y == 1), y == 1
    everyone = np.ones(len(y), bool)
    return {
        "acc": share_interval(right, everyone, resampling),
        "auc": auc_interval(y, score, resampling),
        "sensitivity": share_interval(called, positives, resampling),
        "specificity": share_interval(~called, ~positives, resampling),
    }


# -- paired tests -----------------------------------------------------------------------------


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar: under no difference, the images only one model gets right split 50/50."""
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    return {"only_a_right": only_a, "only_b_right": only_b, "p_value": p, "method": "McNemar's exact test"}


def _midrank_components(y: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """DeLong's structural components: each positive's and each negative's share of the AUC."""
    pos, neg = score[y == 1], score[y == 0]
    # V10[i]: share of negatives ranked below positive i (ties count half); V01[j]: the reverse.
    below = (pos[:, None] > neg[None, :]).astype(float) + 0.5 * (pos[:, None] == neg[None, :])
    return float(below.mean()), below.mean(axis=1), below.mean(axis=0)


def delong_test(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict:
    """DeLong, DeLong & Clarke-Pearson (1988): the paired AUC difference and its two-sided p-value."""
    y = np.asarray(y).astype(int)
    auc_a, v10_a, v01_a = _midrank_components(y, np.asarray(score_a, dtype=float))
    auc_b, v10_b, v01_b = _midrank_components(y, np.asarray(score_b, dtype=float))
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    covariance = s10 / len(v10_a) + s01 / len(v01_a)
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = auc_a - auc_b
    if variance <= 0:
        # No spread to judge by: equal AUCs do not differ; unequal ones cannot be tested here
        # (a p of 0 from a zero variance would be a verdict without evidence).
        untested = {"ci_low": float("nan"), "ci_high": float("nan"), "p_value": 1.0 if difference == 0 else float("nan")}
        note = {} if difference == 0 else {"untestable": "DeLong's variance of the difference is 0 on these images"}
        return {"auc_a": auc_a, "auc_b": auc_b, "difference": difference, **untested, **note, "method": "DeLong"}
    se = float(np.sqrt(variance))
    z = stats.norm.ppf(1 - ALPHA / 2)
    return {
        "auc_a": auc_a,
        "auc_b": auc_b,
        "difference": difference,
        "ci_low": difference - z * se,
        "ci_high": difference + z * se,
        "p_value": float(2 * stats.norm.sf(abs(difference) / se)),
        "method": "DeLong",
    }


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: controls the chance of any false 'distinguishable'. A test
    that could not be made (NaN) stays NaN and does not count."""
    p = np.asarray(p_values, float)
    adjusted = np.full(len(p), np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    running = 0.0
    for rank, k in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (len(tested) - rank) * p[k]))
        adjusted[k] = running
    return adjusted.tolist()


def bootstrap_paired(
    resampling: Resampling, y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, right_a: np.ndarray, right_b: np.ndarray
) -> tuple[dict, dict]:
    """Accuracy and AUC differences (a - b) tested on the same patient resamples."""
    sums = resampling.resampled_sums(np.c_[right_a, right_b, np.ones(len(y))])
    acc_diff = (sums[:, 0] - sums[:, 1]) / sums[:, 2]
    auc_a, auc_b = resampled_auc(resampling, y, score_a, score_b)
    results = []
    for samples, point in (
        (acc_diff, float(right_a.mean() - right_b.mean())),
        (auc_a - auc_b, float(roc_auc_score(y, score_a) - roc_auc_score(y, score_b))),
    ):
        low, high = percentile_interval(samples)
        spread = np.nanstd(samples)
        result = {"difference": point, "ci_low": low, "ci_high": high, "method": f"paired {resampling.describe()}"}
        if spread == 0 and point != 0:
            result.update(p_value=float("nan"), untestable="every resample gives the same difference: no spread to judge it by")
        else:
            result["p_value"] = 1.0 if spread == 0 else bootstrap_p_value(samples)
        results.append(result)
    acc, auc = results
    acc.update(only_a_right=int(np.sum(right_a & ~right_b)), only_b_right=int(np.sum(~right_a & right_b)))
    auc.update(auc_a=float(roc_auc_score(y, score_a)), auc_b=float(roc_auc_score(y, score_b)))
    return acc, auc


def pairwise_tests(y: np.ndarray, scores: dict[str, np.ndarray], thresholds: dict[str, float], resampling: Resampling) -> list[dict]:
    """Every pair of models scored on the same test images, each called at its own threshold:
    accuracy by McNemar and AUC by DeLong where images are independent units, else both by the
    paired patient bootstrap; p-values Holm-adjusted within each metric."""
    names = list(scores)
    y = np.asarray(y).astype(int)
    correct = {n: (np.asarray(scores[n]) >= thresholds[n]) == (y == 1) for n in names}
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if resampling.clustered:
                acc, auc = bootstrap_paired(resampling, y, scores[a], scores[b], correct[a], correct[b])
            else:
                acc, auc = mcnemar_exact(correct[a], correct[b]), delong_test(y, scores[a], scores[b])
            pairs.append({"a": a, "b": b, "acc_a": float(correct[a].mean()), "acc_b": float(correct[b].mean()), "acc": acc, "auc": auc})
    for metric in ("acc", "auc"):
        for pair, adjusted in zip(pairs, holm([p[metric]["p_value"] for p in pairs])):
            pair[metric]["p_holm"] = adjusted
            pair[metric]["distinguishable"] = bool(adjusted < ALPHA)
    return pairs

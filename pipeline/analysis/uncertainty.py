"""How sure a figure is, and whether two models differ: intervals and paired tests on one test set.

- A proportion (accuracy, sensitivity, specificity) gets its exact Clopper-Pearson interval.
- AUC has no exact interval: a seeded stratified bootstrap (2,000 resamples, the class counts
  kept, so every resample has both classes) gives the percentile interval.
- Two models scored on the same images are compared paired: McNemar's exact test on the images
  one gets right and the other wrong (accuracy), DeLong's test on the correlated AUCs.
- Several pairs are tested at once, so p-values are also Holm-adjusted; a difference is called
  distinguishable when its adjusted p-value is below `ALPHA`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000


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


def auc_interval(y: np.ndarray, score: np.ndarray, seed: int, confidence: float = 0.95) -> Interval:
    """Percentile interval of the AUC over stratified bootstrap resamples (each class resampled
    within itself). Each resample's AUC is the Mann-Whitney statistic of its ranks, all at once."""
    y, score = np.asarray(y).astype(int), np.asarray(score, dtype=float)
    method = f"stratified bootstrap ({BOOTSTRAP_RESAMPLES} resamples, seed {seed})"
    if len(np.unique(y)) < 2:
        return Interval(float("nan"), float("nan"), float("nan"), len(y), method)
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n1, n0 = len(positives), len(negatives)
    resampled = np.concatenate(
        [score[rng.choice(positives, (BOOTSTRAP_RESAMPLES, n1))], score[rng.choice(negatives, (BOOTSTRAP_RESAMPLES, n0))]], axis=1
    )
    ranks = stats.rankdata(resampled, axis=1)  # ties share their mean rank, as in the AUC
    samples = (ranks[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(float(roc_auc_score(y, score)), float(low), float(high), len(y), method)


def metric_intervals(y: np.ndarray, score: np.ndarray, threshold: float, seed: int) -> dict[str, Interval]:
    """Accuracy, AUC, sensitivity and specificity of `score >= threshold` with 95 % intervals.
    `y` is 1 for the positive class."""
    y = np.asarray(y).astype(int)
    predicted = (np.asarray(score) >= threshold).astype(int)
    positives, negatives = y == 1, y == 0
    return {
        "acc": proportion_interval(int(np.sum(predicted == y)), len(y)),
        "auc": auc_interval(y, score, seed),
        "sensitivity": proportion_interval(int(np.sum(predicted[positives] == 1)), int(positives.sum())),
        "specificity": proportion_interval(int(np.sum(predicted[negatives] == 0)), int(negatives.sum())),
    }


# -- paired tests -----------------------------------------------------------------------------


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar: under no difference, the images only one model gets right split 50/50."""
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    return {"only_a_right": only_a, "only_b_right": only_b, "p_value": p}


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
        p = 1.0 if difference == 0 else 0.0
        se = 0.0
    else:
        se = float(np.sqrt(variance))
        p = float(2 * stats.norm.sf(abs(difference) / se))
    z = stats.norm.ppf(1 - ALPHA / 2)
    return {"auc_a": auc_a, "auc_b": auc_b, "difference": difference, "ci_low": difference - z * se, "ci_high": difference + z * se, "p_value": p}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: controls the chance of any false 'distinguishable'."""
    order = np.argsort(p_values)
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[k]))
        adjusted[k] = running
    return adjusted.tolist()


def pairwise_tests(y: np.ndarray, scores: dict[str, np.ndarray], threshold: float = 0.5) -> list[dict]:
    """Every pair of models scored on the same test images: accuracy by McNemar, AUC by DeLong,
    p-values Holm-adjusted within each metric."""
    names = list(scores)
    y = np.asarray(y).astype(int)
    correct = {n: (np.asarray(scores[n]) >= threshold).astype(int) == y for n in names}
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pairs.append({
                "a": a, "b": b,
                "acc_a": float(correct[a].mean()), "acc_b": float(correct[b].mean()),
                "acc": mcnemar_exact(correct[a], correct[b]),
                "auc": delong_test(y, scores[a], scores[b]),
            })
    for metric in ("acc", "auc"):
        for pair, adjusted in zip(pairs, holm([p[metric]["p_value"] for p in pairs])):
            pair[metric]["p_holm"] = adjusted
            pair[metric]["distinguishable"] = adjusted < ALPHA
    return pairs

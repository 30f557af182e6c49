"""The bootstrap behind every interval: units of independence resampled, not images.

A patient's several radiographs, and copies of one picture, rise and fall together: resampling
images as if they were independent makes every interval too narrow (on data with 1-5 correlated
images per patient, a 95 % interval misses a third more often than it says). Here each resample
draws whole units (`data/units.py`) with replacement, within strata of units alike in what they
hold (their classes, and the splits they span), so every resample keeps both classes and about
the sizes of the original. Where every unit is one image this is the ordinary stratified
bootstrap.

A resample is a vector of counts, one per unit; a statistic that is a ratio of sums over images
(accuracy, sensitivity, a decomposition of them) is then one matrix product for all resamples
at once: `counts @ unit_sums`. The AUC, a sum over pairs, is computed per resample on image
weights (the count of each image's unit), tied scores sharing their mean rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
# Image weights are built for this many resamples at a time: memory stays bounded on large sets.
CHUNK = 256


@dataclass(frozen=True)
class Resampling:
    """`units[k]`: the unit (0..K-1) of image k; `strata[u]`: the stratum of unit u."""

    units: np.ndarray
    strata: np.ndarray
    seed: int
    resamples: int = BOOTSTRAP_RESAMPLES
    patients_known: bool = True

    @classmethod
    def of(
        cls,
        units: np.ndarray | None,
        labels: np.ndarray,
        seed: int,
        resamples: int = BOOTSTRAP_RESAMPLES,
        splits: np.ndarray | None = None,
        patients_known: bool = True,
    ) -> Resampling:
        """Units renumbered 0..K-1 (None: every image its own unit); each stratified by the set of
        (split, label) its images hold. `patients_known`: the units include patients (else only
        copies of one picture link images), which `describe` says."""
        known = units is not None and patients_known
        units = np.arange(len(labels)) if units is None else np.asarray(units)
        _, units = np.unique(units, return_inverse=True)
        splits = np.zeros(len(labels), int) if splits is None else np.asarray(splits)
        signature: dict[int, set] = {}
        for u, s, y in zip(units.tolist(), splits.tolist(), np.asarray(labels).tolist()):
            signature.setdefault(u, set()).add((s, y))
        kinds = {}
        strata = np.array([kinds.setdefault(tuple(sorted(signature[u])), len(kinds)) for u in range(units.max() + 1 if len(units) else 0)], int)
        return cls(units, strata, seed, resamples, known)

    @property
    def n_units(self) -> int:
        return len(self.strata)

    @property
    def clustered(self) -> bool:
        """Some unit holds several images: intervals must resample units."""
        return self.n_units < len(self.units)

    @cached_property
    def counts(self) -> np.ndarray:
        """(resamples, K): how often each unit is drawn; each stratum keeps its number of units.
        The same resamples serve every statistic of this data: paired by construction."""
        rng = np.random.default_rng(self.seed)
        counts = np.zeros((self.resamples, self.n_units), np.float64)
        rows = np.arange(self.resamples)[:, None]
        for stratum in range(int(self.strata.max()) + 1 if self.n_units else 0):
            members = np.flatnonzero(self.strata == stratum)
            drawn = rng.integers(0, len(members), (self.resamples, len(members)))
            tally = np.bincount((rows * len(members) + drawn).ravel(), minlength=self.resamples * len(members))
            counts[:, members] = tally.reshape(self.resamples, len(members))
        return counts

    def unit_sums(self, values: np.ndarray) -> np.ndarray:
        """(K, C): per unit, the sum of each column of `values` (N, C) over its images."""
        values = np.asarray(values, np.float64).reshape(len(self.units), -1)
        out = np.zeros((self.n_units, values.shape[1]))
        np.add.at(out, self.units, values)
        return out

    def resampled_sums(self, values: np.ndarray) -> np.ndarray:
        """(resamples, C): the column sums of `values` (N, C) in every resample."""
        return self.counts @ self.unit_sums(values)

    def image_weights(self) -> Iterator[np.ndarray]:
        """(chunk, N) image weights, CHUNK resamples at a time, in resample order."""
        for start in range(0, self.resamples, CHUNK):
            yield self.counts[start : start + CHUNK][:, self.units]

    def describe(self) -> str:
        """How the intervals were made, in words, for the tag `interval_method` and the report."""
        sizes = np.bincount(self.units)
        draws = f"{self.resamples:,} resamples, seed {self.seed}"
        if not self.clustered:
            who = "one image per patient" if self.patients_known else "patients unknown: images treated as independent"
            return f"exact ({who}); AUC: stratified bootstrap ({draws})"
        if not self.patients_known:
            return (
                f"bootstrap of {self.n_units:,} units (patients unknown: images treated as independent, but identical and near-identical "
                f"copies of one picture, up to {int(sizes.max())} images, as one; {draws})"
            )
        return f"patient bootstrap ({self.n_units:,} patients or copies of one picture, 1 to {int(sizes.max())} images each; {draws})"


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of bootstrap samples (NaNs, resamples where a ratio is undefined, left out)."""
    samples = np.asarray(samples, float)
    if not np.isfinite(samples).any():
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_p_value(samples: np.ndarray) -> float:
    """Two-sided p-value of 'the statistic is 0' from its bootstrap distribution: twice the
    smaller share of resamples on either side of 0 (the interval inversion), never below
    1 / (resamples + 1)."""
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return float("nan")
    side = min(np.sum(samples <= 0), np.sum(samples >= 0))
    return float(min(1.0, 2 * (side + 1) / (len(samples) + 1)))


def weighted_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC (Mann-Whitney, ties count half) of `score` for every row of image `weights` (R, N)."""
    y, score = np.asarray(y).astype(bool), np.asarray(score, float)
    order = np.argsort(score, kind="stable")
    s, positive = score[order], y[order]
    w = np.atleast_2d(weights)[:, order]
    negative_w = np.where(positive, 0.0, w)
    starts = np.r_[True, s[1:] != s[:-1]] if len(s) else np.zeros(0, bool)
    block = np.cumsum(starts) - 1
    ends = np.r_[np.flatnonzero(starts)[1:] - 1, len(s) - 1]
    through_block = np.cumsum(negative_w, axis=1)[:, ends]
    before_block = np.concatenate([np.zeros((len(w), 1)), through_block[:, :-1]], axis=1)
    in_block = through_block - before_block
    positive_w = np.where(positive, w, 0.0)
    pairs = (positive_w * (before_block[:, block] + 0.5 * in_block[:, block])).sum(axis=1)
    total = positive_w.sum(axis=1) * negative_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, pairs / np.where(total > 0, total, 1), np.nan)


def resampled_auc(resampling: Resampling, y: np.ndarray, *scores: np.ndarray) -> list[np.ndarray]:
    """Each score's AUC in every resample (the same resamples for all: paired)."""
    out: list[list[np.ndarray]] = [[] for _ in scores]
    for weights in resampling.image_weights():
        for k, score in enumerate(scores):
            out[k].append(weighted_auc(y, score, weights))
    return [np.concatenate(parts) for parts in out]

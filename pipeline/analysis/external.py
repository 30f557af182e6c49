"""Does the model hold at another hospital? One model's figures on an external set beside its
internal test set: the drop with intervals, the part of it the new class balance explains, the
threshold that would have kept the internal sensitivity, how far apart the two sets' images lie,
and which external images are not external at all (copies of training images, or its patients).

The two sets are independent samples: each is resampled by its own units (patients where known),
with its own seed, and the drop's interval is the percentile interval of the differences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from pipeline.analysis.resampling import Resampling, percentile_interval, resampled_auc
from pipeline.analysis.shift import domain_shift
from pipeline.analysis.uncertainty import metric_intervals
from pipeline.data.checks import ManifestRow
from pipeline.data.units import hash_bits, near_duplicate_index_pairs, patient_of

FIGURES = ("acc", "auc", "sensitivity", "specificity")


@dataclass(frozen=True)
class Scored:
    """One set as the model scored it: labels (1 = positive), positive probabilities, units."""

    y: np.ndarray
    p: np.ndarray
    resampling: Resampling


def figures(s: Scored, threshold: float, prefix: str) -> dict[str, float]:
    """Accuracy, AUC, sensitivity and specificity at `threshold`, each with its 95 % interval."""
    found = metric_intervals(s.y, s.p, threshold, s.resampling)
    out = {}
    for k in FIGURES:
        out[f"{prefix}_{k}"] = found[k].value
        out[f"{prefix}_{k}_ci_low"], out[f"{prefix}_{k}_ci_high"] = found[k].low, found[k].high
    return out


def _rates(s: Scored, threshold: float) -> np.ndarray:
    """(resamples + 1, 3): sensitivity, specificity and prevalence, as observed (row 0) and in
    every resample of the set's units."""
    called, positive = s.p >= threshold, s.y == 1
    columns = np.c_[called & positive, positive, ~called & ~positive, ~positive].astype(float)
    sums = np.vstack([columns.sum(0), s.resampling.resampled_sums(columns)])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.c_[sums[:, 0] / sums[:, 1], sums[:, 2] / sums[:, 3], sums[:, 1] / (sums[:, 1] + sums[:, 3])]


def _accuracy(sens, spec, prevalence):
    return prevalence * sens + (1 - prevalence) * spec


def drop(internal: Scored, external: Scored, threshold: float) -> dict[str, float]:
    """Internal minus external, accuracy (at `threshold`) and AUC, with intervals; and the part of
    the accuracy drop the class balance alone explains at fixed sensitivity and specificity,
    averaged over both orders (the internal rates at both balances, the external ones at both),
    so it does not depend on which set's rates are held."""
    a, b = _rates(internal, threshold), _rates(external, threshold)
    acc_a, acc_b = _accuracy(*a.T), _accuracy(*b.T)
    balance = ((_accuracy(a[:, 0], a[:, 1], a[:, 2]) - _accuracy(a[:, 0], a[:, 1], b[:, 2])) + (_accuracy(b[:, 0], b[:, 1], a[:, 2]) - acc_b)) / 2
    (auc_a,), (auc_b,) = resampled_auc(internal.resampling, internal.y, internal.p), resampled_auc(external.resampling, external.y, external.p)
    auc_internal, auc_external = roc_auc_score(internal.y, internal.p), roc_auc_score(external.y, external.p)
    out = {}
    for name, value, samples in (
        ("external_drop_acc", acc_a[0] - acc_b[0], acc_a[1:] - acc_b[1:]),
        ("external_drop_auc", auc_internal - auc_external, auc_a - auc_b),
        ("external_drop_acc_class_balance", balance[0], balance[1:]),
    ):
        out[name] = float(value)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = percentile_interval(samples)
    return out


def oracle_threshold(internal: Scored, external: Scored, threshold: float) -> dict[str, float]:
    """The highest threshold that would have found, on the external set, the share of the sick the
    model finds internally at `threshold`. Chosen on the external labels: an oracle that says how
    far the operating point moved, never a threshold to use (it is not stored with the model)."""
    positives = internal.y == 1
    target = float(np.mean(internal.p[positives] >= threshold)) if positives.any() else float("nan")
    sick = np.sort(external.p[external.y == 1])
    if not len(sick) or not np.isfinite(target):
        return {}
    keep = max(int(np.ceil(target * len(sick) - 1e-9)), 1)
    oracle = float(sick[len(sick) - keep])
    called = external.p >= oracle
    return {
        "external_oracle_threshold": oracle,
        "external_oracle_target_sensitivity": target,
        "external_specificity_at_oracle_threshold": float(np.mean(~called[external.y == 0])) if (external.y == 0).any() else float("nan"),
    }


def shift(internal_features: np.ndarray, external_features: np.ndarray, units: np.ndarray | None, seed: int) -> dict[str, float]:
    """`shift_auc`: how well a classifier tells the model's training images from the external ones
    by the model's own features, held out (`shift.domain_shift`), with its interval. 0.5: the two
    sets look alike to the model; an interval above 0.5: they differ in a way it can see.
    `units`: of both sets' images in order, so a patient or a copy in both stays on one side."""
    found = domain_shift(internal_features, external_features, seed, units)
    return {"shift_auc": found.value, "shift_auc_ci_low": found.low, "shift_auc_ci_high": found.high}


def image_statistics(images: np.ndarray, rows: list[ManifestRow]) -> dict[str, float]:
    """Mean intensity and contrast (of the model's inputs, 0-255), original size and aspect."""
    pixels = np.asarray(images, np.float32).reshape(len(images), -1)
    widths, heights = np.array([r.width for r in rows], float), np.array([r.height for r in rows], float)
    return {
        "n": len(rows),
        "intensity": float(pixels.mean()),
        "contrast": float(pixels.std(axis=1).mean()),
        "width": float(np.median(widths)),
        "height": float(np.median(heights)),
        "aspect": float(np.median(widths / np.maximum(heights, 1))),
    }


def shared_with_train(
    developed: list[ManifestRow], external: list[ManifestRow], patient_pattern: str, max_bits: int, same_source: bool
) -> list[dict]:
    """External images that the images the model was developed on (`developed`: its training and
    validation images, which chose its weights, epoch and threshold) make not external: identical
    pixels, a perceptual hash within `max_bits`, or, where both come from one source
    (`same_source`: patient ids mean the same patient only within one data set's naming), the same
    patient id. One entry per image, with every reason found, each naming the image and its split."""
    compiled = re.compile(patient_pattern) if patient_pattern else None
    pixels = {r.content_hash: r for r in developed}
    patients = {}
    for r in developed:
        if (patient := patient_of(r.path, r.patient, compiled)) is not None:
            patients.setdefault(patient, r)
    reasons: dict[int, list[str]] = {}
    for k, r in enumerate(external):
        if r.content_hash in pixels:
            reasons.setdefault(k, []).append(f"identical pixels to {_named(pixels[r.content_hash])}")
        if same_source and (patient := patient_of(r.path, r.patient, compiled)) is not None and patient in patients:
            reasons.setdefault(k, []).append(f"patient {patient}, as {_named(patients[patient])}")
    hashed = [r for r in developed if r.phash], [k for k, r in enumerate(external) if r.phash]
    if hashed[0] and hashed[1]:
        bits = hash_bits([r.phash for r in hashed[0]] + [external[k].phash for k in hashed[1]])
        i, j, distance = near_duplicate_index_pairs(bits, max_bits)
        n = len(hashed[0])
        for a, b, d in zip(i.tolist(), j.tolist(), distance.tolist()):
            if a < n <= b:  # a development image and an external one
                k = hashed[1][b - n]
                if not any(reason.startswith(("identical", "near-duplicate")) for reason in reasons.get(k, [])):
                    reasons.setdefault(k, []).append(f"near-duplicate ({d} bits) of {_named(hashed[0][a])}")
    return [{"path": external[k].path, "reasons": found} for k, found in sorted(reasons.items())]


def _named(row: ManifestRow) -> str:
    return f"{row.path} ({'training' if row.split == 'train' else 'validation'} image)"


def travel_finding(
    set_name: str, internal_auc: dict[str, float], external: dict[str, dict], external_pairs: list[dict], internal_pairs: list[dict]
) -> str:
    """Which model travels best to `set_name` (highest external AUC), whether that set tells it
    from the runner-up (the paired test on its images), and whether the internal test set could
    have told: did it rank the same model first, and did it tell the two apart?
    `external`: each model's external metrics; the pairs: `uncertainty.pairwise_tests` output."""

    def ci(m: dict, k: str) -> str:
        return f"{m[k]:.3f} [{m[f'{k}_ci_low']:.3f}, {m[f'{k}_ci_high']:.3f}]"

    ranked = sorted(external, key=lambda name: -external[name]["external_auc"])
    best = ranked[0]
    said = f"On {set_name}, {best} travels best: external AUC {ci(external[best], 'external_auc')}, {ci(external[best], 'external_drop_auc')} below its internal test"
    if len(ranked) == 1:
        return said + " (one model: nothing to compare it with)."
    second = ranked[1]
    outside, inside = _pair(external_pairs, best, second), _pair(internal_pairs, best, second)
    told = "tells it from" if outside["distinguishable"] else "cannot tell it from"
    said += f"; this set {told} {second} (AUC {external[second]['external_auc']:.3f}, paired p = {outside['p_holm']:.3g}, Holm)"
    internal_first = max(internal_auc, key=lambda name: internal_auc[name])
    if internal_first == best:
        said += f". The internal test set ranked {best} first too"
    else:
        said += f". The internal test set ranked {internal_first} first (AUC {internal_auc[internal_first]:.3f} against {internal_auc[best]:.3f}): it could not tell which model travels"
    if inside is not None:
        said += f", and {'told' if inside['distinguishable'] else 'did not tell'} {best} from {second} apart (p = {inside['p_holm']:.3g})"
    return said + "."


def _pair(pairs: list[dict], a: str, b: str) -> dict | None:
    """The AUC test of models `a` and `b` in `pairs`, whichever order it holds them in."""
    return next((p["auc"] for p in pairs if {p["a"], p["b"]} == {a, b}), None)

"""Why the test set disagrees: leakage, distribution shift, label noise and errors, as numbers.

Every function takes plain values (manifest rows, decoded images, predictions, features) and
returns plain values; `findings` turns the numbers into sentences. Nothing here guesses: a
finding cites its count and the files behind it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from itertools import combinations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.data.cache import resize_square
from pipeline.data.checks import SPLIT_ORDER, ManifestRow, describe_duplicates, describe_patients

# Images are reduced to 64 x 64 and hashed by their 16 x 16 lowest DCT frequencies (255 bits).
# The usual 8 x 8 pHash is too coarse for chest radiographs, which all look alike at that
# scale: on kermany-2400 it puts different children within 4 of 63 bits. At 16 x 16, distinct
# images stay 40 or more bits apart while re-encoded, resized or re-exposed copies move by 8 at
# most, so 16 bits separates the two with room on both sides.
HASH_SIZE = 64
HASH_BLOCK = 16
NEAR_DUPLICATE_BITS = 16


# -- leakage ----------------------------------------------------------------------------------


def _dct_matrix(n: int) -> np.ndarray:
    k, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.cos(np.pi / n * (x + 0.5) * k)


_DCT = _dct_matrix(HASH_SIZE)


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """pHash of each image: signs of the lowest DCT frequencies (DC left out) against their
    median, as booleans. Robust to re-encoding, resizing and small exposure changes."""
    small = np.stack([resize_square(np.asarray(img), HASH_SIZE) for img in images]).astype(np.float64)
    coefficients = _DCT @ small @ _DCT.T
    low = coefficients[:, :HASH_BLOCK, :HASH_BLOCK].reshape(len(images), HASH_BLOCK**2)[:, 1:]
    return low > np.median(low, axis=1, keepdims=True)


def near_duplicate_pairs(hashes: dict[str, np.ndarray], files: dict[str, list[str]], max_bits: int = NEAR_DUPLICATE_BITS) -> list[dict]:
    """Pairs of images in different splits whose hashes differ in at most `max_bits` bits."""
    pairs = []
    for a, b in combinations([s for s in SPLIT_ORDER if s in hashes], 2):
        ha, hb = hashes[a].astype(np.int32), hashes[b].astype(np.int32)
        for start in range(0, len(ha), 512):  # chunks keep the distance matrix small
            block = ha[start : start + 512]
            distance = block @ (1 - hb).T + (1 - block) @ hb.T
            for i, j in zip(*np.nonzero(distance <= max_bits)):
                pairs.append({"split_a": a, "file_a": files[a][start + i], "split_b": b, "file_b": files[b][j], "bits": int(distance[i, j])})
    return sorted(pairs, key=lambda p: (p["bits"], p["file_a"]))


def naive_patient_pattern(pattern: str) -> str | None:
    """The Kaggle key without the infection type (`person12`), to show what it would claim."""
    if "bacteria|virus" not in pattern:
        return None
    return r"^(?P<patient>person\d+)_(?:bacteria|virus)|^(?P<other>(?:NORMAL2-)?IM-\d+)"


def leakage(rows: list[ManifestRow], images: dict[str, np.ndarray], pattern: str) -> dict:
    files = {s: [r.path for r in rows if r.split == s] for s in images}
    hashes = {s: perceptual_hashes(images[s]) for s in images}
    exact = describe_duplicates(rows)
    near = near_duplicate_pairs(hashes, files)
    exact_pairs = {frozenset((f["path"] for f in g["files"])) for g in exact["across_splits"]}
    result = {
        "exact_duplicates_across_splits": exact["across_splits"],
        "n_exact_groups_across_splits": exact["n_groups_across_splits"],
        "near_duplicates_across_splits": near,
        "n_near_duplicate_pairs": len(near),
        "n_near_duplicate_pairs_not_exact": sum(frozenset((p["file_a"], p["file_b"])) not in exact_pairs for p in near),
        "near_duplicate_max_bits": NEAR_DUPLICATE_BITS,
        "patients": describe_patients(rows, pattern),
    }
    naive = naive_patient_pattern(pattern)
    if naive:
        # The naive key ignores the infection type: count what it would (wrongly) call shared.
        compiled = re.compile(naive)
        keys = defaultdict(set)
        for r in rows:
            m = compiled.search(r.path.rsplit("/", 1)[-1])
            if m and m.group("patient"):
                keys[r.split].add(m.group("patient"))
        result["naive_key_shared_patients"] = {f"{a}-{b}": len(keys[a] & keys[b]) for a, b in combinations([s for s in SPLIT_ORDER if s in keys], 2)}
    return result


# -- distribution shift -----------------------------------------------------------------------


def image_statistics(rows: list[ManifestRow], images: dict[str, np.ndarray]) -> dict:
    """Per split: original size, mean intensity and contrast (pixel standard deviation)."""
    stats = {}
    for split, array in images.items():
        split_rows = [r for r in rows if r.split == split]
        pixels = np.asarray(array, dtype=np.float32)
        per_image_mean, per_image_std = pixels.mean(axis=(1, 2)), pixels.std(axis=(1, 2))
        stats[split] = {
            "n": len(split_rows),
            "width_mean": float(np.mean([r.width for r in split_rows])),
            "height_mean": float(np.mean([r.height for r in split_rows])),
            "intensity_mean": float(per_image_mean.mean()),
            "intensity_sd_between_images": float(per_image_mean.std()),
            "contrast_mean": float(per_image_std.mean()),
        }
    return stats


def class_balance(rows: list[ManifestRow], positive: str) -> dict[str, float]:
    return {s: round(float(np.mean([r.label == positive for r in rows if r.split == s])), 4) for s in SPLIT_ORDER if any(r.split == s for r in rows)}


def domain_auc(train_features: np.ndarray, test_features: np.ndarray, seed: int = 0) -> float:
    """Cross-validated AUC of a logistic regression telling train images from test images by
    their backbone features: 0.5 means the two are indistinguishable (no shift)."""
    x = np.concatenate([train_features, test_features])
    y = np.r_[np.zeros(len(train_features)), np.ones(len(test_features))]
    folds = StratifiedKFold(n_splits=min(5, int(min(len(train_features), len(test_features)))), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced"))
    scores = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


# -- label noise and errors -------------------------------------------------------------------


def label_noise_candidates(predictions: dict[str, list[dict]], positive: str, confidence: float = 0.8) -> list[dict]:
    """Test images every model gets wrong, each with at least `confidence` in the wrong class.
    `predictions`: model name -> rows with `file`, `true_label`, `probability` (of `positive`)."""
    by_file: dict[str, list[float]] = defaultdict(list)
    truth = {}
    for rows in predictions.values():
        for r in rows:
            by_file[r["file"]].append(float(r["probability"]))
            truth[r["file"]] = r["true_label"]
    candidates = []
    for file, probs in by_file.items():
        if len(probs) < len(predictions):
            continue
        wrong_confidence = [p if truth[file] != positive else 1 - p for p in probs]
        if min(wrong_confidence) >= confidence:
            candidates.append({"file": file, "true_label": truth[file], "mean_probability_of_wrong_class": round(float(np.mean(wrong_confidence)), 4)})
    return sorted(candidates, key=lambda c: -c["mean_probability_of_wrong_class"])


def error_breakdown(models: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per model: false positives and negatives on test, and the validation - test gap (points).
    `models`: name -> val_acc, test_acc and the test counts fp, fn."""
    return {
        name: {
            "false_positives": int(m["fp"]),
            "false_negatives": int(m["fn"]),
            "val_acc": m["val_acc"],
            "test_acc": m["test_acc"],
            "val_minus_test_points": round(100 * (m["val_acc"] - m["test_acc"]), 1),
        }
        for name, m in models.items()
    }


# -- plain words ------------------------------------------------------------------------------


def findings(analysis: dict) -> list[str]:
    """Sentences built from the numbers, most telling first."""
    out = []
    errors = analysis.get("errors", {})
    if errors:
        gaps = {name: e["val_minus_test_points"] for name, e in errors.items()}
        mean_gap = float(np.mean(list(gaps.values())))
        low, high = min(gaps, key=gaps.get), max(gaps, key=gaps.get)
        direction = "above" if mean_gap >= 0 else "below"
        out.append(
            f"Validation accuracy is {abs(mean_gap):.1f} points {direction} test accuracy on average over {len(gaps)} models "
            f"(validation - test: {gaps[low]:+.1f} points for {low} to {gaps[high]:+.1f} for {high})."
        )
        fp, fn = sum(e["false_positives"] for e in errors.values()), sum(e["false_negatives"] for e in errors.values())
        if fp + fn:
            kind = "false positives (NORMAL called PNEUMONIA)" if fp > fn else "false negatives (PNEUMONIA missed)"
            out.append(f"Most test errors are {kind}: {fp} false positives against {fn} false negatives, summed over the models.")
    leak = analysis["leakage"]
    patients = leak["patients"]
    if patients.get("checked"):
        for pair, overlap in patients["overlap"].items():
            a, b = pair.split("-")
            if overlap["n_patients"]:
                out.append(f"{overlap['n_patients']} {b} patients also have images in {a} ({overlap['n_images'][b]} {b} images): those images test memory of a patient, not diagnosis.")
        naive = leak.get("naive_key_shared_patients", {})
        right = {pair: o["n_patients"] for pair, o in patients["overlap"].items()}
        for pair, count in naive.items():
            if count > right.get(pair, 0):
                a, b = pair.split("-")
                out.append(
                    f"Keyed by the number alone, {count} patients would seem shared by {a} and {b}; keyed as the Kaggle names require "
                    f"(number and infection type: person1_bacteria and person1_virus are two children) there are {right.get(pair, 0)}."
                )
    if leak["n_exact_groups_across_splits"] or leak["n_near_duplicate_pairs"]:
        out.append(
            f"{leak['n_exact_groups_across_splits']} groups of identical images and {leak['n_near_duplicate_pairs_not_exact']} further near-identical pairs "
            f"(perceptual hashes within {leak['near_duplicate_max_bits']} of 255 bits) cross split boundaries."
        )
    balance = analysis["shift"]["class_balance"]
    if "train" in balance and "test" in balance:
        out.append(f"PNEUMONIA is {100 * balance['train']:.0f} % of train and {100 * balance['test']:.0f} % of test.")
    auc = analysis["shift"].get("domain_auc")
    if auc is not None:
        verdict = "clearly distinguishable: the test set comes from a shifted distribution" if auc >= 0.7 else "hard to tell apart: little sign of distribution shift" if auc < 0.6 else "somewhat distinguishable: a mild shift"
        out.append(f"A classifier on {analysis['shift']['domain_features']} features tells train from test images with AUC {auc:.2f} (0.5 = no difference): {verdict}.")
    stats = analysis["shift"]["image_statistics"]
    if "train" in stats and "test" in stats:
        t, s = stats["train"], stats["test"]
        out.append(f"Mean intensity is {t['intensity_mean']:.1f} in train and {s['intensity_mean']:.1f} in test; contrast {t['contrast_mean']:.1f} and {s['contrast_mean']:.1f}.")
    noise = analysis.get("label_noise_candidates")
    if noise is not None:
        out.append(
            f"{len(noise)} test images are misclassified by every model with at least {int(100 * analysis['label_noise_confidence'])} % confidence: "
            "candidates for label noise, shown in label_noise_candidates.png for review."
        )
    return out


def render(analysis: dict, max_listed: int = 30) -> str:
    lines = ["# Test-set analysis", "", "## Findings", ""] + [f"- {f}" for f in analysis["findings"]]
    leak = analysis["leakage"]
    lines += ["", "## Leakage", "", "| splits | shared patients | exact duplicate groups | near-duplicate pairs |", "|---|---|---|---|"]
    patients = leak["patients"].get("overlap", {})
    for a, b in combinations(SPLIT_ORDER, 2):
        pair = f"{a}-{b}"
        exact = sum({f["split"] for f in g["files"]} >= {a, b} for g in leak["exact_duplicates_across_splits"])
        near = sum({p["split_a"], p["split_b"]} == {a, b} for p in leak["near_duplicates_across_splits"])
        lines.append(f"| {a} & {b} | {patients.get(pair, {}).get('n_patients', 'n/a')} | {exact} | {near} |")
    if leak["near_duplicates_across_splits"]:
        lines += ["", "Near-duplicate pairs (Hamming distance of the perceptual hashes):", ""]
        lines += [f"- `{p['file_a']}` ~ `{p['file_b']}` ({p['bits']} bits)" for p in leak["near_duplicates_across_splits"][:max_listed]]
    shift = analysis["shift"]
    lines += ["", "## Distribution shift", "", "| split | % PNEUMONIA | images | mean width | mean height | mean intensity | contrast |", "|---|---|---|---|---|---|---|"]
    for split, s in shift["image_statistics"].items():
        lines.append(f"| {split} | {100 * shift['class_balance'][split]:.1f} | {s['n']} | {s['width_mean']:.0f} | {s['height_mean']:.0f} | {s['intensity_mean']:.1f} | {s['contrast_mean']:.1f} |")
    if shift.get("domain_auc") is not None:
        lines += ["", f"Train vs test, classifier on {shift['domain_features']} features: AUC {shift['domain_auc']:.3f}."]
    if analysis.get("errors"):
        lines += ["", "## Errors on test", "", "| model | false positives | false negatives | val acc | test acc | val - test (points) |", "|---|---|---|---|---|---|"]
        for name, e in analysis["errors"].items():
            lines.append(f"| {name} | {e['false_positives']} | {e['false_negatives']} | {e['val_acc']:.3f} | {e['test_acc']:.3f} | {e['val_minus_test_points']:.1f} |")
    noise = analysis.get("label_noise_candidates") or []
    lines += ["", f"## Label-noise candidates: {len(noise)}", ""]
    lines += [f"- `{c['file']}` labelled {c['true_label']}, wrong class at {c['mean_probability_of_wrong_class']:.2f}" for c in noise[:max_listed]]
    return "\n".join(lines) + "\n"

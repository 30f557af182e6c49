"""The errors the models make on test: label-noise candidates and the error breakdown per model."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


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
            candidates.append(
                {"file": file, "true_label": truth[file], "mean_probability_of_wrong_class": round(float(np.mean(wrong_confidence)), 4)}
            )
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

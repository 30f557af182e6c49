"""The comparison table (Markdown and CSV), the paired tests, the seeds' spread and the ranking on
validation: plain rows in, text out."""

from __future__ import annotations

import csv
import io

import numpy as np

# Accuracy, sensitivity and specificity at the model's operating threshold: the one `predict`
# and the served model call labels at. The figures at 0.5 are in comparison.csv, labelled.
COLUMNS = [
    ("mode", "mode"),
    ("backbone", "backbone"),
    ("lr", "lr (how chosen)"),
    ("operating_threshold", "threshold"),
    ("train_acc_at_val_threshold", "train acc"),
    ("val_acc_at_val_threshold", "val acc"),
    ("test_acc_at_val_threshold", "test acc [95 % CI]"),
    ("test_auc", "test AUC [95 % CI]"),
    ("test_sensitivity_at_val_threshold", "sensitivity [95 % CI]"),
    ("test_specificity_at_val_threshold", "specificity [95 % CI]"),
    ("seeds", "test acc / AUC over seeds (mean +- sd)"),
    ("train_time_s", "training time (s)"),
    ("features_s", "feature extraction (s)"),
    ("epochs_run", "epochs run"),
]
WITH_INTERVAL = {"test_acc_at_val_threshold", "test_auc", "test_sensitivity_at_val_threshold", "test_specificity_at_val_threshold"}
TABLE_NOTES = (
    "Accuracy, sensitivity and specificity at each model's operating threshold (chosen on validation, stored with the model, used by "
    "predict and the served model); comparison.csv also holds them at 0.5 (test_acc, test_sensitivity, test_specificity). "
    "Intervals: 95 %, as the row's interval method says (a patient bootstrap where patients have several images, else exact "
    "Clopper-Pearson; AUC by bootstrap); two models whose intervals overlap may still differ, and the paired tests below are the ones to read. "
    "Training time: the train run's own wall clock (loading cached features included). Feature extraction: "
    "frozen mode's one-off cost, measured in the train run itself, or, marked *, measured earlier in the run "
    "that extracted the features (comparison.csv names it) and reused here."
)


def cell(key: str, row: dict) -> str:
    value = row.get(key)
    if key == "seeds":
        spread = row.get("seed_spread") or {}
        if spread.get("n", 1) < 2:
            return ""
        return (
            f"{spread['test_acc_at_val_threshold_mean']:.3f} +- {spread['test_acc_at_val_threshold_sd']:.3f} / "
            f"{spread['test_auc_mean']:.3f} +- {spread['test_auc_sd']:.3f} (n {spread['n']})"
        )
    if key == "features_s":
        if row.get("feature_extraction_s") is not None:
            return f"{row['feature_extraction_s']:.1f}"
        if row.get("cached_features_cost_s") is not None:
            return f"{row['cached_features_cost_s']:.1f}*"
        return ""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if key == "lr":
        return f"{value:.3g} ({row.get('lr_source', '?')})"
    if key == "train_time_s":
        return f"{value:.1f}"
    if key == "operating_threshold":
        return f"{value:.3g}"
    if key in WITH_INTERVAL and row.get(f"{key}_ci_low") is not None:
        return f"{value:.3f} [{row[f'{key}_ci_low']:.3f}, {row[f'{key}_ci_high']:.3f}]"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def with_seed_spread(primary: list[dict], every: list[dict]) -> list[dict]:
    """Each configuration's first-seed row, with mean and sd of its figures over all its seeds."""
    out = []
    for row in primary:
        same = [r for r in every if (r["backbone"], r["mode"]) == (row["backbone"], row["mode"])]
        spread = {"n": len(same)}
        for key in ("test_acc_at_val_threshold", "test_auc", "val_acc_at_val_threshold"):
            values = np.array([r[key] for r in same], dtype=float)
            spread[f"{key}_mean"] = float(values.mean())
            spread[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append({**row, "seed_spread": spread})
    return out


def table_markdown(rows: list[dict]) -> str:
    columns = [(k, t) for k, t in COLUMNS if k != "seeds" or any(r.get("seed_spread", {}).get("n", 1) > 1 for r in rows)]
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(k, r) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + TABLE_NOTES + "\n"


def pairwise_markdown(pairs: list[dict], heading: str = "## Can this test set tell them apart?", images: str = "test images") -> str:
    """Every pair of configurations on the same images: can this set tell them apart?"""
    if not pairs:
        return ""
    lines = [
        heading,
        "",
        f"Paired on the same {images}, each model at its own threshold: accuracy by {pairs[0]['acc']['method']}, AUC by "
        f"{pairs[0]['auc']['method']}; p-values also Holm-adjusted for the number of pairs. Distinguishable: adjusted p < 0.05.",
        "",
        "| A | B | accuracy A / B | right only A / only B | p (Holm) | accuracy | AUC A / B | AUC difference [95 % CI] | p (Holm) | AUC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
        acc, auc = p["acc"], p["auc"]
        lines.append(
            f"| {p['a']} | {p['b']} | {p['acc_a']:.3f} / {p['acc_b']:.3f} | {acc['only_a_right']} / {acc['only_b_right']} "
            f"| {acc['p_value']:.3g} ({acc['p_holm']:.3g}) | {'distinguishable' if acc['distinguishable'] else 'not distinguishable'} "
            f"| {auc['auc_a']:.3f} / {auc['auc_b']:.3f} | {auc['difference']:+.3f} [{auc['ci_low']:+.3f}, {auc['ci_high']:+.3f}] "
            f"| {auc['p_value']:.3g} ({auc['p_holm']:.3g}) | {'distinguishable' if auc['distinguishable'] else 'not distinguishable'} |"
        )
    return "\n".join(lines) + "\n"


def external_markdown(sets: dict[str, dict]) -> str:
    """Per external set: each model's internal test and external figures with 95 % intervals,
    the drops, calibration, the shift and the images not external at all; the paired tests on
    the set's images; the finding."""
    out = []
    for s in sets.values():
        out += [
            f"## Does it hold at another hospital? {s['source']}",
            "",
            f"{s['n_images']} external images, each model at its stored operating threshold; intervals: {s['interval_method']}. "
            "Drop: internal test minus external (two independent samples); class balance: the part of the accuracy drop the "
            "new share of positives explains. Shift: a classifier on the model's features telling its training images from "
            "these (0.5: alike).",
            "",
            "| model | internal test AUC | external AUC | AUC drop | internal accuracy | external accuracy | accuracy drop "
            "| of it, class balance | ECE internal / external | shift AUC | shared with training |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in s["models"].items():
            out.append(
                f"| {name} | {_ci(m, 'internal_auc')} | {_ci(m, 'external_auc')} | {_ci(m, 'external_drop_auc')} | {_ci(m, 'internal_acc')} "
                f"| {_ci(m, 'external_acc')} | {_ci(m, 'external_drop_acc')} | {_ci(m, 'external_drop_acc_class_balance')} "
                f"| {m['internal_ece']:.3f} / {m['external_ece']:.3f} | {_ci(m, 'shift_auc')} | {int(m['external_n_shared_with_train'])} |"
            )
        out += ["", pairwise_markdown(s["pairwise"], f"### Can {s['source']} tell them apart?", "external images"), s["finding"], ""]
    return "\n".join(out) + ("\n" if out else "")


def _ci(m: dict, key: str) -> str:
    if m.get(key) is None:
        return "n/a"
    return f"{m[key]:.3f} [{m[f'{key}_ci_low']:.3f}, {m[f'{key}_ci_high']:.3f}]"


CSV_EXTRA = [
    "seed_index",
    "train_seed",
    "lr_source",
    "interval_method",
    *(f"{k}_ci_{side}" for k in sorted(WITH_INTERVAL) for side in ("low", "high")),
    "test_acc",
    "test_sensitivity",
    "test_specificity",
    *(f"test_{k}_ci_{side}" for k in ("acc", "sensitivity", "specificity") for side in ("low", "high")),
    "feature_extraction_s",
    "cached_features_cost_s",
    "cached_features_measured_in",
    "main_run_id",
    "train_run_id",
    "evaluate_run_id",
]


def table_csv(rows: list[dict]) -> str:
    """Every configuration and seed, one row each, values as logged."""
    out = io.StringIO()
    writer = csv.writer(out)
    keys = [k for k, _ in COLUMNS if k not in ("seeds", "features_s")] + CSV_EXTRA
    writer.writerow(keys)
    for r in rows:
        writer.writerow([r.get(k) for k in keys])
    return out.getvalue()


def rank_on_validation(rows: list[dict]) -> list[str]:
    """Configurations best first by validation AUC, then validation accuracy: the champion is
    chosen on validation, never on test."""
    ordered = sorted(rows, key=lambda r: (r.get("val_auc") if r.get("val_auc") is not None else -1, r["val_acc"]), reverse=True)
    return [label(r) for r in ordered]


def label(row: dict) -> str:
    return f"{row['backbone']} ({row['mode']})"

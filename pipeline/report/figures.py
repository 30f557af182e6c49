"""The comparison's figures: learning curves, accuracy and time, the gap's waterfall,
reliability and ROC curves; each returns a matplotlib Figure."""

from __future__ import annotations

import io

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from pipeline import plots
from pipeline.report.tables import label


def learning_curves_figure(rows: list[dict]):
    """All configurations on one page: accuracy and loss, train (dashed) vs validation (solid)."""
    fig, (acc_ax, loss_ax) = plots.plt.subplots(1, 2, figsize=(13, 5))
    colours = plots.plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, row in enumerate(rows):
        history, colour = row["history"], colours[k % len(colours)]
        epochs = [h["epoch"] for h in history]
        for ax, metric in ((acc_ax, "acc"), (loss_ax, "loss")):
            ax.plot(epochs, [h[f"train_{metric}"] for h in history], "--", color=colour, alpha=0.7)
            ax.plot(epochs, [h[f"val_{metric}"] for h in history], "-o", color=colour, markersize=3, label=label(row))
    for ax, name in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        ax.xaxis.set_major_locator(plots.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"{name}: validation (solid) and train (dashed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_and_time_figure(rows: list[dict]):
    """Accuracy per configuration (test with its 95 % interval; with several seeds, validation and
    test also show +- 1 sd over seeds as a black bar) and the training time."""
    fig, (acc_ax, time_ax) = plots.plt.subplots(1, 2, figsize=(12, 4.5))
    names = [label(r) for r in rows]
    x = np.arange(len(rows))
    width = 0.27
    test_key = "test_acc_at_val_threshold"
    for offset, key, name in (
        (-width, "train_acc_at_val_threshold", "train"),
        (0, "val_acc_at_val_threshold", "validation"),
        (width, test_key, "test"),
    ):
        values = np.array([r[key] for r in rows], dtype=float)
        error = None
        if key == test_key and all(r.get(f"{test_key}_ci_low") is not None for r in rows):
            error = np.array(
                [[v - r[f"{test_key}_ci_low"] for v, r in zip(values, rows)], [r[f"{test_key}_ci_high"] - v for v, r in zip(values, rows)]]
            )
        acc_ax.bar(x + offset, values, width, label=name + (" (95 % CI)" if error is not None else ""), yerr=error, capsize=3)
        spreads = [r.get("seed_spread") or {} for r in rows]
        if key != "train_acc_at_val_threshold" and any(sp.get("n", 1) > 1 for sp in spreads):
            acc_ax.errorbar(
                x + offset + width / 4,
                [sp.get(f"{key}_mean", np.nan) for sp in spreads],
                yerr=[sp.get(f"{key}_sd", 0) for sp in spreads],
                fmt="o",
                color="black",
                markersize=3,
                capsize=2,
                label=f"{name}: mean +- sd over seeds",
            )
    acc_ax.set_xticks(x, names, rotation=20, ha="right")
    acc_ax.set_ylim(0, 1)
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_title("accuracy of the kept model at its threshold")
    acc_ax.legend(loc="lower center", ncol=2, fontsize=7, framealpha=0.9)
    train_s = np.array([r["train_time_s"] for r in rows], dtype=float)
    time_ax.bar(x, train_s, color="grey", label="train run's wall clock")
    extraction = np.array([r.get("feature_extraction_s") or r.get("cached_features_cost_s") or 0.0 for r in rows], dtype=float)
    if extraction.any():
        # Extraction measured in the train run is inside its wall clock already: shown as part of it.
        inside = np.array([r.get("feature_extraction_s") is not None for r in rows])
        time_ax.bar(
            x,
            np.where(inside, 0, extraction),
            bottom=train_s,
            color="white",
            edgecolor="grey",
            hatch="//",
            label="frozen features, extracted in an earlier run (its measured cost)",
        )
    time_ax.set_xticks(x, names, rotation=20, ha="right")
    time_ax.set_ylabel("seconds")
    time_ax.set_title("training time")
    time_ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def gap_waterfall_figure(gap: dict[str, dict]):
    """Per model, validation accuracy stepping down to test accuracy cause by cause (accuracy at
    the model's threshold; each step with its 95 % interval): where the gap comes from."""
    names = list(gap)
    fig, axes = plots.plt.subplots(1, max(1, len(names)), figsize=(4.6 * max(1, len(names)), 4.2), squeeze=False)
    causes = [("leakage", "leakage"), ("prevalence", "prevalence"), ("residual", "residual"), ("seen_in_test", "seen in test")]  # key, label
    for ax, name in zip(axes.flat, names):
        g = gap[name]
        level = 100 * g["threshold"]["val_acc_at_threshold"]
        ax.bar(0, level, color="tab:blue", width=0.6)
        for k, (cause, _) in enumerate(causes, start=1):
            c = g["causes"][cause]
            step = -c["value"]  # a cause that widens the gap lowers the level
            colour = "tab:red" if c["verdict"] == "supported" else "tab:green" if c["verdict"] == "against" else "lightgrey"
            ax.bar(k, step, bottom=level, color=colour, width=0.6)
            if np.isfinite(c["ci_low"]):
                ax.errorbar(k, level + step, yerr=[[c["ci_high"] - c["value"]], [c["value"] - c["ci_low"]]], color="black", capsize=3)
            top = max(level, level + step, level - c["ci_low"] if np.isfinite(c["ci_low"]) else level)
            ax.text(k, top + 0.3, f"{c['value']:+.1f}\n{c['verdict']}", ha="center", va="bottom", fontsize=6)
            level += step
        ax.bar(len(causes) + 1, 100 * g["threshold"]["test_acc_at_threshold"], color="tab:blue", width=0.6)
        ax.set_xticks(range(len(causes) + 2), ["val acc"] + [w for _, w in causes] + ["test acc"], rotation=30, ha="right", fontsize=7)
        low = 100 * min(g["threshold"]["val_acc_at_threshold"], g["threshold"]["test_acc_at_threshold"]) - 15
        ax.set_ylim(max(0, low), 101)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{name}\nthreshold {g['threshold']['operating_threshold']:.3g}", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "validation to test, cause by cause (red: supported, green: against, grey: ruled out or undecided; bars: 95 % intervals)", fontsize=8
    )
    fig.tight_layout()
    return fig


def reliability_figure(gap: dict[str, dict]):
    """Reliability diagrams, validation and test: accuracy against confidence of the predicted
    class; points below the diagonal are overconfidence."""
    fig, axes = plots.plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, split in zip(axes, ("val", "test")):
        ax.plot([0.5, 1], [0.5, 1], ":", color="grey", label="perfectly calibrated")
        for name, g in gap.items():
            c = g["calibration"][split]
            curve = c["reliability"]
            ax.plot(
                [b["confidence"] for b in curve],
                [b["accuracy"] for b in curve],
                "-o",
                markersize=3,
                label=f"{name}: ECE {c['ece']:.3f}, Brier {c['brier']:.3f}",
            )
        ax.set_xlim(0.5, 1.0)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence of the predicted class")
        ax.set_ylabel("accuracy")
        ax.set_title(f"reliability, {'validation' if split == 'val' else 'test'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def roc_figure(rows: list[dict], positive: str):
    curves = {}
    for row in rows:
        y = np.array([p["true_label"] == positive for p in row["test_predictions"]], dtype=int)
        score = np.array([float(p["probability"]) for p in row["test_predictions"]])
        fpr, tpr, _ = roc_curve(y, score)
        curves[label(row)] = (fpr, tpr, roc_auc_score(y, score))
    return plots.roc_curves(curves, "test set ROC curves")


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plots.close(fig)
    return buffer.getvalue()

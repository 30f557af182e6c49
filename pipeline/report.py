"""The comparison report: one row per configuration, the figures side by side, one HTML page.

Takes plain rows (read from the tracking store by `tracking.comparison`) and returns text and
figures; the compare step writes and logs them.
"""

from __future__ import annotations

import base64
import csv
import html
import io

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from pipeline import plots
from pipeline.analysis.shortcuts import shortcut_verdict

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


def _cell(key: str, row: dict) -> str:
    value = row.get(key)
    if key == "seeds":
        spread = row.get("seed_spread") or {}
        if spread.get("n", 1) < 2:
            return ""
        return (f"{spread['test_acc_at_val_threshold_mean']:.3f} +- {spread['test_acc_at_val_threshold_sd']:.3f} / "
                f"{spread['test_auc_mean']:.3f} +- {spread['test_auc_sd']:.3f} (n {spread['n']})")
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
    lines += ["| " + " | ".join(_cell(k, r) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + TABLE_NOTES + "\n"


def pairwise_markdown(pairs: list[dict]) -> str:
    """Every pair of configurations on the same test images: can this test set tell them apart?"""
    if not pairs:
        return ""
    lines = [
        "## Can this test set tell them apart?",
        "",
        f"Paired on the same test images, each model at its own threshold: accuracy by {pairs[0]['acc']['method']}, AUC by "
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


CSV_EXTRA = ["seed_index", "train_seed", "lr_source", "interval_method", *(f"{k}_ci_{side}" for k in sorted(WITH_INTERVAL) for side in ("low", "high")),
             "test_acc", "test_sensitivity", "test_specificity", *(f"test_{k}_ci_{side}" for k in ("acc", "sensitivity", "specificity") for side in ("low", "high")),
             "feature_extraction_s", "cached_features_cost_s", "cached_features_measured_in", "main_run_id", "train_run_id", "evaluate_run_id"]


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


def model_card(row: dict, study: dict, data: dict) -> str:
    """What a user of this model needs to know, in Markdown: data, patient handling, training,
    test figures with intervals, threshold, calibration, shortcut check, known limits.
    `data`: name, digest, split sizes, the validation plan and who the images are of (`population`)."""
    name = label(row)
    ci = lambda k: (f"{row[k]:.3f} [{row[f'{k}_ci_low']:.3f}, {row[f'{k}_ci_high']:.3f}]" if row.get(f"{k}_ci_low") is not None  # noqa: E731
                    else f"{row[k]:.3f}")
    shortcuts = (study.get("shortcuts") or {}).get(name)
    gap = (study.get("gap") or {}).get(name, {})
    calibration = (f"temperature {row['temperature']:.3f} fitted on validation (expected calibration error "
                   f"{row['val_ece_before_calibration']:.3f} -> {row['val_ece_after_calibration']:.3f}, the latter cross-fitted on folds of validation)"
                   if row.get("temperature") else
                   "not calibrated (calibrate=false)")
    if gap:
        calibration += (f"; on test: expected calibration error {gap['calibration']['test']['ece']:.3f}, Brier score "
                        f"{gap['calibration']['test']['brier']:.3f}")
    lines = [
        f"# Model card: {row['backbone']}, {row['mode']}",
        "",
        "Classifies a chest radiograph as NORMAL or PNEUMONIA. Research use only: not a medical device.",
        "",
        "## Data",
        f"- data set: {data['name']} (digest `{data['digest']}`), {data['sizes']}",
        f"- validation: {data['validation']}",
        "",
        "## Training",
        f"- backbone {row['backbone']} ({row['mode']}), weights {row.get('weights_key')}, lr {row['lr']:.3g} ({row.get('lr_source')}), "
        f"{row['epochs_run']} epochs run of {row.get('epochs')}, kept at the lowest validation loss",
        f"- runs: train `{row['train_run_id']}`, evaluate `{row['evaluate_run_id']}`",
        "",
        f"## Test figures at the operating threshold {row['operating_threshold']:.4g} (95 % intervals)" if row.get("operating_threshold") is not None
        else "## Test figures at 0.5 (no threshold stored; 95 % intervals)",
        f"- accuracy {ci('test_acc_at_val_threshold')}, sensitivity {ci('test_sensitivity_at_val_threshold')}, "
        f"specificity {ci('test_specificity_at_val_threshold')}; AUC {ci('test_auc')} (any threshold)",
        f"- at 0.5, for comparison only (not how the model is used): accuracy {ci('test_acc')}, sensitivity {ci('test_sensitivity')}, "
        f"specificity {ci('test_specificity')}",
        f"- intervals: {row.get('interval_method') or 'exact / bootstrap of images'}",
        f"- validation at the threshold: accuracy {row['val_acc_at_val_threshold']:.3f}" + (f", AUC {row['val_auc']:.3f}" if row.get("val_auc") is not None else ""),
        "",
        "## Operating point and calibration",
        f"- threshold {row['operating_threshold']:.4g}: {row.get('operating_threshold_rule')}; predict and mlflow models serve use it unless told otherwise"
        if row.get("operating_threshold") is not None else "- threshold 0.5 (none stored)",
        f"- {calibration}",
        "",
        "## Shortcut check",
        shortcut_card_line(shortcuts) if shortcuts else "- not run",
        "",
        "## Known limits",
        f"- {data['population']}",
        "- Test figures hold for images like the test set's; its class balance and any patients it shares with train are in the report.",
        *[f"- {f}" for f in study.get("findings", []) if f.startswith(name)],
        "",
    ]
    return "\n".join(lines)


def shortcut_card_line(check: dict) -> str:
    """The occlusion figures under both fills, and the verdict they support."""
    def iv(key: str) -> str:
        c = check.get(key)
        return f"{c['value']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]" if c else "-"

    kind, why = shortcut_verdict(check)
    return (f"- test AUC with the lungs hidden {iv('lungs_hidden')} (training mean grey) / {iv('lungs_hidden_fill_visible')} (visible part's mean), "
            f"with only the lungs shown {iv('outside_hidden')} / {iv('outside_hidden_fill_visible')}\n"
            f"- verdict: {kind.replace('_', ' ')} ({why})")


def population(name: str, kaggle_names: bool) -> str:
    """What the card can say of whom the images show."""
    if name == "demo":
        return "Trained on the synthetic demo set: drawn images, not radiographs of patients; a demonstration only."
    if kaggle_names:
        return ("Trained and tested on one data set with the Kaggle / Kermany file names: paediatric radiographs (1 to 5 years) from one "
                "centre (Guangzhou Women and Children's Medical Center); adults, other hospitals, machines and protocols may behave differently.")
    return f"Trained and tested on one data set ({name}); other hospitals, machines and populations may behave differently."


def label(row: dict) -> str:
    return f"{row['backbone']} ({row['mode']})"


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
    for offset, key, name in ((-width, "train_acc_at_val_threshold", "train"), (0, "val_acc_at_val_threshold", "validation"), (width, test_key, "test")):
        values = np.array([r[key] for r in rows], dtype=float)
        error = None
        if key == test_key and all(r.get(f"{test_key}_ci_low") is not None for r in rows):
            error = np.array([[v - r[f"{test_key}_ci_low"] for v, r in zip(values, rows)], [r[f"{test_key}_ci_high"] - v for v, r in zip(values, rows)]])
        acc_ax.bar(x + offset, values, width, label=name + (" (95 % CI)" if error is not None else ""), yerr=error, capsize=3)
        spreads = [r.get("seed_spread") or {} for r in rows]
        if key != "train_acc_at_val_threshold" and any(sp.get("n", 1) > 1 for sp in spreads):
            acc_ax.errorbar(x + offset + width / 4, [sp.get(f"{key}_mean", np.nan) for sp in spreads], yerr=[sp.get(f"{key}_sd", 0) for sp in spreads],
                            fmt="o", color="black", markersize=3, capsize=2, label=f"{name}: mean +- sd over seeds")
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
        time_ax.bar(x, np.where(inside, 0, extraction), bottom=train_s, color="white", edgecolor="grey", hatch="//",
                    label="frozen features, extracted in an earlier run (its measured cost)")
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
    causes = [("leakage", "leakage"), ("prevalence", "prevalence"), ("residual", "residual"), ("seen_in_test", "seen in test")]
    for ax, name in zip(axes.flat, names):
        g = gap[name]
        level = 100 * g["threshold"]["val_acc_at_threshold"]
        ax.bar(0, level, color="tab:blue", width=0.6)
        for k, (cause, words) in enumerate(causes, start=1):
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
    fig.suptitle("validation to test, cause by cause (red: supported, green: against, grey: ruled out or undecided; bars: 95 % intervals)", fontsize=8)
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
            ax.plot([b["confidence"] for b in curve], [b["accuracy"] for b in curve], "-o", markersize=3,
                    label=f"{name}: ECE {c['ece']:.3f}, Brier {c['brier']:.3f}")
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


def _verdict_cells(v: dict) -> list[str]:
    size = "" if v["value"] is None else f"{v['value']:.3g} [{v['ci_low']:.3g}, {v['ci_high']:.3g}]"
    rate = "" if v["false_cause_rate"] is None else f"{v['false_cause_rate']:.2f}"
    return [v["model"], v["cause"], size, v["verdict"], rate]


def html_page(title: str, rows: list[dict], pairs: list[dict], figures: dict[str, bytes], analysis_markdown: str, findings: list[str],
              verdicts: list[dict]) -> str:
    """One self-contained page: the answer (the verdicts), the table, the paired tests, the
    figures (embedded) and the analysis."""
    verdict_rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in _verdict_cells(v)) + "</tr>" for v in verdicts)
    columns = [(k, t) for k, t in COLUMNS if k != "seeds" or any(r.get("seed_spread", {}).get("n", 1) > 1 for r in rows)]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(k, r))}</td>" for k, _ in columns) + "</tr>" for r in rows)
    pair_rows = "".join(
        f"<tr><td>{html.escape(p['a'])}</td><td>{html.escape(p['b'])}</td><td>{p['acc_a']:.3f} / {p['acc_b']:.3f}</td>"
        f"<td>{p['acc']['p_value']:.3g} ({p['acc']['p_holm']:.3g})</td><td>{'yes' if p['acc']['distinguishable'] else 'no'}</td>"
        f"<td>{p['auc']['auc_a']:.3f} / {p['auc']['auc_b']:.3f}</td><td>{p['auc']['p_value']:.3g} ({p['auc']['p_holm']:.3g})</td>"
        f"<td>{'yes' if p['auc']['distinguishable'] else 'no'}</td></tr>"
        for p in pairs
    )
    images = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name, png in figures.items()
    )
    items = "".join(f"<li>{html.escape(f)}</li>" for f in findings)
    pair_method = f"accuracy by {pairs[0]['acc']['method']}, AUC by {pairs[0]['auc']['method']}" if pairs else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th {{ background: #f0f0f0; }} td:nth-child(-n+2) {{ text-align: left; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }}
pre {{ background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>The answer: why the test set disagrees</h2>
<table id="verdicts"><thead><tr><th>model</th><th>cause</th><th>size [95 % CI]</th><th>verdict</th><th>false-cause rate (this design)</th></tr></thead><tbody>{verdict_rows}</tbody></table>
<h2>Configurations</h2>
<table id="comparison"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p>{html.escape(TABLE_NOTES)}</p>
<h2>Can this test set tell them apart?</h2>
<p>Paired on the same test images, each model at its own threshold: {html.escape(pair_method)}; p-values with their Holm adjustment in brackets; distinguishable when the adjusted p &lt; 0.05.</p>
<table id="pairwise"><thead><tr><th>A</th><th>B</th><th>accuracy A / B</th><th>p (Holm)</th><th>accuracy distinguishable</th><th>AUC A / B</th><th>p (Holm)</th><th>AUC distinguishable</th></tr></thead><tbody>{pair_rows}</tbody></table>
<h2>Why the test set disagrees</h2>
<ul id="findings">{items}</ul>
<h2>Figures</h2>
{images}
<h2>Test-set analysis in full</h2>
<pre>{html.escape(analysis_markdown)}</pre>
</body></html>
"""

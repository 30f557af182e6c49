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

COLUMNS = [
    ("mode", "mode"),
    ("backbone", "backbone"),
    ("lr", "tuned lr"),
    ("train_acc", "train acc"),
    ("val_acc", "val acc"),
    ("test_acc", "test acc"),
    ("test_auc", "test AUC"),
    ("test_sensitivity", "sensitivity"),
    ("test_specificity", "specificity"),
    ("train_time_s", "training time (s)"),
    ("epochs_run", "epochs run"),
]


def _cell(key: str, value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if key == "lr":
        return f"{value:.3g}"
    if key == "train_time_s":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def table_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def table_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([k for k, _ in COLUMNS] + ["main_run_id", "train_run_id", "evaluate_run_id"])
    for r in rows:
        writer.writerow([r.get(k) for k, _ in COLUMNS] + [r.get("main_run_id"), r.get("train_run_id"), r.get("evaluate_run_id")])
    return out.getvalue()


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
    fig, (acc_ax, time_ax) = plots.plt.subplots(1, 2, figsize=(12, 4.5))
    names = [label(r) for r in rows]
    x = np.arange(len(rows))
    width = 0.27
    for offset, key, name in ((-width, "train_acc", "train"), (0, "val_acc", "validation"), (width, "test_acc", "test")):
        acc_ax.bar(x + offset, [r[key] for r in rows], width, label=name)
    acc_ax.set_xticks(x, names, rotation=20, ha="right")
    acc_ax.set_ylim(0, 1)
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_title("accuracy of the kept model")
    acc_ax.legend(loc="lower center", ncol=3, fontsize=8, framealpha=0.9)
    time_ax.bar(x, [r["train_time_s"] for r in rows], color="grey")
    time_ax.set_xticks(x, names, rotation=20, ha="right")
    time_ax.set_ylabel("seconds")
    time_ax.set_title("wall-clock training time (feature extraction included)")
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


def html_page(title: str, rows: list[dict], figures: dict[str, bytes], analysis_markdown: str, findings: list[str]) -> str:
    """One self-contained page: the table, the figures (embedded) and the analysis."""
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(k, r.get(k)))}</td>" for k, _ in COLUMNS) + "</tr>" for r in rows)
    images = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name, png in figures.items()
    )
    items = "".join(f"<li>{html.escape(f)}</li>" for f in findings)
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
<h2>Configurations</h2>
<table id="comparison"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Why the test set disagrees</h2>
<ul id="findings">{items}</ul>
<h2>Figures</h2>
{images}
<h2>Test-set analysis in full</h2>
<pre>{html.escape(analysis_markdown)}</pre>
</body></html>
"""

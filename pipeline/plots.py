"""Figures of one run: learning curves, confusion matrix, ROC curve, tuning history.

Each function takes plain values and returns a matplotlib Figure; the caller logs or saves it.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no screen needed; figures are only ever written to files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def learning_curves(history: list[dict], title: str = "", best_epoch: int | None = None):
    """Two panels, accuracy and loss, train vs validation, per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((acc_ax, "acc", "accuracy"), (loss_ax, "loss", "loss")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"val_{metric}"] for h in history], "s-", label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix(matrix: np.ndarray, classes: list[str], title: str = ""):
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    return fig


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str = "ROC curve"):
    """`curves`: name -> (false positive rates, true positive rates, AUC)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)


def optimisation_history(trials: list[dict]):
    """Each finished trial's best validation loss by trial number, and the best so far.
    `trials`: dicts with `number`, `lr`, `value` (None when pruned without one) and `state`."""
    fig, ax = plt.subplots(figsize=(6, 4))
    done = sorted((t for t in trials if t["value"] is not None), key=lambda t: t["number"])
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        points = [t for t in done if t["state"] == state]
        ax.plot([t["number"] for t in points], [t["value"] for t in points], marker, linestyle="none", label=state.lower())
    complete = [t for t in done if t["state"] == "COMPLETE"]
    if complete:
        best, running = [], float("inf")
        for t in complete:
            running = min(running, t["value"])
            best.append(running)
        ax.step([t["number"] for t in complete], best, where="post", color="black", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation loss")
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def loss_against_lr(trials: list[dict]):
    fig, ax = plt.subplots(figsize=(6, 4))
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        points = [t for t in trials if t["state"] == state and t["value"] is not None]
        ax.plot([t["lr"] for t in points], [t["value"] for t in points], marker, linestyle="none", label=state.lower())
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss")
    ax.set_title("validation loss against learning rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def occlusion_inputs(images: list[np.ndarray], titles: list[str], box: tuple[int, int, int, int], title: str = ""):
    """The same radiograph as is, lungs hidden, outside hidden, with the lung box drawn
    (`box`: rows r0:r1, columns c0:c1)."""
    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.6), squeeze=False)
    r0, r1, c0, c1 = box
    for ax, image, caption in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.add_patch(plt.Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="tab:orange", linewidth=1.5))
        ax.set_title(caption, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def image_grid(images: list[np.ndarray], titles: list[str], columns: int = 6, title: str = ""):
    """Grey images with a caption each, for review by eye."""
    if not images:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}: none", ha="center", va="center")
        return fig
    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def reliability(curves: dict[str, list[dict]], title: str = ""):
    """Reliability diagrams on one axis: accuracy against the confidence of the predicted class,
    one curve per label (points below the diagonal are overconfidence)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ax.plot([0.5, 1], [0.5, 1], ":", color="grey", label="perfectly calibrated")
    for label, curve in curves.items():
        ax.plot([b["confidence"] for b in curve], [b["accuracy"] for b in curve], "-o", markersize=3, label=label)
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

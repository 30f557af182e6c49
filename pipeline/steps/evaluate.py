"""evaluate: score the kept model of a train run on train, val and test (no augmentation).

Inputs: `model_uri` (models:/..., runs:/.../model) or `train_run_id`; the data are those the
train run used, read back from the cache.
Outputs (run `<backbone>-<mode>-evaluate`): `train_acc`, `val_acc`, `test_acc`, `test_loss`,
`test_auc`, `test_f1`, `test_precision`, `test_sensitivity`, `test_specificity` (positive class
PNEUMONIA, threshold 0.5); `val_threshold`, the model's operating threshold chosen on the
validation set and stored with it by the train run (Youden's J, or its `target_sensitivity`;
tag `val_threshold_rule`),
and `test_sensitivity_at_val_threshold`,
`test_specificity_at_val_threshold`, `test_acc_at_val_threshold`; 95 % intervals
`<metric>_ci_low` / `<metric>_ci_high` beside `test_acc`, `test_auc`, `test_sensitivity` and
`test_specificity` (exact for proportions, stratified bootstrap for AUC); on the images whose
patient (or exact pixels) train does not hold, `val_acc_unseen_patients` and
`test_acc_unseen_patients` with their counts `val_n_unseen_patients`, `test_n_unseen_patients`
(and `_seen_` beside them); the shortcut check `test_auc_lungs_hidden` and
`test_auc_outside_hidden` with their intervals (`analysis/shortcuts.py`); `saliency_in_lung_box`
(share of the Grad-CAM heat inside the lung box, over the test set) and `plots/gradcam.png`
(a seeded sample of each outcome; `analysis/saliency.py`); tags `device` (and
`device_fallback`, with the reason, where the model could not move to it); artifacts
`plots/confusion_matrix.png`, `plots/roc_curve.png`, `plots/occlusion.png`,
`predictions/test.csv` and `val.csv` (file, true label, probability, predicted label).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from sklearn.metrics import confusion_matrix, roc_curve

from pipeline import plots, tracking
from pipeline.analysis.saliency import gradcam, last_conv_layer, outcome_sample, overlay, share_in_box
from pipeline.analysis.shortcuts import box_pixels, hide_lungs, hide_outside
from pipeline.analysis.uncertainty import auc_interval, metric_intervals
from pipeline.config import DataConfig, EvaluateConfig, UserError, boolean, from_params
from pipeline.models import build_classifier, resolve_weights
from pipeline.data import prepare_dataset
from pipeline.data.checks import seen_in_train
from pipeline.engine import Device, pick_device, predict_proba
from pipeline.metrics import binary_scores, log_loss, operating_threshold, positive_index
from pipeline.steps.prepare import data_params

SPLITS = ("train", "val", "test")


@dataclass
class Evaluated:
    run_id: str
    metrics: dict[str, float]
    reused: bool


def train_run_of(config: EvaluateConfig):
    """The train run behind the model, and the model's URI."""
    if bool(config.model_uri) == bool(config.train_run_id):
        raise UserError("evaluate needs exactly one of model_uri and train_run_id")
    if config.train_run_id:
        run = tracking.get_run(config.train_run_id)
        if "model_uri" not in run.data.tags:
            raise UserError(f"run {config.train_run_id} has no model: is it a finished train run?")
        return run, run.data.tags["model_uri"]
    try:
        source = mlflow.models.get_model_info(config.model_uri).run_id
    except Exception as e:
        raise UserError(f"cannot find model {config.model_uri!r}: {str(e).splitlines()[0]}") from None
    return tracking.get_run(source), config.model_uri


def load_model(model_uri: str, device: Device) -> tuple[torch.nn.Module, Device, str | None]:
    """The model on `device`, or, where it will not move there (an exported program is bound
    to the device it was exported on), on the CPU with the reason: said, never silent."""
    model = mlflow.pytorch.load_model(model_uri)
    if device.type == "cpu":
        return model, device, None
    try:
        return model.to(device.torch_device), device, None
    except Exception as e:
        return model, Device(torch.device("cpu")), f"the logged model cannot move to {device.type} ({type(e).__name__}: {str(e)[:200]}); scored on the CPU"


def score(y_index: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float = 0.5) -> dict[str, float]:
    pos = positive_index(classes)
    return binary_scores((y_index == pos).astype(int), probs[:, pos], threshold)


def run(config: EvaluateConfig, reuse: bool = False) -> Evaluated:
    train_run, model_uri = train_run_of(config)
    settings = json.loads(train_run.data.tags["settings"])
    (data_cfg,) = from_params(settings, DataConfig)
    prep = prepare_dataset(data_cfg)
    if prep.data.digest != train_run.data.params["data_digest"]:
        raise UserError(
            f"the data at {prep.data.source} changed since train run {train_run.info.run_id} "
            f"(digest {prep.data.digest}, trained on {train_run.data.params['data_digest']}); evaluate on the data it was trained on"
        )
    backbone, mode = train_run.data.tags.get("backbone"), train_run.data.tags.get("mode")
    params = {"model_uri": model_uri, "train_run_id": train_run.info.run_id}
    device = pick_device(settings.get("device", "auto"))
    key = tracking.input_key("evaluate", {**params, "device": device.type}, prep.data.digest)
    if reuse and (previous := tracking.find_reusable("evaluate", key)):
        return Evaluated(previous.info.run_id, previous.data.metrics, reused=True)
    with tracking.step_run("evaluate", backbone, mode) as active:
        mlflow.set_tag("input_key", key)
        tracking.log_params({**params, **data_params(prep)})
        tracking.log_dataset(prep.name, prep.data.source, prep.data.digest, prep.data.split_sizes)
        model, device, fallback = load_model(model_uri, device)
        mlflow.set_tag("device", device.type)
        if fallback:
            mlflow.set_tag("device_fallback", fallback)
            print(f"note: {fallback}", flush=True)
        classes, data = prep.data.classes, prep.data
        probs = {s: predict_proba(model, data.images(s), 64, device) for s in SPLITS}
        labels = {s: data.labels(s) for s in SPLITS}
        scores = {s: score(labels[s], probs[s], classes) for s in SPLITS}
        threshold, rule = model_threshold(train_run, labels["val"] == positive_index(classes), probs["val"][:, positive_index(classes)])
        mlflow.set_tag("val_threshold_rule", rule)
        at_val = score(labels["test"], probs["test"], classes, threshold)
        pos = positive_index(classes)
        intervals = metric_intervals(labels["test"] == pos, probs["test"][:, pos], 0.5, data_cfg.seed)
        metrics = {
            "train_acc": scores["train"]["acc"],
            "val_acc": scores["val"]["acc"],
            "val_auc": scores["val"]["auc"],
            "test_loss": log_loss(labels["test"], probs["test"]),
            **{f"test_{k}": scores["test"][k] for k in ("acc", "auc", "f1", "precision", "sensitivity", "specificity")},
            "val_threshold": threshold,
            **{f"test_{k}_at_val_threshold": at_val[k] for k in ("acc", "sensitivity", "specificity")},
            **{f"test_{k}_ci_{side}": getattr(interval, side) for k, interval in intervals.items() for side in ("low", "high")},
            **patient_disjoint_metrics(data.manifest(), labels, probs, classes, data_cfg.patient_pattern),
            **occlusion_metrics(model, data.images("test"), labels["test"] == pos, pos, device, data_cfg.seed),
            **saliency_metrics(train_run, settings, data, probs["test"][:, pos] >= 0.5, data_cfg.seed),
        }
        mlflow.log_metrics(metrics)
        _log_figures(labels, probs, classes, scores, threshold, f"{backbone} ({mode})")
        for split in ("val", "test"):
            tracking.log_text(_predictions_csv(data.files(split), labels[split], probs[split], classes, threshold), f"predictions/{split}.csv")
    ci = lambda k: f"{metrics[f'test_{k}']:.3f} [{metrics[f'test_{k}_ci_low']:.3f}, {metrics[f'test_{k}_ci_high']:.3f}]"
    print(
        f"test acc {ci('acc')}, AUC {ci('auc')}, sensitivity {ci('sensitivity')}, specificity {ci('specificity')} "
        f"(95 % intervals; at the validation threshold {threshold:.3f}: "
        f"{metrics['test_sensitivity_at_val_threshold']:.3f} / {metrics['test_specificity_at_val_threshold']:.3f})"
    )
    return Evaluated(active.info.run_id, metrics, reused=False)


def model_threshold(train_run, y_val: np.ndarray, p_val: np.ndarray) -> tuple[float, str]:
    """The threshold the model is used at: the one its train run chose on validation and stored
    with it; a model logged without one (not by the train step) gets Youden's J on validation."""
    if "operating_threshold" in train_run.data.metrics:
        return train_run.data.metrics["operating_threshold"], train_run.data.tags["operating_threshold_rule"]
    return operating_threshold(y_val.astype(int), p_val, None)


OCCLUSIONS = {"lungs_hidden": hide_lungs, "outside_hidden": hide_outside}


def occlusion_metrics(model, images: np.ndarray, positive: np.ndarray, pos: int, device: Device, seed: int) -> dict[str, float]:
    """The shortcut check: test AUC with the lung box hidden and with all but it hidden, with
    95 % intervals; and the figure of the three inputs."""
    metrics = {}
    for name, hide in OCCLUSIONS.items():
        auc = auc_interval(positive, predict_proba(model, hide(images), 64, device)[:, pos], seed)
        metrics.update({f"test_auc_{name}": auc.value, f"test_auc_{name}_ci_low": auc.low, f"test_auc_{name}_ci_high": auc.high})
    example = np.asarray(images[:1])
    figure = plots.occlusion_inputs(
        [example[0], hide_lungs(example)[0], hide_outside(example)[0]],
        ["as is", f"lungs hidden: AUC {metrics['test_auc_lungs_hidden']:.3f}", f"outside hidden: AUC {metrics['test_auc_outside_hidden']:.3f}"],
        box_pixels(*example.shape[1:]),
        "shortcut check: the test set scored three ways (lung box in orange)",
    )
    tracking.log_figure(figure, "plots/occlusion.png")
    plots.close(figure)
    return metrics


SALIENCY_PER_OUTCOME = 2


def saliency_metrics(train_run, settings: dict, data, called: np.ndarray, seed: int) -> dict[str, float]:
    """Grad-CAM of the kept classifier (rebuilt from the train run's checkpoints/best.pt: the
    exported model has no gradients): the share of heat in the lung box over the whole test set,
    and a grid of a seeded sample of each outcome."""
    if not tracking.has_artifact(train_run.info.run_id, "checkpoints/best.pt"):
        mlflow.set_tag("saliency", "not computed: the train run has no checkpoints/best.pt")
        return {}
    pos = positive_index(data.classes)
    classifier = build_classifier(settings["backbone"], resolve_weights(settings["backbone"], "none", 0), len(data.classes),
                                  boolean("frozen", settings["frozen"]), 0)
    classifier.load_state_dict(torch.load(io.BytesIO(tracking.download(train_run.info.run_id, "checkpoints/best.pt")), map_location="cpu", weights_only=True))
    images, y = np.asarray(data.images("test")), data.labels("test") == pos
    heat = gradcam(classifier.cpu(), images, pos)
    sample = outcome_sample(y, called, SALIENCY_PER_OUTCOME, seed)
    figure = plots.image_grid(
        [overlay(images[k], heat[k]) for _, k in sample], [f"{outcome}\n{Path(data.files('test')[k]).name}" for outcome, k in sample],
        columns=4, title=f"Grad-CAM ({type(last_conv_layer(classifier)).__name__} last layer) on test images, red = where the model looks",
    )
    tracking.log_figure(figure, "plots/gradcam.png")
    plots.close(figure)
    return {"saliency_in_lung_box": float(np.nanmean(share_in_box(heat)))}


def patient_disjoint_metrics(rows, labels: dict, probs: dict, classes: list[str], pattern: str) -> dict[str, float]:
    """Accuracy of val and test on images of patients train has seen and of those it has not."""
    metrics, pos = {}, positive_index(classes)
    for split in ("val", "test"):
        seen = seen_in_train(rows, split, pattern)
        right = (probs[split][:, pos] >= 0.5) == (labels[split] == pos)
        for name, members in (("seen", seen), ("unseen", ~seen)):
            metrics[f"{split}_n_{name}_patients"] = int(members.sum())
            if members.any():
                metrics[f"{split}_acc_{name}_patients"] = float(right[members].mean())
    return metrics


def _log_figures(labels, probs, classes, scores, threshold, title) -> None:
    pos = positive_index(classes)
    matrix = confusion_matrix(labels["test"], probs["test"].argmax(1), labels=list(range(len(classes))))
    figure = plots.confusion_matrix(matrix, classes, f"test set, {title}")
    tracking.log_figure(figure, "plots/confusion_matrix.png")
    plots.close(figure)
    curves = {}
    for split in ("val", "test"):
        fpr, tpr, _ = roc_curve(labels[split] == pos, probs[split][:, pos])
        curves[split] = (fpr, tpr, scores[split]["auc"])
    figure = plots.roc_curves(curves, f"ROC, {title}; validation threshold {threshold:.3f}")
    tracking.log_figure(figure, "plots/roc_curve.png")
    plots.close(figure)


def _predictions_csv(files: list[str], labels: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float) -> str:
    pos = positive_index(classes)
    other = 1 - pos if len(classes) == 2 else None
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["file", "true_label", "probability", "predicted_label", "predicted_label_at_val_threshold"])
    for file, y, p in zip(files, labels, probs):
        at_threshold = classes[pos] if p[pos] >= threshold else classes[other if other is not None else int(p.argmax())]
        writer.writerow([file, classes[y], f"{p[pos]:.6f}", classes[int(p.argmax())], at_threshold])
    return out.getvalue()


def main(config: EvaluateConfig) -> None:
    run(config)

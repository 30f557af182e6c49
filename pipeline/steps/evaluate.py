"""evaluate: score the kept model of a train run on train, val and test (no augmentation).

Inputs: `model_uri` (models:/..., runs:/.../model) or `train_run_id`; the data are those the
train run used, read back from the cache.
Outputs (run `<backbone>-<mode>-evaluate`):
- at the model's operating threshold (chosen on validation by the train run and stored with the
  model: Youden's J or its `target_sensitivity`; metric `val_threshold`, tag
  `val_threshold_rule`), as `predict` and the served model call labels: `train_acc_at_val_threshold`,
  `val_acc_at_val_threshold`, `test_acc_at_val_threshold`, `test_sensitivity_at_val_threshold`,
  `test_specificity_at_val_threshold`, the test ones with `_ci_low` / `_ci_high`;
- at 0.5, labelled by their plain names: `train_acc`, `val_acc`, `test_acc`, `test_f1`,
  `test_precision`, `test_sensitivity`, `test_specificity` (with intervals); threshold-free:
  `val_auc`, `test_auc` (with interval), `test_loss`; positive class PNEUMONIA;
- 95 % intervals as the tag `interval_method` says: a patient bootstrap where some patient (or
  picture, or near-copy) has several test images, else exact (Clopper-Pearson) for proportions
  and a stratified bootstrap for AUC;
- on the images whose unit train does not hold, `val_acc_unseen_patients` and
  `test_acc_unseen_patients` with their counts `val_n_unseen_patients`, `test_n_unseen_patients`
  (and `_seen_` beside them), at the operating threshold;
- the shortcut check (`analysis/shortcuts.py`): `test_auc_lungs_hidden`, `test_auc_outside_hidden`
  (hidden parts filled with the training set's mean grey), the same with `_fill_visible` (filled
  with the visible part's mean), `test_auc_loss_outside_hidden[_fill_visible]` (the AUC lost with
  only the lung box shown), each with its interval; tag `shortcut_verdict` (lung_box,
  without_lung_box or cannot_tell);
- `saliency_in_lung_box` (share of the Grad-CAM heat inside the lung box, over the test set) and
  `plots/gradcam.png` (a seeded sample of each outcome; `analysis/saliency.py`);
- tags `device` (and `device_fallback`, with the reason, where the model could not move to it);
  artifacts `plots/confusion_matrix.png`, `plots/roc_curve.png`, `plots/occlusion.png`,
  `predictions/test.csv` and `val.csv` (file, true label, probability, predicted label at 0.5
  and at the operating threshold).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from sklearn.metrics import confusion_matrix, roc_curve

from pipeline import plots, tracking
from pipeline.analysis.resampling import Resampling
from pipeline.analysis.saliency import gradcam, last_conv_layer, outcome_sample, overlay, share_in_box
from pipeline.analysis.shortcuts import box_pixels, occluded_inputs, occlusion_check, occlusion_intervals, shortcut_verdict, training_grey
from pipeline.analysis.uncertainty import metric_intervals
from pipeline.cli import from_params
from pipeline.data import prepare_dataset
from pipeline.data.checks import patients_known, units_of
from pipeline.engine.device import Device, pick_device
from pipeline.engine.loop import predict_proba
from pipeline.errors import UserError
from pipeline.metrics import binary_scores, log_loss, operating_threshold, positive_index
from pipeline.models import build_classifier, resolve_weights
from pipeline.parsers import boolean
from pipeline.settings import DataConfig, EvaluateConfig
from pipeline.steps.prepare import data_params

log = logging.getLogger(__name__)

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
        return (
            model,
            Device(torch.device("cpu")),
            f"the logged model cannot move to {device.type} ({type(e).__name__}: {str(e)[:200]}); scored on the CPU",
        )


def score(y_index: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float = 0.5) -> dict[str, float]:
    pos = positive_index(classes)
    return binary_scores((y_index == pos).astype(int), probs[:, pos], threshold)


def run(config: EvaluateConfig, reuse: bool = False) -> Evaluated:
    train_run, model_uri = train_run_of(config)
    settings = json.loads(train_run.data.tags["settings"])
    (data_cfg,) = from_params(settings, DataConfig)
    prep = prepare_dataset(data_cfg)
    if prep.dataset.digest != train_run.data.params["data_digest"]:
        raise UserError(
            f"the data at {prep.dataset.source} changed since train run {train_run.info.run_id} "
            f"(digest {prep.dataset.digest}, trained on {train_run.data.params['data_digest']}); evaluate on the data it was trained on"
        )
    backbone, mode = train_run.data.tags.get("backbone"), train_run.data.tags.get("mode")
    params = {"model_uri": model_uri, "train_run_id": train_run.info.run_id}
    device = pick_device(settings.get("device", "auto"), precision=settings.get("precision", "auto"))
    key = tracking.input_key("evaluate", {**params, "device": device.type}, prep.dataset.digest)
    if reuse and (previous := tracking.find_reusable("evaluate", key)):
        return Evaluated(previous.info.run_id, previous.data.metrics, reused=True)
    with tracking.step_run("evaluate", backbone, mode) as active:
        mlflow.set_tag("input_key", key)
        tracking.log_params({**params, **data_params(prep)})
        tracking.log_settings(params)
        tracking.log_dataset(prep.name, prep.dataset.source, prep.dataset.digest, prep.dataset.split_sizes)
        model, device, fallback = load_model(model_uri, device)
        mlflow.set_tag("device", device.type)
        if fallback:
            mlflow.set_tag("device_fallback", fallback)
            log.info(f"note: {fallback}")
        classes, data = prep.dataset.classes, prep.dataset
        pos = positive_index(classes)
        probs = {s: predict_proba(model, data.images(s), 64, device) for s in SPLITS}
        labels = {s: data.labels(s) for s in SPLITS}
        scores = {s: score(labels[s], probs[s], classes) for s in SPLITS}
        threshold, rule = model_threshold(train_run, labels["val"] == pos, probs["val"][:, pos])
        mlflow.set_tag("val_threshold_rule", rule)
        at_val = {s: score(labels[s], probs[s], classes, threshold) for s in SPLITS}
        rows = data.manifest()
        units = units_of(rows, data_cfg.patient_pattern, data_cfg.near_duplicate_bits)
        test_units = units[[r.split == "test" for r in rows]]
        resampling = Resampling.of(test_units, labels["test"] == pos, data_cfg.seed, patients_known=patients_known(rows, data_cfg.patient_pattern))
        mlflow.set_tag("interval_method", resampling.describe())
        y_test, p_test = labels["test"] == pos, probs["test"][:, pos]
        intervals = {
            "": metric_intervals(y_test, p_test, 0.5, resampling),
            "_at_val_threshold": metric_intervals(y_test, p_test, threshold, resampling),
        }
        metrics = {
            "train_acc": scores["train"]["acc"],
            "val_acc": scores["val"]["acc"],
            "val_auc": scores["val"]["auc"],
            "test_loss": log_loss(labels["test"], probs["test"]),
            **{f"test_{k}": scores["test"][k] for k in ("acc", "auc", "f1", "precision", "sensitivity", "specificity")},
            "val_threshold": threshold,
            **{f"{s}_acc_at_val_threshold": at_val[s]["acc"] for s in ("train", "val")},
            **{f"test_{k}_at_val_threshold": at_val["test"][k] for k in ("acc", "sensitivity", "specificity")},
            **{
                f"test_{k}{at}_ci_{side}": getattr(interval, side)
                for at, found in intervals.items()
                for k, interval in found.items()
                if not (at and k == "auc")
                for side in ("low", "high")
            },
            **patient_disjoint_metrics(rows, units, labels, probs, classes, threshold),
            **occlusion_metrics(model, data.images("test"), y_test, p_test, pos, device, training_grey(data.images("train")), resampling),
            **saliency_metrics(
                rebuilt_classifier(train_run, settings, len(classes)),
                classes,
                data.images("test"),
                y_test,
                data.files("test"),
                p_test >= threshold,
                data_cfg.seed,
            ),
        }
        mlflow.log_metrics(metrics)
        mlflow.set_tag("shortcut_verdict", shortcut_verdict(occlusion_intervals(metrics, "test"))[0])
        _log_figures(labels, probs, classes, scores, threshold, f"{backbone} ({mode})")
        for split in ("val", "test"):
            tracking.log_text(_predictions_csv(data.files(split), labels[split], probs[split], classes, threshold), f"predictions/{split}.csv")
    ci = lambda k: f"{metrics[f'test_{k}']:.3f} [{metrics[f'test_{k}_ci_low']:.3f}, {metrics[f'test_{k}_ci_high']:.3f}]"  # noqa: E731
    log.info(
        f"at the operating threshold {threshold:.3f} ({rule}): test acc {ci('acc_at_val_threshold')}, sensitivity {ci('sensitivity_at_val_threshold')}, "
        f"specificity {ci('specificity_at_val_threshold')}; AUC {ci('auc')} (95 % intervals: {resampling.describe()})"
    )
    return Evaluated(active.info.run_id, metrics, reused=False)


def model_threshold(train_run, y_val: np.ndarray, p_val: np.ndarray) -> tuple[float, str]:
    """The threshold the model is used at: the one its train run chose on validation and stored
    with it; a model logged without one (not by the train step) gets Youden's J on validation."""
    if "operating_threshold" in train_run.data.metrics:
        return train_run.data.metrics["operating_threshold"], train_run.data.tags["operating_threshold_rule"]
    return operating_threshold(y_val.astype(int), p_val, None)


def occlusion_metrics(
    model,
    images: np.ndarray,
    y: np.ndarray,
    p_full: np.ndarray,
    pos: int,
    device: Device,
    train_grey: float,
    resampling: Resampling,
    prefix: str = "test",
) -> dict[str, float]:
    """The shortcut check: AUC with the lung box hidden and with all but it hidden, under both
    fills (the training set's mean grey; the visible part's mean), with 95 % intervals, and the
    AUC the box alone loses; and the figure of the inputs."""
    inputs = occluded_inputs(images, train_grey)
    occluded = {name: predict_proba(model, x, 64, device)[:, pos] for name, x in inputs.items()}
    check = occlusion_check(y, p_full, occluded, resampling)
    metrics = {
        f"{prefix}_auc_{name}{suffix}": check[name][key]
        for name in check
        if name != "full"
        for suffix, key in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high"))
    }
    example = np.asarray(images[:1])
    shown = {name: inputs[name][:1] for name in inputs}
    figure = plots.occlusion_inputs(
        [example[0]] + [shown[name][0] for name in inputs],
        ["as is"] + [f"{name.replace('_fill_visible', ' (visible mean)').replace('_', ' ')}: AUC {check[name]['value']:.3f}" for name in inputs],
        box_pixels(*example.shape[1:]),
        f"shortcut check: the {prefix} set scored five ways (lung box in orange; fill: training mean grey {train_grey:.0f}, or the visible part's mean)",
    )
    tracking.log_figure(figure, "plots/occlusion.png")
    plots.close(figure)
    return metrics


SALIENCY_PER_OUTCOME = 2


def rebuilt_classifier(train_run, settings: dict, n_classes: int):
    """The kept classifier as a module with gradients and features, rebuilt from the train run's
    checkpoints/best.pt (the exported model has neither); None where the run has no checkpoint."""
    if not tracking.has_artifact(train_run.info.run_id, "checkpoints/best.pt"):
        return None
    classifier = build_classifier(
        settings["backbone"], resolve_weights(settings["backbone"], "none", 0), n_classes, boolean("frozen", settings["frozen"]), 0
    )
    classifier.load_state_dict(
        torch.load(io.BytesIO(tracking.download(train_run.info.run_id, "checkpoints/best.pt")), map_location="cpu", weights_only=True)
    )
    return classifier.cpu()


def saliency_metrics(
    classifier,
    classes: list[str],
    images: np.ndarray,
    y: np.ndarray,
    files: list[str],
    called: np.ndarray,
    seed: int,
    split: str = "test",
) -> dict[str, float]:
    """Grad-CAM of the kept classifier (`rebuilt_classifier`; None: not computed): the share of heat
    in the lung box over all of `images`, and a grid of a seeded sample of each outcome (`y`: truly
    positive, `called`: called positive)."""
    if classifier is None:
        mlflow.set_tag("saliency", "not computed: the train run has no checkpoints/best.pt")
        return {}
    images = np.asarray(images)
    heat = gradcam(classifier, images, positive_index(classes))
    sample = outcome_sample(y, called, SALIENCY_PER_OUTCOME, seed)
    figure = plots.image_grid(
        [overlay(images[k], heat[k]) for _, k in sample],
        [f"{outcome}\n{Path(files[k]).name}" for outcome, k in sample],
        columns=4,
        title=f"Grad-CAM ({type(last_conv_layer(classifier)).__name__} last layer) on {split} images, red = where the model looks",
    )
    tracking.log_figure(figure, "plots/gradcam.png")
    plots.close(figure)
    return {"saliency_in_lung_box": float(np.nanmean(share_in_box(heat)))}


def patient_disjoint_metrics(rows, units: np.ndarray, labels: dict, probs: dict, classes: list[str], threshold: float) -> dict[str, float]:
    """Accuracy (at the operating threshold) of val and test on images whose unit train holds
    (patient, identical picture, near-duplicate) and of those it does not."""
    metrics, pos = {}, positive_index(classes)
    in_train = set(units[[r.split == "train" for r in rows]].tolist())
    for split in ("val", "test"):
        seen = np.isin(units[[r.split == split for r in rows]], list(in_train))
        right = (probs[split][:, pos] >= threshold) == (labels[split] == pos)
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

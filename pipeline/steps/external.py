"""external: score a trained model on another data set (another hospital): its figures there, the drop from its internal test set, and how far apart the two sets' images lie.

Inputs: `model_uri` (models:/..., runs:/.../model) or `train_run_id`; `data_dir`, any source
`prepare` reads (a Kaggle folder, a label table of PNG/JPEG/DICOM, a MedMNIST `.npz`), read at the
model's image size; `external_split`: all its labelled images (all) or only its test split (test).
Outputs (run `<backbone>-<mode>-external`, a child of the model's main run, tags `train_run_id`,
`model_uri`, `external_data_digest`), at the model's stored operating threshold:
- `external_acc`, `external_auc`, `external_sensitivity`, `external_specificity` and the internal
  test set's `internal_*` beside them, each with `_ci_low` / `_ci_high` (patient bootstrap where
  patients are known: tag `interval_method`);
- `external_drop_acc`, `external_drop_auc` (internal minus external, two independent samples) and
  `external_drop_acc_class_balance` (the part the new class balance explains), with intervals;
- `internal_ece`, `internal_brier`, `external_ece`, `external_brier`, `plots/reliability.png`;
- the oracle `external_oracle_threshold` (what would have kept the internal sensitivity; chosen
  on the external labels, never stored with the model) and the specificity there;
- `shift_auc` with interval (training images against external ones, by the model's own
  features), `shift/image_statistics.json`, `plots/samples.png` (both sets side by side);
- the shortcut check (`external_auc_lungs_hidden`, ...; tag `shortcut_verdict`) and
  `saliency_in_lung_box` on the external images;
- `external_n_shared_with_train` and `shift/shared_with_train.csv`: external images that are
  copies of the model's training or validation images or belong to their patients;
  `predictions/external.csv` (file, label, probability of the positive class, predicted, unit).
A registered model's card (models:/...) gains the set's line under "External validation".
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from dataclasses import dataclass, replace

import mlflow
import numpy as np

from pipeline import plots, report, tracking
from pipeline.analysis import external as ext
from pipeline.analysis.gap import calibration
from pipeline.analysis.resampling import Resampling
from pipeline.analysis.shortcuts import occlusion_intervals, shortcut_verdict, training_grey
from pipeline.cli import from_params
from pipeline.data import Preparation, prepare_dataset
from pipeline.data.checks import ManifestRow, patients_known, units_of
from pipeline.data.units import patient_of
from pipeline.engine.device import pick_device
from pipeline.engine.features import extract_features
from pipeline.engine.loop import predict_proba
from pipeline.errors import UserError
from pipeline.metrics import positive_index
from pipeline.settings import DataConfig, EvaluateConfig, ExternalConfig
from pipeline.steps.evaluate import load_model, model_threshold, occlusion_metrics, rebuilt_classifier, saliency_metrics, train_run_of

log = logging.getLogger(__name__)

# The shift classifier sees at most this many images of each set: the features of a few hundred
# images tell two hospitals apart as well as all of them, at a fraction of the forward passes.
SHIFT_SAMPLE = 500


@dataclass
class Externally:
    run_id: str
    metrics: dict[str, float]
    reused: bool


@dataclass(frozen=True)
class ImageSet:
    """The images of one side, in one order: pixels, labels (class index), manifest rows."""

    images: np.ndarray
    labels: np.ndarray
    rows: list[ManifestRow]


def pooled(prep: Preparation, splits: tuple[str, ...]) -> ImageSet:
    data, rows = prep.dataset, prep.dataset.manifest()
    present = [s for s in splits if data.split_sizes.get(s)]
    return ImageSet(
        np.concatenate([np.asarray(data.images(s)) for s in present]),
        np.concatenate([data.labels(s) for s in present]),
        [r for s in present for r in rows if r.split == s],
    )


def external_set(data: DataConfig, config: ExternalConfig, classes: list[str], image_size: int) -> tuple[Preparation, ImageSet]:
    """The external images at the model's size, checked against the model's classes."""
    if not data.data_dir:
        raise UserError("external needs data_dir: the other data set (a Kaggle folder, a label table or a .npz)")
    prep = prepare_dataset(replace(data, image_size=image_size))
    if prep.dataset.classes != classes:
        raise UserError(
            f"the external data's classes {prep.dataset.classes} are not the model's {classes}: name its folders (or label column) as the model's classes"
        )
    splits = ("test",) if config.external_split == "test" else ("train", "val", "test")
    if config.external_split == "test" and not prep.dataset.split_sizes.get("test"):
        raise UserError(f"{data.data_dir} has no test split; use external_split=all to take all its images")
    found = pooled(prep, splits)
    missing = [c for k, c in enumerate(classes) if not (found.labels == k).any()]
    if missing:
        raise UserError(f"the external set has no {', '.join(missing)} image: its AUC, sensitivity and specificity need both classes")
    return prep, found


def lineage_parent(train_run) -> str:
    """The run the external run hangs under: the train run's main run, else the train run."""
    return train_run.data.tags.get("mlflow.parentRunId", train_run.info.run_id)


def run(evaluate_cfg: EvaluateConfig, data: DataConfig, config: ExternalConfig, reuse: bool = False) -> Externally:
    train_run, model_uri = train_run_of(evaluate_cfg)
    settings = json.loads(train_run.data.tags["settings"])
    (internal_cfg,) = from_params(settings, DataConfig)
    try:
        internal_prep = prepare_dataset(internal_cfg)
    except UserError as e:
        raise UserError(f"external compares with the model's own test set, which it cannot read ({e})") from None
    classes = internal_prep.dataset.classes
    external_prep, outside = external_set(data, config, classes, internal_cfg.image_size)
    backbone, mode = train_run.data.tags.get("backbone"), train_run.data.tags.get("mode")
    params = {"model_uri": model_uri, "train_run_id": train_run.info.run_id, "external_split": config.external_split}
    device = pick_device(settings.get("device", "auto"), precision=settings.get("precision", "auto"))
    key = tracking.input_key("external", {**params, "device": device.type, "internal": internal_prep.dataset.digest}, external_prep.dataset.digest)
    if reuse and (previous := tracking.find_reusable("external", key)):
        return Externally(previous.info.run_id, previous.data.metrics, reused=True)
    with tracking.step_run("external", backbone, mode) as active:
        mlflow.set_tags(
            {
                "input_key": key,
                "mlflow.parentRunId": lineage_parent(train_run),
                "train_run_id": train_run.info.run_id,
                "model_uri": model_uri,
                "external_data_digest": external_prep.dataset.digest,
                "external_data": external_prep.dataset.source,
            }
        )
        tracking.log_params({**params, "data_dir": data.data_dir, "image_size": str(internal_cfg.image_size), "n_external": str(len(outside.rows))})
        tracking.log_settings({**params, "data_dir": data.data_dir})
        tracking.log_dataset(external_prep.name, external_prep.dataset.source, external_prep.dataset.digest, external_prep.dataset.split_sizes)
        model, device, fallback = load_model(model_uri, device)
        if fallback:
            mlflow.set_tag("device_fallback", fallback)
        pos = positive_index(classes)
        inside = pooled(internal_prep, ("test",))
        p_val = predict_proba(model, internal_prep.dataset.images("val"), 64, device)[:, pos]
        threshold, rule = model_threshold(train_run, internal_prep.dataset.labels("val") == pos, p_val)
        mlflow.set_tag("val_threshold_rule", rule)
        sides = {}
        for name, side, cfg, seed in (("internal", inside, internal_cfg, data.seed), ("external", outside, data, data.seed + 1)):
            units = units_of(side.rows, cfg.patient_pattern, cfg.near_duplicate_bits)
            y = (side.labels == pos).astype(int)
            resampling = Resampling.of(units, y, seed, patients_known=patients_known(side.rows, cfg.patient_pattern))
            sides[name] = ext.Scored(y, predict_proba(model, side.images, 64, device)[:, pos], resampling)
        mlflow.set_tags(
            {
                "interval_method": f"internal: {sides['internal'].resampling.describe()}; external: {sides['external'].resampling.describe()}",
                "external_patients_known": str(sides["external"].resampling.patients_known).lower(),
            }
        )
        metrics = {
            "operating_threshold": threshold,
            **ext.figures(sides["internal"], threshold, "internal"),
            **ext.figures(sides["external"], threshold, "external"),
            **ext.drop(sides["internal"], sides["external"], threshold),
            **ext.oracle_threshold(sides["internal"], sides["external"], threshold),
        }
        calibrated = {name: calibration(s.y, s.p) for name, s in sides.items()}
        metrics |= {f"{name}_{k}": c[k] for name, c in calibrated.items() for k in ("ece", "brier")}
        train_set = pooled(internal_prep, ("train",))
        same_source = external_prep.dataset.source == internal_prep.dataset.source
        developed = [r for r in internal_prep.dataset.manifest() if r.split in ("train", "val")]
        shared = ext.shared_with_train(developed, outside.rows, data.patient_pattern, data.near_duplicate_bits, same_source)
        metrics["external_n_shared_with_train"] = len(shared)
        classifier = rebuilt_classifier(train_run, settings, len(classes))
        if classifier is not None:
            metrics |= shift_metrics(classifier, train_set, outside, (internal_cfg.patient_pattern, data.patient_pattern), data, same_source, device)
        metrics |= occlusion_metrics(
            model,
            outside.images,
            sides["external"].y,
            sides["external"].p,
            pos,
            device,
            training_grey(train_set.images),
            sides["external"].resampling,
            "external",
        )
        files = [r.path for r in outside.rows]
        metrics |= saliency_metrics(
            classifier, classes, outside.images, sides["external"].y == 1, files, sides["external"].p >= threshold, data.seed, "external"
        )
        mlflow.log_metrics(metrics)
        mlflow.set_tag("shortcut_verdict", shortcut_verdict(occlusion_intervals(metrics, "external"))[0])
        _log_artifacts(calibrated, train_set, outside, shared, sides["external"], classes, threshold, f"{backbone} ({mode})")
        record_on_card(model_uri, f"{backbone} ({mode})", external_prep.dataset.source, len(outside.rows), metrics, internal_prep.name)
    log.info(summary(metrics, external_prep.dataset.source, internal_prep.dataset.source))
    return Externally(active.info.run_id, metrics, reused=False)


def record_on_card(model_uri: str, name: str, source: str, n_images: int, metrics: dict[str, float], internal: str) -> None:
    """A registered model's card gains this set's line under External validation."""
    line = report.external_card_lines(name, {source: {"source": source, "n_images": n_images, "models": {name: metrics}}}, internal)[0]
    updated = tracking.update_model_card(model_uri, lambda card: report.with_external_line(card, line, source))
    if updated:
        mlflow.set_tag("model_card_updated", updated)
        log.info(f"the model card of {updated} now names this validation")


def shift_metrics(
    classifier, train_set: ImageSet, outside: ImageSet, patterns: tuple[str, str], data: DataConfig, same_source: bool, device
) -> dict[str, float]:
    """The shift as the model sees it: its own features of a seeded sample of each set. Each set's
    patients (found by its own `patterns`) are kept whole; an id links the two sets only where they
    are one source, identical or near-identical pictures link them always."""
    rng = np.random.default_rng(data.seed)
    picks = [np.sort(rng.permutation(len(s.rows))[:SHIFT_SAMPLE]) for s in (train_set, outside)]
    units = shift_units([train_set.rows[k] for k in picks[0]], [outside.rows[k] for k in picks[1]], patterns, data.near_duplicate_bits, same_source)
    classifier = classifier.to(device.torch_device)
    features = [extract_features(classifier, s.images[k], 64, device, desc="shift features").numpy() for s, k in zip((train_set, outside), picks)]
    return ext.shift(*features, units, data.seed)


def shift_units(
    train_rows: list[ManifestRow], external_rows: list[ManifestRow], patterns: tuple[str, str], near_bits: int, same_source: bool
) -> np.ndarray:
    """The units of both sets' images in order: each set's patients by its own pattern, an id
    shared across the sets only where they are one source; copies link them always."""
    rows = []
    for side, side_rows, pattern in zip(("train", "external"), (train_rows, external_rows), patterns):
        compiled = re.compile(pattern) if pattern else None
        for r in side_rows:
            patient = patient_of(r.path, r.patient, compiled)
            rows.append(replace(r, patient="" if patient is None else patient if same_source else f"{side}:{patient}"))
    return units_of(rows, "", near_bits)


def _log_artifacts(calibrated, train_set: ImageSet, outside: ImageSet, shared, scored: ext.Scored, classes, threshold: float, title: str) -> None:
    figure = plots.reliability(
        {f"{name}: ECE {c['ece']:.3f}, Brier {c['brier']:.3f}": c["reliability"] for name, c in calibrated.items()}, f"reliability, {title}"
    )
    tracking.log_figure(figure, "plots/reliability.png")
    plots.close(figure)
    rng = np.random.default_rng(0)
    shown = [
        (f"train: {r.label}", s.images[k]) for s, n in ((train_set, 6),) for k in np.sort(rng.permutation(len(s.rows))[:n]) for r in (s.rows[k],)
    ]
    shown += [(f"external: {r.label}", outside.images[k]) for k in np.sort(rng.permutation(len(outside.rows))[:6]) for r in (outside.rows[k],)]
    figure = plots.image_grid(
        [image for _, image in shown],
        [caption for caption, _ in shown],
        columns=6,
        title="the model's training images (top) and the external ones (bottom)",
    )
    tracking.log_figure(figure, "plots/samples.png")
    plots.close(figure)
    statistics = {"train": ext.image_statistics(train_set.images, train_set.rows), "external": ext.image_statistics(outside.images, outside.rows)}
    tracking.log_text(json.dumps(statistics, indent=1), "shift/image_statistics.json")
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["file", "reasons"])
    writer.writerows([[s["path"], "; ".join(s["reasons"])] for s in shared])
    tracking.log_text(table.getvalue(), "shift/shared_with_train.csv")
    out = io.StringIO()
    writer = csv.writer(out)
    # The unit (patient or copies, numbered) lets a report resample these images as this run did.
    positive, negative = classes[positive_index(classes)], classes[1 - positive_index(classes)]
    writer.writerow(["file", "label", "probability", "predicted", "unit"])
    for r, p, unit in zip(outside.rows, scored.p, scored.resampling.units):
        writer.writerow([r.path, r.label, f"{p:.6f}", positive if p >= threshold else negative, int(unit)])
    tracking.log_text(out.getvalue(), "predictions/external.csv")


def summary(m: dict[str, float], external: str, internal: str) -> str:
    def ci(k: str, scale: float = 1.0) -> str:
        return f"{scale * m[k]:.3f} [{scale * m[f'{k}_ci_low']:.3f}, {scale * m[f'{k}_ci_high']:.3f}]"

    lines = [
        f"external {external}: accuracy {ci('external_acc')}, AUC {ci('external_auc')}, sensitivity {ci('external_sensitivity')}, specificity {ci('external_specificity')}",
        f"internal test {internal}: accuracy {ci('internal_acc')}, AUC {ci('internal_auc')}",
        f"drop: accuracy {ci('external_drop_acc')} (class balance explains {ci('external_drop_acc_class_balance')}), AUC {ci('external_drop_auc')}",
    ]
    if "shift_auc" in m:
        lines.append(f"shift: the model's features tell its training images from the external ones with AUC {ci('shift_auc')} (0.5: alike)")
    lines.append(
        f"{int(m['external_n_shared_with_train'])} external images are copies of the model's training or validation images or of their patients (shift/shared_with_train.csv)"
    )
    return "\n".join(lines)


def main(evaluate_cfg: EvaluateConfig, data: DataConfig, config: ExternalConfig) -> None:
    run(evaluate_cfg, data, config)

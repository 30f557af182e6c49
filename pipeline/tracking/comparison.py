"""The comparison table read back from the store: everything the compare report shows, one row
per configuration, so a report can be rebuilt for any past compare run."""

from __future__ import annotations

import csv
import io

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.tracking.records import download
from pipeline.tracking.runs import get_run


def _runs_by_id(experiment_id: str, run_ids: list[str]) -> dict[str, Run]:
    if not run_ids:
        return {}
    quoted = ", ".join(f"'{r}'" for r in run_ids)
    runs = mlflow.search_runs([experiment_id], filter_string=f"attributes.run_id IN ({quoted})", output_format="list")
    return {r.info.run_id: r for r in runs}


def comparison(compare_run_id: str) -> list[dict]:
    """Everything the comparison report shows, read back from the store with `search_runs`, so
    the report can be rebuilt for any past compare run: one dict per configuration."""
    compare = get_run(compare_run_id)
    experiment_id = compare.info.experiment_id
    configurations = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{compare_run_id}' and tags.step = 'main' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )
    wanted = [c.data.tags[k] for c in configurations for k in ("train_run_id", "evaluate_run_id")]
    runs = _runs_by_id(experiment_id, wanted)
    client = MlflowClient()
    rows = []
    for config in configurations:
        train, evaluate = runs[config.data.tags["train_run_id"]], runs[config.data.tags["evaluate_run_id"]]
        histories = {
            m: {p.step: p.value for p in client.get_metric_history(train.info.run_id, m)} for m in ("train_loss", "train_acc", "val_loss", "val_acc")
        }
        history = [{"epoch": e, **{m: histories[m][e] for m in histories}} for e in sorted(histories["val_loss"])]
        predictions = {}
        for split in ("val", "test"):
            text = download(evaluate.info.run_id, f"predictions/{split}.csv").decode()
            predictions[split] = list(csv.DictReader(io.StringIO(text, newline="")))
        # `mlflow run` logs `lr` as typed (`auto`); the rate used is then `lr_resolved`.
        lr = train.data.params.get("lr_resolved", train.data.params["lr"])
        train_metrics, train_tags = train.data.metrics, train.data.tags
        rows.append(
            {
                "mode": config.data.tags["mode"],
                "backbone": config.data.tags["backbone"],
                "seed_index": int(config.data.tags.get("seed_index", 0)),
                "data_digest": train.data.params.get("data_digest"),
                "train_seed": train.data.params.get("train_seed_resolved", train.data.params.get("train_seed", "auto")),
                "lr": float(lr),
                "lr_source": config.data.tags.get("lr_source", "?"),
                **{k: evaluate.data.metrics.get(k) for k in COMPARED_METRICS},
                "train_time_s": train_metrics["train_time_s"],
                "feature_extraction_s": train_metrics.get("feature_extraction_s"),
                "cached_features_cost_s": train_metrics.get("cached_features_cost_s"),
                "cached_features_measured_in": train_tags.get("cached_features_measured_in"),
                "epochs_run": int(train_tags["epochs_run"]),
                "model_uri": train_tags.get("model_uri"),
                "weights_key": train.data.params.get("weights_key"),
                "epochs": train.data.params.get("epochs"),
                "operating_threshold": train_metrics.get("operating_threshold"),
                "operating_threshold_rule": train_tags.get("operating_threshold_rule"),
                "temperature": train_metrics.get("temperature"),
                "val_ece_before_calibration": train_metrics.get("val_ece_before_calibration"),
                "val_ece_after_calibration": train_metrics.get("val_ece_after_calibration"),
                "main_run_id": config.info.run_id,
                "train_run_id": train.info.run_id,
                "evaluate_run_id": evaluate.info.run_id,
                "interval_method": evaluate.data.tags.get("interval_method"),
                "shortcut_verdict": evaluate.data.tags.get("shortcut_verdict"),
                "history": history,
                "test_predictions": predictions["test"],
                "val_predictions": predictions["val"],
            }
        )
    return rows


def external_validations(train_run_id: str, data_dirs: tuple[str, ...]) -> dict[str, dict]:
    """The latest finished external run of the model of `train_run_id` on each of `data_dirs`
    (as the run's data_dir gave it): its metrics, its per-image predictions (file, label,
    probability, unit) and whether its units are patients. A data set never scored is absent."""
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.step = 'external' and tags.train_run_id = '{train_run_id}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    found = {}
    for data_dir in data_dirs:
        run = next((r for r in runs if r.data.params.get("data_dir") == data_dir), None)
        if run is not None:
            text = download(run.info.run_id, "predictions/external.csv").decode()
            found[data_dir] = {
                "run_id": run.info.run_id,
                "source": run.data.tags.get("external_data", data_dir),
                "metrics": run.data.metrics,
                "patients_known": run.data.tags.get("external_patients_known") == "true",
                "predictions": list(csv.DictReader(io.StringIO(text, newline=""))),
            }
    return found


# What the report reads from each evaluate run (a run from before a metric existed lacks it: None).
COMPARED_METRICS = (
    "train_acc",
    "val_acc",
    "val_auc",
    "test_acc",
    "test_auc",
    "test_sensitivity",
    "test_specificity",
    "val_threshold",
    "train_acc_at_val_threshold",
    "val_acc_at_val_threshold",
    *(f"test_{m}_at_val_threshold" for m in ("acc", "sensitivity", "specificity")),
    *(f"test_{m}_ci_{side}" for m in ("acc", "auc", "sensitivity", "specificity") for side in ("low", "high")),
    *(f"test_{m}_at_val_threshold_ci_{side}" for m in ("acc", "sensitivity", "specificity") for side in ("low", "high")),
    *(
        f"test_auc_{name}{suffix}"
        for name in (
            "lungs_hidden",
            "outside_hidden",
            "lungs_hidden_fill_visible",
            "outside_hidden_fill_visible",
            "loss_outside_hidden",
            "loss_outside_hidden_fill_visible",
        )
        for suffix in ("", "_ci_low", "_ci_high")
    ),
    "saliency_in_lung_box",
)

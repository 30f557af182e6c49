"""main through the real `mlflow run` command: the run tree, the metric contract, reuse."""

import json
import re

import pytest
from conftest import make_csv_dicom_dataset, make_dataset, make_site_table, mlflow_run, runs_of
from mlflow.tracking import MlflowClient

from pipeline.settings import DataConfig, FitConfig, ModelConfig, TrialsConfig
from pipeline.steps import main
from pipeline.tracking import EPOCH_METRICS

EVALUATE_METRICS = ("train_acc", "val_acc", "test_acc", "test_loss", "test_auc", "test_f1", "test_precision", "test_sensitivity", "test_specificity")


@pytest.fixture
def main_params(tmp_path):
    data = make_dataset(tmp_path / "tiny", {"train": 12, "val": 6, "test": 6}, size=32)
    return {
        "data_dir": str(data),
        "image_size": "32",
        "weights": "none",
        "backbone": "resnet18",
        "epochs": "3",
        "tune_trials": "3",
        "batch_size": "8",
    }


def children(parent_id):
    return [r for r in runs_of() if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_main_runs_prepare_tune_train_evaluate_as_children_and_reuses_them(store, main_params):
    first = mlflow_run("main", main_params)
    assert first.returncode == 0, first.stderr[-3000:]
    (parent,) = runs_of("main")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "resnet18-frozen-main"
    kids = {r.data.tags["step"]: r for r in children(parent.info.run_id)}
    assert set(kids) == {"prepare", "tune", "train", "evaluate"}
    assert all(r.info.status == "FINISHED" for r in kids.values())
    assert {r.info.run_name for r in kids.values()} == {f"resnet18-frozen-{s}" for s in kids}
    assert all((r.data.tags["backbone"], r.data.tags["mode"]) == ("resnet18", "frozen") for r in kids.values())
    # The contract of DESIGN.md, child by child.
    client = MlflowClient()
    train, tune, evaluate = kids["train"], kids["tune"], kids["evaluate"]
    for metric in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(train.info.run_id, metric)] == [1, 2, 3]
    assert {"train_time_s", "best_epoch", "best_val_acc"} <= set(train.data.metrics)
    assert set(EVALUATE_METRICS) <= set(evaluate.data.metrics)
    assert {"best_lr", "best_val_loss", "n_trials_complete", "n_trials_pruned"} <= set(tune.data.metrics)
    trials = children(tune.info.run_id)
    assert len(trials) == 3 and all(t.data.tags["step"] == "tune" for t in trials)
    # lr=auto: the train run trains with the tuned rate.
    assert float(train.data.params["lr"]) == pytest.approx(tune.data.metrics["best_lr"], rel=1e-5)
    assert evaluate.data.params["model_uri"] == train.data.tags["model_uri"]
    assert {"data/manifest.csv", "data/data_report.md", "data/data_report.json"} <= {
        f.path for f in client.list_artifacts(kids["prepare"].info.run_id, "data")
    }
    assert parent.data.tags["reused_steps"] == "none"
    assert parent.data.metrics["test_acc"] == evaluate.data.metrics["test_acc"]
    assert "test accuracy" in first.stdout and "mlflow ui --backend-store-uri" in first.stdout
    assert f"#/experiments/{parent.info.experiment_id}/runs" in first.stdout
    # Frozen: the first tuning trial extracted the features, so the summary says who spent that time.
    assert re.search(r"training \d+\.\d s \(the head only\); features extracted in \d+\.\d s on cpu by trial 0 of the tune run", first.stdout)

    second = mlflow_run("main", main_params)
    assert second.returncode == 0, second.stderr[-3000:]
    newest = max(runs_of("main"), key=lambda r: r.info.start_time)
    assert newest.data.tags["reused_steps"] == "prepare,tune,train,evaluate"
    assert not children(newest.info.run_id)
    assert newest.data.tags["train_run_id"] == train.info.run_id
    assert len(runs_of("train")) == 1 and "reused" in second.stdout
    assert f"model {train.data.tags['model_uri']};" in second.stdout  # the reused model is named too


def test_explicit_lr_skips_tuning(store, main_params):
    data = DataConfig(data_dir=main_params["data_dir"], image_size=32)
    outcome = main.run(data, ModelConfig("resnet18", True, "none"), FitConfig(epochs=1, batch_size=8, lr=0.003), TrialsConfig(tune_trials=3))
    steps = {r.data.tags["step"]: r for r in children(outcome.run_id)}
    assert set(steps) == {"prepare", "train", "evaluate"}
    assert steps["train"].data.params["lr"] == "0.003"


def test_no_tuning_when_tune_trials_is_0(store, main_params):
    data = DataConfig(data_dir=main_params["data_dir"], image_size=32)
    outcome = main.run(data, ModelConfig("resnet18", True, "none"), FitConfig(epochs=1, batch_size=8), TrialsConfig(tune_trials=0))
    steps = {r.data.tags["step"]: r for r in children(outcome.run_id)}
    assert "tune" not in steps and steps["train"].data.params["lr"] == "0.001"  # the frozen default


def test_main_runs_end_to_end_on_a_label_table_of_dicom_files_with_patient_safe_splits(store, tmp_path):
    from collections import defaultdict

    from pipeline.data.checks import read_manifest

    table = make_csv_dicom_dataset(tmp_path / "export", patients=40, per_patient=3, size=32)
    (tmp_path / "export" / "labels.csv").write_text(
        (tmp_path / "export" / "labels.csv").read_text() + "dicom/missing.dcm,1,P999\ndicom/batch0/P000_0.dcm,maybe,P000\n"
    )
    result = mlflow_run(
        "main",
        {
            "data_dir": str(table),
            "image_size": "32",
            "weights": "none",
            "backbone": "resnet18",
            "epochs": "2",
            "tune_trials": "0",
            "batch_size": "16",
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,) = runs_of("main")
    kids = {r.data.tags["step"]: r for r in children(parent.info.run_id)}
    assert set(kids) == {"prepare", "train", "evaluate"} and all(r.info.status == "FINISHED" for r in kids.values())
    assert kids["prepare"].data.params["data_dir"] == str(table)
    client = MlflowClient()
    manifest = read_manifest(client.download_artifacts(kids["prepare"].info.run_id, "data/manifest.csv", str(tmp_path)))
    sides = defaultdict(set)
    for row in manifest:
        sides[row.patient].add(row.split)
    assert len(sides) == 40 and all(len(s) == 1 for s in sides.values())  # no patient in two splits
    assert {row.split for row in manifest} == {"train", "val", "test"}
    report = open(client.download_artifacts(kids["prepare"].info.run_id, "data/data_report.md", str(tmp_path))).read()
    assert "dicom/missing.dcm" in report and "not found" in report  # listed, not fatal
    assert "unknown label 'maybe'" in report
    assert "test_acc" in kids["evaluate"].data.metrics


def test_leave_one_site_out_holds_each_site_out_once_and_summarises(store, tmp_path):
    table = make_site_table(tmp_path / "sites", sites=("north", "south"), patients=8)
    result = mlflow_run(
        "main",
        {
            "data_dir": str(table),
            "csv_columns": "site=hospital",
            "test_site": "each",
            "image_size": "32",
            "weights": "none",
            "backbone": "resnet18",
            "epochs": "1",
            "tune_trials": "0",
            "batch_size": "8",
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,) = [r for r in runs_of("main") if r.data.tags.get("test_site") == "each"]
    folds = {r.data.tags["test_site"]: r for r in children(parent.info.run_id)}
    assert set(folds) == {"north", "south"} and {r.info.run_name for r in folds.values()} == {
        "resnet18-frozen-main-north",
        "resnet18-frozen-main-south",
    }
    aucs = [f.data.metrics["test_auc"] for f in folds.values()]
    m = parent.data.metrics
    assert m["site_test_auc_mean"] == pytest.approx(sum(aucs) / 2) and m["site_test_auc_min"] == min(aucs) and m["site_test_auc_max"] == max(aucs)
    assert parent.data.tags["worst_site"] == min(folds, key=lambda s: folds[s].data.metrics["test_auc"])
    for site, fold in folds.items():  # each fold tested on its site alone, trained on the other
        prepared = next(r for r in children(fold.info.run_id) if r.data.tags["step"] == "prepare")
        report = MlflowClient().download_artifacts(prepared.info.run_id, "data/data_report.json", str(tmp_path / site))
        sites = json.load(open(report))["sites"]
        assert sites[site]["test"] == 16 and sites[site]["train"] == sites[site]["val"] == 0
        assert all(n["test"] == 0 for other, n in sites.items() if other != site)
    summary = MlflowClient().download_artifacts(parent.info.run_id, "sites/leave_one_site_out.md", str(tmp_path / "summary"))
    assert "| north | 16 |" in open(summary).read() and "Across 2 sites: AUC" in result.stdout + result.stderr

"""compare on a tiny data set through the real command line, and its report rebuilt from the store."""

import csv
import json

import mlflow
import pytest

from pipeline import tracking
from pipeline.config import CompareConfig, DataConfig, FitConfig, MainConfig, TuneConfig, UserError
from pipeline.steps import compare

from conftest import make_dataset, mlflow_run, runs_of


def children(parent_id, step=None):
    return [r for r in runs_of(step) if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_compare_runs_every_configuration_and_writes_the_report(store, tmp_path):
    data = make_dataset(tmp_path / "tiny", {"train": 10, "val": 6, "test": 6}, size=32)
    params = {"data_dir": str(data), "image_size": "32", "weights": "none", "backbones": "resnet18",
              "modes": "frozen,finetune", "epochs": "1", "tune_trials": "1", "batch_size": "8"}
    result = mlflow_run("compare", params)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs_of("compare")
    assert run.info.status == "FINISHED" and run.info.run_name == "compare"
    configurations = children(run.info.run_id, "main")
    assert sorted(c.info.run_name for c in configurations) == ["resnet18-finetune-main", "resnet18-frozen-main"]
    for config in configurations:
        assert {r.data.tags["step"] for r in children(config.info.run_id)} <= {"prepare", "tune", "train", "evaluate"}
        assert {"train_run_id", "evaluate_run_id", "tune_run_id"} <= set(config.data.tags)
    files = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="report", dst_path=str(tmp_path / "a"))
    for name in ("comparison.md", "comparison.csv", "comparison.html", "learning_curves.png", "accuracy_and_time.png",
                 "roc_curves.png", "analysis/analysis.md", "analysis/analysis.json", "analysis/label_noise_candidates.png"):
        assert (tmp_path / "a" / "report" / name).is_file(), name
    table = list(csv.DictReader(open(f"{files}/comparison.csv")))
    assert sorted((r["backbone"], r["mode"]) for r in table) == [("resnet18", "finetune"), ("resnet18", "frozen")]
    for row in table:
        evaluated = mlflow.get_run(row["evaluate_run_id"]).data.metrics
        trained = mlflow.get_run(row["train_run_id"])
        assert float(row["test_acc"]) == evaluated["test_acc"] and float(row["test_auc"]) == evaluated["test_auc"]
        assert float(row["train_time_s"]) == trained.data.metrics["train_time_s"]
        assert float(row["lr"]) == float(trained.data.params["lr"])
    page = open(f"{files}/comparison.html").read()
    assert page.count("data:image/png;base64,") == 4 and '<table id="comparison">' in page
    study = json.load(open(f"{files}/analysis/analysis.json"))
    assert study["findings"] and 0 <= study["shift"]["domain_auc"] <= 1
    assert study["leakage"]["patients"]["overlap"]["train-test"]["n_patients"] == 0
    assert "## Findings" in open(f"{files}/comparison.md").read()
    # The report rebuilt later from the store alone says the same.
    rebuilt = compare.run(DataConfig(), FitConfig(), MainConfig(), TuneConfig(), CompareConfig(report_for=run.info.run_id))
    again = mlflow.artifacts.download_artifacts(run_id=rebuilt, artifact_path="report/comparison.csv", dst_path=str(tmp_path / "b"))
    assert open(again).read() == open(f"{files}/comparison.csv").read()
    assert not children(rebuilt, "main")


def test_report_for_needs_a_compare_run(store):
    with tracking.step_run("prepare") as other:
        pass
    with pytest.raises(UserError, match="not a compare run"):
        compare.run(DataConfig(), FitConfig(), MainConfig(), TuneConfig(), CompareConfig(report_for=other.info.run_id))

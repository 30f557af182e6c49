"""compare on a tiny data set through the real command line, and its report rebuilt from the store."""

import base64
import csv
import json
import logging
import re
from urllib.parse import unquote

import mlflow
import pytest
from conftest import ask_served_model, make_dataset, mlflow_run, runs_of

from pipeline import tracking
from pipeline.engine.loop import Diverged
from pipeline.errors import UserError
from pipeline.settings import CompareConfig, DataConfig, FitConfig, TrialsConfig, TuneConfig
from pipeline.steps import compare
from pipeline.steps.main import Outcome


def children(parent_id, step=None):
    return [r for r in runs_of(step) if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_compare_runs_every_configuration_and_writes_the_report(store, tmp_path):
    data = make_dataset(tmp_path / "tiny", {"train": 10, "val": 6, "test": 6}, size=32)
    elsewhere = make_dataset(tmp_path / "elsewhere", {"train": 4, "val": 2, "test": 6}, size=32, seed=1)
    params = {
        "external": str(elsewhere),
        "data_dir": str(data),
        "image_size": "32",
        "weights": "none",
        "backbones": "resnet18",
        "modes": "frozen,finetune",
        "epochs": "1",
        "tune_trials": "1",
        "batch_size": "8",
        "seeds": "2",
    }
    result = mlflow_run("compare", params)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs_of("compare")
    assert run.info.status == "FINISHED" and run.info.run_name == "compare"
    configurations = children(run.info.run_id, "main")
    assert sorted(c.info.run_name for c in configurations) == ["resnet18-finetune-main"] * 2 + ["resnet18-frozen-main"] * 2
    # The second seed trains with another training seed at the rate tuned for the first, tuning nothing.
    second = [c for c in configurations if c.data.tags["seed_index"] == "1"]
    assert all("tune_run_id" not in c.data.tags and c.data.tags["lr_source"] == "tuned, first seed" for c in second)
    for config in configurations:
        assert {r.data.tags["step"] for r in children(config.info.run_id)} <= {"prepare", "tune", "train", "evaluate", "external"}
        assert {"train_run_id", "evaluate_run_id"} <= set(config.data.tags)
        assert ("tune_run_id" in config.data.tags) == (config.data.tags["seed_index"] == "0")
    files = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="report", dst_path=str(tmp_path / "a"))
    for name in (
        "comparison.md",
        "comparison.csv",
        "comparison.html",
        "learning_curves.png",
        "accuracy_and_time.png",
        "roc_curves.png",
        "calibration.png",
        "analysis/analysis.md",
        "analysis/analysis.json",
        "analysis/label_noise_candidates.png",
    ):
        assert (tmp_path / "a" / "report" / name).is_file(), name
    table = list(csv.DictReader(open(f"{files}/comparison.csv")))
    assert sorted((r["backbone"], r["mode"], r["seed_index"]) for r in table) == [
        ("resnet18", m, k) for m in ("finetune", "frozen") for k in ("0", "1")
    ]
    for row in table:
        evaluated = mlflow.get_run(row["evaluate_run_id"]).data.metrics
        trained = mlflow.get_run(row["train_run_id"])
        assert float(row["test_acc"]) == evaluated["test_acc"] and float(row["test_auc"]) == evaluated["test_auc"]
        assert float(row["test_acc_ci_low"]) == evaluated["test_acc_ci_low"] <= evaluated["test_acc"] <= evaluated["test_acc_ci_high"]
        assert float(row["train_time_s"]) == trained.data.metrics["train_time_s"]
        assert float(row["lr"]) == float(trained.data.params["lr_resolved"] if "lr_resolved" in trained.data.params else trained.data.params["lr"])
    assert {r["train_seed"] for r in table} == {"auto", "43"}
    # It ends with the UI's side-by-side view of exactly those evaluate runs.
    view = re.search(r"http://127.0.0.1:5000/#/compare-runs\?runs=(\S+)&experiments=(\S+)", result.stdout)
    assert view and sorted(json.loads(unquote(view[1]))) == sorted(r["evaluate_run_id"] for r in table)
    assert json.loads(unquote(view[2])) == [run.info.experiment_id]
    page = open(f"{files}/comparison.html").read()
    assert page.count("data:image/png;base64,") == 8 and '<table id="comparison">' in page and '<table id="pairwise">' in page
    assert '<table id="verdicts">' in page
    study = json.load(open(f"{files}/analysis/analysis.json"))
    assert study["findings"] and 0 <= study["shift"]["domain_auc"] <= 1
    assert study["leakage"]["patients"]["overlap"]["train-test"]["n_patients"] == 0
    # One pair (frozen vs fine-tuned, first seeds), tested on the same images; the seeds' spread.
    (pair,) = study["pairwise"]
    assert 0 <= pair["acc"]["p_value"] <= 1 and 0 <= pair["auc"]["p_value"] <= 1
    assert set(study["seeds"]) == {"resnet18 (frozen)", "resnet18 (finetune)"} and all(v["n"] == 2 for v in study["seeds"].values())
    for name, gap in study["gap"].items():
        causes = gap["causes"]
        parts = ("leakage", "prevalence", "residual", "seen_in_test")
        assert causes["gap"]["value"] == pytest.approx(sum(causes[k]["value"] for k in parts))
        assert set(study["false_cause_rates"]["rates"][name]) == set(parts)
        assert (
            gap["threshold"]["operating_threshold"]
            == mlflow.get_run(
                next(r["train_run_id"] for r in table if f"{r['backbone']} ({r['mode']})" == name and r["seed_index"] == "0")
            ).data.metrics["operating_threshold"]
        )
    assert set(study["shortcuts"]) == {"resnet18 (frozen)", "resnet18 (finetune)"}
    assert all(0 <= s["saliency_in_lung_box"] <= 1 for s in study["shortcuts"].values())
    for mode in ("frozen", "finetune"):
        assert (tmp_path / "a" / "report" / "gradcam" / f"resnet18-{mode}.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Shortcut check" in open(f"{files}/analysis/analysis.md").read()
    markdown = open(f"{files}/comparison.md").read()
    assert "## Findings" in markdown and "## Can this test set tell them apart?" in markdown and "mean +- sd" in markdown
    # The report leads with the answer: the waterfall and the verdicts, each with its false-cause rate.
    assert markdown.index("## The answer: why the test set disagrees") < markdown.index("## The configurations")
    assert "(gap_waterfall.png)" in markdown and "| resnet18 (frozen) | leakage |" in markdown and "simulated studies of this design" in markdown
    findings = "\n".join(study["findings"])
    assert "distinguishable" in findings and "p = " in findings and "validation - test gap" in findings
    # Every configuration (first seed) scored on the external set, a child of its own main run;
    # the report's table, the paired tests on those images and which model travels best.
    scored = runs_of("external")
    first_seeds = {c.info.run_id for c in configurations if c.data.tags["seed_index"] == "0"}
    assert sorted(r.info.run_name for r in scored) == ["resnet18-finetune-external", "resnet18-frozen-external"]
    assert {r.data.tags["mlflow.parentRunId"] for r in scored} == first_seeds
    outside = study["external"][str(elsewhere)]
    assert set(outside["models"]) == {"resnet18 (frozen)", "resnet18 (finetune)"} and outside["n_images"] == 24
    for r in scored:
        assert outside["models"][f"resnet18 ({r.data.tags['mode']})"]["external_auc"] == r.data.metrics["external_auc"]
    (pair,) = outside["pairwise"]
    assert {pair["a"], pair["b"]} == {"resnet18 (frozen)", "resnet18 (finetune)"} and 0 <= pair["auc"]["p_value"] <= 1
    assert f"On {outside['source']}, resnet18 (" in findings and "travels best" in findings and "The internal test set ranked" in findings
    assert f"## Does it hold at another hospital? {outside['source']}" in markdown and "| resnet18 (frozen) | " in markdown
    assert f"### Can {outside['source']} tell them apart?" in markdown
    # The registry: one model for the data set, a version per configuration (first seeds) with its
    # card, champion and challenger chosen on validation; the run's description is the report.
    client = mlflow.MlflowClient()
    name = run.data.tags["registered_model"]
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(v.tags["mode"] for v in versions) == ["finetune", "frozen"]
    champion, challenger = (client.get_model_version_by_alias(name, alias) for alias in ("champion", "challenger"))
    val_auc = {
        c.data.tags["mode"]: mlflow.get_run(c.data.tags["evaluate_run_id"]).data.metrics["val_auc"]
        for c in configurations
        if c.data.tags["seed_index"] == "0"
    }
    assert val_auc[champion.tags["mode"]] >= val_auc[challenger.tags["mode"]] and champion.version != challenger.version
    for v in versions:
        card = v.description
        assert card.startswith("# Model card: resnet18") and run.data.tags["registered_model"][-8:] in card
        for words in (
            "## Test figures at the operating threshold",
            "at 0.5, for comparison only",
            "## Operating point and calibration",
            "## Shortcut check",
            "## Known limits",
            "paediatric",
            "visible part's mean",
            "- verdict: ",
            "## External validation",
            f"- {outside['source']} (24 images): AUC ",
        ):
            assert words in card, words
    assert "## Findings" in run.data.tags["mlflow.note.content"] and "| mode | backbone |" in run.data.tags["mlflow.note.content"]
    image = base64.b64encode(sorted((data / "test" / "NORMAL").iterdir())[0].read_bytes()).decode()
    (answer,) = ask_served_model(f"models:/{name}@champion", [image])
    assert answer["label"] in ("NORMAL", "PNEUMONIA") and 0 <= answer["threshold"] <= 1 and answer["error"] is None
    # The report rebuilt later from the store alone says the same.
    rebuilt = compare.run(DataConfig(), FitConfig(), TrialsConfig(), TuneConfig(), CompareConfig(report_for=run.info.run_id))
    again = mlflow.artifacts.download_artifacts(run_id=rebuilt, artifact_path="report/comparison.csv", dst_path=str(tmp_path / "b"))
    assert open(again).read() == open(f"{files}/comparison.csv").read()
    rebuilt_md = mlflow.artifacts.download_artifacts(run_id=rebuilt, artifact_path="report/comparison.md", dst_path=str(tmp_path / "b"))
    section = markdown[markdown.index("## Does it hold at another hospital?") :]
    assert section in open(rebuilt_md).read() and len(runs_of("external")) == 2
    assert not children(rebuilt, "main")


def test_a_diverging_configuration_is_skipped_and_said(store, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="pipeline")
    real = compare.run_configuration

    def finetune_diverges(data, model, fit, *args):
        if not model.frozen:
            raise Diverged("training diverged at epoch 1: train loss nan, val loss nan at lr 0.1; no model was kept")
        return real(data, model, fit, *args)

    monkeypatch.setattr(compare, "run_configuration", finetune_diverges)
    data = make_dataset(tmp_path / "tiny", {"train": 10, "val": 6, "test": 6}, size=32)
    run_id = compare.run(
        DataConfig(data_dir=str(data), image_size=32),
        FitConfig(epochs=1, batch_size=8),
        TrialsConfig(tune_trials=0),
        TuneConfig(),
        CompareConfig(backbones=("resnet18",), modes=("frozen", "finetune"), weights="none"),
    )
    assert "skipped resnet18 (finetune): training diverged" in caplog.text
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and "resnet18 (finetune)" in json.loads(run.data.tags["skipped_configurations"])
    statuses = sorted((c.info.run_name, c.info.status) for c in children(run_id, "main"))
    assert statuses == [("resnet18-finetune-main", "FAILED"), ("resnet18-frozen-main", "FINISHED")]
    files = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="report", dst_path=str(tmp_path / "a"))
    assert "resnet18 (finetune) was skipped: training diverged" in open(f"{files}/comparison.md").read()
    # The report rebuilt on data that changed since is refused, saying so.
    next((data / "test" / "NORMAL").iterdir()).unlink()
    with pytest.raises(UserError, match="changed since compare run"):
        compare.run(DataConfig(), FitConfig(), TrialsConfig(), TuneConfig(), CompareConfig(report_for=run_id))


def test_further_seeds_count_from_the_first_seed_trained(store, monkeypatch):
    # Issue 19, case 10: with train_seed = seed + 1, seed + k gave the first seed twice.
    trained = []

    def record(data, model, fit, *args):
        trained.append(fit.train_seed)
        return Outcome(run_id=mlflow.active_run().info.run_id, lr=0.01)

    monkeypatch.setattr(compare, "run_configuration", record)
    with tracking.step_run("compare"):
        compare.run_configurations(
            DataConfig(seed=42),
            FitConfig(train_seed=43, lr=0.01),
            TrialsConfig(tune_trials=0),
            TuneConfig(),
            CompareConfig(backbones=("resnet18",), modes=("frozen",), seeds=3),
        )
    assert trained == [43, 44, 45]


def test_report_for_needs_a_compare_run(store):
    with tracking.step_run("prepare") as other:
        pass
    with pytest.raises(UserError, match="not a compare run"):
        compare.run(DataConfig(), FitConfig(), TrialsConfig(), TuneConfig(), CompareConfig(report_for=other.info.run_id))

"""evaluate on a model whose predictions the test fixes: every number checked against scikit-learn."""

import csv
import json
import shutil
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from conftest import make_dataset
from scipy import stats
from sklearn import metrics as skm

from pipeline import serving, tracking
from pipeline.analysis.shortcuts import hide_lungs, hide_outside
from pipeline.data import prepare_dataset
from pipeline.errors import UserError
from pipeline.settings import DataConfig, EvaluateConfig, as_params
from pipeline.steps import evaluate


class BrightnessModel(torch.nn.Module):
    """P(PNEUMONIA) = sigmoid(20 * (mean grey - 0.45)): known for every image."""

    def forward(self, x):
        z = 20 * (x.mean(dim=(1, 2, 3)) - 0.45)
        return torch.stack([torch.zeros_like(z), z], 1)


def p_pneumonia(images: np.ndarray) -> np.ndarray:
    z = 20 * (images.astype(np.float32).mean(axis=(1, 2)) / 255.0 - 0.45)
    return 1 / (1 + np.exp(-z))


@pytest.fixture
def fixed_train_run(store, tmp_path):
    """A finished train run holding BrightnessModel, as the train step would leave it."""
    data_cfg = DataConfig(data_dir=str(make_dataset(tmp_path / "d", {"train": 6, "val": 10, "test": 12}, size=32)), image_size=32)
    prep = prepare_dataset(data_cfg)
    with tracking.step_run("train", "resnet18", "frozen") as run:
        mlflow.set_tag("settings", json.dumps(as_params(data_cfg)))
        mlflow.log_params({"data_digest": prep.dataset.digest})
        info = serving.log_model(BrightnessModel(), 32, prep.dataset.classes)
        mlflow.set_tag("model_uri", info.model_uri)
    return run.info.run_id, info.model_uri, prep.dataset


def test_metrics_match_scikit_learn(fixed_train_run, tmp_path):
    run_id, model_uri, data = fixed_train_run
    result = evaluate.run(EvaluateConfig(train_run_id=run_id))
    logged = mlflow.get_run(result.run_id).data.metrics
    y = {s: data.labels(s) for s in ("train", "val", "test")}  # 1 = PNEUMONIA
    p = {s: p_pneumonia(data.images(s)) for s in y}
    pred = {s: (p[s] >= 0.5).astype(int) for s in y}
    tn, fp, fn, tp = skm.confusion_matrix(y["test"], pred["test"]).ravel()
    expected = {
        "train_acc": skm.accuracy_score(y["train"], pred["train"]),
        "val_acc": skm.accuracy_score(y["val"], pred["val"]),
        "test_acc": skm.accuracy_score(y["test"], pred["test"]),
        "test_auc": skm.roc_auc_score(y["test"], p["test"]),
        "test_f1": skm.f1_score(y["test"], pred["test"]),
        "test_precision": skm.precision_score(y["test"], pred["test"]),
        "test_sensitivity": tp / (tp + fn),
        "test_specificity": tn / (tn + fp),
        "test_loss": skm.log_loss(y["test"], np.stack([1 - p["test"], p["test"]], 1)),
    }
    for name, value in expected.items():
        assert logged[name] == pytest.approx(value, abs=1e-4), name
    assert 0 < expected["test_acc"] < 1  # the fixture's model is neither perfect nor useless
    # The threshold is chosen on validation (Youden's J) and applied to test.
    fpr, tpr, thresholds = skm.roc_curve(y["val"], p["val"])
    threshold = thresholds[np.argmax(tpr - fpr)]
    assert logged["val_threshold"] == pytest.approx(threshold, abs=1e-4)
    at = (p["test"] >= logged["val_threshold"]).astype(int)
    assert logged["test_sensitivity_at_val_threshold"] == pytest.approx(skm.recall_score(y["test"], at), abs=1e-6)
    assert logged["test_specificity_at_val_threshold"] == pytest.approx(skm.recall_score(1 - y["test"], 1 - at), abs=1e-6)
    run = mlflow.get_run(result.run_id)
    assert run.info.run_name == "resnet18-frozen-evaluate" and run.data.tags["step"] == "evaluate"
    files = mlflow.artifacts.download_artifacts(run_id=result.run_id, dst_path=str(tmp_path / "a"))
    for plot in ("confusion_matrix", "roc_curve"):
        assert open(f"{files}/plots/{plot}.png", "rb").read(4) == b"\x89PNG"
    assert open(f"{files}/plots/occlusion.png", "rb").read(4) == b"\x89PNG"
    # The shortcut check: the same model on the test set with the lung box hidden, then all but it,
    # filled with the training set's mean grey and with the visible part's mean.
    grey = float(np.mean([img.mean() for img in data.images("train").astype(np.float64)]))
    for name, hide in (("lungs_hidden", hide_lungs), ("outside_hidden", hide_outside)):
        for suffix, fill in (("", grey), ("_fill_visible", None)):
            auc = skm.roc_auc_score(y["test"], p_pneumonia(hide(data.images("test"), fill)))
            assert logged[f"test_auc_{name}{suffix}"] == pytest.approx(auc, abs=1e-4), name + suffix
            assert logged[f"test_auc_{name}{suffix}_ci_low"] <= logged[f"test_auc_{name}{suffix}"] <= logged[f"test_auc_{name}{suffix}_ci_high"]
    assert logged["test_auc_loss_outside_hidden"] == pytest.approx(logged["test_auc"] - logged["test_auc_outside_hidden"])
    assert run.data.tags["shortcut_verdict"] in ("lung_box", "without_lung_box", "cannot_tell")
    rows = list(csv.DictReader(open(f"{files}/predictions/test.csv")))
    assert len(rows) == 24 and set(rows[0]) >= {"file", "true_label", "probability", "predicted_label"}
    assert [float(r["probability"]) for r in rows] == pytest.approx(p["test"].tolist(), abs=1e-5)
    assert [r["true_label"] for r in rows] == [data.classes[k] for k in y["test"]]


def test_model_uri_alone_finds_its_train_run_and_data(fixed_train_run):
    run_id, model_uri, _ = fixed_train_run
    by_uri = evaluate.run(EvaluateConfig(model_uri=model_uri))
    assert mlflow.get_run(by_uri.run_id).data.params["train_run_id"] == run_id


def test_needs_exactly_one_source_and_a_real_model(store):
    with pytest.raises(UserError, match="exactly one"):
        evaluate.run(EvaluateConfig())
    with pytest.raises(UserError, match="cannot find model"):
        evaluate.run(EvaluateConfig(model_uri="models:/m-doesnotexist"))


def test_intervals_are_exact_for_proportions_and_bootstrap_for_auc(fixed_train_run):
    run_id, _, data = fixed_train_run
    logged = mlflow.get_run(evaluate.run(EvaluateConfig(train_run_id=run_id)).run_id).data.metrics
    y, p = data.labels("test"), p_pneumonia(data.images("test"))
    pred = (p >= 0.5).astype(int)
    right = {"acc": (pred == y, np.ones_like(y, bool)), "sensitivity": (pred == 1, y == 1), "specificity": (pred == 0, y == 0)}
    for name, (hit, among) in right.items():
        k, n = int(hit[among].sum()), int(among.sum())
        low = stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0
        high = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
        assert (logged[f"test_{name}_ci_low"], logged[f"test_{name}_ci_high"]) == pytest.approx((low, high), abs=1e-6), name
    assert logged["test_auc_ci_low"] <= logged["test_auc"] <= logged["test_auc_ci_high"]
    assert logged["test_auc_ci_high"] - logged["test_auc_ci_low"] > 0.01
    # The figures the model is used at: at its operating threshold, with intervals of their own.
    at = p >= logged["val_threshold"]
    k, n = int((at == (y == 1)).sum()), len(y)
    assert logged["test_acc_at_val_threshold"] == k / n
    assert logged["test_acc_at_val_threshold_ci_low"] == pytest.approx(stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0, abs=1e-6)
    assert (
        mlflow.get_run(mlflow.search_runs(filter_string="tags.step = 'evaluate'", output_format="list")[0].info.run_id)
        .data.tags["interval_method"]
        .startswith("exact (one image per patient)")
    )


def test_images_of_patients_seen_in_training_are_scored_apart(store, tmp_path):
    root = make_dataset(tmp_path / "d", {"train": 6, "val": 10, "test": 12}, size=32)
    # Two test images belong to a train patient, one test image is a train image's exact copy.
    train_p, test_p = root / "train" / "PNEUMONIA", root / "test" / "PNEUMONIA"
    patient = sorted(train_p.iterdir())[0].name.split("_")[0] + "_" + sorted(train_p.iterdir())[0].name.split("_")[1]
    for k, f in enumerate(sorted(test_p.iterdir())[:2]):
        f.rename(test_p / f"{patient}_{900 + k}.png")
    shutil.copy(sorted((root / "train" / "NORMAL").iterdir())[0], root / "test" / "NORMAL" / "scan-copy.png")
    data_cfg = DataConfig(data_dir=str(root), image_size=32, val_source="folder")
    prep = prepare_dataset(data_cfg)
    with tracking.step_run("train", "resnet18", "frozen") as run:
        mlflow.set_tag("settings", json.dumps(as_params(data_cfg)))
        mlflow.log_params({"data_digest": prep.dataset.digest})
        mlflow.set_tag("model_uri", serving.log_model(BrightnessModel(), 32, prep.dataset.classes).model_uri)
    logged = mlflow.get_run(evaluate.run(EvaluateConfig(train_run_id=run.info.run_id)).run_id).data.metrics
    files = prep.dataset.files("test")
    seen = np.array([f.endswith(("_900.png", "_901.png", "scan-copy.png")) for f in files])
    y, p = prep.dataset.labels("test"), p_pneumonia(prep.dataset.images("test"))
    right = (p >= logged["val_threshold"]) == (y == 1)  # as the model is used
    assert (logged["test_n_seen_patients"], logged["test_n_unseen_patients"]) == (3, len(files) - 3)
    assert logged["test_acc_unseen_patients"] == pytest.approx(right[~seen].mean())
    assert logged["test_acc_seen_patients"] == pytest.approx(right[seen].mean())
    assert logged["val_n_seen_patients"] == 0 and logged["val_acc_unseen_patients"] == pytest.approx(logged["val_acc_at_val_threshold"])
    # A patient with two test images: intervals resample patients, and say so.
    evaluated = mlflow.search_runs(filter_string="tags.step = 'evaluate'", output_format="list")[0]
    assert evaluated.data.tags["interval_method"].startswith(f"patient bootstrap ({len(files) - 1} patients")


def test_a_model_that_cannot_move_to_the_device_is_scored_on_the_cpu_and_says_so(monkeypatch):
    from pipeline.engine.device import Device

    class Bound(BrightnessModel):
        def to(self, *args, **kwargs):
            raise RuntimeError("this exported program is bound to the CPU")

    monkeypatch.setattr(evaluate, "mlflow", SimpleNamespace(pytorch=SimpleNamespace(load_model=lambda uri: Bound())))
    model, device, note = evaluate.load_model("models:/m-x", Device(torch.device("cuda")))
    assert isinstance(model, Bound) and device.type == "cpu"
    assert note.startswith("the logged model cannot move to cuda (RuntimeError: this exported program is bound") and "scored on the CPU" in note
    assert evaluate.load_model("models:/m-x", Device(torch.device("cpu")))[2] is None


def test_the_threshold_is_the_one_stored_with_the_model_by_its_train_run(fixed_train_run):
    run_id, _, data = fixed_train_run
    mlflow.MlflowClient().log_metric(run_id, "operating_threshold", 0.37)
    mlflow.MlflowClient().set_tag(run_id, "operating_threshold_rule", "sensitivity >= 0.95 on validation")
    evaluated = mlflow.get_run(evaluate.run(EvaluateConfig(train_run_id=run_id)).run_id)
    assert evaluated.data.metrics["val_threshold"] == 0.37
    assert evaluated.data.tags["val_threshold_rule"] == "sensitivity >= 0.95 on validation"
    y, p = data.labels("test"), p_pneumonia(data.images("test"))
    assert evaluated.data.metrics["test_sensitivity_at_val_threshold"] == pytest.approx(skm.recall_score(y, p >= 0.37), abs=1e-6)

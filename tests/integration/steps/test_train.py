"""The train step through its real command lines: the metric contract, the model, resume, errors."""

import json
import re
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch
import torchvision
from conftest import ROOT, error_lines, make_dataset, mlflow_run, pipeline_cli, runs_of
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.errors import UserError
from pipeline.models import build_classifier, resolve_weights
from pipeline.settings import DataConfig, FitConfig, ModelConfig
from pipeline.steps import train
from pipeline.tracking import EPOCH_METRICS


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("train") / "d", {"train": 12, "val": 4, "test": 4}, size=32)


def history(run_id, metric):
    return [(m.step, m.value) for m in sorted(MlflowClient().get_metric_history(run_id, metric), key=lambda m: m.step)]


@pytest.mark.parametrize("backbone,frozen,mode", [("efficientnet_b0", "true", "frozen"), ("resnet50", "false", "finetune")])
def test_mlflow_run_train_records_the_whole_contract(store, data_dir, tmp_path, backbone, frozen, mode):
    params = {
        "data_dir": str(data_dir),
        "image_size": "32",
        "backbone": backbone,
        "frozen": frozen,
        "weights": "none",
        "epochs": "3",
        "batch_size": "8",
        "patience": "0",
        "val_source": "folder",
    }
    result = mlflow_run("train", params)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs_of("train")
    assert run.info.status == "FINISHED" and run.info.run_name == f"{backbone}-{mode}-train"
    assert (run.data.tags["backbone"], run.data.tags["mode"]) == (backbone, mode)
    for metric in EPOCH_METRICS:
        assert [step for step, _ in history(run.info.run_id, metric)] == [1, 2, 3], metric
    metrics = run.data.metrics
    assert metrics["train_time_s"] > 0 and 1 <= metrics["best_epoch"] <= 3
    best = int(metrics["best_epoch"])
    assert metrics["best_val_acc"] == dict(history(run.info.run_id, "val_acc"))[best]
    assert run.data.tags["early_stopped"] == "false" and run.data.tags["epochs_run"] == "3"
    assert run.data.params["lr_resolved"] == {"frozen": "0.001", "finetune": "0.0001"}[mode]  # lr=auto, as typed
    assert run.data.params["data_digest"] and run.data.params["n_train"] == "24"
    artifacts = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "a"))
    assert open(f"{artifacts}/plots/learning_curves.png", "rb").read(4) == b"\x89PNG"
    # The logged model loads and predicts what the kept weights predict.
    kept = build_classifier(backbone, resolve_weights(backbone, "none", 42), 2, frozen == "true", 42)
    kept.load_state_dict(torch.load(f"{artifacts}/checkpoints/best.pt", weights_only=True))
    loaded = mlflow.pytorch.load_model(run.data.tags["model_uri"])
    x = torch.rand(3, 1, 32, 32)
    assert torch.allclose(loaded(x), kept.eval()(x), atol=1e-4)


def test_second_frozen_run_does_no_extraction(store, data_dir):
    config = (DataConfig(data_dir=str(data_dir), image_size=32), ModelConfig("resnet18", True, "none"), FitConfig(epochs=2, batch_size=8))
    first = train.run(*config)
    second = train.run(*config)
    r1, r2 = (MlflowClient().get_run(t.run_id) for t in (first, second))
    assert r1.data.tags["features_cached"] == "false" and r2.data.tags["features_cached"] == "true"
    assert history(first.run_id, "epoch_time_s")[1][1] < r1.data.metrics["feature_extraction_s"]
    # The second run's time is its own: it did not extract, so it claims no extraction time;
    # what the extraction cost is logged apart, with the run that measured it.
    extraction = r1.data.metrics["feature_extraction_s"]
    assert "feature_extraction_s" not in r2.data.metrics and "cached_features_cost_s" not in r1.data.metrics
    assert r2.data.metrics["cached_features_cost_s"] == pytest.approx(extraction)
    measured_in = json.loads(r2.data.tags["cached_features_measured_in"])
    assert {m["run_id"] for m in measured_in} == {first.run_id} and {m["split"] for m in measured_in} == {"train", "val"}
    assert r1.data.metrics["train_time_s"] > extraction
    epochs_s = sum(v for _, v in history(second.run_id, "epoch_time_s"))
    assert r2.data.metrics["train_time_s"] >= epochs_s


def test_a_diverging_run_fails_with_an_error_and_keeps_no_model(store, data_dir):
    result = pipeline_cli(
        "train",
        {
            "data_dir": str(data_dir),
            "image_size": "32",
            "backbone": "resnet18",
            "weights": "none",
            "frozen": "true",
            "epochs": "3",
            "batch_size": "8",
            "lr": "1e6",
            "device": "cpu",
        },
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert "training diverged at epoch" in line and "lr 1e+06" in line and "smaller lr" in line and "no model" in line
    assert "Traceback" not in result.stderr
    (run,) = runs_of("train")
    assert run.info.status == "FAILED" and "training diverged" in run.data.tags["error"]
    assert "model_uri" not in run.data.tags
    assert "model" not in {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert not mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")


def test_early_stopping_is_said_in_a_tag(store, data_dir):
    config = (
        DataConfig(data_dir=str(data_dir), image_size=32),
        ModelConfig("resnet18", True, "none"),
        FitConfig(epochs=40, batch_size=8, lr=0.5, patience=1),
    )
    trained = train.run(*config)
    run = MlflowClient().get_run(trained.run_id)
    assert run.data.tags["early_stopped"] == "true"
    epochs_run = int(run.data.tags["epochs_run"])
    assert epochs_run < 40 and len(history(trained.run_id, "val_loss")) == epochs_run


def start_training(data_dir, epochs):
    args = [
        sys.executable,
        "-m",
        "pipeline",
        "train",
        "--data_dir",
        str(data_dir),
        "--image_size",
        "32",
        "--backbone",
        "resnet18",
        "--frozen",
        "false",
        "--weights",
        "none",
        "--epochs",
        str(epochs),
        "--batch_size",
        "4",
        "--patience",
        "0",
        "--device",
        "cpu",
    ]  # pinned: the kill below must land mid-run on any machine
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_line(process, text):
    for line in process.stdout:
        if line.startswith(text):
            return
    pytest.fail(f"the process ended before printing {text!r}")


def wait_for_checkpoint(timeout: float = 120) -> None:
    """The recorder stores checkpoints from its own thread, a moment after the epoch's line:
    wait for the file itself (its folder appears before it, while the copy is written)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = runs_of("train")
        if running and "checkpoints/last.pt" in {a.path for a in MlflowClient().list_artifacts(running[0].info.run_id, "checkpoints")}:
            return
        time.sleep(0.1)
    pytest.fail("no checkpoint was stored")


def test_killed_in_epoch_3_of_5_then_resumed_ends_with_5_epochs_in_one_run(store, data_dir):
    process = start_training(data_dir, 5)
    wait_for_checkpoint()
    process.send_signal(signal.SIGKILL)
    process.wait()
    (killed,) = runs_of("train")
    assert killed.info.status == "RUNNING"  # SIGKILL leaves no chance to say otherwise
    logged = len(history(killed.info.run_id, "val_loss"))
    assert 1 <= logged < 5  # the metrics of every checkpointed epoch are stored before its checkpoint
    result = mlflow_run("train", {"resume": killed.info.run_id})
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_after = int(re.search(f"resuming run {killed.info.run_id} after epoch (\\d)\n", result.stdout).group(1))
    assert 1 <= resumed_after <= logged
    (resumed,) = runs_of("train")
    (pointer,) = [r for r in runs_of() if r.data.tags.get("resumed_run_id") == killed.info.run_id]
    assert pointer.info.run_name == f"resume-of-{killed.info.run_id[:8]}" and not pointer.data.metrics
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    for metric in EPOCH_METRICS:
        assert [step for step, _ in history(resumed.info.run_id, metric)] == [1, 2, 3, 4, 5], metric
    assert resumed.data.tags["epochs_run"] == "5" and resumed.data.tags["resumed"] == "true"


def test_ctrl_c_ends_the_run_killed_keeping_what_it_logged(store, data_dir):
    process = start_training(data_dir, 50)
    wait_for_line(process, "epoch 1/50")
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in output
    (run,) = runs_of("train")
    assert run.info.status == "KILLED"
    assert len(history(run.info.run_id, "val_loss")) >= 1


@pytest.mark.parametrize(
    "param,value,message",
    [
        ("backbone", "resnet-50", "error: backbone 'resnet-50' is not a torchvision classification model; did you mean resnet50"),
        ("weights", "/missing.pth", "error: weights must be imagenet, none, or the path of a state_dict file; no file at '/missing.pth'"),
    ],
)
def test_bad_backbone_or_weights_exit_2_with_one_error_line(store, param, value, message):
    result = pipeline_cli("train", {param: value})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith(message)


def test_resume_of_an_unknown_finished_or_other_run_is_a_user_error(store, data_dir):
    with pytest.raises(UserError, match="no run with id"):
        train.resume("0123456789abcdef0123456789abcdef")
    finished = train.run(DataConfig(data_dir=str(data_dir), image_size=32), ModelConfig("resnet18", True, "none"), FitConfig(epochs=1, batch_size=8))
    with pytest.raises(UserError, match=f"run {finished.run_id} already finished; nothing to resume"):
        train.resume(finished.run_id)
    with tracking.step_run("prepare") as other:
        pass
    with pytest.raises(UserError, match="is not a train run"):
        train.resume(other.info.run_id)


def test_resume_refuses_a_changed_world(store, tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", {"train": 12, "val": 4, "test": 4}, size=32)
    config = (
        DataConfig(data_dir=str(data), image_size=32, cache_dir=str(tmp_path / "c")),
        ModelConfig("resnet18", True, "none"),
        FitConfig(epochs=2, batch_size=8, device="cpu"),  # the last epoch stores no checkpoint: epoch 1's is there
    )
    trained = train.run(*config)
    MlflowClient().set_terminated(trained.run_id, "FAILED")  # as if it had stopped with its checkpoint stored
    monkeypatch.setattr(tracking, "code_version", lambda: "0123456789ab")
    with pytest.raises(UserError, match=r"cannot resume run .*code version \w+ -> 0123456789ab"):
        train.resume(trained.run_id)
    monkeypatch.undo()

    def unreachable(*args):
        raise ConnectionError("the artifact store did not answer")

    monkeypatch.setattr(tracking, "download", unreachable)  # a failed download is not "no checkpoint"
    with pytest.raises(UserError, match="cannot download checkpoints/last.pt of run .*ConnectionError: the artifact store did not answer"):
        train.resume(trained.run_id)
    monkeypatch.undo()
    (data / "train" / "NORMAL" / sorted(p.name for p in (data / "train" / "NORMAL").iterdir())[0]).unlink()
    with pytest.raises(UserError, match=r"cannot resume run .*data digest \w+ -> \w+"):
        train.resume(trained.run_id)


def test_a_weights_file_is_keyed_by_its_content(store, data_dir, tmp_path):
    weights = tmp_path / "w.pt"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    config = (DataConfig(data_dir=str(data_dir), image_size=32), ModelConfig("resnet18", True, str(weights)), FitConfig(epochs=1, batch_size=8))
    first = train.run(*config, reuse=True)
    assert train.run(*config, reuse=True).reused
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # other weights under the same path
    overwritten = train.run(*config, reuse=True)
    assert not overwritten.reused and overwritten.run_id != first.run_id


def test_calibrate_fits_a_temperature_on_validation_and_the_logged_model_uses_it(store, data_dir):
    config = (
        DataConfig(data_dir=str(data_dir), image_size=32, val_source="folder"),
        ModelConfig("resnet18", True, "none"),
        FitConfig(epochs=3, batch_size=8, lr=0.05, device="cpu"),
    )
    plain = train.run(*config)
    scaled = train.run(*config[:2], FitConfig(epochs=3, batch_size=8, lr=0.05, device="cpu", calibrate=True))
    metrics = mlflow.get_run(scaled.run_id).data.metrics
    # Fitting T minimises the validation NLL, so the calibration error is no worse after it.
    assert metrics["temperature"] > 0 and metrics["val_ece_after_calibration"] <= metrics["val_ece_before_calibration"] + 1e-3
    x = torch.rand(4, 1, 32, 32)
    base, calibrated = (mlflow.pytorch.load_model(t.model_uri)(x) for t in (plain, scaled))
    assert torch.allclose(calibrated, base / metrics["temperature"], atol=1e-4)  # same training, logits divided by T


def test_a_train_run_leaves_no_checkpoint_behind_in_the_temporary_folder(store, data_dir, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = (
        DataConfig(data_dir=str(data_dir), image_size=32, cache_dir=str(tmp_path / "cache")),
        ModelConfig(backbone="resnet18", frozen=False, weights="none"),
        FitConfig(epochs=2, batch_size=8, device="cpu"),  # epoch 1 stores the checkpoint resumed from
    )
    trained = train.run(*config)
    MlflowClient().set_terminated(trained.run_id, "FAILED")  # so that it can be resumed: its checkpoint is downloaded
    train.resume(trained.run_id)
    left = [p.name for p in scratch.iterdir() if p.suffix != ".lock"]  # the SQLite set-up lock stays, by design
    assert not left  # checkpoints, the downloaded one included, went to the store only

"""The prepare step through its real command lines, against a scratch tracking store."""

import json

import mlflow
from conftest import make_dataset, mlflow_run, pipeline_cli, runs_of

from pipeline.experiment import EXPERIMENT_NAME
from pipeline.settings import DataConfig
from pipeline.steps import prepare


def test_mlflow_run_prepare_logs_manifest_report_and_dataset(store, tmp_path):
    data = make_dataset(tmp_path / "d")
    good = next((data / "test" / "NORMAL").iterdir()).read_bytes()
    (data / "test" / "NORMAL" / "cut.jpeg").write_bytes(good[:200])
    (data / "train" / "NORMAL" / "notes.txt").write_text("x")
    result = mlflow_run("prepare", {"data_dir": str(data), "image_size": "32"})
    assert result.returncode == 0, result.stderr
    (run,) = runs_of("prepare")
    assert run.info.status == "FINISHED" and run.info.run_name == "prepare"
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.name == EXPERIMENT_NAME
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    params = run.data.params
    assert params["image_size"] == "32" and len(params["data_digest"]) == 16
    # val/ holds 4 images a class: too few, so its images joined train/ and validation was re-split.
    assert int(params["n_train"]) + int(params["n_val"]) == 28 and int(params["n_val"]) >= 4 and params["n_test"] == "8"
    assert run.data.tags["validation"] == "split" and params["val_source"] == "auto"
    assert run.data.metrics["n_rejected"] == 1 and run.data.metrics["n_ignored"] == 1
    (dataset,) = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("d", params["data_digest"])
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="data", dst_path=str(tmp_path / "a"))
    report = json.loads(open(f"{local}/data_report.json").read())
    assert [r["path"] for r in report["rejected"]] == ["test/NORMAL/cut.jpeg"]
    assert [r["path"] for r in report["ignored"]] == ["train/NORMAL/notes.txt"]
    md = open(f"{local}/data_report.md").read()
    assert "cut.jpeg" in md and "notes.txt" in md
    assert len(open(f"{local}/manifest.csv").read().splitlines()) == 1 + 36


def test_bad_parameters_end_with_one_error_line_and_a_failed_run(store):
    result = mlflow_run("prepare", {"image_size": "-3"})
    assert result.returncode != 0  # mlflow run reports any failed step with its own status 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: image_size must be an integer from 16 to 1024, got '-3'"]
    assert "Traceback" not in result.stderr
    (run,) = runs_of()
    assert run.info.status == "FAILED" and "image_size" in run.data.tags["error"]


def test_direct_command_line_exits_2_without_traceback(store):
    result = pipeline_cli("prepare", {"data_dir": "/does/not/exist"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: data_dir '/does/not/exist' does not exist")
    assert len(result.stderr.strip().splitlines()) == 1


def test_reuse_returns_the_finished_run_with_the_same_inputs(store, tmp_path):
    config = DataConfig(data_dir=str(make_dataset(tmp_path / "d")), image_size=32)
    first = prepare.run(config, reuse=True)
    again = prepare.run(config, reuse=True)
    assert not first.reused and again.reused and again.run_id == first.run_id
    other = prepare.run(DataConfig(data_dir=config.data_dir, image_size=40), reuse=True)
    assert not other.reused and len(runs_of("prepare")) == 2


def test_the_prepare_run_spans_the_decoding(store, tmp_path, monkeypatch):
    import time

    from pipeline import data as data_module

    real = data_module.decode_images

    def slow_decode(*args, **kwargs):
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(data_module, "decode_images", slow_decode)
    prepared = prepare.run(DataConfig(data_dir=str(make_dataset(tmp_path / "d")), image_size=16))
    run = mlflow.get_run(prepared.run_id)
    assert run.info.end_time - run.info.start_time >= 1000 and run.data.metrics["step_time_s"] >= 1.0

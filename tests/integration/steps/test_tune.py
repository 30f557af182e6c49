"""The tune step: nested trial runs, pruning, resumption, concurrent workers, and main's lr=auto."""

import signal
import subprocess
import sys

import mlflow
import optuna
import pytest
from conftest import ROOT, make_dataset, mlflow_run, runs_of

from pipeline.settings import DataConfig, FitConfig, ModelConfig, TuneConfig
from pipeline.steps import train, tune

FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tune") / "d", {"train": 16, "val": 8, "test": 4}, size=32)


def tune_params(data_dir, **extra):
    return {
        "data_dir": str(data_dir),
        "image_size": "32",
        "backbone": "resnet18",
        "frozen": "true",
        "weights": "none",
        "epochs": "4",
        "batch_size": "8",
        "lr_range": "1e-5,5",
        **extra,
    }


def trial_runs(parent_id):
    return [r for r in runs_of("tune") if r.data.tags.get("mlflow.parentRunId") == parent_id]


def study_of(store_uri, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{store_uri.removeprefix('sqlite:///').rsplit('/', 1)[0]}/optuna.db")


def test_a_small_study_through_the_command_line(store, data_dir, tmp_path):
    result = mlflow_run("tune", tune_params(data_dir, tune_trials="6"))
    assert result.returncode == 0, result.stderr[-3000:]
    (tuned,) = [r for r in runs_of("tune") if "mlflow.parentRunId" not in r.data.tags]
    assert tuned.info.run_name == "resnet18-frozen-tune" and tuned.info.status == "FINISHED"
    trials = trial_runs(tuned.info.run_id)
    assert len(trials) == 6
    statuses = [t.info.status for t in trials]
    assert set(statuses) <= {"FINISHED", "KILLED"}
    m = tuned.data.metrics
    assert m["n_trials_complete"] == statuses.count("FINISHED") and m["n_trials_pruned"] == statuses.count("KILLED")
    assert m["n_trials_pruned"] >= 1  # the 0.76 and 5 ends of the range are hopeless
    finished = [t for t in trials if t.info.status == "FINISHED"]
    best = min(finished, key=lambda t: t.data.metrics["best_val_loss"])
    assert float(best.data.params["lr"]) == pytest.approx(m["best_lr"], rel=1e-5)
    assert m["best_val_loss"] == pytest.approx(best.data.metrics["best_val_loss"])
    killed = [t for t in trials if t.info.status == "KILLED"][0]
    assert "pruned at epoch" in killed.data.tags["stopped"] or "training diverged" in killed.data.tags["stopped"]
    assert all(len(mlflow.MlflowClient().get_metric_history(t.info.run_id, "val_loss")) >= 1 for t in trials)
    assert tuned.data.tags["study_name"].startswith("resnet18-frozen-") and tuned.data.tags["storage"].endswith("optuna.db")
    assert m["feature_extraction_s"] > 0
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(tuned.info.run_id, "plots")}
    assert files == {"plots/optimization_history.png", "plots/val_loss_vs_lr.png"}


def test_a_rerun_adds_trials_and_training_with_the_best_lr_reproduces_the_best_trial(store, data_dir):
    config = (DataConfig(data_dir=str(data_dir), image_size=32), ModelConfig("resnet18", True, "none"), FitConfig(epochs=3, batch_size=8))
    first = tune.run(*config, TuneConfig(), 2)
    second = tune.run(*config, TuneConfig(), 3)
    metrics = mlflow.get_run(second.run_id).data.metrics
    assert metrics["n_trials_complete"] + metrics["n_trials_pruned"] + metrics["n_trials_failed"] == 5
    assert metrics["n_trials_run"] == 3
    assert mlflow.get_run(first.run_id).data.tags["features_cached"] == "false"
    assert mlflow.get_run(second.run_id).data.tags["features_cached"] == "true"  # extracted once for the study
    assert len(trial_runs(first.run_id)) == 2 and len(trial_runs(second.run_id)) == 3
    trained = train.run(*config, tuned_lr=second.best_lr)
    assert mlflow.get_run(trained.run_id).data.metrics["best_val_loss"] == pytest.approx(metrics["best_val_loss"], rel=1e-6)


def tune_process(data_dir, n_trials, **extra):
    args = [sys.executable, "-m", "pipeline", "tune"]
    for key, value in tune_params(data_dir, tune_trials=str(n_trials), **extra).items():
        args += [f"--{key}", value]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_run_loses_only_its_running_trial(store, data_dir):
    process = tune_process(data_dir, 40, epochs="30", pruner="none")
    done = 0
    for line in process.stdout:
        done += line.startswith("trial ")
        if done == 2:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    (killed,) = runs_of("tune")[-1:]
    name = killed.data.tags["study_name"]
    finished_before = len(study_of(store, name).get_trials(states=FINISHED_STATES))
    assert finished_before >= 1  # the second may still have been reporting back: it was the running trial
    rerun = mlflow_run("tune", tune_params(data_dir, tune_trials="2", epochs="30", pruner="none"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = study_of(store, name)
    assert len(study.get_trials(states=FINISHED_STATES)) == finished_before + 2
    assert len(study.get_trials(states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL))) <= 1


def test_two_processes_on_one_sqlite_study_record_every_trial_once(store, data_dir):
    workers = [tune_process(data_dir, 4, study_name="shared") for _ in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n\n".join(o[-4000:] for o in outputs)
    study = study_of(store, "shared")
    trials = study.get_trials(states=FINISHED_STATES)
    assert len(trials) == 8 and sorted(t.number for t in trials) == list(range(8))
    tune_runs = [r for r in runs_of("tune") if "mlflow.parentRunId" not in r.data.tags]
    assert len(tune_runs) == 2
    recorded = [t.data.tags["trial"] for r in tune_runs for t in trial_runs(r.info.run_id)]
    assert sorted(recorded, key=int) == [str(n) for n in range(8)]  # each trial in exactly one nested run
    assert {r.data.metrics["n_trials_run"] for r in tune_runs} == {4}


def test_a_tune_run_stands_for_another_only_while_its_study_is_unchanged(store, data_dir):
    config = (DataConfig(data_dir=str(data_dir), image_size=32), ModelConfig("resnet18", True, "none"), FitConfig(epochs=2, batch_size=8))
    first = tune.run(*config, TuneConfig(), 2, reuse=True)
    again = tune.run(*config, TuneConfig(), 2, reuse=True)
    assert again.reused and again.run_id == first.run_id
    # Another worker adds trials to the study: the old best_lr may no longer be the study's.
    tune.run(*config, TuneConfig(), 1, reuse=False)
    moved = tune.run(*config, TuneConfig(), 2, reuse=True)
    assert not moved.reused
    name = mlflow.get_run(first.run_id).data.tags["study_name"]
    assert len(study_of(store, name).trials) == 5
    # On an explicit (shared) storage a tune step always adds its trials.
    shared = TuneConfig(storage=mlflow.get_run(first.run_id).data.tags["storage"])
    tune.run(*config, shared, 1, reuse=True)
    assert not tune.run(*config, shared, 1, reuse=True).reused
    assert len(study_of(store, name).trials) == 7

"""Training in several processes (torchrun, DistributedDataParallel over gloo on this CPU):
the same trajectory as one process with the same global batch, one MLflow run, resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, make_dataset, mlflow_run, pipeline_cli, runs_of
from mlflow.tracking import MlflowClient

from pipeline.distributed import ERROR_FILE, World, report_error
from pipeline.tracking import EPOCH_METRICS

# Two processes sum the same numbers in another order: float32 rounding, nothing more.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ddp") / "d", {"train": 16, "val": 8, "test": 4}, size=32)


def history(run_id: str, metric: str) -> list[float]:
    return [m.value for m in sorted(MlflowClient().get_metric_history(run_id, metric), key=lambda m: m.step)]


def settings(data_dir, **extra) -> dict[str, str]:
    return {
        "data_dir": str(data_dir),
        "image_size": "32",
        "backbone": "resnet18",
        "weights": "none",
        "epochs": "4",
        "batch_size": "8",
        "patience": "0",
        "device": "cpu",
        # bf16 rounds each shard's partial sums differently: the worlds are compared in float32
        "precision": "fp32",
        **extra,
    }


def test_two_gloo_processes_follow_the_one_process_trajectory_into_one_run(store, data_dir):
    # Frozen: the head is all that trains, so the only difference between the worlds is where
    # the global batch's gradient is summed. Class weights on: the weighted mean must survive sharding.
    one = pipeline_cli("train", settings(data_dir, frozen="true"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = mlflow_run("train", settings(data_dir, frozen="true", nproc="2"))
    assert two.returncode == 0, two.stderr[-3000:]
    runs = sorted(runs_of("train"), key=lambda r: r.info.start_time)
    assert len(runs) == 2  # rank 1 made no run of its own
    single, double = runs
    assert double.data.params["nproc"] == "2" and double.data.params["world_size"] == "2"
    assert single.data.params["world_size"] == "1" and double.info.status == "FINISHED"
    for metric in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert history(double.info.run_id, metric) == pytest.approx(history(single.info.run_id, metric), rel=TOLERANCE), metric
    assert double.data.tags["model_uri"]


def test_fine_tuning_in_two_processes_resumes_after_a_kill(store, data_dir):
    args = [sys.executable, "-m", "pipeline", "train"] + [
        t for k, v in settings(data_dir, frozen="false", nproc="2", epochs="12", batch_size="4").items() for t in (f"--{k}", v)
    ]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        running = runs_of("train")
        if running and "checkpoints/last.pt" in {a.path for a in MlflowClient().list_artifacts(running[0].info.run_id, "checkpoints")}:
            break
        time.sleep(0.2)
    else:
        pytest.fail("no checkpoint was stored:\n" + (process.kill() or process.communicate()[0][-3000:]))
    for pid in [process.pid] + descendants(process.pid):  # the launcher, torchrun and both workers
        os.kill(pid, signal.SIGKILL)
    process.wait()
    (killed,) = runs_of("train")
    assert killed.info.status == "RUNNING"
    result = mlflow_run("train", {"resume": killed.info.run_id})
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(f"resuming run {killed.info.run_id} after epoch \\d", result.stdout)
    resumed = MlflowClient().get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["epochs_run"] == "12"
    for metric in EPOCH_METRICS:
        assert [m.step for m in sorted(MlflowClient().get_metric_history(killed.info.run_id, metric), key=lambda m: m.step)] == list(range(1, 13))


def test_main_launches_its_train_step_in_two_processes_as_a_child_run(store, data_dir):
    result = mlflow_run("main", settings(data_dir, frozen="true", nproc="2", epochs="2", tune_trials="0"))
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,) = runs_of("main")
    (trained,) = runs_of("train")
    assert trained.data.tags["mlflow.parentRunId"] == parent.info.run_id == runs_of("evaluate")[0].data.tags["mlflow.parentRunId"]
    assert trained.data.params["world_size"] == "2" and parent.data.tags["train_run_id"] == trained.info.run_id
    assert "test_acc" in parent.data.metrics


def test_a_mistake_in_two_processes_is_said_once(store, data_dir):
    result = pipeline_cli("train", settings(data_dir, frozen="false", nproc="2", batch_size="2"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: 2 processes need at least two images each in every batch")
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own)."""
    children = [int(p) for p in subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()]
    return children + [d for c in children for d in descendants(c)]


def test_a_world_of_one_is_the_plain_process():
    world = World()
    assert not world.distributed and world.sum([1.0, 2.0]) == [1.0, 2.0]
    assert torch.equal(world.shard(torch.arange(5)), torch.arange(5))
    assert World(1, 2).shard(torch.arange(5)).tolist() == [1, 3]


def test_the_first_rank_to_fail_is_the_one_said_whichever_it_is(tmp_path, monkeypatch):
    # The agent stops the other workers once one exits, so rank 0 may never reach its own error.
    monkeypatch.setenv(ERROR_FILE, str(tmp_path / "error"))
    monkeypatch.setenv("RANK", "1")
    assert report_error("rank 1 failed first")
    monkeypatch.setenv("RANK", "0")
    assert report_error("rank 0 failed later")
    assert (tmp_path / "error").read_text() == "rank 1 failed first"


def test_outside_a_launched_worker_the_error_is_printed_here(monkeypatch):
    monkeypatch.delenv(ERROR_FILE, raising=False)
    assert not report_error("said by this process")

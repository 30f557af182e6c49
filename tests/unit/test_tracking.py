import errno
import io
import json
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.tracking import checkpoint_file, reuse
from pipeline.tracking import recorder as recorder_module


@dataclass
class Stats:
    epoch: int
    train_loss: float = 0.5
    train_acc: float = 0.7
    val_loss: float = 0.6
    val_acc: float = 0.65
    lr: float = 1e-3
    epoch_time_s: float = 1.0


def test_input_key_changes_with_the_libraries(monkeypatch):
    key = tracking.input_key("train", {"lr": "0.001"}, "d1")
    monkeypatch.setattr(reuse, "library_versions", lambda: {"torch": "9.9", "torchvision": "0.29.1", "mlflow": "3.17.2"})
    assert tracking.input_key("train", {"lr": "0.001"}, "d1") != key


def test_input_key_changes_with_any_input():
    key = tracking.input_key("train", {"lr": "0.001"}, "d1")
    assert key == tracking.input_key("train", {"lr": "0.001"}, "d1")
    assert (
        len(
            {
                key,
                tracking.input_key("train", {"lr": "0.002"}, "d1"),
                tracking.input_key("train", {"lr": "0.001"}, "d2"),
                tracking.input_key("tune", {"lr": "0.001"}, "d1"),
            }
        )
        == 4
    )


def test_params_typed_under_mlflow_run_stay_and_resolved_values_go_beside(store):
    with tracking.step_run("train", "resnet18", "frozen") as run:
        mlflow.log_params({"lr": "auto", "cache_dir": "''"})  # as `mlflow run` logs them
        tracking.log_params({"lr": "0.001", "cache_dir": "", "epochs": "3"})
    params = MlflowClient().get_run(run.info.run_id).data.params
    assert (params["lr"], params["lr_resolved"], params["epochs"]) == ("auto", "0.001", "3")
    assert "cache_dir_resolved" not in params  # '' is how `mlflow run` writes an empty string


@pytest.mark.parametrize("live", [True, False], ids=["large: written from the live tensors", "small: copied"])
def test_epoch_recorder_logs_in_order_and_checkpoints_a_snapshot(store, tmp_path, monkeypatch, live):
    if live:  # every checkpoint counts as large: no copy, training waits for the write
        monkeypatch.setattr(recorder_module, "SMALL_CHECKPOINT", -1)
    weights = torch.zeros(3)
    with tracking.step_run("train", "resnet18", "finetune") as run:
        recorder = tracking.EpochRecorder(tmp_path)
        for epoch in (1, 2, 3):
            weights.fill_(epoch)
            serialised = recorder(Stats(epoch, val_loss=1.0 / epoch), None, lambda epoch=epoch: {"w": weights, "epoch": epoch})
            assert (serialised is not None) == live
            if live:
                serialised.result()  # what training waits for before its next step
            weights.fill_(-1)  # training goes on changing the weights after the epoch ended
        recorder.close()
    client = MlflowClient()
    for metric in tracking.EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2, 3]
    saved = torch.load(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="checkpoints/last.pt", dst_path=str(tmp_path / "d")),
        weights_only=True,
    )
    assert saved["epoch"] == 3 and saved["w"].tolist() == [3.0, 3.0, 3.0]


def _last_checkpoint(run) -> Path:
    return Path(urlparse(run.info.artifact_uri).path) / "checkpoints" / "last.pt"


def _wait_for(done, what: str) -> None:
    """The recorder's thread stores after the write training waits for: poll for it."""
    deadline = time.monotonic() + 10
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within 10 s")
        time.sleep(0.01)


def _wait_until_published(run, epoch: int) -> None:
    last = _last_checkpoint(run)
    _wait_for(lambda: last.exists() and torch.load(last, weights_only=True)["epoch"] == epoch, f"epoch {epoch}'s checkpoint published")


def test_checkpoints_alternate_between_two_slots_and_the_one_published_is_never_rewritten(store, tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "SMALL_CHECKPOINT", -1)
    writes = []
    original = recorder_module.write_checkpoint

    def watched(checkpoint, path, buffer):
        last = _last_checkpoint(run)
        writes.append((path.name, last.exists() and path.exists() and os.path.samefile(path, last)))
        original(checkpoint, path, buffer)

    monkeypatch.setattr(recorder_module, "write_checkpoint", watched)
    with tracking.step_run("train", "resnet18", "finetune") as run:
        recorder = tracking.EpochRecorder(tmp_path, min_interval=0)
        for epoch in (1, 2, 3, 4):
            recorder(Stats(epoch), None, lambda epoch=epoch: {"w": torch.full((1000,), float(epoch)), "epoch": epoch}).result()
            _wait_until_published(run, epoch)  # the next write comes after it, as an epoch later
        recorder.close()
    assert [name for name, _ in writes] == ["last.pt.a", "last.pt.b", "last.pt.a", "last.pt.b"]
    assert not any(was_published for _, was_published in writes)  # a kill -9 mid-write leaves last.pt whole
    assert torch.load(_last_checkpoint(run), weights_only=True)["epoch"] == 4
    assert not list(_last_checkpoint(run).parents[2].glob("last.pt.*"))  # the slots' names go with the recorder


def test_a_resumed_recorder_does_not_write_into_the_slot_its_killed_process_published(store, tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "SMALL_CHECKPOINT", -1)
    with tracking.step_run("train", "resnet18", "finetune") as run:
        killed = tracking.EpochRecorder(tmp_path, min_interval=0)
        killed(Stats(1), None, lambda: {"epoch": 1}).result()
        _wait_until_published(run, 1)
        killed.queue.put(None)
        killed.thread.join()  # stopped as by kill -9: no close(), its slots stay
        resumed = tracking.EpochRecorder(tmp_path, min_interval=0)

        def killed_mid_write(checkpoint, path, buffer):
            path.write_bytes(b"half a checkpoint")
            raise OSError("killed")

        monkeypatch.setattr(recorder_module, "write_checkpoint", killed_mid_write)
        resumed(Stats(2), None, lambda: {"epoch": 2})
        with pytest.raises(OSError, match="killed"):
            resumed.close()
        assert torch.load(_last_checkpoint(run), weights_only=True)["epoch"] == 1


def test_a_store_elsewhere_gets_every_checkpoint_uploaded(store, tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "SMALL_CHECKPOINT", -1)
    uploaded = []
    monkeypatch.setattr(
        MlflowClient, "log_artifact", lambda self, run_id, path, folder=None: uploaded.append(torch.load(path, weights_only=True)["epoch"])
    )
    remote = mlflow.create_experiment("remote-artifacts", artifact_location="s3://bucket/artifacts")
    with mlflow.start_run(experiment_id=remote):
        recorder = tracking.EpochRecorder(tmp_path, min_interval=0)
        for epoch in (1, 2, 3):
            recorder(Stats(epoch), None, lambda epoch=epoch: {"epoch": epoch}).result()
            _wait_for(lambda epoch=epoch: len(uploaded) >= epoch, f"epoch {epoch}'s checkpoint uploaded")
        recorder.close()
    assert uploaded == [1, 2, 3]


def test_without_hard_links_each_checkpoint_still_becomes_last_pt(store, tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "SMALL_CHECKPOINT", -1)

    def no_links(*_):
        raise OSError("operation not permitted")

    monkeypatch.setattr(recorder_module.os, "link", no_links)
    with tracking.step_run("train", "resnet18", "finetune") as run:
        recorder = tracking.EpochRecorder(tmp_path, min_interval=0)
        for epoch in (1, 2, 3):
            recorder(Stats(epoch), None, lambda epoch=epoch: {"epoch": epoch}).result()
            _wait_until_published(run, epoch)
        recorder.close()
    assert not list(_last_checkpoint(run).parents[2].glob("last.pt.*"))


def test_a_resumed_run_does_not_log_an_epoch_twice(store, tmp_path):
    with tracking.step_run("train", "resnet18", "frozen") as run:
        first = tracking.EpochRecorder()
        first(Stats(1), None, None)
        first(Stats(2), None, None)
        first.close()
        again = tracking.EpochRecorder()  # the checkpoint said epoch 1: epoch 2 runs again
        again(Stats(2), None, None)
        again(Stats(3), None, None)
        again.close()
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]


def test_a_failing_write_is_raised_not_lost(store, tmp_path):
    with pytest.raises(OSError):  # raised in the recorder's thread, surfaced by close()
        with tracking.step_run("train", "resnet18", "finetune") as run:
            artifacts = Path(urlparse(run.info.artifact_uri).path)
            artifacts.mkdir(parents=True, exist_ok=True)
            (artifacts / "checkpoints").write_text("a file where the checkpoint folder should be")
            recorder = tracking.EpochRecorder(tmp_path)
            recorder(Stats(1), None, lambda: {"w": torch.zeros(1)})
            recorder.close()


def test_a_with_block_keeps_its_own_error_over_the_recorders(store, tmp_path):
    with tracking.step_run("train", "resnet18", "finetune") as run:
        artifacts = Path(urlparse(run.info.artifact_uri).path)
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "checkpoints").write_text("a file where the checkpoint folder should be")
        with pytest.raises(OSError):  # a clean exit raises what the recorder's thread met
            with tracking.EpochRecorder(tmp_path) as recorder:
                recorder(Stats(1), None, lambda: {"w": torch.zeros(1)})
        with pytest.raises(KeyError, match="training failed"):  # the block's own error is not masked
            with tracking.EpochRecorder(tmp_path) as recorder:
                recorder(Stats(1), None, lambda: {"w": torch.zeros(1)})
                raise KeyError("training failed")
        assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_loss")] == [1]


def test_ui_hint_for_a_local_store_and_a_server(store, monkeypatch):
    assert "mlflow ui --backend-store-uri sqlite:///" in tracking.ui_hint("7") and "#/experiments/7/runs" in tracking.ui_hint("7")
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "http://tracking:5000/")
    assert tracking.ui_hint("7") == "Runs: http://tracking:5000/#/experiments/7/runs"


def test_ui_hint_opens_the_compare_view_of_the_runs_given(store, monkeypatch):
    from urllib.parse import parse_qs, unquote, urlparse

    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "http://tracking:5000/")
    address = tracking.ui_hint("7", ["a1", "b2"]).removeprefix("Its runs side by side: ")
    page, _, query = urlparse(address).fragment.partition("?")
    assert address.startswith("http://tracking:5000/#/") and page == "/compare-runs"
    # The UI reads both lists with JSON.parse.
    assert {k: json.loads(unquote(v[0])) for k, v in parse_qs(query).items()} == {"runs": ["a1", "b2"], "experiments": ["7"]}


def _saved_bytes(checkpoint: dict) -> bytes:
    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        return buffer.getvalue()
    finally:
        torch.serialization.set_crc32_options(crc)


def _takes_direct_writes(folder: Path) -> bool:
    if not checkpoint_file.O_DIRECT:
        return False
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | checkpoint_file.O_DIRECT))
        return True
    except OSError:
        return False


def test_a_direct_write_holds_what_torch_save_writes_over_a_longer_file_and_across_buffers(tmp_path, monkeypatch):
    # Where this file system (a tmpfs /tmp, say) or OS refuses O_DIRECT, the same aligned,
    # block-padded writing runs under O_DSYNC, which every file system takes.
    if not _takes_direct_writes(tmp_path):
        monkeypatch.setattr(checkpoint_file, "O_DIRECT", os.O_DSYNC)
    checkpoint = {"w": torch.arange(10_007, dtype=torch.float32), "m": {"v": torch.ones(3, 5)}, "epoch": 3}
    path = tmp_path / "slot"
    path.write_bytes(b"x" * 200_000)  # the checkpoint an epoch ago, longer than this one
    direct = []
    real = checkpoint_file._write_direct
    monkeypatch.setattr(checkpoint_file, "_write_direct", lambda *a: direct.append(real(*a)) or direct[-1])
    checkpoint_file.write_checkpoint(checkpoint, path, mmap.mmap(-1, 3 * checkpoint_file.ALIGNMENT))  # 12 kB: many drains
    assert direct == [True]
    assert path.read_bytes() == _saved_bytes(checkpoint)
    assert torch.equal(torch.load(path, weights_only=True)["w"], checkpoint["w"])


@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_a_file_system_refusing_direct_writes_gets_the_checkpoint_through_the_cache(tmp_path, monkeypatch, refused_at):
    checkpoint = {"w": torch.arange(5000, dtype=torch.float64), "epoch": 1}
    path = tmp_path / "slot"
    real_open, real_pwrite = os.open, os.pwrite

    def refusing_open(p, f, *a):
        if refused_at == "open" and f & checkpoint_file.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(p, f, *a)

    def refusing_pwrite(*a):
        if refused_at == "write":
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(*a)

    monkeypatch.setattr(checkpoint_file.os, "open", refusing_open)
    monkeypatch.setattr(checkpoint_file.os, "pwrite", refusing_pwrite)
    # a buffer smaller than the checkpoint: the refusal comes from inside torch.save, as for a large one
    checkpoint_file.write_checkpoint(checkpoint, path, mmap.mmap(-1, 3 * checkpoint_file.ALIGNMENT))
    assert path.read_bytes() == _saved_bytes(checkpoint)

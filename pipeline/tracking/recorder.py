"""The epoch recorder: each epoch's metrics and checkpoint stored from a background thread, so
training never waits for the tracking store."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.tracking import MlflowClient

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s")


class EpochRecorder:
    """Logs each epoch's metrics (step = epoch) and, given a folder, a checkpoint
    (`checkpoints/last.pt`) from a background thread, so training never waits for the store.

    Order is kept: an epoch's metrics are stored before any checkpoint of that epoch, so a
    resumed run never skips an epoch's numbers. The thread writes at most once per
    `min_interval` seconds, taking all that is waiting at once: one batch of metrics and only
    the newest checkpoint. Epochs longer than that are each written as they end; the
    millisecond epochs of frozen mode are written together instead of costing a database
    transaction each. The checkpoint is a copy taken at the epoch's end, since training goes on
    changing the weights. `close()` (or leaving a `with` block) writes what is queued and
    raises what failed, unless the block is already ending on an error of its own."""

    def __init__(self, checkpoint_dir: Path | None = None, min_interval: float = 1.0):
        run = mlflow.active_run()
        self.run_id = run.info.run_id
        self.client = MlflowClient()
        self.checkpoint_dir = checkpoint_dir
        parsed = urlparse(run.info.artifact_uri)
        # A store on this machine's disk is written in place (one write, atomic rename);
        # any other goes through MLflow's upload.
        self.local_artifacts = Path(parsed.path) if parsed.scheme in ("", "file") else None
        # A run killed after logging an epoch's metrics but before its checkpoint repeats that
        # epoch when resumed (identically: training is deterministic); its numbers are not
        # logged twice. Each batch is one transaction, so a step has all its metrics or none.
        self.logged_steps = {m.step for m in self.client.get_metric_history(self.run_id, "val_loss")}
        self.min_interval = min_interval
        self.closing = threading.Event()
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="epoch-recorder", daemon=True)
        self.thread.start()

    def __call__(self, stats, state, make_checkpoint) -> None:
        import torch

        if self.error is not None:
            raise self.error
        snapshot = _detach(make_checkpoint(), torch) if self.checkpoint_dir is not None else None
        self.queue.put((stats, snapshot))

    def _work(self) -> None:
        while True:
            items = [self.queue.get()]
            if items[0] is not None:
                self.closing.wait(self.min_interval)  # let quick epochs gather
            while not self.queue.empty():
                items.append(self.queue.get())
            closing = items[-1] is None
            items = [item for item in items if item is not None]
            if items and self.error is None:
                try:
                    self._write(items)
                except BaseException as e:  # raised in the training thread, at its next call or close()
                    self.error = e
            if closing:
                return

    def _write(self, items: list) -> None:
        import torch
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(name, float(getattr(stats, name)), now, stats.epoch)
            for stats, _ in items
            if stats.epoch not in self.logged_steps
            for name in EPOCH_METRICS
        ]
        for start in range(0, len(metrics), 996):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 996])
        snapshot = next((snap for _, snap in reversed(items) if snap is not None), None)
        if snapshot is None:
            return
        if self.local_artifacts is not None:
            folder = self.local_artifacts / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            # Written beside the artifacts, not among them: a reader listing checkpoints/ while the
            # file is written (resume, has_artifact) would see a name that vanishes at the rename.
            partial = self.local_artifacts.parent / "last.pt.partial"
            torch.save(snapshot, partial)
            os.replace(partial, folder / "last.pt")
        else:
            torch.save(snapshot, self.checkpoint_dir / "last.pt")
            self.client.log_artifact(self.run_id, str(self.checkpoint_dir / "last.pt"), "checkpoints")

    def close(self) -> None:
        self.closing.set()
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> EpochRecorder:
        return self

    def __exit__(self, error_type, *_) -> None:
        try:
            self.close()  # what finished epochs logged is in the store, even after Ctrl-C
        except Exception:
            if error_type is None:
                raise


def _detach(value, torch):
    """A deep copy of a checkpoint's tensors (and the dicts and lists that hold them)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detach(v, torch) for k, v in value.items()}
    if isinstance(value, list):
        return [_detach(v, torch) for v in value]
    return value

"""The epoch recorder: each epoch's metrics and checkpoint stored from a background thread, so
training never waits for the tracking store."""

from __future__ import annotations

import mmap
import os
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.tracking.checkpoint_file import new_buffer, write_checkpoint

# A checkpoint up to this size is copied at once and written later; a larger one (a fine-tuned
# backbone's: 65 MB for EfficientNet-B0, 280 MB for ResNet50) is written from the live tensors.
SMALL_CHECKPOINT = 16 * 2**20
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s")


class EpochRecorder:
    """Logs each epoch's metrics (step = epoch) and, given a folder, a checkpoint
    (`checkpoints/last.pt`) from a background thread, so training never waits for the store.

    The checkpoint holds the live weights (`engine/snapshots.py`): the thread serialises it at
    once, and the call hands back a future that is done when it has, which training waits for
    before its next optimizer step; no copy of the state is made in the training thread (but of
    one up to `SMALL_CHECKPOINT`, a frozen run's head, which is copied and written later). Order
    is kept: a checkpoint is published (linked into checkpoints/, or uploaded) only after its
    epoch's metrics are stored, so a resumed run never skips an epoch's numbers. Metrics and
    publishing happen at most once per `min_interval` seconds, taking all that is waiting at
    once: the millisecond epochs of frozen mode are stored together instead of costing a
    database transaction each. `close()` (or leaving a `with` block) writes what is queued and
    raises what failed, unless the block is already ending on an error of its own."""

    def __init__(self, checkpoint_dir: Path | None = None, min_interval: float = 1.0):
        run = mlflow.active_run()
        self.run_id = run.info.run_id
        self.client = MlflowClient()
        self.checkpoint_dir = checkpoint_dir
        parsed = urlparse(run.info.artifact_uri)
        # A store on this machine's disk gets the checkpoint in place (a slot, linked into
        # checkpoints/); any other through MLflow's upload.
        self.local_artifacts = Path(parsed.path) if parsed.scheme in ("", "file") else None
        # Checkpoints are written into two slot files in turn, each rewritten in place: a 300 MB
        # file's pages are reused, not freed and allocated again as when a new file is renamed
        # over the old (the write's time: benchmarks/RESULTS.md). checkpoints/last.pt is a
        # hard link to the slot last published, so the slot being written is never the one a
        # resume would read: a kill -9 mid-write loses one epoch, not the checkpoint. Slots live
        # beside the artifacts, not among them: a reader listing checkpoints/ sees only last.pt.
        # A store elsewhere gets each write uploaded, and one slot suffices.
        self.slots: list[Path] = []
        if checkpoint_dir is not None:
            folder = self.local_artifacts.parent if self.local_artifacts else checkpoint_dir
            self.slots = [folder / "last.pt.a", folder / "last.pt.b"] if self.local_artifacts else [folder / "last.pt"]
        self.link = self.slots[0].with_name("last.pt.link") if self.slots else None  # a slot's second name, until renamed to last.pt
        # the slot checkpoints/last.pt is: in a resumed run, perhaps one its killed process wrote
        last = self.local_artifacts / "checkpoints" / "last.pt" if self.local_artifacts else None
        self.published = next((s for s in self.slots if last and last.exists() and s.exists() and os.path.samefile(s, last)), None)
        self.written: Path | None = None  # the slot holding the newest checkpoint, if unpublished
        # A run killed after logging an epoch's metrics but before its checkpoint repeats that
        # epoch when resumed (identically: training is deterministic); its numbers are not
        # logged twice. Each batch is one transaction, so a step has all its metrics or none.
        self.logged_steps = {m.step for m in self.client.get_metric_history(self.run_id, "val_loss")}
        self.min_interval = min_interval
        self.buffer: mmap.mmap | None = None  # for direct writes of large checkpoints, made at the first
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="epoch-recorder", daemon=True)
        self.thread.start()

    def __call__(self, stats, state, make_checkpoint) -> Future | None:
        if self.error is not None:
            raise self.error
        if self.checkpoint_dir is None or make_checkpoint is None:
            self.queue.put((stats, None))
            return None
        checkpoint = make_checkpoint()
        if _tensor_bytes(checkpoint) <= SMALL_CHECKPOINT:
            # A frozen run's head: copied in microseconds, written with the batch it arrives in,
            # and training need not wait for the thread at its next step.
            self.queue.put((stats, (_detach(checkpoint), None)))
            return None
        serialised: Future = Future()
        self.queue.put((stats, (checkpoint, serialised)))
        return serialised

    def _work(self) -> None:
        closing = False
        while not closing:
            item = self.queue.get()
            stats, unpublished, copied = [], False, None
            deadline = time.monotonic() + self.min_interval  # let quick epochs gather
            while item is not None:
                stats.append(item[0])
                if item[1] is not None and item[1][1] is None:
                    copied = item[1]  # a copy: only the newest of the batch is written
                elif item[1] is not None:
                    unpublished |= self._serialise(item[1])
                    copied = None
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            unpublished |= self._serialise(copied)
            closing = item is None
            if self.error is None:
                try:
                    self._store(stats, unpublished)
                except BaseException as e:  # raised in the training thread, at its next call or close()
                    self.error = e

    def _serialise(self, snapshot) -> bool:
        """Write a checkpoint into the slot not published now, while training waits for the next step."""
        if snapshot is None:
            return False
        checkpoint, serialised = snapshot
        try:
            if self.error is None:
                slot = next(s for s in self.slots if s != self.published)
                # A large checkpoint goes around the page cache (checkpoint_file.py); a frozen
                # run's head, a few kB, through it: an 8 MB buffer would cost it more than its write.
                if self.buffer is None and serialised is not None:
                    self.buffer = new_buffer()
                write_checkpoint(checkpoint, slot, self.buffer if serialised is not None else None)
                self.written = slot
            if serialised is not None:
                serialised.set_result(None)
        except BaseException as e:
            self.error = e
            if serialised is not None:
                serialised.set_exception(e)
        return self.error is None

    def _store(self, stats: list, unpublished: bool) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, float(getattr(s, name)), now, s.epoch) for s in stats if s.epoch not in self.logged_steps for name in EPOCH_METRICS]
        for start in range(0, len(metrics), 996):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 996])
        if not unpublished:
            return
        if self.local_artifacts is not None:
            folder = self.local_artifacts / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            self.link.unlink(missing_ok=True)  # left by a process killed between these two calls
            try:
                os.link(self.written, self.link)
            except OSError:  # a file system without hard links: the slot itself becomes last.pt
                os.replace(self.written, folder / "last.pt")
                self.written = None
            else:
                os.replace(self.link, folder / "last.pt")
            self.published = self.written
        else:  # the upload copies the slot: it may be rewritten next, and `published` stays None
            self.client.log_artifact(self.run_id, str(self.written), "checkpoints")
        self.written = None

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.local_artifacts is not None and self.slots:
            for name in (*self.slots, self.link):  # last.pt keeps the published slot; the other is freed
                name.unlink(missing_ok=True)
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


def _tensor_bytes(value) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _detach(value):
    """A deep copy of a checkpoint's tensors (and the dicts and lists that hold them)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_detach(v) for v in value]
    return value

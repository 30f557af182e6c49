"""All that speaks to MLflow: runs of steps, their names and tags, parameters, reuse, datasets.

The names here are the contract of ../shared/DESIGN.md: tags `backbone`, `mode`, `step`; run
names `<backbone>-<mode>-<step>`; reuse keyed by the step's inputs, the data digest and the
code version.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.metadata
import io
import json
import os
import queue
import shlex
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline import experiment
from pipeline.config import UserError
from pipeline.sqlite_lock import sqlite_setup_lock

PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def code_version() -> str:
    """Hash of the package's source: a changed pipeline never reuses results of the old one."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def library_versions() -> dict[str, str]:
    """The libraries whose version changes a result or a timing."""
    return {name: importlib.metadata.version(name) for name in ("torch", "torchvision", "mlflow")}


def input_key(step: str, params: dict[str, str], data_digest: str) -> str:
    """What makes two runs of a step interchangeable: same parameters (with weights by content
    and the resolved device and precision, where the step has them), data, code and libraries."""
    identity = json.dumps(
        {"step": step, "params": params, "data": data_digest, "code": code_version(), "libraries": library_versions()}, sort_keys=True
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def run_name(step: str, backbone: str | None = None, mode: str | None = None) -> str:
    return f"{backbone}-{mode}-{step}" if backbone else step


def _select_experiment() -> None:
    """Point the client at the project's experiment, unless `mlflow run` already made our run.
    The first access to a new SQLite store creates its tables: one worker at a time."""
    with sqlite_setup_lock(mlflow.get_tracking_uri()):
        _select_experiment_once()


def _select_experiment_once() -> None:
    pending = os.environ.get("MLFLOW_RUN_ID")
    if pending:
        experiment.tag_experiment(MlflowClient().get_run(pending).info.experiment_id)
    elif os.environ.get("MLFLOW_EXPERIMENT_ID"):
        experiment.tag_experiment(os.environ["MLFLOW_EXPERIMENT_ID"])
    else:
        mlflow.set_experiment(experiment_id=experiment.ensure_experiment())


@contextmanager
def step_run(
    step: str,
    backbone: str | None = None,
    mode: str | None = None,
    run_id: str | None = None,
    name: str | None = None,
    killed_on: tuple[type[BaseException], ...] = (),
) -> Iterator[Run]:
    """The MLflow run of one step, ended FINISHED, FAILED (message in tag `error`) or KILLED
    (Ctrl-C, or one of `killed_on`, such as a pruned trial, with its message in tag `stopped`).

    Nested under the active run if there is one (main, compare, tune); under `mlflow run` the
    outermost step adopts the run that `mlflow run` created; `run_id` reopens a given run (resume).
    """
    nested = mlflow.active_run() is not None
    if not nested:
        _select_experiment()
    tags = {"step": step, "code_version": code_version()}
    if backbone:
        tags.update(backbone=backbone, mode=mode)
    if not nested and run_id is None and os.environ.get(PARENT_RUN_ID):  # rank 0 of workers a parent launched
        tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ID]
    active = mlflow.start_run(run_id=run_id, run_name=name or run_name(step, backbone, mode), nested=nested, tags=tags)
    start = time.perf_counter()
    try:
        yield active
        # The step's own wall clock, from its run's start to its end (a resumed run: this part).
        mlflow.log_metric("step_time_s", time.perf_counter() - start)
    except KeyboardInterrupt:
        mlflow.set_tag("error", "interrupted (Ctrl-C)")
        mlflow.end_run("KILLED")
        raise
    except killed_on as e:
        mlflow.set_tag("stopped", str(e))
        mlflow.end_run("KILLED")
        raise
    except BaseException as e:
        mlflow.set_tag("error", str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"[:5000])
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


# How a process that launches workers (torchrun) learns the run its rank 0 made, and nests it.
PARENT_RUN_ID, RUN_ID_FILE = "CXR_PARENT_RUN_ID", "CXR_RUN_ID_FILE"


def report_run_id(run_id: str) -> None:
    """Rank 0 tells the process that launched it which run it made."""
    if os.environ.get(RUN_ID_FILE):
        Path(os.environ[RUN_ID_FILE]).write_text(run_id)


def launched_run(start: Callable[[dict], None], run_id: str | None = None) -> str:
    """`start(env)` starts worker processes; their rank 0 logs into this store and experiment,
    its run a child of this process's active run if there is one (else the run `mlflow run`
    made, or `run_id`). Returns the id of that run."""
    active = mlflow.active_run()
    with tempfile.TemporaryDirectory() as folder:
        id_file = Path(folder) / "run_id"
        env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), RUN_ID_FILE: str(id_file)}
        if active is not None:
            env.update({PARENT_RUN_ID: active.info.run_id, "MLFLOW_EXPERIMENT_ID": active.info.experiment_id, "MLFLOW_RUN_ID": None})
        start(env)
        return run_id or id_file.read_text().strip()


def fail_pending_run(message: str, status: str = "FAILED", name: str | None = None) -> None:
    """A run created by `mlflow run` that the step never opened (bad parameter): mark it too,
    and name it like the rest rather than leave MLflow's random name."""
    pending = os.environ.pop("MLFLOW_RUN_ID", None)
    if pending:
        client = MlflowClient()
        client.set_tag(pending, "error", message)
        if name:
            client.set_tag(pending, "mlflow.runName", name)
        mask_secret_params(pending, status)
        client.set_terminated(pending, status)


def mask_secret_params(run_id: str, status: str) -> None:
    """`mlflow run` logs every parameter before the step starts, so a password given in one is
    in the store when the step refuses it. Parameters cannot be changed through MLflow's API: in
    a database store (SQLite, PostgreSQL, ...) the value is masked in place; through a tracking
    server the run is ended and deleted, and the server's `mlflow gc` purges it for good."""
    from pipeline.config import has_secret
    from pipeline.tuning import safe_url

    client = MlflowClient()
    # `mlflow run` logs values shell-quoted where they hold characters such as ? or &.
    leaked = {k: v.strip("'") for k, v in client.get_run(run_id).data.params.items() if has_secret(v.strip("'"))}
    if not leaked:
        return
    from mlflow.store.tracking.dbmodels.models import SqlParam
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _get_store

    store = _get_store()
    if isinstance(store, SqlAlchemyStore):
        with store.ManagedSessionMaker() as session:
            for key, value in leaked.items():
                session.query(SqlParam).filter(SqlParam.run_uuid == run_id, SqlParam.key == key).update({"value": safe_url(value)})
        if store.engine.dialect.name == "sqlite":  # the old value would linger in the file's free pages
            with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM")
        return
    client.set_terminated(run_id, status)
    client.delete_run(run_id)
    print(f"error: run {run_id} recorded a password in {', '.join(leaked)}; it is deleted: run `mlflow gc` on the tracking server to purge it",
          file=sys.stderr)


def retire_pending_run(run_id: str) -> None:
    """The run `mlflow run` made for a resume invocation: the training goes on in the resumed
    run, so this one stays empty and says where the work went. (It cannot be deleted: `mlflow
    run` marks it terminated after the step exits, which fails on a deleted run.)"""
    pending = os.environ.pop("MLFLOW_RUN_ID", None)
    if pending:
        client = MlflowClient()
        client.set_tag(pending, "mlflow.runName", f"resume-of-{run_id[:8]}")
        client.set_tag(pending, "mlflow.note.content", f"Resumed train run {run_id}; its metrics and model are there.")
        client.set_tag(pending, "resumed_run_id", run_id)
        client.set_terminated(pending, "FINISHED")


def log_params(params: dict[str, str]) -> None:
    """Log parameters; where `mlflow run` already logged a key as typed (`lr=auto`,
    `frozen=yes`), that stays and the resolved value goes under `<key>_resolved`.
    (`mlflow run` logs values shell-quoted, so `''` stands for an empty string.)"""
    run = mlflow.active_run()
    existing = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {}
    for key, value in params.items():
        value = str(value)
        if key not in existing:
            fresh[key] = value
        elif existing[key] not in (value, shlex.quote(value)):
            fresh[f"{key}_resolved"] = value
    if fresh:
        mlflow.log_params(fresh)


def log_dataset(name: str, source: str, digest: str, split_sizes: dict[str, int]) -> None:
    """Register the data set as the run's input, so the UI shows which data each run used."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # a local path matches two equivalent source types
        warnings.simplefilter("ignore")
        dataset = MetaDataset(resolve_dataset_source(source), name=name, digest=digest)
    mlflow.log_input(dataset, context="training", tags={f"n_{s}": str(n) for s, n in split_sizes.items()})


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_json(data: dict, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(data, indent=1), artifact_file)


def log_file(path: Path, artifact_dir: str) -> None:
    mlflow.log_artifact(str(path), artifact_dir)


def log_figure(figure, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)


def find_reusable(step: str, key: str) -> Run | None:
    """The newest FINISHED run of `step` with the same input key in the current experiment."""
    active = mlflow.active_run()
    experiment_id = active.info.experiment_id if active else experiment.ensure_experiment()
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.input_key = '{key}' and tags.step = '{step}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


def get_run(run_id: str) -> Run:
    try:
        return MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"no run with id {run_id!r} in the tracking store {mlflow.get_tracking_uri()}") from None


def has_artifact(run_id: str, artifact_path: str) -> bool:
    folder = artifact_path.rpartition("/")[0] or None
    return artifact_path in {a.path for a in MlflowClient().list_artifacts(run_id, folder)}


def download(run_id: str, artifact_path: str) -> bytes:
    """An artifact's bytes; the downloaded copy is removed (a checkpoint can weigh 400 MB)."""
    with tempfile.TemporaryDirectory() as folder:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=folder)).read_bytes()


def ui_hint(experiment_id: str) -> str:
    """How to look at the runs: the UI command for a local store, the address for a server."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"Runs: {uri.rstrip('/')}/#/experiments/{experiment_id}/runs"
    return (
        f"Open the MLflow UI: mlflow ui --backend-store-uri {uri}\n"
        f"then http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
    )


def _runs_by_id(experiment_id: str, run_ids: list[str]) -> dict[str, Run]:
    if not run_ids:
        return {}
    quoted = ", ".join(f"'{r}'" for r in run_ids)
    runs = mlflow.search_runs([experiment_id], filter_string=f"attributes.run_id IN ({quoted})", output_format="list")
    return {r.info.run_id: r for r in runs}


def comparison(compare_run_id: str) -> list[dict]:
    """Everything the comparison report shows, read back from the store with `search_runs`, so
    the report can be rebuilt for any past compare run: one dict per configuration."""
    compare = get_run(compare_run_id)
    experiment_id = compare.info.experiment_id
    configurations = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{compare_run_id}' and tags.step = 'main' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )
    wanted = [c.data.tags[k] for c in configurations for k in ("train_run_id", "evaluate_run_id")]
    runs = _runs_by_id(experiment_id, wanted)
    client = MlflowClient()
    rows = []
    for config in configurations:
        train, evaluate = runs[config.data.tags["train_run_id"]], runs[config.data.tags["evaluate_run_id"]]
        histories = {m: {p.step: p.value for p in client.get_metric_history(train.info.run_id, m)} for m in ("train_loss", "train_acc", "val_loss", "val_acc")}
        history = [{"epoch": e, **{m: histories[m][e] for m in histories}} for e in sorted(histories["val_loss"])]
        predictions = {}
        for split in ("val", "test"):
            text = download(evaluate.info.run_id, f"predictions/{split}.csv").decode()
            predictions[split] = list(csv.DictReader(io.StringIO(text, newline="")))
        # `mlflow run` logs `lr` as typed (`auto`); the rate used is then `lr_resolved`.
        lr = train.data.params.get("lr_resolved", train.data.params["lr"])
        train_metrics, train_tags = train.data.metrics, train.data.tags
        rows.append({
            "mode": config.data.tags["mode"],
            "backbone": config.data.tags["backbone"],
            "seed_index": int(config.data.tags.get("seed_index", 0)),
            "data_digest": train.data.params.get("data_digest"),
            "train_seed": train.data.params.get("train_seed_resolved", train.data.params.get("train_seed", "auto")),
            "lr": float(lr),
            "lr_source": config.data.tags.get("lr_source", "?"),
            **{k: evaluate.data.metrics.get(k) for k in COMPARED_METRICS},
            "train_time_s": train_metrics["train_time_s"],
            "feature_extraction_s": train_metrics.get("feature_extraction_s"),
            "cached_features_cost_s": train_metrics.get("cached_features_cost_s"),
            "cached_features_measured_in": train_tags.get("cached_features_measured_in"),
            "epochs_run": int(train_tags["epochs_run"]),
            "model_uri": train_tags.get("model_uri"),
            "weights_key": train.data.params.get("weights_key"),
            "epochs": train.data.params.get("epochs"),
            "operating_threshold": train_metrics.get("operating_threshold"),
            "operating_threshold_rule": train_tags.get("operating_threshold_rule"),
            "temperature": train_metrics.get("temperature"),
            "val_ece_before_calibration": train_metrics.get("val_ece_before_calibration"),
            "val_ece_after_calibration": train_metrics.get("val_ece_after_calibration"),
            "main_run_id": config.info.run_id,
            "train_run_id": train.info.run_id,
            "evaluate_run_id": evaluate.info.run_id,
            "interval_method": evaluate.data.tags.get("interval_method"),
            "shortcut_verdict": evaluate.data.tags.get("shortcut_verdict"),
            "history": history,
            "test_predictions": predictions["test"],
            "val_predictions": predictions["val"],
        })
    return rows


# What the report reads from each evaluate run (a run from before a metric existed lacks it: None).
COMPARED_METRICS = (
    "train_acc", "val_acc", "val_auc", "test_acc", "test_auc", "test_sensitivity", "test_specificity", "val_threshold",
    "train_acc_at_val_threshold", "val_acc_at_val_threshold",
    *(f"test_{m}_at_val_threshold" for m in ("acc", "sensitivity", "specificity")),
    *(f"test_{m}_ci_{side}" for m in ("acc", "auc", "sensitivity", "specificity") for side in ("low", "high")),
    *(f"test_{m}_at_val_threshold_ci_{side}" for m in ("acc", "sensitivity", "specificity") for side in ("low", "high")),
    *(f"test_auc_{name}{suffix}" for name in ("lungs_hidden", "outside_hidden", "lungs_hidden_fill_visible", "outside_hidden_fill_visible",
                                              "loss_outside_hidden", "loss_outside_hidden_fill_visible") for suffix in ("", "_ci_low", "_ci_high")),
    "saliency_in_lung_box",
)


def register_champion(name: str, rows: list[dict], cards: dict[str, str], ranking: list[str]) -> dict[str, str]:
    """Every configuration's model as a version of one registered model (one per data set), its
    model card as the version's description; aliases `champion` and `challenger` on the first two
    of `ranking` (chosen on validation by the caller). Returns label -> version."""
    client = MlflowClient()
    versions = {}
    for row in rows:
        label = f"{row['backbone']} ({row['mode']})"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            version = mlflow.register_model(row["model_uri"], name, tags={"backbone": row["backbone"], "mode": row["mode"]})
        client.update_model_version(name, version.version, description=cards[label])
        versions[label] = version.version
    client.update_registered_model(name, description="Chest X-ray transfer-learning models of one data set, one version per configuration; "
                                   "alias champion: the best on validation, challenger: the runner-up. Each version's description is its model card.")
    for alias, label in zip(("champion", "challenger"), ranking):
        client.set_registered_model_alias(name, alias, versions[label])
    return versions


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
            for stats, _ in items if stats.epoch not in self.logged_steps for name in EPOCH_METRICS
        ]
        for start in range(0, len(metrics), 996):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 996])
        snapshot = next((snap for _, snap in reversed(items) if snap is not None), None)
        if snapshot is None:
            return
        if self.local_artifacts is not None:
            folder = self.local_artifacts / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(snapshot, folder / "last.pt.tmp")
            os.replace(folder / "last.pt.tmp", folder / "last.pt")
        else:
            torch.save(snapshot, self.checkpoint_dir / "last.pt")
            self.client.log_artifact(self.run_id, str(self.checkpoint_dir / "last.pt"), "checkpoints")

    def close(self) -> None:
        self.closing.set()
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> "EpochRecorder":
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

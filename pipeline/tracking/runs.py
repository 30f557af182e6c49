"""Runs of steps: their names and tags, their life (FINISHED, FAILED, KILLED), nesting, the runs
`mlflow run` and torchrun launch, and where to look at them.

The names are the project's contract: tags `backbone`, `mode`, `step`; run names
`<backbone>-<mode>-<step>`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline import experiment
from pipeline.errors import UserError
from pipeline.sqlite_lock import sqlite_setup_lock
from pipeline.tracking.reuse import code_version

log = logging.getLogger(__name__)


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
    from pipeline.secrets import has_secret, safe_url

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
    log.error("error: run %s recorded a password in %s; it is deleted: run `mlflow gc` on the tracking server to purge it", run_id, ", ".join(leaked))


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


def get_run(run_id: str) -> Run:
    try:
        return MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"no run with id {run_id!r} in the tracking store {mlflow.get_tracking_uri()}") from None


def ui_hint(experiment_id: str, compare_run_ids: list[str] | None = None) -> str:
    """How to look at the runs: the UI command for a local store, the address for a server. With
    `compare_run_ids`, the address is the UI's side-by-side view of those runs (its compare-runs
    page takes the ids and experiments as JSON lists)."""
    uri = mlflow.get_tracking_uri()
    server = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if server else "http://127.0.0.1:5000"
    if compare_run_ids:
        runs, experiments = (quote(json.dumps(ids, separators=(",", ":")), safe="[],") for ids in (compare_run_ids, [experiment_id]))
        address = f"{base}/#/compare-runs?runs={runs}&experiments={experiments}"
    else:
        address = f"{base}/#/experiments/{experiment_id}/runs"
    what = "Its runs side by side" if compare_run_ids else "Runs"
    if server:
        return f"{what}: {address}"
    return f"Open the MLflow UI: mlflow ui --backend-store-uri {uri}\n{what}: {address}"

"""Reuse: what makes two runs of a step interchangeable, and finding a finished one."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
from pathlib import Path

import mlflow
from mlflow.entities import Run

from pipeline import experiment

# The package's source decides the code version: pipeline/, above this folder.
PACKAGE_DIR = Path(__file__).resolve().parents[1]


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

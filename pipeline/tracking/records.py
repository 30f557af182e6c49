"""What runs record: parameters (and the resolved settings as `settings.yaml`), datasets,
texts, files and figures; and artifacts read back."""

from __future__ import annotations

import json
import shlex
import tempfile
import warnings
from pathlib import Path

import mlflow
import yaml
from mlflow.tracking import MlflowClient


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


def log_settings(settings: dict[str, str]) -> None:
    """The run's resolved settings as `settings.yaml`: what a recipe file (`--config`) takes, so a
    run can be repeated from its own record."""
    mlflow.log_text(yaml.safe_dump(dict(settings), sort_keys=False, allow_unicode=True), "settings.yaml")


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


def has_artifact(run_id: str, artifact_path: str) -> bool:
    folder = artifact_path.rpartition("/")[0] or None
    return artifact_path in {a.path for a in MlflowClient().list_artifacts(run_id, folder)}


def download(run_id: str, artifact_path: str) -> bytes:
    """An artifact's bytes; the downloaded copy is removed (a checkpoint can weigh 400 MB)."""
    with tempfile.TemporaryDirectory() as folder:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=folder)).read_bytes()

"""The experiment the project's runs go to: `chest-xray-transfer`, unless the user names another.

`mlflow run .` creates its run before any project code runs, in the experiment MLflow resolves
from `--experiment-name`, $MLFLOW_EXPERIMENT_NAME / $MLFLOW_EXPERIMENT_ID or, failing those, its
default-experiment providers. `ProjectExperimentProvider` is registered as such a provider
(entry point `mlflow.default_experiment_provider`), so a plain `mlflow run .` in this project's
folder lands in `chest-xray-transfer` instead of `Default`. It is consulted only when the user
named no experiment, and only answers inside a folder holding this project's MLproject.

This module is loaded while `mlflow` itself is being imported: it must import nothing heavy at
the top.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlflow.tracking.default_experiment.abstract_context import DefaultExperimentProvider

EXPERIMENT_NAME = "chest-xray-transfer"
# The MLflow 3.x UI treats experiments without this tag as GenAI ones and hides the run views.
EXPERIMENT_KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}
PROJECT_NAME = "cxr-transfer"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT_NAME


def ensure_experiment(name: str | None = None) -> str:
    """Id of the named experiment, created and tagged if needed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    name = name or experiment_name()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags=EXPERIMENT_KIND_TAGS)
        except Exception:  # created meanwhile by a concurrent worker
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    tag_experiment(experiment.experiment_id)
    return experiment.experiment_id


def tag_experiment(experiment_id: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    current = client.get_experiment(experiment_id).tags
    for key, value in EXPERIMENT_KIND_TAGS.items():
        if current.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)


def in_project_folder(folder: Path | None = None) -> bool:
    spec = (folder or Path.cwd()) / "MLproject"
    try:
        first_lines = spec.read_text().splitlines()[:5]
    except OSError:
        return False
    return any(line.strip() == f"name: {PROJECT_NAME}" for line in first_lines)


class ProjectExperimentProvider(DefaultExperimentProvider):
    def in_context(self) -> bool:
        return in_project_folder()

    def get_experiment_id(self) -> str:
        return ensure_experiment(EXPERIMENT_NAME)

"""The Model Registry: one registered model per data set, a version per configuration with its
model card, and the aliases champion and challenger."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import mlflow
from mlflow.tracking import MlflowClient


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
    client.update_registered_model(
        name,
        description="Chest X-ray transfer-learning models of one data set, one version per configuration; "
        "alias champion: the best on validation, challenger: the runner-up. Each version's description is its model card.",
    )
    for alias, label in zip(("champion", "challenger"), ranking):
        client.set_registered_model_alias(name, alias, versions[label])
    return versions


def update_model_card(model_uri: str, change: Callable[[str], str]) -> str | None:
    """Rewrite the card (description) of the registered version `model_uri` names
    (models:/<name>/<version> or models:/<name>@<alias>) with `change`; the version's
    "name version N", or None where the URI names no registered version."""
    found = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@(.+))", model_uri)
    if not found:
        return None
    name, number, alias = found.groups()
    client = MlflowClient()
    version = client.get_model_version(name, number) if number else client.get_model_version_by_alias(name, alias)
    client.update_model_version(name, version.version, description=change(version.description or ""))
    return f"{name} version {version.version}"

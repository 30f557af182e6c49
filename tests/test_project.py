"""The project files agree with the code: MLproject's parameters and defaults are the settings of
each step, and conda.yaml installs what pyproject.toml declares."""

import re
import tomllib
from dataclasses import fields

import yaml

from pipeline.config import STEP_SETTINGS, as_params

from conftest import ROOT


def mlproject():
    return yaml.safe_load((ROOT / "MLproject").read_text())


def test_every_entry_point_is_a_step_with_the_same_parameters_and_defaults():
    spec = mlproject()
    assert set(spec["entry_points"]) == set(STEP_SETTINGS)
    assert spec["conda_env"] == "conda.yaml" and spec["name"] == "cxr-transfer"
    for name, entry in spec["entry_points"].items():
        groups = STEP_SETTINGS[name]
        settings = {f.name: (group, f) for group in groups for f in fields(group)}
        assert set(entry["parameters"]) == set(settings), name
        for param, declared in entry["parameters"].items():
            group, f = settings[param]
            assert declared["type"] == "string", param
            assert f.metadata["parse"](param, declared["default"]) == f.default, (name, param)
        command = " ".join(entry["command"].split())
        assert command.startswith(f"python -m pipeline {name} ")
        assert re.findall(r"--(\w+) \{(\w+)\}", command) == [(p, p) for p in entry["parameters"]]


def test_conda_env_installs_what_pyproject_declares():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"  # tomllib, used here, is 3.11's
    assert {"optuna.db", "mlflow.db"} <= set((ROOT / ".gitignore").read_text().splitlines())
    declared = project["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    assert "python=3.11" in conda["dependencies"]
    (pip_section,) = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    assert pip_section == declared


def test_readme_documents_every_parameter_with_its_default():
    readme = (ROOT / "README.md").read_text()
    for groups in STEP_SETTINGS.values():
        for group in groups:
            defaults = as_params(group())
            for f in fields(group):
                shown = "Kaggle names (see above)" if f.name == "patient_pattern" else f"`{defaults[f.name] or chr(34) * 2}`"
                assert f"| `{f.name}` | {shown} |" in readme, f.name
    assert "--env-manager local -P weights=none" in readme  # the Quick start's first command

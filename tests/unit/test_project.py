"""The project files agree with the code: each setting declared once (its dataclass field), and
MLproject, the command line, --help and docs/parameters.md all made from it."""

import re
import tomllib
from dataclasses import field, fields, make_dataclass

import pytest
import yaml
from conftest import ROOT
from mlflow.projects._project_spec import load_project

from pipeline import cli, settings
from pipeline.parsers import integer
from pipeline.settings import STEP_SETTINGS, as_params


def mlproject():
    return yaml.safe_load((ROOT / "MLproject").read_text())


def test_each_entry_point_declares_a_few_of_its_settings_with_their_defaults():
    spec = mlproject()
    assert set(spec["entry_points"]) == set(STEP_SETTINGS)
    assert spec["conda_env"] == "conda.yaml" and spec["name"] == "cxr-transfer"
    for name, entry in spec["entry_points"].items():
        settings_of = {f.name: f for group in STEP_SETTINGS[name] for f in fields(group)}
        assert set(entry["parameters"]) <= set(settings_of), name
        assert len(entry["parameters"]) <= 8, name  # the few a student turns; the rest pass through
        for param, declared in entry["parameters"].items():
            f = settings_of[param]
            assert declared["type"] == "string" and f.metadata["parse"](param, declared["default"]) == f.default, (name, param)
        command = " ".join(entry["command"].split())
        assert command.startswith(f"python -m pipeline {name} ")
        assert re.findall(r"--(\w+) \{(\w+)\}", command) == [(p, p) for p in entry["parameters"]]


def test_an_undeclared_parameter_reaches_the_command_as_name_value(tmp_path):
    command = (
        load_project(str(ROOT)).get_entry_point("train").compute_command({"epochs": "2", "patience": "0", "lr_range": "1e-4,1e-2"}, str(tmp_path))
    )
    assert "--epochs 2" in command and command.endswith("--patience 0 --lr_range 1e-4,1e-2")


def test_docs_parameters_is_generated_from_the_settings():
    assert (ROOT / "docs" / "parameters.md").read_text() == cli.parameters_markdown(), "stale: run python -m pipeline.cli > docs/parameters.md"


def test_adding_a_setting_is_one_dataclass_field(monkeypatch, capsys):
    grown = make_dataclass(
        "DataConfig",
        [(f.name, f.type, field(default=f.default, metadata=f.metadata)) for f in fields(settings.DataConfig)]
        + [("warmup_images", int, field(default=7, metadata={"parse": integer(0, 100), "help": "images to look at before training"}))],
        frozen=True,
    )
    monkeypatch.setattr(settings, "DataConfig", grown)
    monkeypatch.setitem(STEP_SETTINGS, "prepare", (grown, settings.ConsoleConfig))
    data, _ = cli.parse_cli(["--warmup_images", "3"], *STEP_SETTINGS["prepare"], prog="prepare")
    assert data.warmup_images == 3 and as_params(data)["warmup_images"] == "3"  # the MLflow parameter
    with pytest.raises(SystemExit):
        cli.parse_cli(["--help"], *STEP_SETTINGS["prepare"], prog="prepare")
    assert (
        "--warmup_images VALUE" in capsys.readouterr().out
        and "images to look at before training (default: 7)" in cli.settings_parser("p", grown).format_help()
    )
    assert "| `warmup_images` | `7` | images to look at before training |" in cli.parameters_markdown()
    with pytest.raises(cli.UserError, match="did you mean --warmup_images"):
        cli.parse_cli(["--warmup_image", "3"], *STEP_SETTINGS["prepare"], prog="prepare")


def test_conda_env_installs_what_pyproject_declares():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"  # tomllib, used here, is 3.11's
    assert {"optuna.db", "mlflow.db"} <= set((ROOT / ".gitignore").read_text().splitlines())
    declared = project["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    assert "python=3.11" in conda["dependencies"]
    (pip_section,) = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    assert pip_section == declared

"""`python -m pipeline`: help for every step, one `error:` line for every mistake, failed runs named."""

import sys
from dataclasses import fields

import pytest
from conftest import error_lines, mlflow_run, run_cli, runs_of

from pipeline.__main__ import run_name_of
from pipeline.settings import STEP_SETTINGS, as_params


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_step_prints_its_parameters_with_help_and_defaults(flag):
    for step, groups in STEP_SETTINGS.items():
        result = run_cli([sys.executable, "-m", "pipeline", step, flag])
        assert result.returncode == 0 and not result.stderr, (step, result.stderr)
        assert f"usage: python -m pipeline {step}" in result.stdout
        for group in groups:
            for f in fields(group):
                assert f"--{f.name} VALUE" in result.stdout, (step, f.name)
        text = "".join(result.stdout.split())  # help wraps long lines anywhere
        for name, default in as_params(*(group() for group in groups)).items():
            assert "".join(f"(default: {default or chr(39) * 2})".split()) in text, (step, name)


def test_the_top_level_help_lists_the_steps():
    result = run_cli([sys.executable, "-m", "pipeline", "--help"])
    assert result.returncode == 0
    for step in STEP_SETTINGS:
        assert f"    {step}" in result.stdout


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--bogus", "1"], ["unrecognized arguments: --bogus 1", "--name value", "backbone"]),
        (["train", "--epochs"], ["--epochs", "expected one argument"]),
        (["fit"], ["first argument must be a step", "'fit'"]),
        (["train", "--backbone", "resnet-50"], ["did you mean resnet50", "resnet50 and efficientnet_b0"]),
    ],
)
def test_mistakes_are_one_error_line_and_exit_2(store, argv, words):
    result = run_cli([sys.executable, "-m", "pipeline", *argv])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    for word in words:
        assert word in line


def test_a_run_failing_on_a_bad_parameter_is_named_like_the_rest(store):
    result = mlflow_run("train", {"backbone": "resnet-50", "frozen": "false"})
    assert result.returncode != 0
    (run,) = runs_of()
    assert run.info.status == "FAILED" and run.info.run_name == "resnet-50-finetune-train"
    assert "did you mean resnet50" in run.data.tags["error"]


def test_run_names_read_from_raw_arguments():
    assert run_name_of(["tune", "--backbone", "resnet18", "--frozen", "no"]) == "resnet18-finetune-tune"
    assert run_name_of(["prepare", "--data_dir", "x"]) == "prepare"

"""A password given on the command line never reaches the store, through the real `mlflow run`."""

import secrets
from pathlib import Path

import pytest
from conftest import error_lines, mlflow_run, runs_of


@pytest.mark.parametrize("storage", ["postgresql://lab:{pw}@127.0.0.1:9/optuna", "postgresql://lab@127.0.0.1:9/optuna?sslmode=disable&password={pw}"])
def test_no_password_given_on_the_command_line_stays_in_the_store(store, tmp_path, storage):
    password = "pw-" + secrets.token_hex(8)
    result = mlflow_run("tune", {"storage": storage.format(pw=password)})
    assert result.returncode != 0
    (line,) = error_lines(result.stderr)
    assert "storage must not contain a password" in line and password not in line
    (run,) = runs_of()
    assert run.info.status == "FAILED" and "***" in run.data.params["storage"] and run.info.run_name == "efficientnet_b0-frozen-tune"
    # The whole store, byte for byte: the database file and every artifact.
    for file in [Path(store.removeprefix("sqlite:///")), *(p for p in (tmp_path / "artifacts").rglob("*") if p.is_file())]:
        assert password.encode() not in file.read_bytes(), file

"""Static checks of docker/ (this machine has no Docker engine to build or start it)."""

import re

import pytest
import yaml

from pipeline.config import UserError, storage_url

from conftest import ROOT

DOCKER = ROOT / "docker"


def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_names_the_services_with_health_checks():
    services = compose()["services"]
    assert {"postgres", "mlflow", "worker"} <= set(services)
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["mlflow"]
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://") and env["MLFLOW_SERVE_ARTIFACTS"] == "true"
    assert services["mlflow"]["entrypoint"] == ["mlflow", "server"]


def test_ports_are_bound_to_loopback():
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_no_credentials_in_the_repository():
    text = (DOCKER / "compose.yaml").read_text()
    passwords = re.findall(r"^\s*\w*PASSWORD\w*:\s*(\S+)", text, flags=re.MULTILINE)
    assert len(passwords) >= 2  # the database's and the worker's PGPASSWORD
    for value in passwords:
        assert value.startswith("${"), value  # only ever interpolated from docker/.env
    assert "docker/.env" in (ROOT / ".gitignore").read_text().splitlines()
    worker = compose()["services"]["worker"]
    storage = next(arg.split("=", 1)[1] for arg in worker["command"] if arg.startswith("storage="))
    resolved = storage.replace("${POSTGRES_USER:-cxr}", "cxr")
    assert storage_url("storage", resolved) == resolved  # no password in what is logged
    with pytest.raises(UserError):
        storage_url("storage", resolved.replace("cxr@", "cxr:secret@"))


def test_dockerfile_installs_dependencies_before_code_and_runs_unprivileged():
    lines = [line.strip() for line in (DOCKER / "Dockerfile").read_text().splitlines()]
    index = lambda prefix: next(k for k, line in enumerate(lines) if line.startswith(prefix))  # noqa: E731
    assert index("COPY pyproject.toml") < index("RUN python -c") < index("COPY pipeline/")
    assert any(line.startswith("ARG TORCH_VARIANT=cpu") for line in lines)
    assert any(line.startswith("USER ") and line != "USER root" for line in lines)
    assert lines[-1].startswith("ENTRYPOINT") and '"mlflow", "run"' in lines[-1]
    assert "CREATE DATABASE optuna" in (DOCKER / "initdb" / "10-optuna.sql").read_text()

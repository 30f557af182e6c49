"""Static checks of docker/ (this machine has no Docker engine to build or start it)."""

import os
import re
import urllib.error
import urllib.request

import pytest
import yaml
from conftest import ROOT, free_port, local_urlopen, start_mlflow_server, wait_for_server

from pipeline.errors import UserError
from pipeline.secrets import storage_url

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
    storage = worker["environment"]["CXR_OPTUNA_STORAGE"]
    resolved = storage.replace("${POSTGRES_USER:-cxr}", "cxr")
    assert storage_url("storage", resolved) == resolved  # no password, even where it is not logged
    with pytest.raises(UserError):
        storage_url("storage", resolved.replace("cxr@", "cxr:secret@"))


def test_the_documented_worker_commands_keep_the_lab_storage_and_data():
    """`run --rm worker -e tune -P tune_trials=20` replaces the service's command: the storage and
    the data must therefore come from the worker's environment, which the pipeline reads."""
    worker = compose()["services"]["worker"]
    assert worker["environment"]["CXR_DATA_DIR"] == "/data" and any(v.endswith(":/data:ro") for v in worker["volumes"])
    assert not any(arg.startswith(("storage=", "data_dir=")) for arg in worker["command"])
    header = (DOCKER / "compose.yaml").read_text()
    assert "run --rm worker -e tune -P tune_trials=20" in header


def test_the_worker_cache_folder_belongs_to_the_worker_user():
    text = (DOCKER / "Dockerfile").read_text()
    cache = re.search(r"CXR_TRANSFER_CACHE=(\S+)", text).group(1)
    assert f"mkdir -p {cache} && chown cxr:cxr {cache}" in text
    assert text.index("chown cxr:cxr " + cache) < text.index("USER cxr")
    assert any(v.endswith(":" + cache) for v in compose()["services"]["worker"]["volumes"])


def test_the_server_serves_the_host_names_workers_use(tmp_path):
    """MLflow 3.5+ answers 403 to unknown Host headers: started with compose's allowed hosts, the
    server must serve a worker asking for http://mlflow:5000, and still refuse a stranger."""
    setting = compose()["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    allowed = re.fullmatch(r"\$\{MLFLOW_ALLOWED_HOSTS:-(.+)\}", setting).group(1)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": allowed}
    log = tmp_path / "server.log"
    process = start_mlflow_server(
        port, ["--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--default-artifact-root", str(tmp_path / "a")], env, log
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(f"{url}/health", process, 180, log)
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        for host in ("mlflow:5000", "mlflow", "localhost:5000"):
            with local_urlopen(urllib.request.Request(search, headers={"Host": host}), timeout=30) as answer:
                assert answer.status == 200, host
        with pytest.raises(urllib.error.HTTPError) as refused:
            local_urlopen(urllib.request.Request(search, headers={"Host": "stranger.example:5000"}), timeout=30)
        assert refused.value.code == 403
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=60)


def test_dockerfile_installs_dependencies_before_code_and_runs_unprivileged():
    lines = [line.strip() for line in (DOCKER / "Dockerfile").read_text().splitlines()]
    index = lambda prefix: next(k for k, line in enumerate(lines) if line.startswith(prefix))  # noqa: E731
    assert index("COPY pyproject.toml") < index("RUN python -c") < index("COPY pipeline/")
    assert any(line.startswith("ARG TORCH_VARIANT=cpu") for line in lines)
    assert any(line.startswith("USER ") and line != "USER root" for line in lines)
    assert lines[-1].startswith("ENTRYPOINT") and '"mlflow", "run"' in lines[-1]
    assert "CREATE DATABASE optuna" in (DOCKER / "initdb" / "10-optuna.sql").read_text()

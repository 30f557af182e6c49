"""The lab topology on loopback, without Docker: PostgreSQL, an MLflow server on it, `main` over
HTTP, and two tune workers on one PostgreSQL study. Then: no password anywhere in the store."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import optuna
import psycopg  # in the test extras: pip install -e ".[test]"
import pytest
from conftest import ROOT, free_port, make_dataset, start_mlflow_server, wait_for_server
from mlflow.tracking import MlflowClient

# PostgreSQL is part of what these tests check, so its absence fails them, saying how to get it;
# a machine that cannot have it deselects them openly: pytest -m "not postgres".
pytestmark = pytest.mark.postgres

USER = "cxr"


def postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent  # the server's own folder (a PATH entry may be a link to it)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


def as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; CI runs as root, so its commands run as `postgres`."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="module")
def postgres():
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.fail('PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it); without it, run pytest -m "not postgres"')
    root = Path(tempfile.mkdtemp(prefix="cxr-pg-"))
    root.chmod(0o777)
    password = "pw-" + secrets.token_hex(12)  # distinctive, so a leak is found by searching for it
    (root / "pw").write_text(password)
    (root / "pw").chmod(0o644)
    port = free_port()
    data = root / "data"
    run = lambda args: subprocess.run(as_postgres(args), capture_output=True, text=True, timeout=120)  # noqa: E731
    init = run([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={root / 'pw'}", "--auth=scram-sha-256", "-E", "UTF8"])
    if init.returncode != 0:
        pytest.fail(f"PostgreSQL could not initialise a cluster: {init.stderr.strip()[-300:]}")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} -c max_connections=200"
    start = run([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"])
    if start.returncode != 0:
        pytest.fail(f"PostgreSQL could not start: {start.stderr.strip()[-300:]}")
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user=USER, password=password, dbname="postgres", autocommit=True) as connection:
            connection.execute("CREATE DATABASE mlflow")
            connection.execute("CREATE DATABASE optuna")
        yield {"port": port, "password": password, "root": root}
    finally:
        run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    port = free_port()
    artifacts = tmp_path_factory.mktemp("artifacts")
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": f"postgresql://{USER}:{postgres['password']}@127.0.0.1:{postgres['port']}/mlflow"}
    process = start_mlflow_server(
        port, ["--workers", "2", "--serve-artifacts", "--artifacts-destination", str(artifacts / "store")], env, artifacts / "server.log"
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_server(f"{url}/health", process, 300, artifacts / "server.log")
    yield url
    os.killpg(process.pid, 15)
    process.wait(timeout=60)


@pytest.fixture
def on_server(server, postgres, tmp_path, monkeypatch):
    """This process and its subprocesses talk to the server; the password reaches psycopg only
    through PGPASSWORD, never through a URL that could be logged."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("PGPASSWORD", postgres["password"])
    monkeypatch.setenv("CXR_TRANSFER_CACHE", str(tmp_path / "cache"))
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(server)
    yield f"postgresql://{USER}@127.0.0.1:{postgres['port']}/optuna"
    mlflow.set_tracking_uri(None)


def cli(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def all_runs():
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_main_against_the_server_and_two_tune_workers_on_one_postgres_study(on_server, tmp_path, postgres):
    storage = on_server
    data = make_dataset(tmp_path / "d", {"train": 10, "val": 6, "test": 4}, size=32)
    common = {
        "data_dir": str(data),
        "image_size": "32",
        "weights": "none",
        "backbone": "resnet18",
        "epochs": "2",
        "batch_size": "8",
        "storage": storage,
    }

    main = cli(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(ROOT),
            "--env-manager",
            "local",
            "-e",
            "main",
            *[a for k, v in {**common, "tune_trials": "2"}.items() for a in ("-P", f"{k}={v}")],
        ]
    )
    output = main.communicate(timeout=900)[0]
    assert main.returncode == 0, output[-3000:]
    (parent,) = [r for r in all_runs() if r.data.tags.get("step") == "main"]
    assert parent.info.status == "FINISHED"
    kids = [r for r in all_runs() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["step"] for r in kids) == ["evaluate", "prepare", "train", "tune"]
    train = next(r for r in kids if r.data.tags["step"] == "train")
    assert mlflow.pytorch.load_model(train.data.tags["model_uri"]) is not None  # artifacts proxied by the server

    worker_args = [
        sys.executable,
        "-m",
        "pipeline",
        "tune",
        *[a for k, v in common.items() for a in (f"--{k}", v)],
        "--study_name",
        "lab-study",
        "--tune_trials",
        "3",
    ]
    workers = [cli(worker_args) for _ in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[-2000:] for o in outputs]
    study = optuna.load_study(study_name="lab-study", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 6 and sorted(t.number for t in finished) == list(range(6))
    tune_runs = [r for r in all_runs() if r.data.tags.get("study_name") == "lab-study" and "trial" not in r.data.tags]
    assert len(tune_runs) == 2 and len({r.data.tags["worker"] for r in tune_runs}) == 2
    trials = [r for r in all_runs() if r.data.tags.get("mlflow.parentRunId") in {t.info.run_id for t in tune_runs}]
    assert sorted(int(r.data.tags["trial"]) for r in trials) == list(range(6))  # none lost, none twice
    assert all(len([t for t in trials if t.data.tags["mlflow.parentRunId"] == r.info.run_id]) == 3 for r in tune_runs)
    last = max(tune_runs, key=lambda r: r.info.end_time)
    assert last.data.metrics["best_lr"] == pytest.approx(study.best_params["lr"])

    # No password in any parameter, tag or artifact of any run.
    password = postgres["password"]
    client = MlflowClient()
    for run in all_runs():
        assert password not in repr(run.data.params) and password not in repr(run.data.tags), run.info.run_name
        local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "artifacts" / run.info.run_id)))
        for file in (p for p in local.rglob("*") if p.is_file()):
            assert password.encode() not in file.read_bytes(), file
    for model in client.search_logged_models(experiment_ids=[parent.info.experiment_id]):
        assert password not in repr(model.params) and password not in repr(model.tags)


def test_a_password_in_the_storage_url_is_refused(on_server, postgres):
    leaky = on_server.replace(f"{USER}@", f"{USER}:{postgres['password']}@")
    result = subprocess.run([sys.executable, "-m", "pipeline", "tune", "--storage", leaky], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "must not contain a password" in result.stderr
    assert postgres["password"] not in result.stderr
    assert not [r for r in all_runs() if postgres["password"] in repr(r.data.params)]


def test_a_password_given_as_a_parameter_leaves_no_trace_in_a_postgresql_store(postgres, tmp_path, monkeypatch):
    """The store itself on PostgreSQL (no server between): the parameter `mlflow run` recorded is
    masked in place; pg_dump of the whole database holds no trace of the password."""
    with psycopg.connect(host="127.0.0.1", port=postgres["port"], user=USER, password=postgres["password"], dbname="postgres", autocommit=True) as c:
        c.execute("CREATE DATABASE direct_store")
    store = f"postgresql://{USER}:{postgres['password']}@127.0.0.1:{postgres['port']}/direct_store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("CXR_TRANSFER_CACHE", str(tmp_path / "cache"))
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    leaked = "leak-" + secrets.token_hex(8)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(ROOT),
            "--env-manager",
            "local",
            "-e",
            "tune",
            "-P",
            f"storage=postgresql://{USER}:{leaked}@127.0.0.1:{postgres['port']}/optuna",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0 and "storage must not contain a password" in result.stderr
    dump = subprocess.run(
        [str(postgres_bin() / "pg_dump"), "-h", "127.0.0.1", "-p", str(postgres["port"]), "-U", USER, "direct_store"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PGPASSWORD": postgres["password"]},
    )
    assert dump.returncode == 0, dump.stderr
    assert "efficientnet_b0-frozen-tune" in dump.stdout and "***" in dump.stdout  # the run is there, its parameter masked
    assert leaked not in dump.stdout

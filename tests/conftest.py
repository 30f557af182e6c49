"""Shared fixtures: a scratch tracking store and cache per test, small generated data sets, and a
helper that runs the real command lines (`mlflow run`, `python -m pipeline`) in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
import torch

from pipeline.data.synthetic import write_demo
from pipeline.experiment import EXPERIMENT_KIND_TAGS, EXPERIMENT_NAME

ROOT = Path(__file__).resolve().parents[1]
# A sample of the Kaggle set (2,400 images) beside the checkout, or wherever CXR_KERMANY_DIR says.
KERMANY = Path(os.environ.get("CXR_KERMANY_DIR", ROOT.parent / "shared" / "data" / "kermany-2400"))

# Tests talk only to servers they start on this machine: never through a proxy (for the commands
# they start too), and `local_urlopen` refuses any other host.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(filter(None, (os.environ.get("NO_PROXY"), "127.0.0.1", "localhost")))
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The workers share the cores: each gets its share of torch threads, for the commands it
    # starts too, rather than every worker running as many threads as there are cores.
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


@pytest.fixture(autouse=True)
def fresh_feature_memory():
    """Each test starts as a new process would: no backbone features in memory."""
    from pipeline.engine.features import FeatureCache

    FeatureCache._memory.clear()


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store and cache, used by this process and its subprocesses."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CXR_TRANSFER_CACHE", str(tmp_path / "cache"))
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(uri)
    # The experiment, made here with its artifacts in the scratch folder: a SQLite store would
    # otherwise put them in ./mlruns of the working folder, the project's.
    experiment_id = mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=(tmp_path / "artifacts").as_uri(), tags=EXPERIMENT_KIND_TAGS)
    assert experiment_id
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def make_dataset(root: Path, per_class: dict[str, int] | None = None, size: int = 48, seed: int = 0) -> Path:
    """A small Kaggle-layout folder of synthetic radiographs (PNG, mode L)."""
    write_demo(root, seed, per_class or {"train": 10, "val": 4, "test": 4}, size)
    return root


def write_dicom(
    path: Path,
    pixels,
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 12,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    patient: str = "P0",
    compress: str | None = None,
) -> Path:
    """A single-frame DICOM radiograph written with pydicom: `pixels` are the stored values
    (uint16); optional rescale, window, MONOCHROME1, and RLE compression (pydicom encodes it)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient, "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    if compress == "rle":
        ds.compress(RLELossless)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_csv_dicom_dataset(root: Path, patients: int = 40, per_patient: int = 2, size: int = 48, seed: int = 0) -> Path:
    """A label table with DICOM images in sub-folders, as a hospital export comes: columns
    file, label (0/1), patient; no split column. Returns the table's path."""
    import numpy as np

    from pipeline.data.synthetic import radiograph

    rng = np.random.default_rng(seed)
    lines = ["file,label,patient"]
    for p in range(patients):
        pneumonia = p % 2 == 1
        for k in range(per_patient):
            stored = radiograph(rng, size, pneumonia).astype(np.uint16) * 16  # 12-bit values
            rel = f"dicom/batch{p % 3}/P{p:03d}_{k}.dcm"
            # Every second image is MONOCHROME1 (bright = low), as many CR systems write them.
            inverted = k % 2 == 1
            write_dicom(
                root / rel, 4095 - stored if inverted else stored, patient=f"P{p:03d}", photometric="MONOCHROME1" if inverted else "MONOCHROME2"
            )
            lines.append(f"{rel},{int(pneumonia)},P{p:03d}")
    table = root / "labels.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def make_site_table(root: Path, sites: tuple[str, ...] = ("north", "south", "east"), patients: int = 12, size: int = 32) -> Path:
    """A label table of PNG radiographs from several hospitals: columns file, label, patient,
    hospital (the site); `patients` per site, alternately NORMAL and PNEUMONIA, two images each."""
    import numpy as np
    from PIL import Image

    from pipeline.data.synthetic import radiograph

    rng = np.random.default_rng(0)
    lines = ["file,label,patient,hospital"]
    for site in sites:
        for p in range(patients):
            label = "PNEUMONIA" if p % 2 else "NORMAL"
            for k in range(2):
                rel = f"{site}/{site}-{p:02d}-{k}.png"
                (root / site).mkdir(parents=True, exist_ok=True)
                Image.fromarray(radiograph(rng, size, p % 2 == 1)).save(root / rel)
                lines.append(f"{rel},{label},{site}-{p:02d},{site}")
    table = root / "labels.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "tiny")


def run_cli(args: list[str], cwd: Path = ROOT, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a real command line with the current environment (tracking URI and cache included)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def mlflow_run(entry_point: str, params: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "-e", entry_point]
    for key, value in params.items():
        args += ["-P", f"{key}={value}"]
    return run_cli(args, **kwargs)


def pipeline_cli(step: str, params: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "pipeline", step]
    for key, value in params.items():
        args += [f"--{key}", str(value)]
    return run_cli(args, **kwargs)


def runs_of(step: str | None = None) -> list:
    """Every run in every experiment of the current store, optionally of one step."""
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return [r for r in runs if step is None or r.data.tags.get("step") == step]


def error_lines(stderr: str) -> list[str]:
    """The `error:` lines of a command's stderr (MLflow's own INFO lines may surround them)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def start_mlflow_server(port: int, options: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port` with `options`, in its own session (kill it with
    os.killpg), its output in `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), *options],
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_urlopen(request: str | urllib.request.Request, timeout: float):
    url = request.full_url if isinstance(request, urllib.request.Request) else request
    if urlparse(url).hostname not in ("127.0.0.1", "localhost"):
        raise AssertionError(f"tests reach only servers they start on this machine, not {url}")
    return _DIRECT.open(request, timeout=timeout)


def ask_served_model(model_uri: str, images: list[str]) -> list[dict]:
    """Start `mlflow models serve` on a free loopback port, send the base64 images in one
    request, stop the server; the predictions, one per image."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_server(f"http://127.0.0.1:{port}/ping", server, 240)
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[image] for image in images]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        return json.loads(local_urlopen(request, timeout=60).read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def wait_for_server(url: str, process: subprocess.Popen, seconds: float, log: Path | None = None) -> None:
    """Poll `url` until it answers; fail with the server's log if the process dies or time runs out."""
    deadline = time.time() + seconds
    while True:
        try:
            local_urlopen(url, timeout=2)
            return
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                raise AssertionError(f"{url} did not come up: " + (log.read_text()[-3000:] if log and log.exists() else "no log")) from None
            time.sleep(1)

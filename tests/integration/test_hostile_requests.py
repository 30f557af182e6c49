"""A served model (a real `mlflow models serve` on a loopback port) under hostile requests: every
answer JSON, no stack trace, the good images of a request answered, the server up after each."""

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import mlflow
import pytest
from conftest import ROOT, free_port, local_urlopen, make_dataset, wait_for_server
from malformed import huge_png, lying_dicom, malformed_files

from pipeline.experiment import EXPERIMENT_KIND_TAGS, EXPERIMENT_NAME
from pipeline.settings import DataConfig, FitConfig, ModelConfig
from pipeline.steps import train

MAX_REQUEST_IMAGES = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A small model trained into a scratch store, served with at most 8 images per request."""
    work = tmp_path_factory.mktemp("served")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "CXR_TRANSFER_CACHE")}
    os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", CXR_TRANSFER_CACHE=str(work / "cache"))
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=(work / "artifacts").as_uri(), tags=EXPERIMENT_KIND_TAGS)
    data = make_dataset(work / "d", {"train": 8, "val": 4, "test": 4}, size=32)
    model_uri = train.run(
        DataConfig(data_dir=str(data), image_size=32), ModelConfig("resnet18", True, "none"), FitConfig(epochs=1, batch_size=8)
    ).model_uri
    port = free_port()
    log = work / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "CXR_MAX_REQUEST_IMAGES": str(MAX_REQUEST_IMAGES)},
    )
    try:
        wait_for_server(f"http://127.0.0.1:{port}/ping", process, 240, log)
        good = base64.b64encode(next((data / "test" / "NORMAL").iterdir()).read_bytes()).decode()
        yield {"url": f"http://127.0.0.1:{port}", "process": process, "good": good, "work": work}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        mlflow.set_tracking_uri(None)


def ask(server, body: bytes) -> tuple[int, dict]:
    """POST a raw body; (status, parsed JSON). A body that is not JSON fails the test."""
    request = urllib.request.Request(f"{server['url']}/invocations", body, {"Content-Type": "application/json"})
    try:
        response = local_urlopen(request, timeout=120)
        status, text = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    answer = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in a response"))
    assert "stack_trace" not in json.dumps(answer), text[:500]
    return status, answer


def images_body(images: list, params: dict | None = None) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}, **({"params": params} if params else {})}).encode()


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the server and its workers)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = open(f"/proc/{p}/status").read()
            total += int(status.split("VmRSS:")[1].split()[0]) if "VmRSS:" in status else 0
            todo += [int(c) for t in os.listdir(f"/proc/{p}/task") for c in open(f"/proc/{p}/task/{t}/children").read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def test_a_lying_dicom_beside_a_good_image_is_answered_per_row(server, tmp_path):
    lying = base64.b64encode(lying_dicom(tmp_path / "a.dcm").read_bytes()).decode()
    huge = base64.b64encode(huge_png(tmp_path / "h.png").read_bytes()).decode()
    status, answer = ask(server, images_body([server["good"], lying, huge]))
    assert status == 200
    good, bad, big = answer["predictions"]
    assert good["label"] in ("NORMAL", "PNEUMONIA") and good["error"] is None
    assert bad["label"] is None and bad["error"].startswith("pixel data does not match Rows x Columns")
    assert big["error"].startswith("13000 x 13000 px (169.0 Mpx) is above max_image_pixels")


@pytest.mark.parametrize("threshold", [2, -1, 0, 1, "NaN", "Infinity", "high"])
def test_a_threshold_outside_0_1_is_refused(server, threshold):
    params = f'"threshold": {threshold}' if threshold != "high" else '"threshold": "high"'
    body = ('{"dataframe_split": {"columns": ["image"], "data": [["' + server["good"] + '"]]}, "params": {' + params + "}}").encode()
    status, answer = ask(server, body)
    assert status == 400, answer
    assert "threshold" in answer["message"] and ("(0, 1)" in answer["message"] or "double" in answer["message"].lower())


def test_a_request_above_the_image_limit_is_refused_at_once(server):
    status, answer = ask(server, images_body([server["good"]] * (MAX_REQUEST_IMAGES + 1)))
    assert status == 400 and f"at most {MAX_REQUEST_IMAGES} per request" in answer["message"] and "CXR_MAX_REQUEST_IMAGES" in answer["message"]
    status, answer = ask(server, images_body([server["good"]] * MAX_REQUEST_IMAGES))
    assert status == 200 and len(answer["predictions"]) == MAX_REQUEST_IMAGES


def malformed_requests(good: str) -> list[bytes]:
    """Requests whose JSON is well formed but whose content is not what the model takes."""
    bodies = [
        b"{}",
        b"[]",
        b"null",
        b'"image"',
        b"{not json",
        b'{"dataframe_split": 3}',
        b'{"dataframe_split": {"columns": ["image"], "data": 7}}',
        b'{"dataframe_split": {"columns": ["other"], "data": [["x"]]}}',
        b'{"dataframe_split": {"columns": ["image"], "data": []}}',
        b'{"instances": [{"image": 5}]}',
        b'{"inputs": {"image": [null]}}',
        b'{"dataframe_records": [{"image": {"nested": 1}}]}',
        images_body([good], {"threshold": [0.5]}),
        images_body([good], {"unknown": 1}),
        images_body([[1, 2, 3]]),
        images_body([None, good]),
        images_body(["A" * 3_000_000]),
        images_body([good * 2]),
        images_body(["data:image/png;base64," + good]),
        b'{"dataframe_split": {"columns": ["image"], "data": [[NaN], [Infinity]]}}',
    ]
    return bodies


def test_hundreds_of_malformed_files_and_requests_leave_the_server_up_and_bounded(server):
    files = [base64.b64encode(data).decode() for _, data in malformed_files(seed=1)]
    statuses = {}
    rss = []
    requests = [images_body(files[k : k + MAX_REQUEST_IMAGES - 1] + [server["good"]]) for k in range(0, len(files), MAX_REQUEST_IMAGES - 1)]
    requests += malformed_requests(server["good"])
    for body in requests:
        status, answer = ask(server, body)
        statuses[status] = statuses.get(status, 0) + 1
        assert status in (200, 400), (status, answer)
        if status == 200 and body.startswith(b'{"dataframe_split": {"columns": ["image"], "data": [["') and len(answer["predictions"]) > 1:
            assert answer["predictions"][-1]["error"] is None  # the good image of each request is answered
            assert all(p["error"] or p["label"] for p in answer["predictions"])
        assert local_urlopen(f"{server['url']}/ping", timeout=10).status == 200
        rss.append(tree_rss_mb(server["process"].pid))
    assert len(files) + len(malformed_requests(server["good"])) >= 250
    # Files inside a request are answered per row (200); a request the model cannot take is refused (400).
    assert statuses.get(200, 0) >= len(files) // MAX_REQUEST_IMAGES and statuses.get(400, 0) >= 8, statuses
    assert max(rss) < 3000, max(rss)

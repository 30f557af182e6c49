"""predict on a folder holding a broken file, and the same model behind `mlflow models serve`."""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request

import pandas as pd
import pytest

from pipeline.config import DataConfig, FitConfig, ModelConfig, PredictConfig
from pipeline.steps import predict, train

from conftest import ROOT, error_lines, free_port, local_urlopen, make_dataset, pipeline_cli, wait_for_server


@pytest.fixture
def trained(store, tmp_path):
    data = make_dataset(tmp_path / "d", {"train": 8, "val": 4, "test": 4}, size=32)
    result = train.run(DataConfig(data_dir=str(data), image_size=32), ModelConfig("resnet18", True, "none"), FitConfig(epochs=1, batch_size=8))
    return result.model_uri, data


def test_predict_on_a_folder_reports_broken_files_per_file(trained, tmp_path):
    model_uri, data = trained
    folder = tmp_path / "incoming"
    (folder / "ward").mkdir(parents=True)
    for src in sorted((data / "test" / "PNEUMONIA").iterdir())[:2]:
        shutil.copy(src, folder / "ward" / src.name)
    (folder / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (folder / "notes.txt").write_text("ignored: not an image")
    output = tmp_path / "out" / "predictions.csv"
    result = pipeline_cli("predict", {"model_uri": model_uri, "input": str(folder), "output": str(output)})
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(output)
    assert list(table["file"]) == ["broken.jpeg", *[f"ward/{p.name}" for p in sorted((data / "test" / "PNEUMONIA").iterdir())[:2]]]
    assert list(table.columns) == ["file", "label", "probability", "p_NORMAL", "p_PNEUMONIA", "error"]
    broken = table.iloc[0]
    assert "cannot decode" in broken["error"] and pd.isna(broken["probability"])
    good = table.iloc[1:]
    assert good["error"].isna().all() and good["label"].isin(["NORMAL", "PNEUMONIA"]).all()
    assert ((good["p_NORMAL"] + good["p_PNEUMONIA"]).round(5) == 1).all()
    assert (good["probability"] == good["p_PNEUMONIA"]).all()
    assert "3 images" in result.stdout and "1 unreadable" in result.stdout and "broken.jpeg" in result.stdout
    assert "1 other files ignored: notes.txt (not an image extension (.txt))" in result.stdout


def test_threshold_moves_the_calls(trained, tmp_path):
    model_uri, data = trained
    image = sorted((data / "test" / "NORMAL").iterdir())[0]
    for threshold, label in ((0.001, "PNEUMONIA"), (0.999, "NORMAL")):
        table = predict.run(PredictConfig(model_uri=model_uri, input=str(image), output=str(tmp_path / "p.csv"), threshold=threshold))
        assert table["label"].tolist() == [label]


def test_missing_input_or_model_is_a_user_error(store, tmp_path):
    result = pipeline_cli("predict", {"model_uri": "models:/m-any", "input": str(tmp_path / "nothing")})
    assert result.returncode == 2 and error_lines(result.stderr) == [f"error: input '{tmp_path / 'nothing'}' does not exist; give an image file or a folder of images"]
    (tmp_path / "x.png").write_bytes(b"")
    result = pipeline_cli("predict", {"model_uri": "models:/m-nope", "input": str(tmp_path)})
    assert result.returncode == 2 and error_lines(result.stderr)[0].startswith("error: cannot load model 'models:/m-nope'")


def test_mlflow_models_serve_answers_a_base64_image_with_a_probability(trained):
    model_uri, data = trained
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for_server(f"http://127.0.0.1:{port}/ping", server, 240)
        image = base64.b64encode(sorted((data / "test" / "NORMAL").iterdir())[0].read_bytes()).decode()
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[image], ["@@not base64@@"]]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        answer = json.loads(local_urlopen(request, timeout=60).read())
        good, bad = answer["predictions"]
        assert 0 <= good["probability"] <= 1 and good["label"] in ("NORMAL", "PNEUMONIA") and good["error"] is None
        assert bad["probability"] is None and bad["error"] == "not valid base64"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

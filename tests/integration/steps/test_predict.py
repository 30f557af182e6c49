"""predict on a folder holding a broken file, and the same model behind `mlflow models serve`."""

import base64
import shutil

import mlflow
import pandas as pd
import pytest
from conftest import ask_served_model, error_lines, make_dataset, pipeline_cli

from pipeline.settings import DataConfig, FitConfig, ModelConfig, PredictConfig
from pipeline.steps import predict, train


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
    assert list(table.columns) == ["file", "label", "probability", "p_NORMAL", "p_PNEUMONIA", "threshold", "error"]
    broken = table.iloc[0]
    assert "cannot decode" in broken["error"] and pd.isna(broken["probability"])
    good = table.iloc[1:]
    assert good["error"].isna().all() and good["label"].isin(["NORMAL", "PNEUMONIA"]).all()
    assert ((good["p_NORMAL"] + good["p_PNEUMONIA"]).round(5) == 1).all()
    assert (good["probability"] == good["p_PNEUMONIA"]).all()
    assert "3 images" in result.stdout and "1 unreadable" in result.stdout and "broken.jpeg" in result.stdout
    assert "1 other file ignored: notes.txt (not an image extension (.txt))" in result.stdout


def test_threshold_moves_the_calls(trained, tmp_path):
    model_uri, data = trained
    # The image this tiny model is least sure of (some it calls with probability 0 or 1).
    scored = predict.run(PredictConfig(model_uri=model_uri, input=str(data / "test"), output=str(tmp_path / "all.csv")))
    least_sure = (scored["probability"] - 0.5).abs().idxmin()
    probability, image = scored["probability"][least_sure], data / "test" / scored["file"][least_sure]
    for threshold, label in ((probability / 2, "PNEUMONIA"), ((1 + probability) / 2, "NORMAL")):
        table = predict.run(PredictConfig(model_uri=model_uri, input=str(image), output=str(tmp_path / f"p{threshold}.csv"), threshold=threshold))
        assert table["label"].tolist() == [label]


def test_missing_input_or_model_is_a_user_error(store, tmp_path):
    result = pipeline_cli("predict", {"model_uri": "models:/m-any", "input": str(tmp_path / "nothing")})
    assert result.returncode == 2 and error_lines(result.stderr) == [
        f"error: input '{tmp_path / 'nothing'}' does not exist; give an image file or a folder of images"
    ]
    (tmp_path / "x.png").write_bytes(b"")
    result = pipeline_cli("predict", {"model_uri": "models:/m-nope", "input": str(tmp_path)})
    assert result.returncode == 2 and error_lines(result.stderr)[0].startswith("error: cannot load model 'models:/m-nope'")


def test_mlflow_models_serve_answers_a_base64_image_with_a_probability(trained, tmp_path):
    model_uri, data = trained
    image_file = sorted((data / "test" / "NORMAL").iterdir())[0]
    local = predict.run(PredictConfig(model_uri=model_uri, input=str(image_file), output=str(tmp_path / "p.csv")))
    image = base64.b64encode(image_file.read_bytes()).decode()
    good, bad = ask_served_model(model_uri, [image, "@@not base64@@"])
    assert 0 <= good["probability"] <= 1 and good["label"] in ("NORMAL", "PNEUMONIA") and good["error"] is None
    # Served and predicted alike: the same label at the same (the model's own) threshold.
    assert (good["label"], good["threshold"]) == (local["label"][0], pytest.approx(local["threshold"][0]))
    assert good["probability"] == pytest.approx(local["probability"][0], abs=1e-6)
    assert bad["probability"] is None and bad["error"] == "not valid base64"


def test_the_threshold_chosen_on_validation_travels_with_the_model(store, tmp_path):
    """No threshold given: predict and the served model call labels at the model's own threshold,
    chosen on validation by the train run (here for a target sensitivity), and say so."""
    data = make_dataset(tmp_path / "d", {"train": 8, "val": 6, "test": 4}, size=32)
    trained = train.run(
        DataConfig(data_dir=str(data), image_size=32, val_source="folder"),
        ModelConfig("resnet18", True, "none"),
        FitConfig(epochs=1, batch_size=8, target_sensitivity=0.99),
    )
    run = mlflow.get_run(trained.run_id)
    threshold = run.data.metrics["operating_threshold"]
    assert run.data.tags["operating_threshold_rule"] == "sensitivity >= 0.99 on validation"
    # Every sick child of validation is found at that threshold, and it is the highest that does so.
    model = mlflow.pyfunc.load_model(trained.model_uri)
    val = pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in sorted((data / "val" / "PNEUMONIA").iterdir())]})
    called = model.predict(val)
    assert (called["label"] == "PNEUMONIA").all() and called["threshold"].tolist() == pytest.approx([threshold] * len(called))
    assert called["probability"].min() == pytest.approx(threshold, abs=1e-5)
    result = pipeline_cli("predict", {"model_uri": trained.model_uri, "input": str(data / "test"), "output": str(tmp_path / "p.csv")})
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(tmp_path / "p.csv")
    assert table["threshold"].tolist() == pytest.approx([threshold] * len(table))
    assert list(table["label"]) == ["PNEUMONIA" if p >= threshold else "NORMAL" for p in table["probability"]]
    assert f"threshold {threshold:.4g} (sensitivity >= 0.99 on validation)" in result.stdout
    given = predict.run(PredictConfig(model_uri=trained.model_uri, input=str(data / "test"), output=str(tmp_path / "q.csv"), threshold=0.5))
    assert (given["threshold"] == 0.5).all()

"""external: a model scored on another data set, the drop and the shift measured, the copies found."""

import csv
import shutil

import mlflow
import numpy as np
import pytest
from conftest import error_lines, make_dataset, pipeline_cli
from PIL import Image

from pipeline.data import prepare_dataset
from pipeline.data.checks import units_of
from pipeline.errors import UserError
from pipeline.settings import DEFAULT_PATIENT_PATTERN, DataConfig, EvaluateConfig, ExternalConfig, FitConfig, ModelConfig
from pipeline.steps import external, train


@pytest.fixture
def trained(store, tmp_path):
    # Enough images for a frozen random backbone's head to learn the demo's opacities (internal AUC well above 0.5).
    data = make_dataset(tmp_path / "d", {"train": 150, "val": 30, "test": 60}, size=32)
    fit = FitConfig(epochs=20, batch_size=32, lr=0.01)
    result = train.run(DataConfig(data_dir=str(data), image_size=32), ModelConfig("resnet18", True, "none"), fit)
    return result, data


def another_hospital(target, transform):
    """Other patients (another seed), every image changed by `transform`, in the Kaggle layout."""
    make_dataset(target, {"train": 40, "val": 10, "test": 50}, size=32, seed=1)
    for path in sorted(target.rglob("*.png")):
        Image.fromarray(transform(np.asarray(Image.open(path)))).save(path)
    return target


def washed_out_with_a_border(pixels):
    """Another scanner: a flat gamma and a bright frame."""
    out = (255 * (pixels / 255.0) ** 0.35).astype(np.uint8)
    out[:3], out[-3:], out[:, :3], out[:, -3:] = 255, 255, 255, 255
    return out


def artifact_rows(run_id, path, tmp_path):
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(tmp_path / "dl"))
    return list(csv.DictReader(open(local)))


def test_a_shifted_set_its_own_test_set_and_a_set_holding_training_images(trained, tmp_path):
    result, data = trained
    model = EvaluateConfig(model_uri=result.model_uri)

    shifted = another_hospital(tmp_path / "other", washed_out_with_a_border)
    out = external.run(model, DataConfig(data_dir=str(shifted)), ExternalConfig())
    m = out.metrics
    assert m["shift_auc"] > 0.9 and m["shift_auc_ci_low"] > 0.5
    assert m["external_drop_auc_ci_low"] > 0 or m["external_drop_acc_ci_low"] > 0
    assert m["external_n_shared_with_train"] == 0
    run = mlflow.get_run(out.run_id)
    assert run.info.run_name == "resnet18-frozen-external" and run.data.tags["train_run_id"] == result.run_id
    assert run.data.tags["model_uri"] == result.model_uri and run.data.tags["external_data_digest"]
    for k in ("external_acc", "external_auc", "external_sensitivity", "external_specificity", "external_drop_auc", "external_drop_acc", "shift_auc"):
        assert m[f"{k}_ci_low"] <= m[k] <= m[f"{k}_ci_high"], k
    assert {"external_ece", "internal_ece", "external_oracle_threshold", "external_auc_lungs_hidden"} <= set(m)

    # A registered model's card gains the set's line, once however often it is validated there.
    version = mlflow.register_model(result.model_uri, "card-model")
    mlflow.MlflowClient().update_model_version("card-model", version.version, description="# Model card\n\n## Known limits\n- one centre\n")
    for _ in range(2):
        external.run(EvaluateConfig(model_uri="models:/card-model/1"), DataConfig(data_dir=str(shifted)), ExternalConfig())
    card = mlflow.MlflowClient().get_model_version("card-model", version.version).description
    source = run.data.tags["external_data"]
    assert card.count(f"- {source} (200 images): AUC ") == 1 and card.index("## External validation") < card.index("## Known limits")

    # Its own internal test set as "external": nothing moved, and as many shared images as the data holds.
    itself = external.run(model, DataConfig(data_dir=str(data)), ExternalConfig(external_split="test")).metrics
    assert itself["external_drop_acc"] == 0 and itself["external_drop_auc"] == 0
    assert itself["shift_auc_ci_low"] < 0.5 < itself["shift_auc_ci_high"]
    rows = prepare_dataset(DataConfig(data_dir=str(data), image_size=32)).dataset.manifest()
    units = units_of(rows, DEFAULT_PATIENT_PATTERN)
    developed = {u for u, r in zip(units, rows) if r.split in ("train", "val")}
    assert itself["external_n_shared_with_train"] == sum(u in developed for u, r in zip(units, rows) if r.split == "test")

    # A "new" set that holds eight of the model's images (validation re-split from train/): flagged, and each one listed.
    holding = another_hospital(tmp_path / "holding", lambda pixels: pixels)
    copied = sorted((data / "train" / "NORMAL").glob("*.png"))[:4] + sorted((data / "train" / "PNEUMONIA").glob("*.png"))[:4]
    for path in copied:
        shutil.copy(path, holding / "test" / path.parent.name / f"copy-{path.name}")
    flagged = external.run(model, DataConfig(data_dir=str(holding)), ExternalConfig())
    assert flagged.metrics["external_n_shared_with_train"] == 8  # other patients' ids that look alike are not counted
    listed = {r["file"]: r["reasons"] for r in artifact_rows(flagged.run_id, "shift/shared_with_train.csv", tmp_path)}
    for path in copied:
        assert "identical pixels to" in listed[f"test/{path.parent.name}/copy-{path.name}"]


def test_bad_inputs_end_in_one_error(trained, tmp_path):
    result, data = trained
    model = EvaluateConfig(model_uri=result.model_uri)
    one_class = another_hospital(tmp_path / "one", lambda pixels: pixels)
    for path in one_class.rglob("PNEUMONIA/*.png"):
        path.unlink()
    renamed = another_hospital(tmp_path / "renamed", lambda pixels: pixels)
    for split in ("train", "val", "test"):
        for old, new in (("NORMAL", "healthy"), ("PNEUMONIA", "sick")):
            (renamed / split / old).rename(renamed / split / new)
    with pytest.raises(UserError, match="the external data's classes .* are not the model's"):
        external.run(model, DataConfig(data_dir=str(renamed)), ExternalConfig())
    with pytest.raises(UserError, match="external needs data_dir"):
        external.run(model, DataConfig(), ExternalConfig())
    cli = pipeline_cli("external", {"model_uri": "models:/m-doesnotexist", "data_dir": str(data)})
    errors = error_lines(cli.stderr)
    assert cli.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: cannot find model 'models:/m-doesnotexist'"), cli.stderr[-2000:]
    cli = pipeline_cli("external", {"model_uri": result.model_uri, "data_dir": str(one_class)})
    assert cli.returncode == 2 and len(error_lines(cli.stderr)) == 1, cli.stderr[-2000:]


def test_the_shift_keeps_each_sets_patients_whole_and_links_two_sources_only_by_copies():
    from pipeline.data.checks import ManifestRow

    def row(path, patient, content):
        return ManifestRow(path, "train", "NORMAL", 64, 64, "L", content, patient, "")

    train_rows = [row("a.png", "p1", "c1"), row("b.png", "p1", "c2"), row("c.png", "p2", "c3")]
    external_rows = [row("x.png", "p1", "c4"), row("y.png", "q", "c5"), row("z.png", "q", "c6"), row("w.png", "", "c3")]
    two = external.shift_units(train_rows, external_rows, ("", ""), 16, same_source=False)
    assert two[0] == two[1] and two[4] == two[5]  # a patient's images, in either set, stay one unit
    assert two[3] != two[0]  # "p1" of another source is another patient
    assert two[6] == two[2]  # identical pixels link the sets whatever the source
    one = external.shift_units(train_rows, external_rows, ("", ""), 16, same_source=True)
    assert one[3] == one[0]  # one source: the same id is the same patient

"""Each analysis on generated data with planted duplicates, patient overlap and shift: found exactly."""

import io
import shutil

import numpy as np
import pytest
from conftest import make_dataset
from PIL import Image

from pipeline import analysis
from pipeline.data import prepare_dataset
from pipeline.settings import DEFAULT_PATIENT_PATTERN, DataConfig


def rename(folder, old, new):
    (folder / old).rename(folder / new)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    data = make_dataset(root / "d", {"train": 12, "val": 6, "test": 6}, size=64, seed=3)
    train_n, test_n = data / "train" / "NORMAL", data / "test" / "NORMAL"
    source = sorted(train_n.iterdir())[0]
    # An exact duplicate in test, a near duplicate (smaller, re-encoded, brighter) in val.
    shutil.copy(source, test_n / "copy-of-train.png")
    img = Image.open(source).resize((56, 56))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=70)
    brighter = np.clip(np.asarray(Image.open(buffer)).astype(int) + 8, 0, 255).astype(np.uint8)
    Image.fromarray(brighter).save(data / "val" / "NORMAL" / "near-copy.png")
    # One child in train and test; two children who only share a number (bacteria / virus).
    train_p, test_p = data / "train" / "PNEUMONIA", data / "test" / "PNEUMONIA"
    rename(train_p, sorted(p.name for p in train_p.iterdir())[0], "person900_bacteria_1.png")
    rename(test_p, sorted(p.name for p in test_p.iterdir())[0], "person900_bacteria_2.png")
    rename(train_p, sorted(p.name for p in train_p.iterdir())[1], "person901_bacteria_3.png")
    rename(test_p, sorted(p.name for p in test_p.iterdir())[1], "person901_virus_4.png")
    prep = prepare_dataset(DataConfig(data_dir=str(data), image_size=64, cache_dir=str(root / "cache"), val_source="folder"))
    d = prep.dataset
    return d.manifest(), {s: np.asarray(d.images(s)) for s in ("train", "val", "test")}, source.name


def test_exact_and_near_duplicates_across_splits_are_exactly_the_planted_ones(planted):
    rows, images, source = planted
    leak = analysis.leakage(rows, DEFAULT_PATIENT_PATTERN)
    (group,) = leak["exact_duplicates_across_splits"]
    assert {f["path"] for f in group["files"]} == {f"train/NORMAL/{source}", "test/NORMAL/copy-of-train.png"}
    pairs = {(p["file_a"], p["file_b"]) for p in leak["near_duplicates_across_splits"]}
    assert pairs == {
        (f"train/NORMAL/{source}", "test/NORMAL/copy-of-train.png"),
        (f"train/NORMAL/{source}", "val/NORMAL/near-copy.png"),
        ("val/NORMAL/near-copy.png", "test/NORMAL/copy-of-train.png"),  # copies of one picture, so near each other too
    }
    assert leak["n_near_duplicate_pairs_not_exact"] == 2


def test_patient_overlap_uses_the_infection_type(planted):
    rows, images, _ = planted
    leak = analysis.leakage(rows, DEFAULT_PATIENT_PATTERN)
    overlap = leak["patients"]["overlap"]
    assert [p["patient"] for p in overlap["train-test"]["patients"]] == ["person900_bacteria"]
    assert overlap["train-val"]["n_patients"] == 0 and overlap["val-test"]["n_patients"] == 0
    assert leak["naive_key_shared_patients"]["train-test"] == 2  # person901 would be counted by the number alone


def shifted(images, amount):
    return {s: (np.clip(a.astype(int) + amount, 0, 255).astype(np.uint8) if s == "test" else a) for s, a in images.items()}


def pixel_features(array):
    return np.stack([np.asarray(Image.fromarray(a).resize((8, 8))).ravel() for a in array]).astype(np.float32)


def test_a_planted_shift_is_seen_and_its_absence_too(planted):
    rows, images, _ = planted
    bright = shifted(images, 60)
    stats = analysis.image_statistics(rows, bright)
    assert stats["test"]["intensity_mean"] - analysis.image_statistics(rows, images)["test"]["intensity_mean"] == pytest.approx(60, abs=8)
    apart = analysis.domain_shift(pixel_features(bright["train"]), pixel_features(bright["test"]), 0)
    assert apart.value > 0.95 and apart.low > 0.5
    alike = analysis.domain_shift(pixel_features(images["train"]), pixel_features(images["test"]), 0)
    assert alike.low < 0.5 < alike.high
    assert analysis.class_balance(rows, "PNEUMONIA") == {"train": 0.5, "val": round(6 / 13, 4), "test": round(6 / 13, 4)}


def test_a_patients_images_stay_on_one_side_of_the_shift_classifier():
    # Two alike sets of 60 patients, three near-identical images each: split by image, the
    # classifier would score an image by its siblings it was fitted on and see a shift.
    rng = np.random.default_rng(0)
    patients = rng.normal(size=(120, 40))
    features = np.repeat(patients, 3, axis=0) + 0.05 * rng.normal(size=(360, 40))
    units = np.repeat(np.arange(120), 3)
    by_image = analysis.domain_shift(features[:180], features[180:], 0)
    assert by_image.low > 0.5
    by_patient = analysis.domain_shift(features[:180], features[180:], 0, units)
    assert by_patient.low < 0.5 < by_patient.high


def test_label_noise_candidates_are_the_images_every_model_confidently_gets_wrong():
    truth = {"a.png": "NORMAL", "b.png": "PNEUMONIA", "c.png": "NORMAL", "d.png": "PNEUMONIA"}
    model_one = {"a.png": 0.95, "b.png": 0.05, "c.png": 0.9, "d.png": 0.6}  # probability of PNEUMONIA
    model_two = {"a.png": 0.85, "b.png": 0.10, "c.png": 0.3, "d.png": 0.1}

    def as_rows(probs):
        return [{"file": f, "true_label": truth[f], "probability": p} for f, p in probs.items()]

    found = analysis.label_noise_candidates({"one": as_rows(model_one), "two": as_rows(model_two)}, "PNEUMONIA", 0.8)
    assert [c["file"] for c in found] == ["b.png", "a.png"]  # c: only one model wrong; d: not confident
    assert found[0]["mean_probability_of_wrong_class"] == pytest.approx(0.925)


def test_findings_cite_the_numbers(planted):
    rows, images, _ = planted
    study = {
        "leakage": analysis.leakage(rows, DEFAULT_PATIENT_PATTERN),
        "shift": {
            "class_balance": analysis.class_balance(rows, "PNEUMONIA"),
            "image_statistics": analysis.image_statistics(rows, images),
            "domain_auc": 0.83,
            "domain_auc_ci_low": 0.76,
            "domain_auc_ci_high": 0.9,
            "domain_features": "resnet18 (none-seed42)",
        },
        "label_noise_candidates": [{"file": "x.png", "true_label": "NORMAL", "mean_probability_of_wrong_class": 0.9}],
        "label_noise_confidence": 0.8,
        "errors": analysis.error_breakdown({"m": {"fp": 7, "fn": 2, "val_acc": 0.9, "test_acc": 0.69}}),
    }
    text = " ".join(analysis.findings(study))
    assert "Validation accuracy is 21.0 points above test accuracy" in text
    assert "1 test patients also have images in train" in text
    assert "Keyed by the number alone, 2 patients would seem shared by train and test" in text and "there are 1" in text
    assert "7 false positives against 2 false negatives" in text
    assert "AUC 0.83" in text and "shifted distribution" in text
    assert "1 test images are misclassified by every model" in text
    assert "1 groups of identical images and 2 further near-identical pairs" in text
    assert "# Test-set analysis" in analysis.render({**study, "findings": analysis.findings(study)})

"""Validation that shares no patient and no identical image with train: chosen, split and reported."""

import re
import shutil
from collections import Counter

import numpy as np
import pytest
from conftest import KERMANY, make_dataset

from pipeline.data import prepare_dataset
from pipeline.data.checks import patients_by_split
from pipeline.data.sources import SourceImage
from pipeline.data.units import patient_of, unit_groups
from pipeline.data.validation import MIN_VAL_PER_CLASS, choose_validation, split_by_patient
from pipeline.errors import UserError
from pipeline.settings import DEFAULT_PATIENT_PATTERN, DataConfig

CLASSES = ["NORMAL", "PNEUMONIA"]


def images(counts: dict[str, dict[str, int]]) -> list[SourceImage]:
    return [
        SourceImage(f"{split}/{label}/{label}-{k}.png", split, label) for split, per in counts.items() for label, n in per.items() for k in range(n)
    ]


@pytest.mark.parametrize(
    "val, source, chosen, words",
    [
        ({"NORMAL": 60, "PNEUMONIA": 50}, "auto", "folder", ["at least 50", "NORMAL 60", "PNEUMONIA 50"]),
        ({"NORMAL": 8, "PNEUMONIA": 8}, "auto", "split", ["too few", "NORMAL 8", "joined train/", "by patient"]),
        (None, "auto", "split", ["no val/"]),
        ({"NORMAL": 8, "PNEUMONIA": 8}, "folder", "folder", ["as given", "noisy"]),
        ({"NORMAL": 60, "PNEUMONIA": 60}, "split", "split", ["joined train/ first"]),
    ],
)
def test_validation_source_is_chosen_and_said_why(val, source, chosen, words):
    counts = {"train": {"NORMAL": 100, "PNEUMONIA": 100}, **({"val": val} if val else {})}
    plan = choose_validation(images(counts), CLASSES, source)
    assert plan.source == chosen
    for word in words:
        assert word in plan.reason
    assert MIN_VAL_PER_CLASS == 50


def test_folder_without_val_is_a_user_error():
    with pytest.raises(UserError, match="val_source=folder but the data set has no val/"):
        choose_validation(images({"train": {"NORMAL": 5, "PNEUMONIA": 5}}), CLASSES, "folder")


def kaggle_like(n_patients: int, seed: int = 0) -> tuple[list[SourceImage], list[str]]:
    """Patients with 1-4 images each, a few images without an id, and identical pixels shared
    by two different patients' files (as in the Kaggle data)."""
    rng = np.random.default_rng(seed)
    result, hashes = [], []
    for p in range(n_patients):
        label = "PNEUMONIA" if p % 3 else "NORMAL"
        name = f"person{p}_bacteria" if label == "PNEUMONIA" else f"IM-{p:04d}"
        for k in range(int(rng.integers(1, 5))):
            result.append(
                SourceImage(f"train/{label}/{name}_{k}.jpeg" if label == "PNEUMONIA" else f"train/{label}/{name}-000{k}.jpeg", "train", label)
            )
            hashes.append(f"h{p}-{k}")
    for k in range(10):
        result.append(SourceImage(f"train/NORMAL/scan{k}.jpeg", "train", "NORMAL"))
        hashes.append(f"loose{k}")
    # Identical pixels under two patients (and one loose file): they must stay together too.
    hashes[5] = hashes[40] = hashes[-1] = "same-picture"
    return result, hashes


def test_patient_split_keeps_every_patient_and_every_identical_image_on_one_side():
    pool, hashes = kaggle_like(300)
    split, how = split_by_patient(pool, hashes, CLASSES, 0.2, seed=3, pattern=DEFAULT_PATIENT_PATTERN)
    sides = {}
    for image, content in zip(split, hashes):
        for key in (patient_of(image.relpath, "", re.compile(DEFAULT_PATIENT_PATTERN)), content):
            if key:
                sides.setdefault(key, set()).add(image.split)
    assert all(len(s) == 1 for s in sides.values()), [k for k, s in sides.items() if len(s) > 1][:5]
    assert len({split[5].split, split[40].split, split[-1].split}) == 1
    share = Counter(i.split for i in split)["val"] / len(split)
    assert 0.15 < share < 0.25
    per_class = {c: Counter(i.split for i in split if i.label == c) for c in CLASSES}
    for c in CLASSES:  # stratified: each class keeps about the same share in validation
        assert 0.13 < per_class[c]["val"] / sum(per_class[c].values()) < 0.27
    assert "StratifiedGroupKFold" in how and "seed 3" in how
    again, _ = split_by_patient(pool, hashes, CLASSES, 0.2, seed=3, pattern=DEFAULT_PATIENT_PATTERN)
    other, _ = split_by_patient(pool, hashes, CLASSES, 0.2, seed=4, pattern=DEFAULT_PATIENT_PATTERN)
    assert [i.split for i in again] == [i.split for i in split] != [i.split for i in other]


def test_without_a_pattern_only_identical_images_are_grouped():
    pool, hashes = kaggle_like(30)
    groups = unit_groups([None] * len(pool), hashes)
    assert len(set(groups)) == len(pool) - 2  # three files share one picture
    compiled = re.compile(DEFAULT_PATIENT_PATTERN)
    with_patients = unit_groups([patient_of(i.relpath, "", compiled) for i in pool], hashes)
    assert len(set(with_patients)) < len(set(groups))


def test_too_few_patients_is_a_user_error():
    pool = [SourceImage(f"train/{c}/person1_virus_{k}.jpeg", "train", c) for c in CLASSES for k in range(6)]
    with pytest.raises(UserError, match="too few to hold out"):
        split_by_patient(pool, [f"picture{k}" for k in range(len(pool))], CLASSES, 0.2, 0, DEFAULT_PATIENT_PATTERN)


def add_kaggle_patients(root):
    """Rename the generated train images so patients have several images, and copy one
    picture to another patient: the cases a per-image split leaks."""
    for label, stem in (("PNEUMONIA", "person{}_bacteria_{}.png"), ("NORMAL", "IM-{:04d}-000{}.png")):
        files = sorted((root / "train" / label).iterdir())
        for k, f in enumerate(files):
            f.rename(f.with_name(stem.format(9000 + k // 3, k % 3)))
    first, second = sorted((root / "train" / "NORMAL").iterdir())[:4:3]
    shutil.copy(first, second.with_name("IM-9999-0001.png"))


def test_prepare_splits_a_small_val_by_patient_and_reports_no_leak(tmp_path):
    data = make_dataset(tmp_path / "d", {"train": 30, "val": 8, "test": 4}, size=32)
    add_kaggle_patients(data)
    prep = prepare_dataset(DataConfig(data_dir=str(data), image_size=32, cache_dir=str(tmp_path / "c")))
    report = prep.report
    assert report["validation"]["source"] == "split" and "too few" in report["validation"]["reason"]
    assert report["patients"]["overlap"]["train-val"]["n_patients"] == 0
    assert report["duplicates"]["n_groups_across_splits"] == 0 and report["duplicates"]["n_groups"] == 1
    assert sum(prep.dataset.split_sizes.values()) == 2 * (30 + 8 + 4) + 1
    assert any(f.startswith("val/") for f in prep.dataset.files("train"))  # val/ joined train before the split
    # The same data cut image by image would have leaked (what the old split did).
    per_patient = patients_by_split(prep.dataset.manifest(), DEFAULT_PATIENT_PATTERN)
    assert max(len(v) for v in per_patient["train"].values()) == 3
    again = prepare_dataset(DataConfig(data_dir=str(data), image_size=32, cache_dir=str(tmp_path / "c")))
    assert again.cache_reused and again.dataset.digest == prep.dataset.digest
    folder = prepare_dataset(DataConfig(data_dir=str(data), image_size=32, cache_dir=str(tmp_path / "c"), val_source="folder"))
    assert folder.dataset.split_sizes["val"] == 16 and folder.dataset.digest != prep.dataset.digest


def kermany_without_val(tmp_path, val_per_class: int = 0):
    root = tmp_path / "kermany"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for label in CLASSES:
            (root / split / label).symlink_to(KERMANY / split / label)
    if val_per_class:
        for label in CLASSES:
            (root / "val" / label).mkdir(parents=True)
            for f in sorted((KERMANY / "val" / label).iterdir())[:val_per_class]:
                (root / "val" / label / f.name).symlink_to(f)
    return root


@pytest.mark.skipif(not KERMANY.is_dir(), reason="../shared/data/kermany-2400 is not on this machine")
def test_kermany_without_val_gets_a_validation_that_shares_nothing_with_train(tmp_path):
    prep = prepare_dataset(DataConfig(data_dir=str(kermany_without_val(tmp_path)), image_size=16, cache_dir=str(tmp_path / "c")))
    report = prep.report
    assert report["validation"]["source"] == "split"
    assert report["patients"]["overlap"]["train-val"]["n_patients"] == 0
    assert report["duplicates"]["n_groups_across_splits"] == 0
    assert prep.dataset.split_sizes["val"] == pytest.approx(320, abs=20)
    # With the Kaggle download's own tiny val/ (8 + 8 images), auto re-splits and says so.
    small = prepare_dataset(DataConfig(data_dir=str(kermany_without_val(tmp_path / "s", 8)), image_size=16, cache_dir=str(tmp_path / "c")))
    assert small.report["validation"]["source"] == "split" and "NORMAL 8, PNEUMONIA 8" in small.report["validation"]["reason"]
    assert small.report["patients"]["overlap"]["train-val"]["n_patients"] == 0
    assert small.report["duplicates"]["n_groups_across_splits"] == 0

import re

from pipeline.data.checks import (
    ManifestRow,
    data_report,
    describe_duplicates,
    describe_patients,
    read_manifest,
    render_report,
    write_manifest,
)
from pipeline.data.units import patient_of
from pipeline.settings import DEFAULT_PATIENT_PATTERN


def row(path, split, label="NORMAL", content_hash=None):
    return ManifestRow(path, split, label, 100, 80, "L", content_hash or path)


def test_patient_keys_of_both_kinds_of_kaggle_names():
    pattern = re.compile(DEFAULT_PATIENT_PATTERN)
    assert patient_of("train/PNEUMONIA/person1_bacteria_1.jpeg", "", pattern) == "person1_bacteria"
    assert patient_of("person1_virus_6.jpeg", "", pattern) == "person1_virus"
    assert patient_of("IM-0115-0001.jpeg", "", pattern) == "IM-0115"
    assert patient_of("IM-0115-0001-0002.jpeg", "", pattern) == "IM-0115"
    assert patient_of("NORMAL2-IM-0587-0001-0002.jpeg", "", pattern) == "NORMAL2-IM-0587"
    assert patient_of("scan_0001.png", "", pattern) is None


def test_bacteria_and_virus_with_the_same_number_are_different_children():
    rows = [
        row("train/PNEUMONIA/person7_bacteria_1.jpeg", "train", "PNEUMONIA"),
        row("test/PNEUMONIA/person7_virus_2.jpeg", "test", "PNEUMONIA"),
        row("train/NORMAL/IM-0001-0001.jpeg", "train"),
        row("test/NORMAL/NORMAL2-IM-0001-0001.jpeg", "test"),
    ]
    patients = describe_patients(rows, DEFAULT_PATIENT_PATTERN)
    assert patients["overlap"]["train-test"]["n_patients"] == 0


def test_shared_patients_are_found_and_listed():
    rows = [
        row("train/PNEUMONIA/person7_bacteria_1.jpeg", "train", "PNEUMONIA"),
        row("train/PNEUMONIA/person7_bacteria_2.jpeg", "train", "PNEUMONIA"),
        row("val/PNEUMONIA/person7_bacteria_3.jpeg", "val", "PNEUMONIA"),
        row("test/NORMAL/IM-0001-0002.jpeg", "test"),
        row("val/NORMAL/IM-0001-0001.jpeg", "val"),
        row("test/NORMAL/other.png", "test"),
    ]
    patients = describe_patients(rows, DEFAULT_PATIENT_PATTERN)
    assert patients["images_with_id"] == 5 and patients["images_without_id"] == 1
    tv = patients["overlap"]["train-val"]
    assert tv["n_patients"] == 1 and tv["n_images"] == {"train": 2, "val": 1}
    assert tv["patients"][0]["patient"] == "person7_bacteria"
    assert patients["overlap"]["val-test"]["patients"][0]["patient"] == "IM-0001"
    assert patients["overlap"]["train-test"]["n_patients"] == 0
    assert describe_patients(rows, "")["checked"] is False


def test_duplicates_within_and_across_splits_and_conflicting_labels():
    rows = [
        row("a", "train", content_hash="h1"),
        row("b", "test", content_hash="h1"),
        row("c", "train", content_hash="h2"),
        row("d", "train", "PNEUMONIA", content_hash="h2"),
        row("e", "val", content_hash="h3"),
    ]
    dup = describe_duplicates(rows)
    assert (dup["n_groups"], dup["n_groups_across_splits"], dup["n_groups_within_split"]) == (2, 1, 1)
    assert dup["n_groups_with_conflicting_labels"] == 1
    assert {f["path"] for f in dup["across_splits"][0]["files"]} == {"a", "b"}


def test_manifest_round_trip(tmp_path):
    rows = [row("train/NORMAL/a.png", "train"), row("test/PNEUMONIA/b.png", "test", "PNEUMONIA")]
    write_manifest(rows, tmp_path / "m.csv")
    assert read_manifest(tmp_path / "m.csv") == rows
    assert (tmp_path / "m.csv").read_text().splitlines()[0] == "path,split,label,width,height,mode,content_hash,patient,phash,site"


def test_report_counts_balance_and_lists():
    rows = [row(f"train/N/{k}", "train") for k in range(3)] + [
        row("train/P/x", "train", "PNEUMONIA"),
        row("test/N/y", "test"),
        row("test/P/z", "test", "PNEUMONIA"),
    ]
    report = data_report(
        rows,
        source="/data",
        kind="folder",
        digest="abc",
        classes=["NORMAL", "PNEUMONIA"],
        image_size=64,
        validation={"source": "folder", "reason": "val_source=folder: the val/ split as given"},
        rejected=[("train/N/bad.jpeg", "cannot decode: truncated")],
        ignored=[("train/N/notes.txt", "not an image extension (.txt)")],
        patient_pattern=DEFAULT_PATIENT_PATTERN,
    )
    assert report["counts"]["train"] == {"NORMAL": 3, "PNEUMONIA": 1}
    assert report["balance"]["train"]["PNEUMONIA"] == 0.25
    text = render_report(report)
    assert "- validation: folder (val_source=folder: the val/ split as given)" in text
    assert "| train | 3 | 1 | 4 | 75.0 | 25.0 |" in text
    assert "`train/N/bad.jpeg`: cannot decode: truncated" in text
    assert "`train/N/notes.txt`: not an image extension (.txt)" in text

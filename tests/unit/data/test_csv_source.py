"""Label tables (CSV) as sources: column names, label rules, file lookup, what is listed."""

from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import prepare_dataset, sites_of
from pipeline.data.checks import render_report
from pipeline.data.csv_source import CsvSettings, list_csv
from pipeline.errors import UserError
from pipeline.parsers import column_map, csv_columns
from pipeline.settings import DataConfig
from tests.conftest import make_csv_dicom_dataset, make_site_table, write_dicom


def png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)


def settings(columns: str = "", positive: tuple[str, ...] = (), test_list: str = "") -> CsvSettings:
    return CsvSettings(column_map(csv_columns("csv_columns", columns)), positive, test_list)


def test_nih_layout_findings_rule_sub_folders_and_test_list(tmp_path):
    # NIH ChestX-ray14: images spread over images_00N/images/, the table names only the file.
    rows = [
        ("00000001_000.png", "Pneumonia", "1"),
        ("00000001_001.png", "Effusion|Pneumonia", "1"),
        ("00000002_000.png", "No Finding", "2"),
        ("00000003_000.png", "Cardiomegaly", "3"),
        ("00000004_000.png", "", "4"),
        ("00000005_000.png", "No Finding", "5"),
    ]
    for k, (name, _, _) in enumerate(rows[:5]):  # the last is listed but was never downloaded
        png(tmp_path / f"images_00{k % 2 + 1}" / "images" / name, 10 * k)
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID\n" + "".join(f"{n},{label},0,{p}\n" for n, label, p in rows)
    )
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n")
    listing = list_csv(
        tmp_path / "Data_Entry_2017.csv",
        settings("file=Image Index,label=Finding Labels,patient=Patient ID", ("Pneumonia",), "test_list.txt"),
    )
    found = {Path(i.relpath).name: (i.label, i.split, i.patient) for i in listing.images}
    assert found == {
        "00000001_000.png": ("PNEUMONIA", "train", "1"),
        "00000001_001.png": ("PNEUMONIA", "train", "1"),
        "00000002_000.png": ("NORMAL", "train", "2"),
        "00000003_000.png": ("NORMAL", "test", "3"),  # another finding, not pneumonia: negative
    }
    reasons = dict(listing.ignored)
    assert "unknown label ''" in reasons["Data_Entry_2017.csv:6 00000004_000.png"]
    assert "not found" in reasons["00000005_000.png"]
    assert listing.kind == "csv" and listing.classes == ["NORMAL", "PNEUMONIA"]


def test_rsna_layout_repeated_box_rows_count_once_and_names_without_extension_are_found(tmp_path):
    for pid in ("a1", "b2", "c3"):
        write_dicom(tmp_path / "stage_2_train_images" / f"{pid}.dcm", np.full((16, 16), 7, np.uint16), patient=pid)
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\na1,,,,,0\nb2,10,10,5,5,1\nb2,20,20,5,5,1\nc3,1,1,1,1,1\nc3,,,,,0\n"
    )
    listing = list_csv(tmp_path / "stage_2_train_labels.csv", settings("file=patientId,label=Target,patient=patientId"))
    assert {(i.relpath, i.label) for i in listing.images} == {("stage_2_train_images/a1.dcm", "NORMAL"), ("stage_2_train_images/b2.dcm", "PNEUMONIA")}
    reasons = dict(listing.ignored)
    assert "disagree" in reasons["c3"]  # two labels for one image: neither is trusted
    assert "1 repeated rows" in reasons["stage_2_train_labels.csv"]


def test_absolute_paths_are_taken_as_given(tmp_path):
    png(tmp_path / "elsewhere" / "a.png")
    png(tmp_path / "elsewhere" / "b.png", 200)
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "t.csv").write_text(f"file,label\n{tmp_path / 'elsewhere' / 'a.png'},0\n{tmp_path / 'elsewhere' / 'b.png'},1\n")
    listing = list_csv(tmp_path / "table" / "t.csv", settings())
    assert [i.relpath for i in listing.images] == [str(tmp_path / "elsewhere" / "a.png"), str(tmp_path / "elsewhere" / "b.png")]


def test_a_named_column_that_is_missing_is_an_error_naming_the_columns(tmp_path):
    (tmp_path / "t.csv").write_text("path,finding\na.png,1\n")
    with pytest.raises(UserError, match=r"no column for file='file', label='label' \(its columns: path, finding\)"):
        list_csv(tmp_path / "t.csv", settings())
    with pytest.raises(UserError, match="no column for patient='Patient ID'"):
        list_csv(tmp_path / "t.csv", settings("file=path,label=finding,patient=Patient ID"))


def test_csv_columns_rejects_unknown_roles():
    with pytest.raises(UserError, match="role=column pairs"):
        csv_columns("csv_columns", "image=x")
    assert column_map(csv_columns("csv_columns", "label=Target")) == {
        "file": "file",
        "label": "Target",
        "patient": "patient",
        "split": "split",
        "site": "site",
    }


def test_prepare_cuts_test_and_validation_by_the_tables_patient_ids(tmp_path):
    table = make_csv_dicom_dataset(tmp_path / "export", patients=40, per_patient=3, size=32)
    prep = prepare_dataset(DataConfig(data_dir=str(table), image_size=32, cache_dir=str(tmp_path / "cache"), patient_pattern=""))
    rows = prep.dataset.manifest()
    patients = defaultdict(set)
    for r in rows:
        patients[r.patient].add(r.split)
    assert len(patients) == 40 and all(len(splits) == 1 for splits in patients.values())
    sizes = prep.dataset.split_sizes
    assert sizes["test"] > 0 and sizes["val"] > 0 and sum(sizes.values()) == 120
    assert "test was cut from it first" in prep.dataset.val_origin and "the source's patient column" in prep.dataset.val_origin
    assert prep.report["patients"]["key"] == "the patient column of the source's table"
    assert all(r.mode.startswith("DICOM MONOCHROME") for r in rows)
    # MONOCHROME1 files were stored inverted: once shown, both kinds look alike (bright lungs field edges, dark lungs).
    mono1 = [k for k, r in enumerate(r for r in rows if r.split == "train") if "MONOCHROME1" in r.mode]
    mono2 = [k for k, r in enumerate(r for r in rows if r.split == "train") if "MONOCHROME2" in r.mode]
    train = prep.dataset.images("train")
    assert abs(float(train[mono1].mean()) - float(train[mono2].mean())) < 10


def test_one_site_held_out_as_the_test_set_and_the_data_report_counts_each_site(tmp_path):
    table = make_site_table(tmp_path / "sites")
    data = DataConfig(
        data_dir=str(table),
        image_size=32,
        cache_dir=str(tmp_path / "cache"),
        csv_columns=csv_columns("csv_columns", "site=hospital"),
        test_site="south",
    )
    prep = prepare_dataset(data)
    rows = prep.dataset.manifest()
    assert {r.site for r in rows if r.split == "test"} == {"south"} and sum(r.split == "test" for r in rows) == 24
    assert {r.site for r in rows if r.split != "test"} == {"north", "east"} and prep.dataset.split_sizes["val"] > 0
    assert prep.report["sites"] == {
        "east": {
            "train": sum(r.site == "east" and r.split == "train" for r in rows),
            "val": sum(r.site == "east" and r.split == "val" for r in rows),
            "test": 0,
        },
        "north": {
            "train": sum(r.site == "north" and r.split == "train" for r in rows),
            "val": sum(r.site == "north" and r.split == "val" for r in rows),
            "test": 0,
        },
        "south": {"train": 0, "val": 0, "test": 24},
    }
    assert "## Images per site and split" in render_report(prep.report) and "| south | 0 | 0 | 24 |" in render_report(prep.report)
    assert sites_of(data) == ["east", "north", "south"]
    # Another site held out is another split, so another cache entry and digest.
    assert prepare_dataset(replace(data, test_site="north")).dataset.digest != prep.dataset.digest


def test_test_site_errors_say_what_to_do(tmp_path):
    table = make_site_table(tmp_path / "sites", sites=("north", "south"), patients=4)
    data = DataConfig(data_dir=str(table), image_size=32, cache_dir=str(tmp_path / "cache"), csv_columns=csv_columns("csv_columns", "site=hospital"))
    with pytest.raises(UserError, match="no usable image of site 'west' to test on; its sites: north, south"):
        prepare_dataset(replace(data, test_site="west"))
    with pytest.raises(UserError, match="test_site needs a site column; labels.csv has no 'site' column: name it with csv_columns site=<column>"):
        prepare_dataset(replace(data, csv_columns=csv_columns("csv_columns", ""), test_site="north"))
    with pytest.raises(UserError, match="test_site=each is leave-one-site-out, which the main step runs"):
        prepare_dataset(replace(data, test_site="each"))
    with pytest.raises(UserError, match="test_site needs a label table with a site column; .* is not a .csv table"):
        prepare_dataset(replace(data, data_dir=str(tmp_path / "sites" / "north"), test_site="north"))
    split_table = tmp_path / "sites" / "with_split.csv"
    lines = table.read_text().splitlines()
    split_table.write_text("\n".join([lines[0] + ",split"] + [line + ",train" for line in lines[1:]]) + "\n")
    with pytest.raises(UserError, match="test_site and a split column .* both choose the test set"):
        prepare_dataset(replace(data, data_dir=str(split_table), test_site="north"))

"""Hostile input to the readers: lying headers, oversized and non-finite images, and a few hundred
damaged files, each read to grey pixels or refused with a reason; label tables that climb out of
their folder or are not UTF-8."""

import io
import shutil

import numpy as np
import pydicom
import pytest
from conftest import make_dataset, write_dicom
from malformed import huge_png, lying_dicom, malformed_files, png_bytes
from PIL import Image

from pipeline.data import prepare_dataset
from pipeline.data.sources import read_image
from pipeline.data.unreadable import UnreadableImage
from pipeline.errors import UserError
from pipeline.settings import DataConfig


def test_a_dicom_whose_header_lies_is_unreadable_with_the_reason(tmp_path):
    with pytest.raises(UnreadableImage, match="pixel data does not match Rows x Columns: the header says 1 x 50"):
        read_image(lying_dicom(tmp_path / "a.dcm").read_bytes())


def test_images_above_the_pixel_budget_are_refused_from_their_header(tmp_path):
    with pytest.raises(UnreadableImage, match=r"13000 x 13000 px \(169.0 Mpx\) is above max_image_pixels \(40 Mpx\)"):
        read_image(huge_png(tmp_path / "big.png").read_bytes())
    ds = pydicom.dcmread(write_dicom(tmp_path / "big.dcm", np.zeros((10, 10), np.uint16)))
    ds.Rows = ds.Columns = 10000
    ds.save_as(tmp_path / "big.dcm")
    with pytest.raises(UnreadableImage, match="10000 x 10000 px"):
        read_image((tmp_path / "big.dcm").read_bytes())
    small = png_bytes(Image.new("L", (100, 100)))
    assert read_image(small, max_pixels=10_000)[0].shape == (100, 100)
    with pytest.raises(UnreadableImage, match="above max_image_pixels"):
        read_image(small, max_pixels=9_999)


def test_non_finite_pixels_are_refused():
    values = np.ones((20, 20), np.float32)
    values[3, 3] = np.inf
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "TIFF")
    with pytest.raises(UnreadableImage, match="not all finite"):
        read_image(buffer.getvalue())


def test_the_reader_answers_every_malformed_file_with_pixels_or_a_reason():
    cases = malformed_files()
    assert len(cases) >= 200
    outcomes = {"read": 0, "unreadable": 0}
    for name, data in cases:
        try:
            grey, _, _ = read_image(data)
        except UnreadableImage as e:
            assert str(e), name
            outcomes["unreadable"] += 1
        else:  # whatever a damaged file decoded to, it is one grey channel
            assert grey.ndim == 2 and grey.dtype == np.uint8, name
            outcomes["read"] += 1
    assert outcomes["unreadable"] > 100 and outcomes["read"] > 10


def test_the_split_counts_only_the_images_it_could_read(tmp_path):
    data = make_dataset(tmp_path / "d", {"train": 12, "val": 2, "test": 4}, size=32)
    for k in range(3):
        (data / "train" / "NORMAL" / f"broken{k}.png").write_bytes(b"\x89PNG broken")
    prep = prepare_dataset(DataConfig(data_dir=str(data), image_size=32, val_source="split", cache_dir=str(tmp_path / "c")))
    readable = 12 * 2 + 2 * 2
    assert f"of {readable} images" in prep.dataset.validation["how"] and len(prep.dataset.rejected) == 3


def test_a_label_table_cannot_reach_outside_its_folder(tmp_path):
    data = make_dataset(tmp_path / "d", {"train": 10, "val": 4, "test": 4}, size=32)
    (tmp_path / "outside").mkdir()
    shutil.copy(next((data / "train" / "NORMAL").iterdir()), tmp_path / "outside" / "x.png")
    table = data / "labels.csv"
    rows = ["file,label,split"] + [f"{p.relative_to(data)},{p.parent.name},{p.parts[-3]}" for p in sorted(data.rglob("*.png"))]
    absolute = sorted((data / "train" / "PNEUMONIA").iterdir())[0]
    rows[1] = f"{absolute},PNEUMONIA,train"
    rows += ["../../../../etc/shadow,NORMAL,train", "../outside/x.png,NORMAL,train"]
    table.write_text("\n".join(rows) + "\n")
    prep = prepare_dataset(DataConfig(data_dir=str(table), image_size=32, cache_dir=str(tmp_path / "c")))
    ignored = {e["path"]: e["reason"] for e in prep.report["ignored"]}
    for name in ("../../../../etc/shadow", "../outside/x.png"):
        assert ignored[name].startswith("outside the table's folder")
    assert not any("outside" in r.path or "shadow" in r.path for r in prep.dataset.manifest())
    # Named by its absolute path, found below the table all the same: kept, and counted.
    assert prep.report["absolute_paths"] == 1 and any(r.path == absolute.relative_to(data).as_posix() for r in prep.dataset.manifest())


def test_a_utf16_table_says_save_it_as_utf8(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("file,label\na.png,NORMAL\n", encoding="utf-16")
    with pytest.raises(UserError, match="is UTF-16: save the table as UTF-8"):
        prepare_dataset(DataConfig(data_dir=str(table), image_size=32, cache_dir=str(tmp_path / "c")))

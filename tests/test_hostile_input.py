"""Hostile input: malformed files, lying headers, paths that climb out, outputs that would overwrite
the user's data, oversized images and requests. Each ends as a listed reason or one `error:`,
the good inputs beside it answered, nothing read that should not be."""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from pipeline.config import DataConfig, FitConfig, ModelConfig, PredictConfig, UserError
from pipeline.data import prepare_dataset
from pipeline.data.errors import UnreadableImage
from pipeline.data.sources import read_image
from pipeline.steps import predict, train

from conftest import ROOT, error_lines, make_dataset, pipeline_cli, write_dicom


@pytest.fixture
def trained(store, tmp_path):
    data = make_dataset(tmp_path / "d", {"train": 8, "val": 4, "test": 4}, size=32)
    result = train.run(DataConfig(data_dir=str(data), image_size=32), ModelConfig("resnet18", True, "none"), FitConfig(epochs=1, batch_size=8))
    return result.model_uri, data


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def lying_dicom(path: Path) -> Path:
    """A 60 x 50 radiograph whose header says Rows = 1."""
    write_dicom(path, (np.random.default_rng(0).random((60, 50)) * 4000).astype(np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows = 1
    ds.save_as(path)
    return path


def huge_png(path: Path) -> Path:
    """20 kB of PNG that claims 13,000 x 13,000 pixels."""
    path.write_bytes(png_bytes(Image.new("1", (13000, 13000))))
    return path


# -- the reader ---------------------------------------------------------------------------------

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


def malformed_files(seed: int = 0) -> list[tuple[str, bytes]]:
    """A few hundred files a reader should list, not crash on: truncations, bit flips, wrong
    headers, lying sizes, odd modes, non-finite values."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((40, 36)) * 255).astype(np.uint8)
    valid = {}
    for fmt, mode in (("PNG", "L"), ("JPEG", "L"), ("JPEG", "CMYK"), ("TIFF", "I;16"), ("BMP", "RGB"), ("GIF", "P"), ("WEBP", "RGB"), ("PNG", "LA")):
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, fmt)
        valid[f"{fmt}-{mode}"] = buffer.getvalue()
    with tempfile.TemporaryDirectory() as folder:
        valid["DICOM"] = write_dicom(Path(folder) / "x.dcm", pixels.astype(np.uint16) * 16).read_bytes()
        valid["DICOM-lying"] = lying_dicom(Path(folder) / "y.dcm").read_bytes()
    floats = np.full((8, 8), np.nan, np.float32)
    buffer = io.BytesIO()
    Image.fromarray(floats).save(buffer, "TIFF")
    cases = [("nan-tiff", buffer.getvalue()), ("empty", b""), ("text", b"hello, not an image"), ("dicom-preamble-only", b"\0" * 128 + b"DICM")]
    cases.append(("huge-header", png_bytes(Image.new("1", (12000, 12000)))))
    for name, data in valid.items():
        for k in range(12):
            cut = int(rng.integers(1, len(data)))
            cases.append((f"{name}-cut{cut}", data[:cut]))
        for k in range(12):
            flipped = bytearray(data)
            for _ in range(int(rng.integers(1, 20))):
                at = int(rng.integers(0, len(flipped)))
                flipped[at] ^= 1 << int(rng.integers(0, 8))
            cases.append((f"{name}-flip{k}", bytes(flipped)))
        cases.append((f"{name}-wrong-magic", b"\x89PNG\r\n\x1a\n" + data[8:]))
    return cases


def test_the_reader_answers_every_malformed_file_with_pixels_or_a_reason():
    cases = malformed_files()
    assert len(cases) >= 200
    outcomes = {"read": 0, "unreadable": 0}
    for name, data in cases:
        try:
            grey, _ = read_image(data)
        except UnreadableImage as e:
            assert str(e), name
            outcomes["unreadable"] += 1
        else:  # whatever a damaged file decoded to, it is one grey channel
            assert grey.ndim == 2 and grey.dtype == np.uint8, name
            outcomes["read"] += 1
    assert outcomes["unreadable"] > 100 and outcomes["read"] > 10


# -- prepare --------------------------------------------------------------------------------

def as_other_user() -> list[str]:
    """The command prefix that runs a child as a user who is not root (root reads every file),
    where this process is root: util-linux's setpriv, as `nobody`."""
    return ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"] if os.geteuid() == 0 else []


def test_a_file_the_process_may_not_read_is_listed_and_the_rest_prepared():
    work = Path(tempfile.mkdtemp(prefix="cxr-unreadable-"))
    try:
        work.chmod(0o777)
        data = make_dataset(work / "d", {"train": 6, "val": 4, "test": 4}, size=32)
        lying_dicom(data / "train" / "NORMAL" / "lying.dcm")
        locked = sorted((data / "train" / "PNEUMONIA").iterdir())[0]
        locked.chmod(0)
        for folder in [work, *work.rglob("*")]:
            if folder.is_dir():
                folder.chmod(0o777)
        env = {**os.environ, "CXR_TRANSFER_CACHE": str(work / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "HOME": str(work)}
        result = subprocess.run([*as_other_user(), sys.executable, "-m", "pipeline", "prepare", "--data_dir", str(data), "--image_size", "32"],
                                cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "2 rejected" in result.stdout and "Traceback" not in result.stderr
        report = json.loads(next((work / "cache").rglob("manifest.csv")).with_name("meta.json").read_text())
        reasons = dict(report["rejected"])
        assert reasons[f"train/PNEUMONIA/{locked.name}"] == "cannot read the file: Permission denied"
        assert reasons["train/NORMAL/lying.dcm"].startswith("pixel data does not match Rows x Columns")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_split_counts_only_the_images_it_could_read(tmp_path):
    data = make_dataset(tmp_path / "d", {"train": 12, "val": 2, "test": 4}, size=32)
    for k in range(3):
        (data / "train" / "NORMAL" / f"broken{k}.png").write_bytes(b"\x89PNG broken")
    prep = prepare_dataset(DataConfig(data_dir=str(data), image_size=32, val_source="split", cache_dir=str(tmp_path / "c")))
    readable = 12 * 2 + 2 * 2
    assert f"of {readable} images" in prep.data.validation["how"] and len(prep.data.rejected) == 3


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
    assert not any("outside" in r.path or "shadow" in r.path for r in prep.data.manifest())
    # Named by its absolute path, found below the table all the same: kept, and counted.
    assert prep.report["absolute_paths"] == 1 and any(r.path == absolute.relative_to(data).as_posix() for r in prep.data.manifest())


def test_a_utf16_table_says_save_it_as_utf8(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("file,label\na.png,NORMAL\n", encoding="utf-16")
    with pytest.raises(UserError, match="is UTF-16: save the table as UTF-8"):
        prepare_dataset(DataConfig(data_dir=str(table), image_size=32, cache_dir=str(tmp_path / "c")))


# -- predict --------------------------------------------------------------------------------

def test_predict_lists_unreadable_lying_huge_and_looping_files_and_classifies_the_rest(trained, tmp_path, monkeypatch):
    model_uri, data = trained
    folder = tmp_path / "incoming"
    folder.mkdir()
    good = sorted((data / "test" / "NORMAL").iterdir())[:2]
    for f in good:
        shutil.copy(f, folder / f.name)
    locked = folder / "locked.png"
    shutil.copy(good[0], locked)
    lying_dicom(folder / "lying.dcm")
    huge_png(folder / "huge.png")
    (folder / "loop1.jpg").symlink_to(folder / "loop2.jpg")
    (folder / "loop2.jpg").symlink_to(folder / "loop1.jpg")
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: (_ for _ in ()).throw(PermissionError(13, "Permission denied")) if p.name == "locked.png" else real(p))
    table = predict.run(PredictConfig(model_uri=model_uri, input=str(folder), output=str(tmp_path / "p.csv")))
    errors = dict(zip(table["file"], table["error"]))
    assert errors["locked.png"] == "cannot read the file: Permission denied"
    assert errors["lying.dcm"].startswith("pixel data does not match Rows x Columns")
    assert errors["huge.png"].startswith("13000 x 13000 px (169.0 Mpx) is above max_image_pixels")
    assert table[table["file"].isin([f.name for f in good])]["label"].isin(["NORMAL", "PNEUMONIA"]).all()
    assert "loop1.jpg" not in errors  # not an image: ignored with its reason, below
    with pytest.raises(UserError, match="is a symbolic link that cannot be followed"):
        predict.run(PredictConfig(model_uri=model_uri, input=str(folder / "loop1.jpg"), output=str(tmp_path / "q.csv")))


def test_predict_says_which_links_lead_nowhere(trained, tmp_path):
    model_uri, data = trained
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copy(next((data / "test" / "NORMAL").iterdir()), folder / "good.png")
    (folder / "loop1.jpg").symlink_to(folder / "loop2.jpg")
    (folder / "loop2.jpg").symlink_to(folder / "loop1.jpg")
    result = pipeline_cli("predict", {"model_uri": model_uri, "input": str(folder), "output": str(tmp_path / "p.csv")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 image -> " in result.stdout and ": ;" not in result.stdout
    assert "2 other files ignored: loop1.jpg (a symbolic link that cannot be followed" in result.stdout


def test_an_output_that_would_destroy_the_users_data_is_refused_before_any_work(trained, tmp_path):
    model_uri, data = trained
    folder = tmp_path / "dl"
    folder.mkdir()
    image = folder / "good1.jpeg"
    image.write_bytes(png_bytes(Image.new("L", (32, 32), 90)))
    before = image.read_bytes()
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    existing = tmp_path / "old.csv"
    existing.write_text("file\nold\n")
    for output, words in ((image, "is one of the input images"), (folder, "is a folder"), (notes, "exists and is not a CSV file"),
                          (existing, "exists; pass overwrite=true")):
        result = pipeline_cli("predict", {"model_uri": model_uri, "input": str(folder), "output": str(output)})
        assert result.returncode == 2 and len(error_lines(result.stderr)) == 1 and words in error_lines(result.stderr)[0], result.stderr[-1500:]
    assert image.read_bytes() == before and notes.read_text() == "mine" and existing.read_text() == "file\nold\n"
    replaced = predict.run(PredictConfig(model_uri=model_uri, input=str(folder), output=str(existing), overwrite=True))
    assert list(replaced["file"]) == ["good1.jpeg"] and pd.read_csv(existing)["file"].tolist() == ["good1.jpeg"]


def peak_memory_mb(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Run `python -m pipeline <args>` and return its peak resident memory (MB) and the result."""
    probe = ("import resource, runpy, sys; sys.argv = ['pipeline'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('pipeline', run_name='__main__')\n"
             "finally:\n    print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stderr.rsplit("peak_kb", 1)[1].split()[0]) / 1024, result


def test_predict_on_huge_files_stays_within_memory(trained, tmp_path):
    model_uri, data = trained
    plain, with_huge = tmp_path / "plain", tmp_path / "huge"
    for folder in (plain, with_huge):
        folder.mkdir()
        shutil.copy(next((data / "test" / "NORMAL").iterdir()), folder / "good.png")
    for k in range(3):
        huge_png(with_huge / f"huge{k}.png")
    baseline, _ = peak_memory_mb(["predict", "--model_uri", model_uri, "--input", str(plain), "--output", str(tmp_path / "a.csv")])
    peak, result = peak_memory_mb(["predict", "--model_uri", model_uri, "--input", str(with_huge), "--output", str(tmp_path / "b.csv")])
    # Three 169 Mpx images refused from their header: a few MB beside the same run without them,
    # where decoding them took predict from 1.2 to 5.6 GB.
    assert peak - baseline < 300, (baseline, peak)
    assert "3 unreadable" in result.stdout

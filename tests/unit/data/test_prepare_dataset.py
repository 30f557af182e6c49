"""prepare_dataset: the cache is reused, the report tells everything, unreadable classes stop it."""

import hashlib
import shutil
from collections import defaultdict
from itertools import combinations

import pytest
from conftest import KERMANY, make_dataset

from pipeline.data import cache as cache_module
from pipeline.data import prepare_dataset
from pipeline.errors import UserError
from pipeline.settings import DataConfig


def test_second_prepare_reuses_the_cache_without_decoding(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d")
    config = DataConfig(data_dir=str(data), image_size=32, cache_dir=str(tmp_path / "c"))
    first = prepare_dataset(config)
    assert not first.cache_reused

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_module, "_decode_run", no_decoding)
    second = prepare_dataset(config)
    assert second.cache_reused and second.dataset == first.dataset and second.report == first.report


def test_digest_follows_content_and_split_not_location(tmp_path):
    a = make_dataset(tmp_path / "a")
    b = make_dataset(tmp_path / "b")

    def digest(d, **kw):
        return prepare_dataset(DataConfig(data_dir=str(d), image_size=16, cache_dir=str(tmp_path / "c"), **kw)).dataset.digest

    assert digest(a) == digest(b)
    (b / "test" / "NORMAL" / "IM-0029-0001.png").write_bytes((a / "test" / "NORMAL" / "IM-0030-0001.png").read_bytes())
    assert digest(a) != digest(b)
    shutil.rmtree(a / "val")
    assert digest(a, val_fraction=0.2) != digest(a, val_fraction=0.3)


def test_truncated_jpeg_and_text_file_are_reported_and_the_rest_prepared(tmp_path):
    data = make_dataset(tmp_path / "d")
    good = next((data / "train" / "NORMAL").iterdir()).read_bytes()
    (data / "train" / "PNEUMONIA" / "cut.jpeg").write_bytes(good[: len(good) // 3])
    (data / "test" / "NORMAL" / "readme.txt").write_text("hello")
    prep = prepare_dataset(DataConfig(data_dir=str(data), image_size=32, cache_dir=str(tmp_path / "c"), val_source="folder"))
    assert [r["path"] for r in prep.report["rejected"]] == ["train/PNEUMONIA/cut.jpeg"]
    assert [i["path"] for i in prep.report["ignored"]] == ["test/NORMAL/readme.txt"]
    assert prep.dataset.split_sizes == {"train": 20, "val": 8, "test": 8}


def test_a_class_with_only_unreadable_images_stops_with_an_error(tmp_path):
    data = make_dataset(tmp_path / "d")
    for f in (data / "val" / "NORMAL").iterdir():
        f.write_bytes(b"")
    with pytest.raises(UserError, match="val/NORMAL has no readable image"):
        prepare_dataset(DataConfig(data_dir=str(data), image_size=32, cache_dir=str(tmp_path / "c"), val_source="folder"))


def test_demo_set_is_generated_once(tmp_path):
    config = DataConfig(data_dir="", image_size=32, cache_dir=str(tmp_path / "c"))
    first = prepare_dataset(config)
    assert first.name == "demo" and first.report["kind"] == "demo"
    assert first.dataset.split_sizes == {"train": 240, "val": 100, "test": 80}
    assert first.dataset.validation["source"] == "folder"  # 50 per class: enough to choose on
    again = prepare_dataset(config)
    assert again.cache_reused and again.dataset.digest == first.dataset.digest
    assert first.report["patients"]["overlap"]["train-test"]["n_patients"] == 0


@pytest.mark.skipif(not KERMANY.is_dir(), reason="../shared/data/kermany-2400 is not on this machine")
def test_kermany_findings_match_the_folder(tmp_path):
    prep = prepare_dataset(DataConfig(data_dir=str(KERMANY), image_size=32, cache_dir=str(tmp_path / "c")))
    files = sorted(p for p in KERMANY.rglob("*.jpeg"))
    # Exact duplicates, found independently: identical file bytes.
    by_bytes = defaultdict(set)
    for p in files:
        by_bytes[hashlib.md5(p.read_bytes()).hexdigest()].add(p.relative_to(KERMANY).as_posix())
    expected_groups = {frozenset(g) for g in by_bytes.values() if len(g) > 1}
    dup = prep.report["duplicates"]
    found = {frozenset(f["path"] for f in g["files"]) for g in dup["across_splits"] + dup["within_split"]}
    assert found == expected_groups and len(found) >= 1
    assert dup["n_groups_across_splits"] == sum(len({p.split("/")[0] for p in g}) > 1 for g in expected_groups)

    # Patient overlap, found independently from the README's naming rules.
    def key(name):
        if name.startswith("person"):
            number, kind = name.split("_")[:2]
            return f"{number}_{kind}"
        return "-".join(name.split("-")[:3] if name.startswith("NORMAL2") else name.split("-")[:2])

    patients = defaultdict(set)
    for p in files:
        patients[p.parts[-3]].add(key(p.name))
    for a, b in combinations(("train", "val", "test"), 2):
        assert prep.report["patients"]["overlap"][f"{a}-{b}"]["n_patients"] == len(patients[a] & patients[b])
    assert prep.report["patients"]["images_without_id"] == 0


def test_an_empty_data_dir_takes_the_environments_data_before_the_demo(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "lab")
    monkeypatch.setenv("CXR_DATA_DIR", str(data))
    prep = prepare_dataset(DataConfig(data_dir="", image_size=16, cache_dir=str(tmp_path / "c")))
    assert prep.name == "lab" and prep.dataset.source == str(data.resolve())

import numpy as np
import pytest
from conftest import make_dataset

from pipeline.data.cache import build_entry, cache_root, decode_images, entry_folder, load_entry, resize_square
from pipeline.data.sources import list_folder


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("CXR_TRANSFER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "cxr-transfer"
    monkeypatch.setenv("CXR_TRANSFER_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(str(tmp_path / "param")) == tmp_path / "param"


def test_resize_squashes_to_a_square():
    grey = np.zeros((40, 80), np.uint8)
    grey[:, 40:] = 200
    small = resize_square(grey, 16)
    assert small.shape == (16, 16) and small[:, :7].max() == 0 and small[:, 9:].min() == 200


@pytest.mark.parametrize("workers", [1, 2])
def test_entry_holds_every_readable_image_and_lists_the_rest(tmp_path, workers):
    data = make_dataset(tmp_path / "d", {"train": 40, "val": 2, "test": 2}, size=40)
    (data / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    listing = list_folder(data)
    folder = entry_folder(tmp_path / "cache", "d1", 24)
    entry = build_entry(
        folder,
        listing.images,
        decode_images(listing.images, 24, workers),
        digest="d1",
        classes=listing.classes,
        image_size=24,
        source=str(data),
        kind="folder",
        validation={"source": "folder", "reason": "as given"},
    )
    assert entry.split_sizes == {"train": 80, "val": 4, "test": 4}
    assert entry.images("train").shape == (80, 24, 24) and entry.images("train").dtype == np.uint8
    assert isinstance(entry.images("train"), np.memmap)
    assert entry.labels("test").tolist() == [0, 0, 1, 1]
    assert entry.rejected == [("train/NORMAL/broken.jpeg", entry.rejected[0][1])]
    assert "cannot decode" in entry.rejected[0][1]
    rows = entry.manifest()
    assert len(rows) == 88 and all(r.width == 40 and r.mode == "L" for r in rows)
    assert load_entry(folder) == entry
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".building")]


def test_a_second_entry_with_the_same_key_keeps_the_first(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", {"train": 2, "val": 2, "test": 2}, size=32)
    listing = list_folder(data)
    folder = entry_folder(tmp_path / "cache", "d2", 16)
    kwargs = dict(
        digest="d2", classes=listing.classes, image_size=16, source=str(data), kind="folder", validation={"source": "folder", "reason": "x"}
    )
    decoded = decode_images(listing.images, 16, 1)
    first = build_entry(folder, listing.images, decoded, **kwargs)
    second = build_entry(folder, listing.images, decoded, **kwargs)  # as if a concurrent worker finished later
    assert first == second and np.array_equal(first.images("val"), second.images("val"))


def test_a_failed_write_is_an_error_not_a_rival_that_won(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", {"train": 2, "val": 2, "test": 2}, size=32)
    listing = list_folder(data)
    decoded = decode_images(listing.images, 16, 1)

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pipeline.data.cache.os.rename", disk_full)
    with pytest.raises(OSError, match="No space left"):
        build_entry(
            entry_folder(tmp_path / "cache", "d3", 16),
            listing.images,
            decoded,
            digest="d3",
            classes=listing.classes,
            image_size=16,
            source=str(data),
            kind="folder",
            validation={"source": "folder", "reason": "x"},
        )
    assert not [p for p in (tmp_path / "cache" / "decoded").iterdir()]  # nothing half-written left behind

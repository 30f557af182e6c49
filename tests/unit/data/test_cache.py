import numpy as np
import pytest
from conftest import make_dataset

from pipeline.data import cache as cache_module
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


def test_every_process_count_decodes_every_image_once_and_alike(tmp_path, monkeypatch):
    """This process and the pool share the runs (each run taken by one of them): the rows and
    what is known of each image are the same whatever the number of processes."""
    from PIL import Image

    data = make_dataset(tmp_path / "d", {"train": 50, "val": 2, "test": 2}, size=40)
    for k, png in enumerate(sorted((data / "train").rglob("*.png"))[:30]):  # JPEGs too, grey and colour, one with EXIF
        img = Image.open(png)
        img = img.convert("RGB") if k % 2 else img
        exif = Image.Exif()
        exif[0x0112] = 1
        img.save(png.with_suffix(".jpeg"), quality=90, **({"exif": exif.tobytes()} if k == 3 else {}))
        png.unlink()
    images = list_folder(data).images
    log = tmp_path / "decoded.log"
    real = cache_module.decode

    def logged(source, *args, **kwargs):  # the workers fork from here: they log too
        with open(log, "a") as f:
            f.write(f"{source}\n")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(cache_module, "decode", logged)
    decoded = []
    for workers in (1, 2, 3):
        log.unlink(missing_ok=True)
        decoded.append(decode_images(images, 24, workers, tmp_path / f"s{workers}"))
        assert sorted(log.read_text().splitlines()) == sorted(str(i.path) for i in images)  # each image once
    try:
        pixels = [np.load(d.path) for d in decoded]
        assert len(decoded[0].meta) == len(images) == 108 and all(d.meta == decoded[0].meta for d in decoded)
        assert all(np.array_equal(p, pixels[0]) for p in pixels) and all(p.reshape(108, -1).any(axis=1).all() for p in pixels)
        assert {m[0][2] for m in decoded[0].meta} == {"L", "RGB"}
    finally:
        for d in decoded:
            d.discard()


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

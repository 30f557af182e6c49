import io
import shutil

import numpy as np
import pytest
from conftest import make_dataset
from PIL import Image

from pipeline.data import prepare_dataset
from pipeline.data.sources import UnreadableImage, list_folder, list_npz, list_source, read_image
from pipeline.errors import UserError
from pipeline.settings import DataConfig


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture
def gradient():
    """A grey test picture with distinct rows and columns, so a rotation would show."""
    y, x = np.mgrid[0:20, 0:30]
    return (x * 8 + y * 2).astype(np.uint8)


def test_every_colour_mode_gives_the_same_grey(gradient):
    grey = Image.fromarray(gradient, "L")
    rgb = Image.merge("RGB", [grey] * 3)
    rgba = rgb.copy()
    rgba.putalpha(255)
    palette = grey.convert("P")  # adaptive palette of a grey ramp keeps the exact values
    cmyk = rgb.convert("CMYK")
    for img, fmt in ((grey, "PNG"), (rgb, "PNG"), (rgba, "PNG"), (palette, "PNG"), (cmyk, "TIFF"), (rgb, "BMP")):
        pixels, mode, _ = read_image(encode(img, fmt))
        assert pixels.dtype == np.uint8 and pixels.shape == gradient.shape, mode
        assert np.abs(pixels.astype(int) - gradient).max() <= 1, mode


def test_a_large_jpeg_read_for_a_small_size_decodes_at_reduced_scale_and_keeps_its_look():
    from pipeline.data.cache import resize_square
    from pipeline.data.synthetic import radiograph

    picture = np.asarray(Image.fromarray(radiograph(np.random.default_rng(0), 256, True)).resize((1024, 768)))
    data = encode(Image.merge("RGB", [Image.fromarray(picture)] * 3), "JPEG", quality=90)
    full, mode, stored = read_image(data)
    reduced, reduced_mode, reduced_stored = read_image(data, at_least=224)
    assert full.shape == (768, 1024) and reduced.shape == (288, 384)  # DCT scaling by 3/8: 288 >= 224
    assert (mode, stored) == (reduced_mode, reduced_stored) == ("RGB", (1024, 768))  # as stored, not as read
    assert read_image(data, at_least=96).pixels.shape == (96, 128)  # 1/8: the shorter side just reaches 96
    difference = np.abs(resize_square(full, 224).astype(int) - resize_square(reduced, 224).astype(int))
    assert difference.mean() < 0.5 and difference.max() <= 2
    png = encode(Image.fromarray(picture), "PNG")  # not a JPEG: decoded whole, whatever the size asked
    assert read_image(png, at_least=224).pixels.shape == (768, 1024)


def test_a_jpeg_decoded_by_libjpeg_turbo_equals_pillows_reduced_decode_where_both_reach_the_scale():
    from pipeline.data.jpeg import read_jpeg
    from pipeline.data.synthetic import radiograph

    picture = np.asarray(Image.fromarray(radiograph(np.random.default_rng(1), 256, False)).resize((1024, 768)))
    for stored in (Image.fromarray(picture), Image.merge("RGB", [Image.fromarray(picture)] * 3)):  # grey and YCbCr files
        data = encode(stored, "JPEG", quality=90)
        fast, mode, size = read_jpeg(data, 10**8, 384)  # 1/2, a scale Pillow's draft has too
        with Image.open(io.BytesIO(data)) as img:
            img.draft("L", (384, 384))
            assert np.array_equal(fast, np.asarray(img.convert("L"))) and (mode, size) == (stored.mode, (1024, 768))


def test_jpegs_the_fast_path_does_not_cover_are_read_by_pillow(gradient):
    from pipeline.data.jpeg import read_jpeg

    grey = Image.fromarray(gradient, "L")
    exif = Image.Exif()
    exif[0x0112] = 1
    cmyk = encode(Image.merge("RGB", [grey] * 3).convert("CMYK"), "JPEG", quality=100)
    for data in (encode(grey, "JPEG", exif=exif.tobytes()), cmyk, encode(grey, "JPEG")[:300], b"\xff\xd8\xff\xe0\x00"):
        assert read_jpeg(data, 10**8, 0) is None  # an orientation to apply, Adobe CMYK, a cut file, a header cut short
    pixels, mode, _ = read_image(cmyk)
    assert mode == "CMYK" and np.abs(pixels.astype(int) - gradient).max() <= 3
    assert read_jpeg(encode(grey, "JPEG", quality=100), 10**8, 0)[0].shape == gradient.shape
    with pytest.raises(UnreadableImage, match="max_image_pixels"):
        read_jpeg(encode(grey, "JPEG"), 599, 0)  # 30 x 20 = 600 px: refused from the header


def test_exif_after_the_frame_header_still_turns_the_picture(gradient):
    """JPEG lets metadata stand between the frame header and the scan, and Pillow reads it there."""
    from pipeline.data.jpeg import read_jpeg

    exif = Image.Exif()
    exif[0x0112] = 6
    with_exif = encode(Image.fromarray(gradient, "L"), "JPEG", exif=exif.tobytes(), quality=100)
    plain = encode(Image.fromarray(gradient, "L"), "JPEG", quality=100)
    app1_at = with_exif.index(b"\xff\xe1")
    app1 = with_exif[app1_at : app1_at + 2 + int.from_bytes(with_exif[app1_at + 2 : app1_at + 4], "big")]
    frame_at = plain.index(b"\xff\xc0")
    after_frame = frame_at + 2 + int.from_bytes(plain[frame_at + 2 : frame_at + 4], "big")
    moved = plain[:after_frame] + app1 + plain[after_frame:]
    assert read_jpeg(moved, 10**8, 0) is None
    assert read_image(moved).pixels.shape == (30, 20)


def test_sixteen_bit_is_stretched_to_full_range(gradient):
    twelve_bit = gradient.astype(np.uint16) * 16  # a 12-bit detector's values in a 16-bit file
    pixels, mode, _ = read_image(encode(Image.fromarray(twelve_bit)))
    assert mode.startswith("I")
    assert pixels.min() == 0 and pixels.max() == 255
    expected = (gradient - gradient.min()) * 255.0 / (gradient.max() - gradient.min())
    assert np.abs(pixels - expected).max() <= 1


def test_transparent_pixels_become_black(gradient):
    rgba = Image.merge("RGBA", [Image.fromarray(gradient)] * 3 + [Image.new("L", (30, 20), 0)])
    pixels, _, _ = read_image(encode(rgba))
    assert pixels.max() == 0


def test_exif_orientation_is_applied(gradient):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    stored = Image.fromarray(gradient, "L")
    pixels, _, _ = read_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=100))
    assert pixels.shape == (30, 20)
    upright, _, _ = read_image(encode(stored.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=100))
    assert np.abs(pixels.astype(int) - upright).mean() < 3


@pytest.mark.parametrize(
    "data,reason",
    [(b"", "empty"), (b"hello, I am text", "identify"), (encode(Image.new("L", (64, 64), 90), "JPEG")[:300], "decode")],
)
def test_unreadable_images_say_why(data, reason):
    with pytest.raises(UnreadableImage, match=reason):
        read_image(data)


def test_folder_listing_ignores_and_counts_non_images(tiny_dataset):
    (tiny_dataset / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0")
    (tiny_dataset / "train" / "NORMAL" / "Thumbs.db").write_bytes(b"\0")
    (tiny_dataset / "test" / "PNEUMONIA" / "notes.txt").write_text("x")
    (tiny_dataset / "README.md").write_text("x")
    listing = list_folder(tiny_dataset)
    reasons = dict(listing.ignored)
    assert reasons["train/NORMAL/.DS_Store"] == "hidden file"
    assert reasons["train/NORMAL/Thumbs.db"] == "system file"
    assert "not an image" in reasons["test/PNEUMONIA/notes.txt"]
    assert "README.md" in reasons
    assert listing.classes == ["NORMAL", "PNEUMONIA"]
    assert len(listing.images) == 2 * (10 + 4 + 4)
    assert {i.split for i in listing.images} == {"train", "val", "test"}


def test_a_folder_that_cannot_be_read_is_listed_with_its_reason_and_the_rest_listed(tiny_dataset, monkeypatch):
    import os

    locked = tiny_dataset / "train" / "NORMAL" / "locked"
    locked.mkdir()
    (locked / "a.png").write_bytes(b"")
    scandir = os.scandir

    def refuse(path):  # root reads every folder: the refusal a user's unreadable folder gives
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    monkeypatch.setattr("pipeline.data.sources.os.scandir", refuse)
    listing = list_folder(tiny_dataset)
    assert dict(listing.ignored)["train/NORMAL/locked"] == "a folder that cannot be read: Permission denied"
    assert len(listing.images) == 2 * (10 + 4 + 4)


def test_layout_errors_say_what_was_found(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list_source(str(tmp_path / "nope"))
    data = make_dataset(tmp_path / "d")
    shutil.rmtree(data / "test")
    with pytest.raises(UserError, match=r"no test/ folder \(found: train/, val/\)"):
        list_source(str(data))


def test_nested_download_folder_gets_a_hint(tmp_path):
    make_dataset(tmp_path / "outer" / "chest_xray")
    with pytest.raises(UserError, match="did you mean data_dir=.*chest_xray"):
        list_source(str(tmp_path / "outer"))


def test_class_folders_without_splits_are_one_pool_that_prepare_splits_by_patient(tmp_path):
    # Another hospital's export: NORMAL/ and PNEUMONIA/ only.
    data = make_dataset(tmp_path / "d", {"train": 10, "val": 4, "test": 6})
    export = tmp_path / "export"
    for label in ("NORMAL", "PNEUMONIA"):
        (export / label).mkdir(parents=True)
        for file in sorted(data.glob(f"*/{label}/*.png")):
            shutil.copy(file, export / label / file.name)
    listing = list_source(str(export))
    assert listing.classes == ["NORMAL", "PNEUMONIA"] and len(listing.images) == 40 and {i.split for i in listing.images} == {"train"}
    prep = prepare_dataset(DataConfig(data_dir=str(export), image_size=32, cache_dir=str(tmp_path / "cache")))
    assert sum(prep.dataset.split_sizes.values()) == 40 and prep.dataset.split_sizes["test"] > 0 and prep.dataset.split_sizes["val"] > 0
    for file in (export / "PNEUMONIA").iterdir():
        file.unlink()
    with pytest.raises(UserError, match="holds class folders NORMAL/, PNEUMONIA/ but PNEUMONIA/ holds no image files"):
        list_source(str(export))


def test_one_class_split_missing_class_and_empty_class(tmp_path):
    data = make_dataset(tmp_path / "one")
    shutil.rmtree(data / "test" / "NORMAL")
    with pytest.raises(UserError, match="test/ must hold at least two class folders"):
        list_source(str(data))
    data = make_dataset(tmp_path / "three")
    (data / "train" / "COVID").mkdir()
    (data / "train" / "COVID" / "x.png").write_bytes(b"")
    with pytest.raises(UserError, match="val/ lacks the class folder.*COVID"):
        list_source(str(data))
    data = make_dataset(tmp_path / "empty")
    for f in (data / "val" / "PNEUMONIA").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="val/PNEUMONIA/ holds no image files"):
        list_source(str(data))


def write_npz(path, n=(6, 2, 2), rgb=False, **overrides):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        shape = (count, 28, 28, 3) if rgb else (count, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 2).reshape(-1, 1)
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def test_medmnist_npz(tmp_path):
    listing = list_source(str(write_npz(tmp_path / "pneumoniamnist.npz")))
    assert listing.kind == "npz" and listing.classes == ["NORMAL", "PNEUMONIA"]
    assert [i.relpath for i in listing.images[:2]] == ["train/000000", "train/000001"]
    assert [i.label for i in listing.images[:2]] == ["NORMAL", "PNEUMONIA"]
    assert sum(i.split == "test" for i in listing.images) == 2


def test_npz_problems_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="lacks the key.*val_labels"):
        list_npz(write_npz(tmp_path / "a.npz", val_labels=None))
    with pytest.raises(UserError, match="holds \\[2\\]"):
        list_npz(write_npz(tmp_path / "b.npz", test_labels=np.array([[0], [2]])))
    (tmp_path / "c.npz").write_text("not a zip")
    with pytest.raises(UserError, match="cannot read"):
        list_npz(tmp_path / "c.npz")
    (tmp_path / "d.csv").write_text("x")
    with pytest.raises(UserError, match="not a .npz"):
        list_source(str(tmp_path / "d.csv"))

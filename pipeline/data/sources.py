"""Where images come from: a Kaggle-layout folder or a MedMNIST `.npz` file, and how one is read.

`list_source` walks the source without decoding anything and returns a `Listing`: every image
with its split and label as found (validation cut from train/ is `validation.py`'s job, since it
needs the decoded pixels to keep duplicates together), plus every file it chose not to read and why. Reading is
`read_image`, which turns any colour mode into one grey channel of 0..255 and raises
`UnreadableImage` (with the reason) for anything it cannot decode.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import xxhash
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.data.dicom import is_dicom, read_dicom
from pipeline.data.jpeg import read_jpeg
from pipeline.data.unreadable import UnreadableImage, check_pixels
from pipeline.errors import UserError
from pipeline.settings import DEFAULT_MAX_IMAGE_PIXELS

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"}
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
# MedMNIST stores labels as integers; its PneumoniaMNIST defines 0 = normal, 1 = pneumonia.
NPZ_CLASSES = ("NORMAL", "PNEUMONIA")


@dataclass(frozen=True)
class SourceImage:
    """One image of the source: a file (`path`) or a row of an npz array (`array`)."""

    relpath: str
    split: str
    label: str
    path: Path | None = None
    array: np.ndarray | None = field(default=None, repr=False, compare=False)
    patient: str = ""  # given by the source (a CSV's patient column); else found by patient_pattern
    site: str = ""  # the hospital or scanner the image came from (a CSV's site column)

    def stored_bytes(self) -> bytes:
        """The file's bytes (an npz row's array bytes); `UnreadableImage` where the file cannot
        be read (permissions, a vanished file, an I/O error)."""
        if self.path is None:
            return np.ascontiguousarray(self.array).tobytes()
        return read_file(self.path)

    def stat_identity(self) -> str:
        """What tells, without reading it, that a file changed: its size and modification time
        (an npz row, already in memory, by its content)."""
        if self.path is None:
            return fingerprint(self.stored_bytes())
        st = self.path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass
class Listing:
    """What a source holds, before decoding: images, skipped files and how val/ was obtained."""

    kind: str  # "folder" or "npz"
    location: str
    classes: list[str]
    images: list[SourceImage]
    ignored: list[tuple[str, str]]  # (relative path, reason)
    absolute_paths: int = 0  # a label table's rows that named absolute paths (taken as given)


# -- decoding ---------------------------------------------------------------------------------


def read_file(path: Path) -> bytes:
    """A file's bytes, or `UnreadableImage` saying why they cannot be read."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise UnreadableImage(f"cannot read the file: {e.strerror or type(e).__name__}") from None


_HIGH_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


class Grey(NamedTuple):
    """An image decoded to one grey channel: its pixels (at reduced scale where it was read
    for a smaller size), the file's colour mode, and its (width, height) as stored."""

    pixels: np.ndarray
    mode: str
    stored_size: tuple[int, int]


def to_grey(img: Image.Image) -> tuple[np.ndarray, str]:
    """One grey channel, uint8 0..255, whatever the mode; EXIF orientation applied first.

    8-bit images keep their values (rescaling would change the data's distribution); 16-bit
    and float images are stretched from their own min..max, since their white point varies
    (12-bit detectors store 0..4095 in 16-bit files). Transparent pixels become black, the
    colour of empty space on a radiograph.
    """
    mode = img.mode
    img = ImageOps.exif_transpose(img, in_place=True) or img  # in place: no copy of the pixels
    if mode in _HIGH_BIT_MODES:
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise UnreadableImage("pixel values are not all finite (NaN or infinity): no grey level can stand for them")
        lo, hi = float(values.min()), float(values.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return np.round((values - lo) * scale).astype(np.uint8), mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    elif mode == "CMYK":
        img = img.convert("RGB")
    return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8), mode


def read_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, at_least: int = 0) -> Grey:
    """Decode an encoded image (or a DICOM file) to grey; `UnreadableImage` says why when it
    cannot. Whatever the file holds, nothing else is raised: a reader fed hostile bytes reports
    them, it does not fail the run (or the request) around them.

    `at_least`: the pixels are to be shrunk to this size, so a JPEG is decoded at the smallest
    M/8 scale that keeps both sides at least this long, and its luma alone (`jpeg.py`; Pillow's
    `draft` at 1/2, 1/4 or 1/8 for the files that path hands back): a 2,000 px radiograph read for
    224 px decodes a sixty-fourth of its pixels. The grey levels differ from a full decode and
    resize by about one level (benchmarks/RESULTS.md); training, evaluation and serving all read
    this way."""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    try:
        if (jpeg := read_jpeg(data, max_pixels, at_least)) is not None:
            return Grey(*jpeg)
        if is_dicom(data):
            pixels, mode = read_dicom(data, max_pixels)
            return Grey(pixels, mode, (pixels.shape[1], pixels.shape[0]))
        with warnings.catch_warnings():  # PIL's bomb warning: the size is checked here, against our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            stored_size, mode = img.size, img.mode
            check_pixels(*stored_size, max_pixels)
            if at_least and img.format == "JPEG":
                img.draft("L", (at_least, at_least))
            img.load()
            pixels, _ = to_grey(img)
            return Grey(pixels, mode, stored_size)
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not an image file PIL can identify") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"cannot decode: {str(e)[:300]}") from None
    except Exception as e:  # a decoder's own failure on bytes it was not made for
        raise UnreadableImage(f"cannot decode: {type(e).__name__}: {str(e)[:300]}") from None


def array_to_grey(array: np.ndarray) -> Grey:
    """An npz row (H, W), (H, W, 1) or (H, W, 3) as grey uint8."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    size = (array.shape[1], array.shape[0]) if array.ndim >= 2 else (0, 0)
    if array.ndim == 3 and array.shape[-1] == 3:
        return Grey(*to_grey(Image.fromarray(array.astype(np.uint8))), size)
    if array.ndim != 2:
        raise UnreadableImage(f"array of shape {array.shape} is not an image")
    if array.dtype == np.uint8:
        return Grey(array, "L", size)
    return Grey(*to_grey(Image.fromarray(array.astype(np.float32))), size)


def pixel_hash(grey: np.ndarray) -> str:
    """Identity of the decoded pixels: the same picture saved twice, or re-encoded losslessly,
    hashes the same. XXH3 (64 bits): it tells pictures apart and guards nothing, at a tenth of
    SHA-256's cost on a 224 px image (benchmarks/RESULTS.md prices both)."""
    digest = xxhash.xxh3_64(str(grey.shape).encode())
    digest.update(np.ascontiguousarray(grey))
    return digest.hexdigest()


def fingerprint(data: bytes) -> str:
    """Hash of an image's stored bytes: its identity in the data set's digest. SHA-256, as in
    every earlier version: the digest names the registered model and is checked by evaluate,
    compare and resume, so the same files must keep the same digest from version to version."""
    return hashlib.sha256(data).hexdigest()[:16]


def decode(source: str | np.ndarray, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, at_least: int = 0) -> tuple[Grey | None, str | None, str]:
    """An image's file (its path) or npz row in grey, read for `at_least` px (or None and the
    reason it is unreadable), and the stored bytes' fingerprint: one read of the file serves both
    (a file that cannot be read is fingerprinted by the reason, so a change of it still changes
    the digest). A path, not a `SourceImage`: a decoding worker is handed thousands of them."""
    if isinstance(source, np.ndarray):
        data = np.ascontiguousarray(source).tobytes()
        try:
            return array_to_grey(source), None, fingerprint(data)
        except UnreadableImage as e:
            return None, str(e), fingerprint(data)
    try:
        data = read_file(Path(source))
    except UnreadableImage as e:
        return None, str(e), fingerprint(f"unreadable: {e}".encode())
    try:
        return read_image(data, max_pixels, at_least), None, fingerprint(data)
    except UnreadableImage as e:
        return None, str(e), fingerprint(data)


# -- listing ----------------------------------------------------------------------------------


def list_source(data_dir: str) -> Listing:
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise UserError(
            f"data_dir {data_dir!r} does not exist; give a folder with train/ and test/ "
            "(one sub-folder per class), a MedMNIST .npz file, or '' for the demo set"
        )
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise UserError(f"data_dir {data_dir!r} is a file but not a .npz or .csv; give a folder, a MedMNIST .npz file or a label table (.csv)")
        return list_npz(path)
    return list_folder(path)


def list_folder(root: Path) -> Listing:
    present = {p.name for p in root.iterdir() if p.is_dir()}
    if len(present) >= 2 and not present & set(SPLITS) and not _nested_layout_hint(root):
        return list_class_folders(root)
    missing = [s for s in ("train", "test") if s not in present]
    if missing:
        found = ", ".join(sorted(p + "/" for p in present)) or "no sub-folders"
        hint = _nested_layout_hint(root)
        raise UserError(
            f"{root} has no {' or '.join(m + '/' for m in missing)} folder (found: {found}); "
            f"expected train/ and test/ (val/ optional), each with one sub-folder per class{hint}"
        )
    splits = [s for s in SPLITS if s in present]
    images: list[SourceImage] = []
    ignored: list[tuple[str, str]] = []
    classes_per_split: dict[str, list[str]] = {}
    for item in sorted(root.iterdir()):
        if item.name not in splits:
            ignored.append((item.name + ("/" if item.is_dir() else ""), "not a split folder (train/, val/, test/)"))
    for split in splits:
        classes_per_split[split], found = _class_folders(root, root / split, split, ignored)
        images += found
    classes = _check_classes(classes_per_split, images)
    return Listing("folder", str(root.resolve()), classes, images, ignored)


def list_class_folders(root: Path) -> Listing:
    """One sub-folder per class and no split folders (how another hospital's export or an
    external set often comes): every image is listed as train, so that `prepare` cuts test and
    validation from it by patient, as for a label table without a split column."""
    ignored: list[tuple[str, str]] = []
    classes, images = _class_folders(root, root, "train", ignored)
    empty = [label for label in classes if not any(i.label == label for i in images)]
    if empty:
        raise UserError(
            f"{root} holds class folders {', '.join(c + '/' for c in classes)} but {', '.join(c + '/' for c in empty)} holds no image files"
        )
    classes = _check_classes({"train": classes}, images)
    return Listing("folder", str(root.resolve()), classes, images, ignored)


def _class_folders(root: Path, folder: Path, split: str, ignored: list[tuple[str, str]]) -> tuple[list[str], list[SourceImage]]:
    """The class folders of `folder` and their images, listed as `split`; files beside the
    class folders and files that are not images go to `ignored`, with the reason."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    images = []
    for item in sorted(folder.iterdir()):
        if item.is_file():
            ignored.append((item.relative_to(root).as_posix(), "not inside a class folder"))
    prefix = folder.relative_to(root).as_posix() + "/" if folder != root else ""
    for label in classes:
        for file, below, reason in walk_files(folder / label):
            rel = f"{prefix}{label}/{below}".rstrip("/")
            if reason:
                ignored.append((rel, reason))
            else:
                images.append(SourceImage(rel, split, label, path=file))
    return classes, images


def _nested_layout_hint(root: Path) -> str:
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if (child / "train").is_dir() and (child / "test").is_dir():
            return f"; did you mean data_dir={child}?"
    return ""


DEAD_LINK = "a symbolic link that cannot be followed (a loop, or its target is missing)"


def walk_files(folder: Path) -> list[tuple[Path, str, str | None]]:
    """Every file below `folder` in path order: (path, its name below `folder` with '/', why it is
    not taken as an image or None). A link that leads nowhere (a loop, a missing target) and a
    folder that cannot be read are listed with that reason, never dropped. A linked folder below
    `folder` is not followed (a link to a parent would loop). One directory read per folder,
    whose entries know their own type: no system call a file (the listing's time: RESULTS.md)."""
    found: list[tuple[Path, str, str | None]] = []

    def visit(directory: Path, below: str) -> None:
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as e:
            found.append((directory, below.rstrip("/"), f"a folder that cannot be read: {e.strerror or type(e).__name__}"))
            return
        for entry in entries:
            path, name = directory / entry.name, below + entry.name
            if entry.is_dir(follow_symlinks=False):
                visit(path, name + "/")
            elif _is_file(entry):
                found.append((path, name, ignore_reason(path)))
            elif entry.is_symlink() and not path.exists():
                found.append((path, name, DEAD_LINK))

    visit(folder, "")
    return found


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # a link loop (ELOOP): not a file, and listed as a dead link
        return False


def ignore_reason(file: Path) -> str | None:
    """Why a file is not taken as an image (hidden, system or other file), or None."""
    name = file.name
    if name.startswith("."):
        return "hidden file"
    if name.lower() in SYSTEM_FILES:
        return "system file"
    if file.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image extension ({file.suffix or 'none'})"
    return None


def _check_classes(classes_per_split: dict[str, list[str]], images: list[SourceImage]) -> list[str]:
    described = "; ".join(f"{s}/ has {', '.join(c) or 'no class folders'}" for s, c in classes_per_split.items())
    all_classes = sorted({c for cs in classes_per_split.values() for c in cs})
    for split, classes in classes_per_split.items():
        if len(classes) < 2:
            raise UserError(f"{split}/ must hold at least two class folders (e.g. NORMAL/ and PNEUMONIA/); found: {described}")
        if classes != all_classes:
            lacking = [c for c in all_classes if c not in classes]
            raise UserError(f"{split}/ lacks the class folder(s) {', '.join(lacking)}; every split needs the same classes: {described}")
    counts = {(i.split, i.label): 0 for i in images}
    for i in images:
        counts[(i.split, i.label)] += 1
    for split, classes in classes_per_split.items():
        for label in classes:
            if counts.get((split, label), 0) == 0:
                raise UserError(f"{split}/{label}/ holds no image files; every class needs images in every split")
    return all_classes


def list_npz(path: Path) -> Listing:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} as a .npz file: {e}") from None
    with archive:
        expected = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
        missing = [k for k in expected if k not in archive.files]
        if missing:
            raise UserError(
                f"{path} lacks the key(s) {', '.join(missing)}; a MedMNIST file holds {', '.join(expected)} (found: {', '.join(archive.files)})"
            )
        images: list[SourceImage] = []
        for split in SPLITS:
            arrays, labels = archive[f"{split}_images"], archive[f"{split}_labels"].reshape(-1)
            if len(arrays) != len(labels):
                raise UserError(f"{path}: {split}_images has {len(arrays)} rows but {split}_labels has {len(labels)}")
            bad = sorted(set(labels.tolist()) - {0, 1})
            if bad:
                raise UserError(f"{path}: {split}_labels holds {bad}; expected 0 (NORMAL) and 1 (PNEUMONIA)")
            for k, (array, label) in enumerate(zip(arrays, labels)):
                images.append(SourceImage(f"{split}/{k:06d}", split, NPZ_CLASSES[int(label)], array=array))
    split_classes = {s: sorted({i.label for i in images if i.split == s}) for s in SPLITS}
    for split, classes in split_classes.items():
        if len(classes) < 2:
            raise UserError(f"{path}: {split} holds only {', '.join(classes) or 'no images'}; every split needs both classes")
    return Listing("npz", str(path.resolve()), list(NPZ_CLASSES), images, [])

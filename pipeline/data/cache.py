"""The decoded-image cache: every image decoded and resized once, stored as uint8 arrays.

A cache entry is a folder `decoded/<digest>-<size>/` holding, per split, `<split>_images.npy`
(N x size x size, memory-mappable) and `<split>_labels.npy`, with `manifest.csv` and
`meta.json`. It is built in a temporary folder and renamed into place, so a reader never sees
half an entry and two processes preparing the same data at once both end with one good copy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.data.checks import ManifestRow, read_manifest, write_manifest
from pipeline.data.sources import SourceImage, UnreadableImage, decode, pixel_hash

# Bump when decoding, resizing or what an entry holds changes, so older entries are not reused.
FORMAT_VERSION = 3


def cache_root(setting: str = "") -> Path:
    """The cache folder: the `cache_dir` setting, else $CXR_TRANSFER_CACHE, else the user cache."""
    if setting:
        return Path(setting).expanduser().resolve()
    if os.environ.get("CXR_TRANSFER_CACHE"):
        return Path(os.environ["CXR_TRANSFER_CACHE"]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cxr-transfer"


@dataclass(frozen=True)
class PreparedData:
    """A data set ready for training: decoded arrays on disk plus what is known about them."""

    root: Path
    digest: str
    classes: list[str]
    image_size: int
    source: str
    kind: str
    validation: dict  # source ("folder" or "split"), reason, and how a split was made
    split_sizes: dict[str, int]
    rejected: list[tuple[str, str]]

    @property
    def val_origin(self) -> str:
        return "; ".join(filter(None, (self.validation["reason"], self.validation.get("how"))))

    def images(self, split: str) -> np.ndarray:
        """N x size x size uint8, memory-mapped: nothing is read until it is used."""
        return np.load(self.root / f"{split}_images.npy", mmap_mode="r")

    def labels(self, split: str) -> np.ndarray:
        return np.load(self.root / f"{split}_labels.npy")

    def manifest(self) -> list[ManifestRow]:
        return read_manifest(self.root / "manifest.csv")

    def files(self, split: str) -> list[str]:
        return [r.path for r in self.manifest() if r.split == split]

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.csv"


def entry_folder(root: Path, key: str, image_size: int) -> Path:
    """`key` names the source and every setting that decides the splits (see `prepare_dataset`)."""
    return root / "decoded" / f"{key}-{image_size}px-v{FORMAT_VERSION}"


def load_entry(folder: Path) -> PreparedData | None:
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    meta["rejected"] = [tuple(r) for r in meta["rejected"]]
    return PreparedData(root=folder, **meta)


def resize_square(grey: np.ndarray, size: int) -> np.ndarray:
    """Squash to size x size (aspect not kept, as in most chest X-ray work: cropping would cut
    off lung edges). PIL's bilinear filter widens with the scale, so downsizing is antialiased."""
    if grey.shape == (size, size):
        return grey
    return np.asarray(Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR))


def _decode_and_resize(item: tuple[SourceImage, int]):
    image, size = item
    try:
        grey, mode = decode(image)
    except UnreadableImage as e:
        return None, str(e)
    return (resize_square(grey, size), grey.shape[1], grey.shape[0], mode, pixel_hash(grey)), None


Decoded = tuple  # (pixels resized, width, height, mode, content hash) or None, and the reason


def decode_images(images: list[SourceImage], image_size: int, workers: int | None = None) -> list[Decoded]:
    """Decode and resize every image once: `(result, None)` or `(None, reason it is unreadable)`."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    jobs = [(image, image_size) for image in images]
    progress = dict(total=len(jobs), desc="decoding images", unit="img", disable=None)
    # Files decode in parallel; npz rows are already in memory, where processes only add copying.
    if workers > 1 and len(jobs) >= 64 and images[0].path is not None:
        with ProcessPoolExecutor(workers) as pool:
            return list(tqdm(pool.map(_decode_and_resize, jobs, chunksize=16), **progress))
    return [_decode_and_resize(job) for job in tqdm(jobs, **progress)]


def content_hashes(decoded: list[Decoded]) -> list[str | None]:
    return [ok[4] if ok is not None else None for ok, _ in decoded]


def build_entry(
    folder: Path,
    images: list[SourceImage],
    decoded: list[Decoded],
    *,
    digest: str,
    classes: list[str],
    image_size: int,
    source: str,
    kind: str,
    validation: dict,
) -> PreparedData:
    """Write the decoded images by split; unreadable ones are listed in `rejected`, never fatal here."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".building-"))
    rows: list[ManifestRow] = []
    rejected: list[tuple[str, str]] = []
    split_sizes: dict[str, int] = {}
    for split in ("train", "val", "test"):
        arrays, labels = [], []
        for image, (ok, reason) in zip(images, decoded):
            if image.split != split:
                continue
            if ok is None:
                rejected.append((image.relpath, reason))
                continue
            pixels, width, height, mode, content_hash = ok
            arrays.append(pixels)
            labels.append(classes.index(image.label))
            rows.append(ManifestRow(image.relpath, split, image.label, width, height, mode, content_hash, image.patient))
        stacked = np.stack(arrays) if arrays else np.zeros((0, image_size, image_size), np.uint8)
        np.save(tmp / f"{split}_images.npy", stacked)
        np.save(tmp / f"{split}_labels.npy", np.asarray(labels, dtype=np.int64))
        split_sizes[split] = len(arrays)
    write_manifest(rows, tmp / "manifest.csv")
    meta = dict(
        digest=digest,
        classes=classes,
        image_size=image_size,
        source=source,
        kind=kind,
        validation=validation,
        split_sizes=split_sizes,
        rejected=rejected,
    )
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if load_entry(folder) is None:  # not a rival's finished entry: a real failure (disk, permissions)
            raise
    return load_entry(folder)

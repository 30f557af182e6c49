"""The decoded-image cache: every image decoded and resized once, stored as uint8 arrays.

A cache entry is a folder `decoded/<digest>-<size>/` holding, per split, `<split>_images.npy`
(N x size x size, memory-mappable) and `<split>_labels.npy`, with `manifest.csv` and
`meta.json`. It is built in a temporary folder and renamed into place, so a reader never sees
half an entry and two processes preparing the same data at once both end with one good copy.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.console import bars_disabled
from pipeline.data.checks import ManifestRow, read_manifest, write_manifest
from pipeline.data.sources import SourceImage, decode, pixel_hash
from pipeline.data.units import perceptual_hash
from pipeline.settings import DEFAULT_MAX_IMAGE_PIXELS

# Bump when decoding, resizing or what an entry holds changes, so older entries are not reused.
FORMAT_VERSION = 8


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
    # The manifest's rows once read (or as the entry was built): steps ask for them several times.
    rows: tuple[ManifestRow, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def val_origin(self) -> str:
        return "; ".join(filter(None, (self.validation["reason"], self.validation.get("how"))))

    def images(self, split: str) -> np.ndarray:
        """N x size x size uint8, memory-mapped: nothing is read until it is used."""
        return np.load(self.root / f"{split}_images.npy", mmap_mode="r")

    def labels(self, split: str) -> np.ndarray:
        return np.load(self.root / f"{split}_labels.npy")

    def manifest(self) -> list[ManifestRow]:
        if self.rows is None:
            object.__setattr__(self, "rows", tuple(read_manifest(self.manifest_path)))
        return list(self.rows)

    def files(self, split: str) -> list[str]:
        return [r.path for r in self.manifest() if r.split == split]

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.csv"


def entry_folder(root: Path, key: str, image_size: int) -> Path:
    """`key` names the source and every setting that decides the splits (see `prepare_dataset`)."""
    return root / "decoded" / f"{key}-{image_size}px-v{FORMAT_VERSION}"


def load_entry(folder: Path, rows: list[ManifestRow] | None = None) -> PreparedData | None:
    """The entry in `folder`, or None; `rows`: its manifest where the caller just wrote it."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    meta["rejected"] = [tuple(r) for r in meta["rejected"]]
    return PreparedData(root=folder, **meta, rows=tuple(rows) if rows is not None else None)


def resize_square(grey: np.ndarray, size: int) -> np.ndarray:
    """Squash to size x size (aspect not kept, as in most chest X-ray work: cropping would cut
    off lung edges). PIL's bilinear filter widens with the scale, so downsizing is antialiased;
    above three times the size the image is first box-reduced by a whole factor (Pillow's
    `reducing_gap`: the same look, a fraction of the work on a full-size PNG or DICOM)."""
    if grey.shape == (size, size):
        return grey
    return np.asarray(Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0))


class DecodedImages:
    """Every image of a listing decoded and resized once, in listing order: the pixels in one
    `.npy` scratch file (written in place by the decoding processes, never all in memory), and
    per image its (width, height, mode, content hash, perceptual hash), or None with the reason
    it is unreadable, and its stored bytes' fingerprint."""

    def __init__(self, path: Path, image_size: int, meta: list[tuple[tuple | None, str | None, str]]):
        self.path, self.image_size, self.meta = path, image_size, meta
        self.offset = _header_length(path)

    def content_hashes(self) -> list[str | None]:
        return [ok[3] if ok is not None else None for ok, _, _ in self.meta]

    def perceptual_hashes(self) -> list[str]:
        return [ok[4] if ok is not None else "" for ok, _, _ in self.meta]

    def fingerprints(self) -> list[str]:
        return [stored for _, _, stored in self.meta]

    def copy_rows(self, indices: list[int], out: Path) -> None:
        """These images' rows appended to `out` in this order, by the kernel (copy_file_range),
        a run of consecutive rows at a time: no pixel passes through this process."""
        row = self.image_size * self.image_size
        runs: list[list[int]] = []
        for k in indices:
            if runs and k == runs[-1][1]:
                runs[-1][1] += 1
            else:
                runs.append([k, k + 1])
        with open(self.path, "rb") as src, open(out, "r+b") as dst:
            dst_offset = _header_length(out)
            for start, stop in runs:
                length, src_offset = (stop - start) * row, self.offset + start * row
                while length:
                    copied = os.copy_file_range(src.fileno(), dst.fileno(), length, src_offset, dst_offset)
                    if copied == 0:
                        raise OSError(f"copying decoded rows from {self.path} to {out} stopped short")
                    length, src_offset, dst_offset = length - copied, src_offset + copied, dst_offset + copied

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _header_length(path: Path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def _new_array_file(path: Path, shape: tuple[int, ...]) -> int:
    """An uint8 `.npy` file of this shape, zero-filled (sparse on disk); returns its data offset."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape)))
    return offset


_output: dict[str, int] = {}  # scratch file -> descriptor, one per decoding process
_claims = None  # one flag a run of images: taken by some process (multiprocessing.Array, shared)


def _share_claims(claims) -> None:
    global _claims
    _claims = claims


def _decode_run(job: tuple[int, int, list[str | np.ndarray], int, str, int, int]) -> list | None:
    """Decode a run of consecutive images and write their rows into the scratch file at once
    (one write a run, not one an image; an unreadable image's row stays zero). None where
    another process has taken the run already."""
    run, start, sources, size, path, offset, max_pixels = job
    if _claims is not None:
        with _claims.get_lock():
            if _claims[run]:
                return None
            _claims[run] = 1
    rows = np.zeros((len(sources), size, size), np.uint8)
    meta = []
    for k, source in enumerate(sources):
        decoded, reason, stored = decode(source, max_pixels, at_least=size)
        if decoded is None:
            meta.append((None, reason, stored))
            continue
        rows[k] = resize_square(decoded.pixels, size)
        # The content hash is of the pixels as read for this size: the same file (or the same
        # pixels in a lossless format) hashes the same; a JPEG and its PNG export are near-duplicates.
        width, height = decoded.stored_size
        meta.append(((width, height, decoded.mode, pixel_hash(decoded.pixels), perceptual_hash(rows[k])), None, stored))
    if path not in _output:
        _output[path] = os.open(path, os.O_WRONLY)
    data, at = memoryview(rows).cast("B"), offset + start * size * size
    while data:  # a write may stop short (a full disk says so at the next)
        written = os.pwrite(_output[path], data, at)
        data, at = data[written:], at + written
    return meta


def decode_images(
    images: list[SourceImage], image_size: int, workers: int | None = None, scratch: Path | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> DecodedImages:
    """Decode and resize every image once, into a scratch file in `scratch` (default: the
    system's temporary folder), in `workers` processes: this one and a pool of the others.
    Memory stays bounded by the runs of images in flight, and each image by `max_pixels`
    (larger ones are refused from their header)."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".decoding-", suffix=".npy", dir=scratch)
    os.close(handle)
    path = Path(name)
    offset = _new_array_file(path, (len(images), image_size, image_size))
    # Runs small enough that the processes finish together (the last run is the tail the others
    # wait for), large enough that handing one over costs little beside its decoding.
    size = max(1, min(32, len(images) // (workers * 16)))
    sources = [str(image.path) if image.path is not None else image.array for image in images]
    jobs = [(run, k, sources[k : k + size], image_size, str(path), offset, max_pixels) for run, k in enumerate(range(0, len(images), size))]
    results: list = [None] * len(jobs)
    progress = tqdm(total=len(images), desc="decoding images", unit="img", disable=bars_disabled())
    try:
        # Files decode in parallel; npz rows are already in memory, where processes only add copying.
        if workers > 1 and len(images) >= 64 and images[0].path is not None:
            _share_claims(multiprocessing.Array("b", len(jobs)))
            # Objects alive now are left out of garbage collection while the workers live: a full
            # collection writes to every object, and each page it writes is then copied from the
            # one the forked workers share (kermany-2400, profiled with getrusage: 29,000 pages copied).
            thaw = gc.get_freeze_count() == 0  # a caller's own freeze is left as it was
            gc.freeze()
            pool = None
            try:
                pool = ProcessPoolExecutor(workers - 1, initializer=_share_claims, initargs=(_claims,))
                futures = [pool.submit(_decode_run, job) for job in jobs]
                # This process decodes too, from the last run back, while the pool takes runs
                # from the first: a fork fewer, and no process idle while the others work.
                for run in reversed(range(len(jobs))):
                    if (mine := _decode_run(jobs[run])) is None:
                        break
                    results[run] = mine
                    progress.update(len(mine))
                for run, future in enumerate(futures):
                    if (theirs := future.result()) is not None:
                        results[run] = theirs
                        progress.update(len(theirs))
            finally:
                # The workers exit while the entry is built: unmapping a forked process takes
                # as long as a few runs' decoding, and nothing here waits for it.
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
                if thaw:
                    gc.unfreeze()
        else:
            for run, job in enumerate(jobs):
                results[run] = _decode_run(job)
                progress.update(len(results[run]))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        _share_claims(None)
        if (fd := _output.pop(str(path), None)) is not None:
            os.close(fd)
        progress.close()
    return DecodedImages(path, image_size, [m for run in results for m in run])


def build_entry(
    folder: Path,
    images: list[SourceImage],
    decoded: DecodedImages,
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
        kept, labels = [], []
        for k, (image, (ok, reason, _)) in enumerate(zip(images, decoded.meta)):
            if image.split != split:
                continue
            if ok is None:
                rejected.append((image.relpath, reason))
                continue
            width, height, mode, content_hash, phash = ok
            kept.append(k)
            labels.append(classes.index(image.label))
            rows.append(ManifestRow(image.relpath, split, image.label, width, height, mode, content_hash, image.patient, phash, image.site))
        # Copied from the scratch file by the kernel: a split of 10^6 images never sits in memory.
        _new_array_file(tmp / f"{split}_images.npy", (len(kept), image_size, image_size))
        decoded.copy_rows(kept, tmp / f"{split}_images.npy")
        np.save(tmp / f"{split}_labels.npy", np.asarray(labels, dtype=np.int64))
        split_sizes[split] = len(kept)
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
        return load_entry(folder)  # the rival's, which wrote its own manifest
    return load_entry(folder, rows)

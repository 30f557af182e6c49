"""Malformed files for the hostile-input tests: damaged, lying and oversized images."""

import io
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from conftest import write_dicom
from PIL import Image


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
        for _ in range(12):
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

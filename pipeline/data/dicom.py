"""DICOM radiographs to grey uint8, as a radiologist's viewer would first show them.

A DICOM pixel array is not an image yet: stored values pass the modality LUT (rescale slope and
intercept) to become the detector's units, then the VOI LUT or window (centre, width) that the
modality chose for display; MONOCHROME1 means "high values are dark" and is inverted. Only then
is the result scaled to 0..255. Compressed transfer syntaxes are decoded where pydicom has a
decoder for them (RLE natively, JPEG baseline through Pillow, the rest through pylibjpeg or GDCM
if installed) and otherwise rejected with the reason, never guessed at.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np

from pipeline.data.unreadable import UnreadableImage, check_pixels


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then the magic word."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_dicom(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """The displayed image as grey uint8 and a mode string naming what was read (e.g.
    `DICOM MONOCHROME1 12-bit`); `UnreadableImage` with the reason otherwise. The header's size
    is checked against `max_pixels` before any pixel is decoded, and the pixels against it."""
    import pydicom  # only DICOM sources need it
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as e:
        raise UnreadableImage(f"not a readable DICOM file: {e}") from None
    if "PixelData" not in ds:
        raise UnreadableImage("DICOM file without pixel data (a report or structured document?)")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows < 1 or columns < 1:
        raise UnreadableImage(f"DICOM header gives no image size (Rows {rows}, Columns {columns})")
    frames_in_header = int(ds.get("NumberOfFrames", 1) or 1)
    check_pixels(columns, rows * frames_in_header, max_pixels)
    if frames_in_header > 1:
        raise UnreadableImage(f"multi-frame DICOM ({frames_in_header} frames): a radiograph has one; export the frame you mean")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    syntax_name = getattr(syntax, "name", str(syntax))
    # pydicom logs each failed decoder's traceback; the reason goes into the data report instead.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():  # pydicom warns of excess frames; the shape check below says it
            warnings.simplefilter("ignore")
            stored = ds.pixel_array
    except Exception as e:  # pydicom raises RuntimeError/NotImplementedError/ValueError by codec
        hint = " (install pylibjpeg and pylibjpeg-libjpeg/-openjpeg, or python-gdcm, to decode it)" if syntax and syntax.is_compressed else ""
        raise UnreadableImage(f"cannot decode DICOM pixel data in transfer syntax {syntax_name}{hint}: {str(e).splitlines()[0][:200]}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = int(ds.get("SamplesPerPixel", 1))
    expected = (rows, columns) if samples == 1 else (rows, columns, samples)
    if stored.shape != expected:
        raise UnreadableImage(
            f"pixel data does not match Rows x Columns: the header says {rows} x {columns}"
            f"{'' if samples == 1 else f' x {samples}'}, the pixel data decodes to shape {tuple(stored.shape)}"
        )
    if samples != 1:
        from PIL import Image

        rgb = stored.astype(np.uint8) if stored.dtype != np.uint8 else stored
        return np.asarray(Image.fromarray(rgb).convert("L")), f"DICOM {photometric}"
    bits = int(ds.get("BitsStored", stored.dtype.itemsize * 8))
    values = apply_modality_lut(stored, ds).astype(np.float64)
    values, low, high = _display_window(values, ds, apply_voi_lut)
    grey = (values - low) / (high - low) if high > low else np.zeros_like(values)
    grey = np.clip(grey, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    return np.round(grey * 255.0).astype(np.uint8), f"DICOM {photometric} {bits}-bit"


def _display_window(values: np.ndarray, ds, apply_voi_lut) -> tuple[np.ndarray, float, float]:
    """The VOI transform and the range it maps to: a VOI LUT's output range, a window's
    [centre - width/2, centre + width/2] (DICOM PS3.3 C.11.2.1.2, linear), or, with neither,
    the image's own min..max (as for 16-bit PNGs, whose white point varies)."""
    if "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        out_bits = int(lut.LUTDescriptor[2])
        return apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64), 0.0, float(2**out_bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        centre, width = (float(_first(ds[k].value)) for k in ("WindowCenter", "WindowWidth"))
        if width >= 1:
            # The standard's linear function: x <= c - 0.5 - (w-1)/2 is black, x > c - 0.5 + (w-1)/2 white.
            low = centre - 0.5 - (width - 1) / 2
            return values, low, low + (width - 1)
    return values, float(values.min()), float(values.max())


def _first(value):
    """Window centre and width may be multi-valued (several presets): the first is the default."""
    try:
        return value[0]
    except (TypeError, IndexError):
        return value

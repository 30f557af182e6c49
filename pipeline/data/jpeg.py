"""JPEG straight to grey at reduced scale, through libjpeg-turbo's own API (simplejpeg).

Most radiographs come as JPEGs, and a full-size one (1,000-3,000 px) read for 224 px need not be
decoded whole: libjpeg-turbo's IDCT can scale by any M/8, and a YCbCr file's luma is its grey, so
the chroma is never transformed. Pillow reaches the same decoder, but only at 1/2, 1/4 and 1/8 and
through a header parser and a buffered feed written in Python, which add half again to a 224 px
file's decoding (benchmarks/RESULTS.md prices both). The pixels are the decoder's own: at a scale
both reach, they equal Pillow's draft mode bit for bit.

Anything this path does not cover as Pillow would is handed back (None) for `read_image`'s Pillow
path: an APP1 segment anywhere before the scan (EXIF or XMP, either of which may hold an
orientation to apply), colour spaces other than grey and YCbCr (Adobe CMYK and RGB JPEGs), and any
file libjpeg-turbo's API refuses, so that Pillow's message is the reason a report shows.
"""

from __future__ import annotations

import numpy as np
import simplejpeg

from pipeline.data.unreadable import check_pixels

_START_OF_IMAGE = b"\xff\xd8"
_START_OF_SCAN = 0xDA  # the entropy-coded data follows: Pillow reads no metadata past it
_APP1 = 0xE1  # EXIF or XMP
# The file's colour mode as Pillow names it, for the manifest (a YCbCr JPEG opens as RGB there).
_MODES = {"Gray": "L", "YCbCr": "RGB"}


def _has_app1(data: bytes) -> bool:
    """Whether an APP1 segment (EXIF, XMP) comes before the scan: the segments' lengths are walked,
    so nothing in the pixels' data is mistaken for one; a malformed header counts as one (Pillow
    reads it, and says what is wrong)."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return True
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker == _START_OF_SCAN:
            return False
        if marker == _APP1:
            return True
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return True


def read_jpeg(data: bytes, max_pixels: int, at_least: int) -> tuple[np.ndarray, str, tuple[int, int]] | None:
    """(grey pixels, Pillow's name of the file's mode, (width, height) as stored), decoded at the
    smallest M/8 scale that keeps both sides at least `at_least` (0: full size); None where
    Pillow should read the file instead (see the module's docstring). Refuses, from the header,
    a picture above `max_pixels` (`UnreadableImage`)."""
    if not data.startswith(_START_OF_IMAGE) or _has_app1(data):
        return None
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colour not in _MODES:
        return None
    check_pixels(width, height, max_pixels)
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=at_least, min_width=at_least)
    except ValueError:
        return None
    return pixels.reshape(pixels.shape[:2]), _MODES[colour], (width, height)

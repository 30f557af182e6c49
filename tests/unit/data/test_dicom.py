"""DICOM decoding: what a viewer would show, or a reason."""

import numpy as np
import pytest

from pipeline.data.sources import read_image
from pipeline.data.unreadable import UnreadableImage
from tests.conftest import write_dicom


def ramp(bits: int = 12) -> np.ndarray:
    """Stored values spanning 0..2^bits-1 left to right."""
    return np.tile(np.linspace(0, 2**bits - 1, 64).round().astype(np.uint16), (32, 1))


def test_a_12_bit_monochrome2_image_is_stretched_to_the_full_grey_range(tmp_path):
    grey, mode, _ = read_image(write_dicom(tmp_path / "a.dcm", ramp(12)).read_bytes())
    assert mode == "DICOM MONOCHROME2 12-bit"
    assert grey.dtype == np.uint8 and grey.shape == (32, 64)
    assert grey[0, 0] == 0 and grey[0, -1] == 255
    assert np.all(np.diff(grey[0].astype(int)) >= 0)  # dark to bright, as stored


def test_monochrome1_is_inverted(tmp_path):
    grey, mode, _ = read_image(write_dicom(tmp_path / "a.dcm", ramp(12), photometric="MONOCHROME1").read_bytes())
    assert "MONOCHROME1" in mode
    assert grey[0, 0] == 255 and grey[0, -1] == 0


def test_16_bit_data_use_their_own_range_not_a_truncation(tmp_path):
    stored = ramp(16)
    grey, mode, _ = read_image(write_dicom(tmp_path / "a.dcm", stored, bits=16).read_bytes())
    assert "16-bit" in mode
    expected = np.round(stored.astype(float) / 65535 * 255)
    assert np.abs(grey.astype(float) - expected).max() <= 1


def test_the_window_decides_what_is_black_and_white_after_the_rescale(tmp_path):
    # Rescale maps stored s to 2 s - 1000; the window [0, 2000) (centre 1000, width 2000) then
    # makes every value below 0 black and above 2000 white: stored 500 -> 0 (black), 1500 -> 2000.
    stored = ramp(12)
    grey, _, _ = read_image(write_dicom(tmp_path / "a.dcm", stored, slope=2.0, intercept=-1000.0, window=(1000.0, 2000.0)).read_bytes())
    hu = 2.0 * stored.astype(float) - 1000.0
    assert np.all(grey[hu <= 0] == 0)
    assert np.all(grey[hu >= 2000] == 255)
    inside = (hu > 50) & (hu < 1950)
    expected = np.clip((hu - (1000 - 0.5 - 1999 / 2)) / 1999, 0, 1) * 255
    assert np.abs(grey[inside].astype(float) - expected[inside]).max() <= 1
    # Without the window the same file would show the whole range: the window did matter.
    plain, _, _ = read_image(write_dicom(tmp_path / "b.dcm", stored, slope=2.0, intercept=-1000.0).read_bytes())
    assert plain[0, 0] == 0 and (plain != grey).any()


def test_rle_compressed_files_are_decoded(tmp_path):
    stored = ramp(12)
    plain, _, _ = read_image(write_dicom(tmp_path / "a.dcm", stored).read_bytes())
    rle, _, _ = read_image(write_dicom(tmp_path / "b.dcm", stored, compress="rle").read_bytes())
    np.testing.assert_array_equal(plain, rle)


def test_a_compressed_syntax_without_a_decoder_is_rejected_with_the_reason(tmp_path):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(tmp_path / "a.dcm", ramp(12))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])  # a JPEG 2000 header, then nothing
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(UnreadableImage, match="transfer syntax JPEG 2000"):
        read_image(path.read_bytes())


def test_a_dicom_file_without_pixels_is_rejected(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "a.dcm", ramp(12))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(UnreadableImage, match="without pixel data"):
        read_image(path.read_bytes())
